// Command bench measures surge against baselines taken in the same run on
// the same machine and prints the ratios (DESIGN section 9):
//
//	menu reads/s of surge      vs  a hello-world net/http server   (target >= 0.8x)
//	orders/s of surge on PG    vs  pgbench of the same inserts      (target >= 0.8x)
//	orders/s of surge on SQLite vs a plain Go loop of the same rows (target >= 0.7x)
//	coupon claims/s of surge   vs  redis-benchmark of the same Lua  (target >= 0.5x)
//	orders/s with 2 promotions and a coupon vs plain orders/s       (target >= 0.8x)
//
// HTTP rates are driven by wrk (one thread), which costs the machine far
// less than a Go client would, so the ratios are not flattered.
//
// Each pair is measured `rounds` times, alternating baseline and surge, and
// the medians are compared. Run it with `make bench`.
package main

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib"

	"github.com/surge-platform/surge/bench/load"
)

var (
	surgeBin  = flag.String("surge", "", "surge binary")
	helloBin  = flag.String("hello", "", "hello-world baseline binary")
	pgAdmin   = flag.String("pg", "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable", "PostgreSQL admin URL (a bench database is created and dropped)")
	rounds    = flag.Int("rounds", 5, "rounds per measurement (medians are reported)")
	dur       = flag.Duration("dur", 4*time.Second, "duration of one measurement")
	workers   = flag.Int("workers", 32, "concurrent connections / pgbench clients")
	only      = flag.String("only", "menu,orders,embedded,callbacks,sockets,pickup,coupons,pricing,flash,overload,observe", "which benchmarks to run")
	nSockets  = flag.Int("sockets", 10000, "sockets: idle WebSocket connections per round")
	rate      = flag.Int("rate", 1000, "pickup: payment callbacks per second")
	shedModes = flag.String("shed", "bbr,failsafe,off", "overload: the shedders to compare")
	surgeArgs = flag.String("surge-args", "", "pickup: more flags for surge, space-separated (e.g. other backends)")
	pickupPG  = flag.Bool("pickup-pg", false, "pickup: surge on a fresh PostgreSQL database (of --pg) instead of SQLite, and commits per order counted")
	profile   = flag.String("profile", "", "pickup, embedded: write a CPU profile of surge during the first round to this file (pickup: and of the load generator to FILE.bench)")
)

func main() {
	flag.Parse()
	if *surgeBin == "" || *helloBin == "" {
		fmt.Fprintln(os.Stderr, "usage: bench --surge BIN --hello BIN [--pg URL]")
		os.Exit(2)
	}
	ctx := context.Background()
	if strings.Contains(*only, "menu") {
		if err := menu(ctx); err != nil {
			fail(err)
		}
	}
	if strings.Contains(*only, "orders") {
		if err := orders(ctx); err != nil {
			fail(err)
		}
	}
	if strings.Contains(*only, "embedded") {
		if err := embedded(ctx); err != nil {
			fail(err)
		}
	}
	if strings.Contains(*only, "callbacks") {
		if err := callbacks(ctx); err != nil {
			fail(err)
		}
	}
	if strings.Contains(*only, "sockets") {
		if err := sockets(ctx); err != nil {
			fail(err)
		}
	}
	if strings.Contains(*only, "pickup") {
		if err := pickup(ctx); err != nil {
			fail(err)
		}
	}
	if strings.Contains(*only, "coupons") {
		if err := coupons(ctx); err != nil {
			fail(err)
		}
	}
	if strings.Contains(*only, "flash") {
		if err := flash(ctx); err != nil {
			fail(err)
		}
	}
	if strings.Contains(*only, "overload") {
		if err := overload(ctx); err != nil {
			fail(err)
		}
	}
	if strings.Contains(*only, "observe") {
		if err := observe(ctx); err != nil {
			fail(err)
		}
	}
	if strings.Contains(*only, "pricing") {
		if err := promoOrders(ctx); err != nil {
			fail(err)
		}
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "bench:", err)
	os.Exit(1)
}

