// Command surge is the one binary of the surge ordering platform.
//
//	surge demo     embedded platform + demo data + a short simulation
//	surge serve    run roles as a server
//	surge migrate  apply migrations to every database shard
//	surge ctl      operate a running cluster (degradation switches)
//	surge help     this text
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/netip"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/surge-platform/surge/internal/demo"
	"github.com/surge-platform/surge/internal/monitor"
	"github.com/surge-platform/surge/internal/node"
	"github.com/surge-platform/surge/internal/payment"
	"github.com/surge-platform/surge/internal/payment/alipay"
	"github.com/surge-platform/surge/internal/payment/wechatpay"
	"github.com/surge-platform/surge/internal/platform/edge"
	"github.com/surge-platform/surge/internal/platform/heapfloor"
	"github.com/surge-platform/surge/internal/platform/obs"
	"github.com/surge-platform/surge/internal/platform/sqldb"
)

func main() {
	if err := run(context.Background(), os.Args[1:], os.Stdout, os.Stderr); err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "surge:", strings.Join(strings.Fields(err.Error()), " ")) // one line
		}
		var u usageError
		if errors.As(err, &u) || errors.Is(err, flag.ErrHelp) {
			os.Exit(2)
		}
		os.Exit(1)
	}
}

// usageError is a command line that cannot work (exit status 2); other
// failures, such as a backend that cannot be reached, exit with 1.
type usageError struct{ error }

func (u usageError) Unwrap() error { return u.error }

const usage = `surge — an ordering platform built for peak traffic.

Usage:
  surge demo    [serve flags] [--sim-duration 8s] [--sim-customers 16]
                  whole platform in one process on embedded backends (a temp dir
                  unless --data is given), demo data, a short simulation; then
                  serves until Ctrl-C
  surge serve   [flags]   run the platform (or some roles) as a server
  surge migrate [--db URL ...]   apply the migrations to every database shard
  surge reconcile --channel wechatpay [--date 2026-11-23] [--server URL] [--admin-token T] [--json]
                  compare a channel's statement with the ledger (via a running
                  node's admin API); fixes what is safe, reports the rest
  surge ctl switch list | set NAME on|off | history NAME
                  [--server URL] [--admin-token T] [--operator NAME] [--json]
                  the cluster's degradation switches (via a running node's admin
                  API; env SURGE_SERVER, SURGE_ADMIN_TOKEN, SURGE_OPERATOR)
  surge help

Exit status: 0 after Ctrl-C; 1 when something surge needs fails (a backend that
cannot be reached, a port in use, a data directory it cannot write: one line on
stderr says what and what to do); 2 for a command line that cannot work.

Flags of serve and demo (each also as env SURGE_<NAME>, e.g. SURGE_ADDR; SURGE_DB
takes several URLs separated by spaces):
`

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		printFlags(stderr)
		return usageError{errors.New("missing command")}
	}
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	switch args[0] {
	case "serve":
		return serve(ctx, args[1:], stdout, stderr, false)
	case "demo":
		return serve(ctx, args[1:], stdout, stderr, true)
	case "migrate":
		return migrate(ctx, args[1:], stdout, stderr)
	case "reconcile":
		return reconcile(ctx, args[1:], stdout, stderr)
	case "ctl":
		return ctl(ctx, args[1:], stdout, stderr)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		printFlags(stdout)
		return nil
	}
	return usageError{fmt.Errorf("unknown command %q (try: surge help)", args[0])}
}

type options struct {
	node.Config
	seedDemo     bool
	heapFloor    int
	logLevel     string
	simDuration  time.Duration
	simCustomers int
}

type listFlag []string

func (l *listFlag) String() string { return strings.Join(*l, " ") }
func (l *listFlag) Set(v string) error {
	*l = append(*l, strings.Fields(v)...)
	return nil
}

