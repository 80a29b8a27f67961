package inventory

import (
	"cmp"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/surge-platform/surge/internal/platform/errkind"
	"github.com/surge-platform/surge/internal/platform/sqldb"
	"github.com/surge-platform/surge/internal/platform/sqldb/sqldbtest"
)

// pgConns caps each PostgreSQL pool: the test clusters share one server.
const pgConns = 6

// TestService runs every subtest on every engine. Subtests of an engine
// share one cluster and run in parallel; each works on skus and order ids
// of its own (see keys), and the sweep test on reservations dated an hour
// back, so none sees another's rows.
func TestService(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		fn   func(t *testing.T, e env)
	}{
		{"SetLevels", testSetLevels},
		{"ReserveAllOrNothing", testReserveAllOrNothing},
		{"ReserveIdempotent", testReserveIdempotent},
		{"ReserveSameOrderRace", testReserveSameOrderRace},
		{"ReleaseIdempotent", testReleaseIdempotent},
		{"Sweep", testSweep},
		{"ReserveRace", testReserveRace},
		{"ReturnOnceRace", testReturnOnceRace},
	}
	for _, eng := range sqldbtest.Engines() {
		t.Run(eng.Name, func(t *testing.T) {
			t.Parallel()
			c := eng.Open(t)
			for _, d := range c.Shards() {
				if d.Engine == sqldb.Postgres {
					d.W.SetMaxOpenConns(pgConns)
					d.W.SetMaxIdleConns(pgConns)
				}
			}
			for i, tt := range tests {
				t.Run(tt.name, func(t *testing.T) {
					t.Parallel()
					ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
					defer cancel()
					tt.fn(t, env{c: c, s: New(c), ctx: ctx, keys: keys(i+1) * 1_000_000})
				})
			}
		})
	}
}

// keys hands a subtest skus and order ids no other subtest uses.
type keys int64

func (k keys) sku(n int) int64   { return int64(k) + int64(n) }
func (k keys) order(n int) int64 { return int64(k) + 500_000 + int64(n) }

type env struct {
	c   *sqldb.Cluster
	s   *Service
	ctx context.Context
	keys
}

func (e env) mustSet(t *testing.T, sku, qty int64) {
	t.Helper()
	if err := e.s.Set(e.ctx, sku, qty); err != nil {
		t.Fatalf("set sku %d to %d: %v", sku, qty, err)
	}
}

func (e env) level(t *testing.T, sku int64) int64 {
	t.Helper()
	m, err := e.s.Levels(e.ctx, []int64{sku})
	if err != nil {
		t.Fatal(err)
	}
	q, ok := m[sku]
	if !ok {
		t.Fatalf("sku %d has no level", sku)
	}
	return q
}