func freeAddr() string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fail(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// benchLimits are the flags every surge the benchmarks start gets: a few
// customers' tokens drive thousands of requests a second, which the
// per-customer limits rightly refuse. The rest of the edge (the per-IP
// limit, loopback exempt; the in-flight caps; the shedder) stays on.
var benchLimits = []string{"--user-rps", "0", "--route-rps", "none"}

// start runs a server process and waits until url answers 200.
func start(url string, bin string, args ...string) (*exec.Cmd, error) {
	if len(args) > 0 && args[0] == "serve" {
		args = append(slices.Clone(args), benchLimits...)
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = io.Discard, os.Stderr
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	for deadline := time.Now().Add(60 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if r, err := http.Get(url); err == nil {
			r.Body.Close()
			if r.StatusCode == 200 {
				return cmd, nil
			}
		}
	}
	cmd.Process.Kill()
	return nil, fmt.Errorf("%s did not come up", bin)
}

func stop(cmd *exec.Cmd) {
	cmd.Process.Signal(os.Interrupt)
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		cmd.Process.Kill()
	}
}

func median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	return s[len(s)/2]
}

func report(name, base, subject string, bs, ss []float64, target float64) {
	mb, ms := median(bs), median(ss)
	fmt.Printf("\n%s\n", name)
	for i := range bs {
		fmt.Printf("  round %d: %-22s %9.0f/s   %-22s %9.0f/s   ratio %.2f\n", i+1, base, bs[i], subject, ss[i], ss[i]/bs[i])
	}
	if target == 0 {
		fmt.Printf("  median:  %-22s %9.0f/s   %-22s %9.0f/s   ratio %.2f (no target set)\n", base, mb, subject, ms, ms/mb)
		return
	}
	verdict := "meets"
	if ms/mb < target {
		verdict = "BELOW"
	}
	fmt.Printf("  median:  %-22s %9.0f/s   %-22s %9.0f/s   ratio %.2f (%s target %.2f)\n", base, mb, subject, ms, ms/mb, verdict, target)
}

// pair starts the hello-world baseline and an embedded surge (with the demo
// data and extra flags) on free ports; done stops both.
func pair(extra ...string) (helloAddr, surgeAddr, data string, done func(), err error) {
	p, err := startPair(extra...)
	if err != nil {
		return "", "", "", nil, err
	}
	return p.helloAddr, p.surgeAddr, p.data, p.stop, nil
}

type procs struct {
	helloAddr, surgeAddr, data string
	hello, surge               *exec.Cmd
}

func (p *procs) stop() { stop(p.surge); stop(p.hello); os.RemoveAll(p.data) }

func startPair(extra ...string) (*procs, error) {
	p := &procs{helloAddr: freeAddr(), surgeAddr: freeAddr()}
	var err error
	if p.hello, err = start("http://"+p.helloAddr+"/", *helloBin, "--addr", p.helloAddr); err != nil {
		return nil, err
	}
	p.data, _ = os.MkdirTemp("", "surge-bench-")
	p.surge, err = start("http://"+p.surgeAddr+"/readyz", *surgeBin,
		append([]string{"serve", "--addr", p.surgeAddr, "--data", p.data, "--seed-demo"}, extra...)...)
	if err != nil {
		stop(p.hello)
		os.RemoveAll(p.data)
		return nil, err
	}
	return p, nil
}

func menu(ctx context.Context) error {
	helloAddr, surgeAddr, _, done, err := pair("--log-level", "warn")
	if err != nil {
		return err
	}
	defer done()
	get := func(u string) load.Request {
		return func(int, int) *http.Request { r, _ := http.NewRequest("GET", u, nil); return r }
	}
	menuURL := "http://" + surgeAddr + "/api/v1/stores/1001/menu"
	load.Run(ctx, *workers, time.Second, 200, get(menuURL)) // warm up
	var bs, ss []float64
	for range *rounds {
		b, err := runWrk(ctx, "http://"+helloAddr+"/", *workers, *dur, "")
		if err != nil {
			return err
		}
		s, err := runWrk(ctx, menuURL, *workers, *dur, "")
		if err != nil {
			return err
		}
		if s.Bad > 0 || b.Bad > 0 {
			return fmt.Errorf("menu: %d failed requests (hello %d)", s.Bad, b.Bad)
		}
		bs, ss = append(bs, b.RPS), append(ss, s.RPS)
		fmt.Printf("  menu round: hello p99 %v, surge menu p99 %v; wrk used %.0f%% / %.0f%% of the cores\n",
			b.P99, s.P99, 100*b.CPUShare(runtime.NumCPU()), 100*s.CPUShare(runtime.NumCPU()))
	}
	report(fmt.Sprintf("menu reads (wrk, 1 thread, %d connections, %v per round, embedded surge, store 1001's 30-item menu)", *workers, *dur),
		"hello-world", "surge menu", bs, ss, 0.8)
	return nil
}