func flags(o *options, out io.Writer) *flag.FlagSet {
	d := node.Defaults()
	o.Config = d
	fs := flag.NewFlagSet("surge", flag.ContinueOnError)
	fs.SetOutput(out)
	fs.StringVar(&o.Addr, "addr", d.Addr, "HTTP listen address")
	fs.StringVar(&o.Data, "data", d.Data, "directory of the embedded backends")
	roles := listFlag{}
	fs.Func("roles", "roles to run: all, or a comma list of api,worker,fulfil,paysim,push,monitor", func(v string) error {
		roles = append(roles, v)
		o.Roles = roles
		return nil
	})
	fs.Var((*listFlag)(&o.DB), "db", "database URL, repeatable: sqlite:DIR[?shards=N&sync=full] or postgres://... (one per shard, main first); default sqlite:<data>/db")
	fs.StringVar(&o.KV, "kv", "", "kv URL: mem: or redis://host:port/db (default mem:)")
	fs.StringVar(&o.Bus, "bus", "", "bus URL: embedded:DIR or nats://host:port (default embedded:<data>/nats)")
	fs.StringVar(&o.AdminToken, "admin-token", "", "operator token for /admin/v1 (default: random, printed at start)")
	fs.DurationVar(&o.OrderTTL, "order-ttl", d.OrderTTL, "time a customer has to pay an order")
	fs.DurationVar(&o.KeyTTL, "idempotency-ttl", 24*time.Hour, "how long an order's Idempotency-Key is kept: a retry within it gets the same order (at least 1h)")
	fs.DurationVar(&o.SeenTTL, "events-seen-ttl", 7*24*time.Hour, "how long the ledger's record of each order event it took (events_seen) is kept (at least 1h)")
	fs.IntVar(&o.NodeID, "node-id", d.NodeID, "id generator node 0..127, leased in the main database: start fails if a live process holds it (-1: lease the lowest free one)")
	fs.IntVar(&o.DBMaxConns, "db-max-conns", 0, "connections per PostgreSQL database (0: 8 x cores)")
	fs.DurationVar(&o.RelayPoll, "relay-poll", time.Second, "outbox relay backstop poll (wake-ups on commit come first)")
	fs.BoolVar(&o.Migrate, "migrate", d.Migrate, "apply migrations at start")
	fs.StringVar(&o.PublicURL, "public-url", "", "base URL this node is reached at, for payment callbacks (default http://<addr>)")
	fs.StringVar(&o.PayURL, "pay-url", "", "base URL of the payment provider simulator (default this node's URL)")
	fs.Func("pay-weights", "routing weights of the payment channels, e.g. wechatpay=3,alipay=1 (default 1 each)", func(v string) error {
		o.PayWeights = map[string]int{}
		for _, kv := range strings.Split(v, ",") {
			name, w, ok := strings.Cut(strings.TrimSpace(kv), "=")
			n, err := strconv.Atoi(w)
			if !ok || err != nil || n < 1 || n > 1000 {
				return fmt.Errorf("%q: want channel=weight with a weight of 1 to 1000", kv)
			}
			o.PayWeights[name] = n
		}
		return nil
	})
	fs.Func("wechatpay", "the merchant's WeChat Pay API v3 credentials: mchid=…,appid=…,serial=…,key-file=PATH,platform-key-id=PUB_KEY_ID_…,platform-key-file=PATH,apiv3-key-env=NAME[,url=…] (each key-file may be key-env=NAME instead; docs/payments.md); default the simulator's", func(v string) error {
		c, err := wechatpay.FromSpec(v, os.Getenv)
		o.WeChatPay = &c
		return err
	})
	fs.Func("alipay", "the app's Alipay credentials: appid=…,key-file=PATH,alipay-key-file=PATH[,gateway=URL] (each …-file may be …-env=NAME instead; docs/payments.md); default the simulator's", func(v string) error {
		c, err := alipay.FromSpec(v, os.Getenv)
		o.Alipay = &c
		return err
	})
	fs.DurationVar(&o.PayQuery, "pay-query-after", 10*time.Second, "actively query a payment whose callback has not come after this long")
	fs.StringVar(&o.NotifyURL, "notify-url", "", "webhook for customer notifications (signed, retried, behind a breaker); default the simulator's inbox at <pay-url>/paysim/v1/messages; off: none")
	fs.DurationVar(&o.WSPing, "ws-ping", 25*time.Second, "push: ping a socket idle this long; drop one silent for 3 times it")
	fs.Float64Var(&o.Flash.UserRate, "flash-user-rps", 5, "flash-sale purchases per second one user may attempt, per api node (burst 2x; beyond it 429, then a challenge, then a blacklist; <0: off)")
	fs.Float64Var(&o.Flash.IPRate, "flash-ip-rps", 200, "flash-sale purchases per second from one client IP, per api node (burst 2x; <0: off)")
	fs.Float64Var(&o.Flash.HotRate, "flash-hot-rps", 20000, "flash-sale admissions per second of one sale's sku (its hot key in kv), per api node (<0: off)")
	fs.Int64Var(&o.GlobalRPS, "global-rps", 0, "the cluster-wide request cap of customers, shared by every node through kv (GCRA in Redis; each node falls back to its share when kv is down; 0: off)")
	fs.IntVar(&o.GlobalNodes, "global-nodes", 1, "api nodes assumed until kv has counted the live ones: a node that cannot reach kv from the start takes global-rps / this")
	fs.Float64Var(&o.Edge.IPRPS, "ip-rps", d.Edge.IPRPS, "customer requests per second from one client address, per node (burst 2x; loopback exempt; 0: off)")
	fs.Float64Var(&o.Edge.UserRPS, "user-rps", d.Edge.UserRPS, "requests per second of one customer, per node (burst 2x; 0: off)")
	fs.Func("route-rps", "per-customer limits of the expensive routes, per node, e.g. order=20,pay=20,claim=20,flash=0 (burst 2x; 0 or none: off) (default "+routes(d.Edge.RouteRPS)+")", func(v string) error {
		m, err := parseRoutes(v)
		o.Edge.RouteRPS = m
		return err
	})
	fs.IntVar(&o.Edge.MaxInflight, "max-inflight", d.Edge.MaxInflight, "requests in flight on this node (customers at most 70%, operators 10%; beyond: 503 overloaded; 0: no cap)")
	fs.DurationVar(&o.RequestTimeout, "request-timeout", d.RequestTimeout, "every request but a WebSocket's gives up after this: its database, kv, bus and channel calls are cut short and it answers 503 timeout (0: never)")
	fs.IntVar(&o.MaxConns, "max-conns", d.MaxConns, "open connections on this node (beyond: 503 and close; 0: no cap)")
	fs.StringVar(&o.Edge.Shed, "shed", d.Edge.Shed, "adaptive load shedding: bbr (refuse customer requests early, 503, while the process uses over 90% of its cores and more are in flight than the node has shown it can carry), failsafe (failsafe-go's adaptive limiter instead), off")
	fs.IntVar(&o.Edge.Ban, "ban-strikes", d.Edge.Ban, "refusals by the per-IP, per-user and per-route limits within 10 s that blacklist the client cluster-wide (0: never)")
	fs.DurationVar(&o.Edge.BanFor, "ban-for", d.Edge.BanFor, "how long such a client stays blacklisted")
	fs.Func("trusted-proxies", "reverse proxies (CIDRs, comma-separated) whose X-Forwarded-For names the client, e.g. 10.0.0.0/8 (default none: the peer is the client)", func(v string) error {
		o.Proxies = nil
		for _, c := range strings.Split(v, ",") {
			if c = strings.TrimSpace(c); c == "" {
				continue
			}
			p, err := netip.ParsePrefix(c)
			if err != nil {
				a, aerr := netip.ParseAddr(c)
				if aerr != nil {
					return fmt.Errorf("%q: want a CIDR such as 10.0.0.0/8 or an address", c)
				}
				p = netip.PrefixFrom(a, a.BitLen())
			}
			o.Proxies = append(o.Proxies, p.Masked())
		}
		return nil
	})
	fs.BoolVar(&o.seedDemo, "seed-demo", false, "load the demo data set (idempotent)")
	fs.IntVar(&o.heapFloor, "heap-floor-mb", 64, "least heap the Go collector lets grow before collecting, MiB (fewer collections under load, up to that much more memory; 0: GOGC alone)")
	fs.StringVar(&o.logLevel, "log-level", "info", "debug (one line per request), info, warn or error")
	fs.BoolVar(&o.Telemetry, "telemetry", d.Telemetry, "count every request in /metrics (rate, errors, duration per route and class) and give it a trace span (false: neither, for measuring their cost)")
	fs.Func("alert", "monitor role: send alerts to a chat bot's webhook, kind=URL with kind feishu, wecom or slack (repeat for several)", func(v string) error {
		t, err := monitor.ParseTarget(v)
		o.Alerts = append(o.Alerts, t)
		return err
	})
	fs.Func("alert-rules", "monitor role: alert thresholds to change, e.g. errors=1%,p99=1s,lag=10000,outbox=30s,dead=1,resend=1h,node-red=true (these are the defaults; 0 turns a rule off)", func(v string) error {
		r, err := monitor.ParseRules(v)
		o.AlertRules = &r
		return err
	})
	fs.StringVar(&o.OTLP, "otlp", "", "export trace spans over OTLP/HTTP to this URL, e.g. http://127.0.0.1:4318 (default: none; trace ids are passed on and logged all the same)")
	fs.Float64Var(&o.TraceRatio, "trace-ratio", d.TraceRatio, "with --otlp: the share of traces started on this node that are recorded (0..1; a caller's sampled traceparent is always followed)")
	fs.DurationVar(&o.simDuration, "sim-duration", 8*time.Second, "demo: how long the simulation runs (0: none)")
	fs.IntVar(&o.simCustomers, "sim-customers", 16, "demo: simulated customers")
	return fs
}