// held returns the reservation rows of orderID: sku -> qty.
func (e env) held(t *testing.T, orderID int64) map[int64]int64 {
	t.Helper()
	rows, err := e.c.Main().R.QueryContext(e.ctx, `SELECT sku_id, qty FROM stock_reservations WHERE order_id = $1`, orderID)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	out := map[int64]int64{}
	for rows.Next() {
		var k, q int64
		if err := rows.Scan(&k, &q); err != nil {
			t.Fatal(err)
		}
		out[k] = q
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// heldOf returns how many reservation rows sku has and their total.
func (e env) heldOf(t *testing.T, sku int64) (rows, units int64) {
	t.Helper()
	err := e.c.Main().R.QueryRowContext(e.ctx, `SELECT COUNT(*), CAST(COALESCE(SUM(qty), 0) AS BIGINT) FROM stock_reservations
		WHERE sku_id = $1`, sku).Scan(&rows, &units)
	if err != nil {
		t.Fatal(err)
	}
	return rows, units
}

func (e env) wantLevels(t *testing.T, want map[int64]int64) {
	t.Helper()
	for sku, q := range want {
		if got := e.level(t, sku); got != q {
			t.Errorf("sku %d: stock %d, want %d", sku, got, q)
		}
	}
}

// waitersOf counts the backends that wait, directly or in a queue behind
// one another, for a lock that backend holder holds.
func waitersOf(t *testing.T, ctx context.Context, conn *sql.Conn, holder int64) int {
	t.Helper()
	rows, err := conn.QueryContext(ctx, `SELECT pid, array_to_string(pg_blocking_pids(pid), ',') FROM pg_stat_activity
		WHERE datname = current_database() AND wait_event_type = 'Lock'`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	blockers := map[int64][]int64{}
	for rows.Next() {
		var pid int64
		var by string
		if err := rows.Scan(&pid, &by); err != nil {
			t.Fatal(err)
		}
		for _, f := range strings.Split(by, ",") {
			if b, err := strconv.ParseInt(f, 10, 64); err == nil {
				blockers[pid] = append(blockers[pid], b)
			}
		}
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	behind := map[int64]bool{holder: true}
	for grew := true; grew; {
		grew = false
		for pid, bs := range blockers {
			if behind[pid] {
				continue
			}
			for _, b := range bs {
				if behind[b] {
					behind[pid], grew = true, true
					break
				}
			}
		}
	}
	return len(behind) - 1
}

// race runs fn(i) for i in 0..n-1 on n goroutines released together.
func race(n int, fn func(i int) error) []error {
	errs := make([]error, n)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			<-start
			errs[i] = fn(i)
		})
	}
	close(start)
	wg.Wait()
	return errs
}

func testSetLevels(t *testing.T, e env) {
	a, b, missing := e.sku(1), e.sku(2), e.sku(3)
	e.mustSet(t, a, 10)
	e.mustSet(t, b, 0)
	e.mustSet(t, a, 7) // overwrites
	got, err := e.s.Levels(e.ctx, []int64{a, b, missing})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[a] != 7 || got[b] != 0 {
		t.Errorf("levels %v, want {%d:7 %d:0} and nothing for sku %d", got, a, b, missing)
	}
	for _, bad := range []int64{-1, MaxStock + 1, math.MaxInt64} {
		if err := e.s.Set(e.ctx, a, bad); !errors.Is(err, errkind.ErrInvalid) {
			t.Errorf("set to %d: %v, want ErrInvalid", bad, err)
		}
	}
	e.wantLevels(t, map[int64]int64{a: 7})
	// At the maximum, a reservation and its release come back exactly (on
	// SQLite an overflowing integer would have turned into a float).
	e.mustSet(t, b, MaxStock)
	if err := e.s.Reserve(e.ctx, e.order(1), []Line{{b, 99}}); err != nil {
		t.Fatal(err)
	}
	if back, err := e.s.Release(e.ctx, e.order(1)); err != nil || back != 99 {
		t.Fatalf("release: %d %v", back, err)
	}
	e.wantLevels(t, map[int64]int64{a: 7, b: MaxStock})
	for _, skus := range [][]int64{nil, {}} {
		if got, err := e.s.Levels(e.ctx, skus); err != nil || got == nil || len(got) != 0 {
			t.Errorf("levels of %v: %v, %v; want an empty map", skus, got, err)
		}
	}
}

func testReserveAllOrNothing(t *testing.T, e env) {
	a, b := e.sku(1), e.sku(2)
	e.mustSet(t, a, 10)
	e.mustSet(t, b, 3)
	o := e.order(1)

	err := e.s.Reserve(e.ctx, o, []Line{{a, 4}, {b, 5}})
	if !errors.Is(err, ErrSoldOut) {
		t.Fatalf("reserve with the second sku short: %v, want ErrSoldOut", err)
	}
	if k := errkind.Of(err); k == nil || k.Kind != errkind.Conflict || !strings.Contains(err.Error(), strconv.FormatInt(b, 10)) {
		t.Errorf("sold out error %q (%+v), want a Conflict naming sku %d", err, k, b)
	}
	e.wantLevels(t, map[int64]int64{a: 10, b: 3})
	if h := e.held(t, o); len(h) != 0 {
		t.Errorf("a refused reservation left rows %v", h)
	}

	// Lines in any order, the same sku on two lines.
	if err := e.s.Reserve(e.ctx, o, []Line{{b, 2}, {a, 1}, {b, 1}, {a, 3}}); err != nil {
		t.Fatalf("reserve: %v", err)
	}
	e.wantLevels(t, map[int64]int64{a: 6, b: 0})
	if h := e.held(t, o); len(h) != 2 || h[a] != 4 || h[b] != 3 {
		t.Errorf("reservation rows %v, want {%d:4 %d:3}", h, a, b)
	}

	// A sku without a level cannot be reserved, and takes nothing else with it.
	o2 := e.order(2)
	if err := e.s.Reserve(e.ctx, o2, []Line{{a, 1}, {e.sku(99), 1}}); !errors.Is(err, ErrSoldOut) {
		t.Errorf("reserve of a sku without stock: %v, want ErrSoldOut", err)
	}
	e.wantLevels(t, map[int64]int64{a: 6})
	if err := e.s.Reserve(e.ctx, o2, nil); err != nil {
		t.Errorf("reserve of no lines: %v, want a no-op", err)
	}
	if h := e.held(t, o2); len(h) != 0 {
		t.Errorf("order %d holds %v, want nothing", o2, h)
	}
}

func testReserveIdempotent(t *testing.T, e env) {
	a, b := e.sku(1), e.sku(2)
	e.mustSet(t, a, 10)
	e.mustSet(t, b, 10)
	o := e.order(1)
	for i := range 3 {
		if err := e.s.Reserve(e.ctx, o, []Line{{a, 4}}); err != nil {
			t.Fatalf("reserve #%d: %v", i+1, err)
		}
	}
	// Even other lines are a no-op for an order that holds a reservation.
	if err := e.s.Reserve(e.ctx, o, []Line{{a, 1}, {b, 2}}); err != nil {
		t.Fatalf("reserve again with other lines: %v", err)
	}
	// ... and so are lines that share no sku with the reservation held.
	if err := e.s.Reserve(e.ctx, o, []Line{{b, 2}}); err != nil {
		t.Fatalf("reserve again with a different sku: %v", err)
	}
	e.wantLevels(t, map[int64]int64{a: 6, b: 10})
	if h := e.held(t, o); len(h) != 1 || h[a] != 4 {
		t.Errorf("reservation rows %v, want {%d:4}: reserving again for an order that holds a reservation is a no-op", h, a)
	}
}

// testReserveSameOrderRace: reserving again for an order while its first
// reservation is still in flight (a retry, or a taken-over idempotency
// claim, under the same order id) must be the documented no-op too, not an
// error. On PostgreSQL the overlap is made certain the way a hot sku makes
// it likely: the stock row stays locked until every attempt waits on it.
// SQLite runs one write transaction at a time, so there they simply race.
func testReserveSameOrderRace(t *testing.T, e env) {
	const orders = 3
	a, b := e.sku(1), e.sku(2)
	e.mustSet(t, a, 100)
	e.mustSet(t, b, 100)
	d := e.c.Main()
	pg := d.Engine == sqldb.Postgres
	tries := 10
	if pg {
		tries = d.W.Stats().MaxOpenConnections - 2 // one connection holds the lock, one watches
	}
	for n := range orders {
		o := e.order(n)
		reserve := func(int) error { return e.s.Reserve(e.ctx, o, []Line{{a, 2}, {b, 1}}) }
		var errs []error
		if pg {
			errs = raceOnLockedRow(t, e.ctx, d, a, tries, reserve)
		} else {
			errs = race(tries, reserve)
		}
		failed, first := 0, error(nil)
		for _, err := range errs {
			if err != nil {
				failed++
				first = cmp.Or(first, err)
			}
		}
		if failed > 0 {
			t.Errorf("order %d: %d of %d identical reservations in flight together failed, e.g. %v; want nil (already held is a no-op)",
				o, failed, tries, first)
		}
		if h := e.held(t, o); len(h) != 2 || h[a] != 2 || h[b] != 1 {
			t.Errorf("order %d holds %v, want {%d:2 %d:1}", o, h, a, b)
		}
	}
	e.wantLevels(t, map[int64]int64{a: 100 - 2*orders, b: 100 - orders})
}

// raceOnLockedRow (PostgreSQL) locks the stock row of sku, runs fn on n
// goroutines, waits until all n wait for that lock, then lets them go.
func raceOnLockedRow(t *testing.T, ctx context.Context, d *sqldb.DB, sku int64, n int, fn func(i int) error) []error {
	t.Helper()
	watch, err := d.W.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer watch.Close()
	tx, err := d.W.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback()
	var holder int64
	if err := tx.QueryRowContext(ctx, `SELECT pg_backend_pid()`).Scan(&holder); err != nil {
		t.Fatal(err)
	}
	if _, err := tx.ExecContext(ctx, `UPDATE stock SET qty = qty WHERE sku_id = $1`, sku); err != nil {
		t.Fatal(err)
	}
	done := make(chan []error, 1)
	go func() { done <- race(n, fn) }()
	deadline := time.Now().Add(10 * time.Second)
	for {
		waiting := waitersOf(t, ctx, watch, holder)
		if waiting >= n {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("only %d of %d transactions came to wait on the locked row", waiting, n)
		}
		time.Sleep(2 * time.Millisecond)
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	return <-done
}

func testReleaseIdempotent(t *testing.T, e env) {
	a, b := e.sku(1), e.sku(2)
	e.mustSet(t, a, 10)
	e.mustSet(t, b, 5)
	o, other := e.order(1), e.order(2)
	if err := e.s.Reserve(e.ctx, o, []Line{{a, 4}, {b, 2}}); err != nil {
		t.Fatal(err)
	}
	if err := e.s.Reserve(e.ctx, other, []Line{{a, 1}}); err != nil {
		t.Fatal(err)
	}
	if back, err := e.s.Release(e.ctx, o); err != nil || back != 6 {
		t.Fatalf("release: %d units back, %v; want 6", back, err)
	}
	e.wantLevels(t, map[int64]int64{a: 9, b: 5})
	for i := range 2 {
		if back, err := e.s.Release(e.ctx, o); err != nil || back != 0 {
			t.Errorf("release again #%d: %d units back, %v; want 0", i+1, back, err)
		}
	}
	if back, err := e.s.Release(e.ctx, e.order(99)); err != nil || back != 0 {
		t.Errorf("release of an order without a reservation: %d, %v; want 0", back, err)
	}
	e.wantLevels(t, map[int64]int64{a: 9, b: 5})
	if h := e.held(t, other); len(h) != 1 || h[a] != 1 {
		t.Errorf("another order's reservation changed to %v", h)
	}
	// Released stock can be reserved again, also under the same order id.
	if err := e.s.Reserve(e.ctx, o, []Line{{b, 5}}); err != nil {
		t.Errorf("reserve after release: %v", err)
	}
	e.wantLevels(t, map[int64]int64{b: 0})

	// Concurrent releases give the stock back once.
	o3 := e.order(3)
	if err := e.s.Reserve(e.ctx, o3, []Line{{a, 3}}); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var total int64
	errs := race(10, func(int) error {
		back, err := e.s.Release(e.ctx, o3)
		mu.Lock()
		total += back
		mu.Unlock()
		return err
	})
	for _, err := range errs {
		if err != nil {
			t.Errorf("concurrent release: %v", err)
		}
	}
	if total != 3 {
		t.Errorf("10 concurrent releases gave back %d units in all, want 3", total)
	}
	e.wantLevels(t, map[int64]int64{a: 9})
}

func testSweep(t *testing.T, e env) {
	// A service of its own whose clock stands an hour back: its
	// reservations are older than everybody else's, and its sweeps reach
	// no one else's.
	t0 := time.Now().Add(-time.Hour)
	var clock time.Time
	s := &Service{db: e.c.Main(), now: func() time.Time { return clock }}
	a := e.sku(1)
	e.mustSet(t, a, 10)
	orphan, live := e.order(1), e.order(2)
	clock = t0
	for _, o := range []int64{orphan, live} {
		if err := s.Reserve(e.ctx, o, []Line{{a, 3}}); err != nil {
			t.Fatal(err)
		}
	}
	var asked []int64
	exists := func(_ context.Context, o int64) (Fate, error) {
		asked = append(asked, o)
		if o == orphan {
			return Gone, nil
		}
		return Pending, nil
	}

	clock = t0.Add(30 * time.Second)
	if n, err := s.Sweep(e.ctx, time.Minute, exists); err != nil || n != 0 || len(asked) != 0 {
		t.Fatalf("sweep within the grace: released %d (%v), asked about %v; want nothing", n, err, asked)
	}

	clock = t0.Add(2 * time.Minute)
	failing := func(context.Context, int64) (Fate, error) { return Gone, fmt.Errorf("shard down") }
	if n, err := s.Sweep(e.ctx, time.Minute, failing); err == nil || n != 0 {
		t.Errorf("sweep with the order shard down: released %d, err %v; want 0 and the error", n, err)
	}
	e.wantLevels(t, map[int64]int64{a: 4})

	if n, err := s.Sweep(e.ctx, time.Minute, exists); err != nil || n != 1 {
		t.Fatalf("sweep after the grace: released %d (%v), want 1", n, err)
	}
	for _, o := range asked {
		if o != orphan && o != live {
			t.Errorf("sweep asked about order %d, which is not this test's", o)
		}
	}
	if h := e.held(t, orphan); len(h) != 0 {
		t.Errorf("the orphan still holds %v", h)
	}
	if h := e.held(t, live); h[a] != 3 {
		t.Errorf("the live order holds %v, want {%d:3}", h, a)
	}
	e.wantLevels(t, map[int64]int64{a: 7})
	if n, err := s.Sweep(e.ctx, time.Minute, exists); err != nil || n != 0 {
		t.Errorf("second sweep released %d (%v), want 0", n, err)
	}
	e.wantLevels(t, map[int64]int64{a: 7})
}

// testReserveRace: 100 orders at once for 30 units; each also takes a unit
// of a plentiful sku, listed first or second, so that orders lock the two
// rows in both orders of appearance.
func testReserveRace(t *testing.T, e env) {
	const buyers, stock, plenty = 100, 30, 1000
	scarce, common := e.sku(1), e.sku(2)
	e.mustSet(t, scarce, stock)
	e.mustSet(t, common, plenty)
	errs := race(buyers, func(i int) error {
		lines := []Line{{scarce, 1}, {common, 1}}
		if i%2 == 1 {
			lines[0], lines[1] = lines[1], lines[0]
		}
		return e.s.Reserve(e.ctx, e.order(i), lines)
	})
	won := 0
	for i, err := range errs {
		switch {
		case err == nil:
			won++
			if h := e.held(t, e.order(i)); len(h) != 2 || h[scarce] != 1 || h[common] != 1 {
				t.Errorf("order %d holds %v", e.order(i), h)
			}
		case errors.Is(err, ErrSoldOut):
			if h := e.held(t, e.order(i)); len(h) != 0 {
				t.Errorf("refused order %d holds %v", e.order(i), h)
			}
		default:
			t.Errorf("buyer %d: %v, want nil or ErrSoldOut", i, err)
		}
	}
	if won != stock {
		t.Errorf("%d of %d reservations succeeded on %d units, want exactly %d", won, buyers, stock, stock)
	}
	e.wantLevels(t, map[int64]int64{scarce: 0, common: plenty - stock})
	if rows, units := e.heldOf(t, scarce); rows != stock || units != stock {
		t.Errorf("%d reservation rows holding %d units of the scarce sku, want %d and %d", rows, units, stock, stock)
	}
}

// testReturnOnceRace: the stock of refunded lines comes back once per
// refund and sku, however many callers ask at once or again (a refund's
// request and its redelivered event); another refund of the same order
// returns its own lines; a sku without a level is skipped.
func testReturnOnceRace(t *testing.T, e env) {
	a, b, unlimited := e.sku(1), e.sku(2), e.sku(3)
	e.mustSet(t, a, 10)
	e.mustSet(t, b, 10)
	oid := e.order(1)
	if err := e.s.Reserve(e.ctx, oid, []Line{{a, 3}, {b, 2}}); err != nil {
		t.Fatal(err)
	}
	if err := e.s.Commit(e.ctx, oid); err != nil { // paid: a sale
		t.Fatal(err)
	}
	const refund1, refund2 = 71, 72
	var mu sync.Mutex
	var back int64
	errs := race(16, func(int) error {
		n, err := e.s.Return(e.ctx, refund1, oid, []Line{{a, 1}, {a, 1}, {unlimited, 4}})
		mu.Lock()
		back += n
		mu.Unlock()
		return err
	})
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if back != 2 {
		t.Fatalf("16 returns of refund %d gave back %d units, want 2 once", refund1, back)
	}
	if n, err := e.s.Return(e.ctx, refund2, oid, []Line{{a, 1}, {b, 2}}); err != nil || n != 3 {
		t.Fatalf("the second refund's return: %d %v, want 3", n, err)
	}
	if n, err := e.s.Return(e.ctx, refund2, oid, []Line{{a, 1}, {b, 2}}); err != nil || n != 0 {
		t.Fatalf("the second refund's return again: %d %v, want 0", n, err)
	}
	e.wantLevels(t, map[int64]int64{a: 7 + 3, b: 8 + 2})
	if m, err := e.s.Levels(e.ctx, []int64{unlimited}); err != nil || len(m) != 0 {
		t.Fatalf("a sku without a level got one: %v %v", m, err)
	}
}