// pgbenchScript is surge's order transaction as plain statements: the
// key, the order, its two lines, its two outbox rows.
const pgbenchScript = `\set uid random(1, 1000000000)
\set oid random(1, 4000000000000000000)
BEGIN;
INSERT INTO idempotency (user_id, idem_key, order_id, state, req_hash, body, created_at) VALUES (:uid, 'k' || :oid, :oid, 'done', '4f1c2a7d9e8b6c5a4f1c2a7d9e8b6c5a', '{"order_id":"383265897843786218","status":"pending_payment","total":3200,"discount":0,"payable":3200,"expires_at":"2026-11-23T15:00:00Z"}', 1763900000000);
INSERT INTO orders (id, user_id, store_id, status, version, total, payable, created_at, updated_at, expires_at) VALUES (:oid, :uid, 1001, 'pending_payment', 1, 3200, 3200, 1763900000000, 1763900000000, 4102444800000);
INSERT INTO order_items (order_id, line, sku_id, name, price, qty) VALUES (:oid, 0, 1001006, 'Jasmine Tea', 1000, 1);
INSERT INTO order_items (order_id, line, sku_id, name, price, qty) VALUES (:oid, 1, 1001007, 'Oolong', 1100, 2);
INSERT INTO outbox (id, subject, type, payload, created_at) VALUES (:oid, 'orders.events.1.order.created', 'order.created', '{"event_id":"383265897843787242","type":"order.created","order_id":"383265897843786218","user_id":"383265897843000001","store_id":"1001","status":"pending_payment","version":1,"payable":3200,"at":"2026-11-23T14:41:50.783Z"}', 1763900000000);
INSERT INTO outbox (id, subject, type, payload, headers, created_at) VALUES (:oid + 4000000000000000000, 'timers.order.383265897843786218', 'order.timer', '383265897843786218', '{"Nats-Schedule":"@at 2026-11-23T15:00:00Z","Nats-Schedule-Target":"timers.expire.1"}', 1763900000000);
END;
`

// pgbenchOne is the same rows in one statement, as surge writes an order
// whose price holds nothing: the database's own limit for them.
const pgbenchOne = `\set uid random(1, 1000000000)
\set oid random(1, 4000000000000000000)
WITH
 k AS (INSERT INTO idempotency (user_id, idem_key, order_id, state, req_hash, body, created_at) VALUES (:uid, 'k' || :oid, :oid, 'done', '4f1c2a7d9e8b6c5a4f1c2a7d9e8b6c5a', '{"order_id":"383265897843786218","status":"pending_payment","total":3200,"discount":0,"payable":3200,"expires_at":"2026-11-23T15:00:00Z"}', 1763900000000)),
 o AS (INSERT INTO orders (id, user_id, store_id, status, version, total, payable, created_at, updated_at, expires_at) VALUES (:oid, :uid, 1001, 'pending_payment', 1, 3200, 3200, 1763900000000, 1763900000000, 4102444800000)),
 l AS (INSERT INTO order_items (order_id, line, sku_id, name, price, qty) VALUES (:oid, 0, 1001006, 'Jasmine Tea', 1000, 1), (:oid, 1, 1001007, 'Oolong', 1100, 2))
INSERT INTO outbox (id, subject, type, payload, headers, created_at) VALUES
 (:oid, 'orders.events.1.order.created', 'order.created', '{"event_id":"383265897843787242","type":"order.created","order_id":"383265897843786218","user_id":"383265897843000001","store_id":"1001","status":"pending_payment","version":1,"payable":3200,"at":"2026-11-23T14:41:50.783Z"}', '', 1763900000000),
 (:oid + 4000000000000000000, 'timers.order.383265897843786218', 'order.timer', '383265897843786218', '{"Nats-Schedule":"@at 2026-11-23T15:00:00Z","Nats-Schedule-Target":"timers.expire.1"}', 1763900000000);
`

var tpsRe = regexp.MustCompile(`tps = ([0-9.]+) \(without initial connection time\)`)

// benchName is a database name of this run's own.
func benchName() string {
	b := make([]byte, 4)
	rand.Read(b)
	return "surge_bench_" + hex.EncodeToString(b)
}