// routes renders per-route limits as route-rps takes them.
func routes(m map[string]float64) string {
	var parts []string
	for _, r := range edge.Routes {
		parts = append(parts, r+"="+strconv.FormatFloat(m[r], 'f', -1, 64))
	}
	return strings.Join(parts, ",")
}

// parseRoutes reads route=rps pairs; "none" (or "") turns them all off.
func parseRoutes(v string) (map[string]float64, error) {
	m := map[string]float64{}
	if v = strings.TrimSpace(v); v == "" || v == "none" {
		return m, nil
	}
	for _, kv := range strings.Split(v, ",") {
		name, r, ok := strings.Cut(strings.TrimSpace(kv), "=")
		rps, err := strconv.ParseFloat(r, 64)
		if !ok || err != nil || rps < 0 || !slices.Contains(edge.Routes, name) {
			return nil, fmt.Errorf("%q: want route=rps with a route of %s and a rate >= 0", kv, strings.Join(edge.Routes, ", "))
		}
		m[name] = rps
	}
	return m, nil
}

func printFlags(w io.Writer) {
	var o options
	fs := flags(&o, w)
	fs.PrintDefaults()
}

// parse reads flags, then SURGE_* env vars for flags not given.
func parse(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return usageError{err}
	}
	if fs.NArg() > 0 {
		return usageError{fmt.Errorf("unexpected argument %q", fs.Arg(0))}
	}
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	var err error
	fs.VisitAll(func(f *flag.Flag) {
		env := "SURGE_" + strings.ToUpper(strings.ReplaceAll(f.Name, "-", "_"))
		if v, ok := os.LookupEnv(env); ok && !given[f.Name] && err == nil {
			if e := fs.Set(f.Name, v); e != nil {
				err = usageError{fmt.Errorf("%s=%q: %w", env, v, e)}
			}
		}
	})
	return err
}

func newLogger(w io.Writer, level string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level %q: want debug, info, warn or error", level)
	}
	return slog.New(obs.LogHandler{Handler: slog.NewJSONHandler(w, &slog.HandlerOptions{Level: l})}), nil
}

func serve(ctx context.Context, args []string, stdout, stderr io.Writer, isDemo bool) error {
	var o options
	fs := flags(&o, stderr)
	if err := parse(fs, args); err != nil {
		return err
	}
	log, err := newLogger(stderr, o.logLevel)
	if err != nil {
		return usageError{err}
	}
	dataGiven := false
	fs.Visit(func(f *flag.Flag) { dataGiven = dataGiven || f.Name == "data" })
	_, envData := os.LookupEnv("SURGE_DATA")
	if isDemo {
		o.seedDemo = true
		if !dataGiven && !envData {
			dir, err := os.MkdirTemp("", "surge-demo-")
			if err != nil {
				return err
			}
			defer os.RemoveAll(dir)
			o.Data = dir
		}
	}
	generated := o.AdminToken == ""
	if err := o.Config.Resolve(); err != nil {
		return usageError{err}
	}
	printConfig(log, o)
	if o.heapFloor < 0 || o.heapFloor > 1<<20 {
		return usageError{fmt.Errorf("--heap-floor-mb %d: want 0..%d", o.heapFloor, 1<<20)}
	}
	heapfloor.Set(int64(o.heapFloor) << 20)
	n, err := node.New(ctx, o.Config, log)
	if err != nil && isDemo && o.Addr == node.Defaults().Addr && strings.Contains(err.Error(), "address already in use") {
		log.Warn("default address busy, using a free port", "addr", o.Addr)
		o.Addr = "127.0.0.1:0"
		n, err = node.New(ctx, o.Config, log)
	}
	if err != nil {
		return err
	}
	defer n.Close()
	if o.seedDemo && o.Has("api") {
		if err := demo.Seed(ctx, n.Catalog, n.Members); err != nil {
			return err
		}
		if err := demo.SeedPromotions(ctx, n.Catalog, n.Promo); err != nil {
			return err
		}
	}
	var sale string
	if isDemo && o.Has("api") {
		fs, err := demo.SeedFlashSale(ctx, n.Flash, 2*time.Second)
		if err != nil {
			return err
		}
		sale = strconv.FormatInt(fs.ID, 10)
	}
	done := make(chan error, 1)
	go func() { done <- n.Run(ctx) }()
	log.Info("serving", "url", n.URL(), "roles", strings.Join(n.Config().Roles, ","))
	if generated {
		fmt.Fprintf(stdout, "admin token (generated for this run): %s\n", o.AdminToken)
	}
	if isDemo {
		intro(stdout, n.URL(), o.AdminToken, sale)
		if o.simDuration > 0 {
			rep, err := demo.Simulate(ctx, n.URL(), o.simCustomers, o.simDuration, sale)
			if err != nil {
				return err
			}
			rep.Print(stdout)
		}
		fmt.Fprintf(stdout, "\nstill serving on %s — press Ctrl-C to stop\n", n.URL())
	}
	err = <-done
	log.Info("stopped")
	return err
}