// pgDatabase creates database name on the server of --pg, with surge's
// schema, and returns its URL and the function that drops it.
func pgDatabase(ctx context.Context, name string) (string, func(), error) {
	admin, err := sql.Open("pgx", *pgAdmin)
	if err != nil {
		return "", nil, err
	}
	if _, err := admin.ExecContext(ctx, "CREATE DATABASE "+name); err != nil {
		admin.Close()
		return "", nil, fmt.Errorf("create bench database: %w", err)
	}
	drop := func() {
		admin.ExecContext(context.Background(), "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)")
		admin.Close()
	}
	u, _ := url.Parse(*pgAdmin)
	u.Path = "/" + name
	if out, err := exec.Command(*surgeBin, "migrate", "--db", u.String()).CombinedOutput(); err != nil {
		drop()
		return "", nil, fmt.Errorf("migrate: %v\n%s", err, out)
	}
	return u.String(), drop, nil
}

// settle is how long after a load the counts of pgCounts are read: a
// backend reports its commits to the statistics within 1 s while busy and
// 10 s once idle, and the relay, the ledger and the timers catch up.
const settle = 11 * time.Second

// pgCount is what pgCounts reads.
type pgCount struct{ xid, commits, wal int64 }

// pgCounts reads, on db's database, the last transaction id the server
// assigned (one per transaction that writes, on any database), the
// commits reported (every transaction, reads included) and the position
// in the write-ahead log (the server's, every database's: nothing else
// writes during the pickup bench; in the orders bench, pgbench's tables,
// written just before, may be vacuumed within surge's round). Its own
// reads take 1 transaction id, 3 commits and a few dozen bytes of log.
func pgCounts(ctx context.Context, db *sql.DB) (c pgCount, err error) {
	if err := db.QueryRowContext(ctx, `SELECT txid_current()`).Scan(&c.xid); err != nil {
		return c, err
	}
	if err := db.QueryRowContext(ctx, `SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint`).Scan(&c.wal); err != nil {
		return c, err
	}
	err = db.QueryRowContext(ctx, `SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()`).Scan(&c.commits)
	return c, err
}

// pgCheckpoint asks for a checkpoint before a round is counted, so that
// each round starts with every page's next change logging its whole page
// once (a checkpoint's timing otherwise moves the bytes of log). It needs
// a superuser (the bench's --pg is one); without one the round is counted
// as it comes.
func pgCheckpoint(ctx context.Context, db *sql.DB) {
	_, _ = db.ExecContext(ctx, `CHECKPOINT`)
}

// per returns the counts from a to b per order (n orders): commits, write
// transactions and bytes of log, less the counts' own (own: the reads
// made between a and b besides pgCounts' own).
func (b pgCount) per(a pgCount, n float64, own int64) (commits, writes, wal float64) {
	return float64(b.commits-a.commits-3-own) / n, float64(b.xid-a.xid-1) / n, float64(b.wal-a.wal) / n
}