func printConfig(log *slog.Logger, o options) {
	c := o.Config
	c.AdminToken = mask(c.AdminToken)
	dbs := make([]string, len(c.DB))
	for i, u := range c.DB {
		dbs[i] = sqldb.Mask(u)
	}
	c.DB = dbs
	c.KV, c.Bus = sqldb.Mask(c.KV), sqldb.Mask(c.Bus)
	b, _ := json.Marshal(c)
	log.Info("config", "effective", json.RawMessage(b), "seed_demo", o.seedDemo, "log_level", o.logLevel, "heap_floor_mb", o.heapFloor)
}

func mask(s string) string {
	if len(s) <= 8 {
		return "****"
	}
	return s[:4] + "****"
}

func intro(w io.Writer, url, admin, sale string) {
	store := demo.StoreIDs()[0]
	fmt.Fprintf(w, `
surge demo is up: %[1]s
  %[4]d stores with a 30-item menu each (store %[3]d has 3 more, for the promotions), %[5]d demo users; health %[1]s/healthz, readiness %[1]s/readyz

Try it:
  curl -s %[1]s/api/v1/stores
  curl -s %[1]s/api/v1/stores/%[3]d/menu
  TOKEN=$(curl -s -X POST %[1]s/api/v1/auth/login -d '{"phone":"+8613800000001"}' | sed 's/.*"token":"\([^"]*\)".*/\1/')
  ORDER=$(curl -s -X POST %[1]s/api/v1/orders -H "Authorization: Bearer $TOKEN" -H "Idempotency-Key: try-1" \
       -d '{"store_id":"%[3]d","items":[{"sku_id":"%[6]d","qty":2}]}' | sed 's/.*"order_id":"\([0-9]*\)".*/\1/')
  PAYURL=$(curl -s -X POST %[1]s/api/v1/orders/$ORDER/pay -H "Authorization: Bearer $TOKEN" -d '{"channel":"wechatpay"}' \
       | sed 's/.*"pay_url":"\([^"]*\)".*/\1/')
  curl -s -X POST $PAYURL            # the simulated payer pays
  curl -s %[1]s/api/v1/orders/$ORDER -H "Authorization: Bearer $TOKEN"     # "status":"paid"
  KEY=$(curl -s %[1]s/admin/v1/stores/%[3]d -H "Authorization: Bearer %[2]s" | sed 's/.*"pos_key":"\([^"]*\)".*/\1/')
  curl -s "%[1]s/pos/v1/orders/new?cursor=0" -H "Authorization: Bearer $KEY"   # the store's POS sees it
  curl -s -X POST %[1]s/pos/v1/orders/$ORDER/accept -H "Authorization: Bearer $KEY"   # gives a pickup code
  curl -s %[1]s/api/v1/orders/$ORDER -H "Authorization: Bearer $TOKEN"     # "status":"accepted","pickup_code"
  curl -s %[1]s/paysim/v1/messages -H "Authorization: Bearer %[2]s"   # the customer's notification
  (WebSockets: %[7]s/api/v1/ws with the token, %[7]s/pos/v1/ws with the key; see docs/pos.md)
  curl -s %[1]s/api/v1/orders -H "Authorization: Bearer $TOKEN"
  curl -s %[1]s/admin/v1/events/stats -H "Authorization: Bearer %[2]s"
Promotions (docs/promotions.md): the seeds' 满99减9 example, 30.00 + 40.00 + 50.00 -> 111.00:
  curl -s -X POST %[1]s/api/v1/orders/preview -H "Authorization: Bearer $TOKEN" \
       -d '{"store_id":"%[3]d","items":[{"sku_id":"%[8]d","qty":1},{"sku_id":"%[9]d","qty":1},{"sku_id":"%[10]d","qty":1}]}'
  curl -s %[1]s/api/v1/coupons      # then POST %[1]s/api/v1/coupons/<template_id>/claim with the token
  curl -s %[1]s/api/v1/me/coupons -H "Authorization: Bearer $TOKEN"
`, url, admin, store, demo.Stores, demo.Users, store*1000+6, strings.Replace(url, "http", "ws", 1),
		demo.ExampleSKU, demo.ExampleSKU+1, demo.ExampleSKU+2)
	if sale != "" {
		fmt.Fprintf(w, `Flash sale (docs/flash-sales.md): %[3]d Americanos of store %[4]d at 1.00, one each, from a few seconds after the start:
  curl -s %[1]s/api/v1/flash-sales/%[2]s          # the countdown: "now", "starts_at", "state"
  curl -s -X POST %[1]s/api/v1/flash-sales/%[2]s/purchase -H "Authorization: Bearer $TOKEN"   # 202 {"ticket"} or 409 sold_out
  curl -s %[1]s/api/v1/flash-sales/%[2]s/tickets/<ticket> -H "Authorization: Bearer $TOKEN"   # "ordered", "order_id"
  curl -s %[1]s/admin/v1/flash-sales/%[2]s -H "Authorization: Bearer %[5]s"   # the live figures
`, url, sale, demo.FlashStock, demo.FlashStore, admin)
	}
}

func migrate(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("migrate", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var dbs listFlag
	data := fs.String("data", "./data", "directory of the embedded backends")
	fs.Var(&dbs, "db", "database URL, repeatable (default sqlite:<data>/db)")
	if err := parse(fs, args); err != nil {
		return err
	}
	if len(dbs) == 0 {
		dbs = listFlag{"sqlite:" + *data + "/db"}
	}
	c, err := sqldb.Open(ctx, dbs, sqldb.Options{MaxConns: 2})
	if err != nil {
		return err
	}
	defer c.Close()
	if err := c.Migrate(ctx); err != nil {
		return err
	}
	for i, d := range c.Shards() {
		fmt.Fprintf(stdout, "migrated shard %d: %s\n", i, d.Name)
	}
	return nil
}

func reconcile(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("reconcile", flag.ContinueOnError)
	fs.SetOutput(stderr)
	channel := fs.String("channel", "", "payment channel (wechatpay, alipay)")
	date := fs.String("date", time.Now().UTC().Add(-payment.BillsOut).AddDate(0, 0, -1).Format(time.DateOnly), "statement date (UTC); default the latest day whose bills are out (from 03:00 UTC, the day before yesterday)")
	server := fs.String("server", "http://127.0.0.1:8080", "base URL of a running surge node with the api role")
	token := fs.String("admin-token", "", "admin token of that node")
	asJSON := fs.Bool("json", false, "print the report as JSON")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *channel == "" {
		return errors.New("--channel is required")
	}
	body, _ := json.Marshal(map[string]string{"channel": *channel, "date": *date})
	req, err := http.NewRequestWithContext(ctx, "POST", strings.TrimRight(*server, "/")+"/admin/v1/reconciliations", bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+*token)
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		return err
	}
	if res.StatusCode != http.StatusOK {
		return fmt.Errorf("reconcile: %s: %s", res.Status, b)
	}
	if *asJSON {
		_, err := stdout.Write(append(b, '\n'))
		return err
	}
	var rep payment.Report
	if err := json.Unmarshal(b, &rep); err != nil {
		return err
	}
	rep.Print(stdout)
	return nil
}