func orders(ctx context.Context) error {
	// Two databases with the same schema on the same server: pgbench's and
	// surge's, so neither's rows load the other (surge would relay pgbench's
	// outbox rows).
	name := benchName()
	var dsns []string
	for _, db := range []string{name + "_pgbench", name + "_surge"} {
		dsn, drop, err := pgDatabase(ctx, db)
		if err != nil {
			return err
		}
		defer drop()
		dsns = append(dsns, dsn)
	}
	dsn := dsns[1]
	script, one := filepath.Join(os.TempDir(), name+".sql"), filepath.Join(os.TempDir(), name+"-one.sql")
	os.WriteFile(script, []byte(pgbenchScript), 0o644)
	os.WriteFile(one, []byte(pgbenchOne), 0o644)
	defer os.Remove(script)
	defer os.Remove(one)

	data, _ := os.MkdirTemp("", "surge-bench-")
	defer os.RemoveAll(data)
	addr := freeAddr()
	surge, err := start("http://"+addr+"/readyz", *surgeBin, "serve", "--addr", addr, "--data", data, "--db", dsn,
		"--seed-demo", "--log-level", "warn", "--db-max-conns", strconv.Itoa(*workers))
	if err != nil {
		return err
	}
	defer stop(surge)
	base := "http://" + addr
	tokens, err := logins(base, *workers, 0)
	if err != nil {
		return err
	}
	body := `{"store_id":"1001","items":[{"sku_id":"1001006","qty":1},{"sku_id":"1001007","qty":2}]}`
	place := func(w, i int) *http.Request {
		r, _ := http.NewRequest("POST", base+"/api/v1/orders", strings.NewReader(body))
		r.Header.Set("Authorization", "Bearer "+tokens[w])
		return r
	}
	load.Run(ctx, *workers, time.Second, 201, place) // warm up
	pgURL, _ := url.Parse(dsns[0])
	// Per order, on surge's database: commits (pg_stat_database.xact_commit:
	// every transaction, reads included) and write transactions (the
	// transaction ids the server assigned: one per transaction that writes,
	// on any database: nothing else writes meanwhile, pgbench runs before the
	// first count). A backend reports its commits to the statistics within
	// 1 s while busy and 10 s once idle, so the counts are read 11 s after
	// the load, when the relay, the ledger and the timers have caught up too.
	sdb, err := sql.Open("pgx", dsn)
	if err != nil {
		return err
	}
	defer sdb.Close()
	counts := func() (c pgCount, orders int64, err error) {
		if c, err = pgCounts(ctx, sdb); err != nil {
			return c, 0, err
		}
		return c, orders, sdb.QueryRowContext(ctx, `SELECT count(*) FROM orders`).Scan(&orders)
	}
	time.Sleep(settle) // the warm-up's commits reported
	var bs, b1s, ss, wpo, cpo, lpo []float64
	for range *rounds {
		pgb := func(script string) (float64, error) {
			// Prepared, as surge's statements are (pgx prepares each text once).
			cmd := exec.CommandContext(ctx, "pgbench", "-n", "-M", "prepared", "-f", script, "-c", strconv.Itoa(*workers), "-j", "2",
				"-T", strconv.Itoa(int(dur.Seconds())), "-h", pgURL.Hostname(), "-p", pgURL.Port(), "-U", pgURL.User.Username(), name+"_pgbench")
			out, err := cmd.CombinedOutput()
			if err != nil {
				return 0, fmt.Errorf("pgbench: %v\n%s", err, out)
			}
			m := tpsRe.FindSubmatch(out)
			if m == nil {
				return 0, fmt.Errorf("pgbench output has no tps:\n%s", out)
			}
			return strconv.ParseFloat(string(m[1]), 64)
		}
		tps, err := pgb(script)
		if err != nil {
			return err
		}
		tpsOne, err := pgb(one)
		if err != nil {
			return err
		}
		b1s = append(b1s, tpsOne)
		pgCheckpoint(ctx, sdb)
		c0, o0, err := counts()
		if err != nil {
			return err
		}
		s, err := runWrk(ctx, base+"/api/v1/orders", *workers, *dur, orderScript(tokens, body, fmt.Sprintf("r%d", len(ss))))
		if err != nil {
			return err
		}
		if s.Bad > 0 {
			return fmt.Errorf("orders: %d failed requests", s.Bad)
		}
		time.Sleep(settle)
		c1, o1, err := counts()
		if err != nil {
			return err
		}
		c, w, l := c1.per(c0, float64(max(o1-o0, 1)), 1) // 1: the count of orders
		bs, ss, wpo, cpo, lpo = append(bs, tps), append(ss, s.RPS), append(wpo, w), append(cpo, c), append(lpo, l)
		fmt.Printf("  orders round: surge p50 %v p99 %v; %d orders, %.2f commits, %.2f write transactions and %.0f bytes of log per order; wrk used %.0f%% of the cores\n",
			s.P50, s.P99, o1-o0, c, w, l, 100*s.CPUShare(runtime.NumCPU()))
	}
	fmt.Printf("  per order on PostgreSQL (request path, relay, ledger, timers): median %.2f commits, %.2f write transactions, %.0f bytes of log (pgbench's script: 1 and 1)\n",
		median(cpo), median(wpo), median(lpo))
	report(fmt.Sprintf("order placement on PostgreSQL (wrk, 1 thread, %d connections, a unique Idempotency-Key each, %v per round; per order: its key, the order, 2 lines, 2 outbox rows (event, expiry timer); pgbench as one transaction of 6 statements)", *workers, *dur),
		"pgbench same inserts", "surge POST /orders", bs, ss, 0.8)
	report("the same, against the database's limit for these rows: pgbench of them in one statement, as surge writes them",
		"pgbench one statement", "surge POST /orders", b1s, ss, 0)
	return nil
}
