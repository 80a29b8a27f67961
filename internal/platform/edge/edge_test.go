package edge

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/surge-platform/surge/internal/platform/web"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// chain is the edge's steps around h as api.Server builds them, with a
// stand-in for authentication: X-User names the customer.
func chain(e *Edge, proxies []netip.Prefix, h http.Handler) http.Handler {
	fakeAuth := stepFunc(func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if u := r.Header.Get("X-User"); u != "" {
				web.InfoOf(r.Context()).UserID, _ = strconv.ParseInt(u, 10, 64)
			}
			next.ServeHTTP(w, r)
		})
	})
	return web.Chain(h, web.Trace{Log: quiet}, web.Recover{}, Classify{Proxies: proxies}, e.Admit(), e.Shed(), fakeAuth, e.Users())
}

type stepFunc func(http.Handler) http.Handler

func (f stepFunc) Wrap(next http.Handler) http.Handler { return f(next) }

var ok = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { web.JSON(w, 200, map[string]bool{"ok": true}) })

func do(h http.Handler, method, path, peer string, hdr ...string) *httptest.ResponseRecorder {
	r := httptest.NewRequest(method, path, nil)
	r.RemoteAddr = peer
	for i := 0; i+1 < len(hdr); i += 2 {
		r.Header.Set(hdr[i], hdr[i+1])
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	return w
}

func code(t *testing.T, w *httptest.ResponseRecorder) string {
	t.Helper()
	var b web.ErrBody
	json.Unmarshal(w.Body.Bytes(), &b)
	return b.Error.Code
}

func TestClassify(t *testing.T) {
	seen := web.Info{}
	h := web.Chain(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { seen = *web.InfoOf(r.Context()) }),
		web.Trace{Log: quiet}, Classify{Proxies: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}})
	for _, tc := range []struct {
		method, path string
		hdr          []string
		class        web.Class
		route        string
		write        bool
	}{
		{"GET", "/api/v1/stores/1/menu", nil, web.ClassApp, "", false},
		{"GET", "/api/v1/stores", []string{"X-Client", "mini"}, web.ClassMini, "", false},
		{"GET", "/api/v1/stores", []string{"X-Client", "pos"}, web.ClassApp, "", false}, // a customer cannot claim a staff class
		{"GET", "/api/v1/stores", []string{"User-Agent", "Mozilla/5.0 (iPhone) MicroMessenger/8.0 miniProgram"}, web.ClassMini, "", false},
		{"GET", "/api/v1/stores", []string{"User-Agent", "Mozilla/5.0 (iPhone)"}, web.ClassH5, "", false},
		{"POST", "/api/v1/orders", nil, web.ClassApp, RouteOrder, true},
		{"GET", "/api/v1/orders", nil, web.ClassApp, "", false},
		{"POST", "/api/v1/orders/42/pay", nil, web.ClassApp, RoutePay, true},
		{"POST", "/api/v1/orders/42/cancel", nil, web.ClassApp, "", true},
		{"POST", "/api/v1/coupons/7/claim", nil, web.ClassApp, RouteClaim, true},
		{"POST", "/api/v1/flash-sales/7/purchase", nil, web.ClassApp, RouteFlash, true},
		{"GET", "/pos/v1/orders/new", nil, web.ClassPOS, "", false},
		{"GET", "/pos/v1/ws", nil, web.ClassPOS, "", false},
		{"POST", "/pay/v1/notify/wechatpay", nil, web.ClassCallback, "", true},
		{"GET", "/admin/v1/cluster", nil, web.ClassAdmin, "", false},
		{"GET", "/debug/pprof/", nil, web.ClassAdmin, "", false},
		{"GET", "/healthz", nil, web.ClassOps, "", false},
		{"POST", "/paysim/v1/wechatpay/pay/wx1", nil, web.ClassOps, "", true},
		{"POST", "/v3/pay/transactions/h5", nil, web.ClassOps, "", true},
	} {
		do(h, tc.method, tc.path, "192.0.2.1:5000", tc.hdr...)
		if seen.Class != tc.class || seen.Route != tc.route || seen.Write != tc.write {
			t.Errorf("%s %s %v: class %v route %q write %v, want %v %q %v", tc.method, tc.path, tc.hdr,
				seen.Class, seen.Route, seen.Write, tc.class, tc.route, tc.write)
		}
	}
	for _, tc := range []struct {
		peer string
		hdr  []string
		want string
	}{
		{"192.0.2.1:5000", []string{"X-Forwarded-For", "198.51.100.7"}, "192.0.2.1"},                          // not a proxy of ours: header ignored
		{"10.1.2.3:5000", []string{"X-Forwarded-For", "198.51.100.7"}, "198.51.100.7"},                        // nginx says who
		{"10.1.2.3:5000", []string{"X-Forwarded-For", "203.0.113.9, 198.51.100.7"}, "198.51.100.7"},           // the left entry is the client's to forge
		{"10.1.2.3:5000", []string{"X-Forwarded-For", "203.0.113.9, 198.51.100.7, 10.9.9.9"}, "198.51.100.7"}, // two of our proxies
		{"10.1.2.3:5000", []string{"X-Real-IP", "198.51.100.8"}, "198.51.100.8"},
		{"10.1.2.3:5000", []string{"X-Forwarded-For", "garbage"}, "10.1.2.3"},
		{"[::ffff:192.0.2.5]:80", nil, "192.0.2.5"},
	} {
		do(h, "GET", "/api/v1/stores", tc.peer, tc.hdr...)
		if seen.IP.String() != tc.want {
			t.Errorf("peer %s %v: client %v, want %s", tc.peer, tc.hdr, seen.IP, tc.want)
		}
	}
}

// TestPerIPLimit: the burst passes, then 429 rate_limited with
// Retry-After; another address, loopback and POS terminals are not held.
func TestPerIPLimit(t *testing.T) {
	e := New(Config{IPRPS: 5}, nil, nil)
	now := time.Unix(1000, 0)
	e.now = func() time.Time { return now }
	h := chain(e, nil, ok)
	passed := 0
	for range 30 {
		w := do(h, "GET", "/api/v1/stores", "192.0.2.1:1")
		switch w.Code {
		case 200:
			passed++
		case 429:
			if code(t, w) != "rate_limited" || w.Header().Get("Retry-After") != "1" {
				t.Fatalf("refusal: %s %q", w.Body, w.Header().Get("Retry-After"))
			}
		default:
			t.Fatalf("status %d", w.Code)
		}
	}
	if passed != 10 { // burst 2 x 5
		t.Fatalf("%d passed, want the burst of 10", passed)
	}
	for _, peer := range []string{"192.0.2.2:1", "127.0.0.1:1", "[::1]:1"} {
		if w := do(h, "GET", "/api/v1/stores", peer); w.Code != 200 {
			t.Errorf("%s: %d", peer, w.Code)
		}
	}
	if w := do(h, "GET", "/pos/v1/orders/new", "192.0.2.1:1"); w.Code != 200 {
		t.Errorf("POS from the limited address: %d", w.Code)
	}
	now = now.Add(time.Second) // 5 more tokens
	for i := range 6 {
		w := do(h, "GET", "/api/v1/stores", "192.0.2.1:1")
		if want := 200 + 229*btoi(i == 5); w.Code != want {
			t.Fatalf("after a second, request %d: %d, want %d", i, w.Code, want)
		}
	}
	st := e.Stats()["classes"].(map[string]ClassStats)
	if st["app"].Limited != 21 || st["pos"].Passed != 1 {
		t.Fatalf("stats %+v", st)
	}
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

type fakeCap struct{ allow atomic.Bool }

type countingCap struct {
	fakeCap
	asked atomic.Int64
}

func (c *countingCap) Allow(now time.Time) (bool, time.Duration) {
	c.asked.Add(1)
	return c.fakeCap.Allow(now)
}

func (c *fakeCap) Allow(time.Time) (bool, time.Duration) {
	return c.allow.Load(), 2500 * time.Millisecond
}

// TestClusterCap: over the cap, customers get 429 cluster_busy with the
// cap's Retry-After; operators (running the incident), POS, callbacks and
// probes pass. A client over its per-IP limit does not spend the cap.
func TestClusterCap(t *testing.T) {
	cp := &countingCap{}
	h := chain(New(Config{IPRPS: 1}, cp, nil), nil, ok)
	w := do(h, "GET", "/api/v1/stores", "192.0.2.1:1")
	if w.Code != 429 || code(t, w) != "cluster_busy" || w.Header().Get("Retry-After") != "3" {
		t.Errorf("customer over the cap: %d %s %q", w.Code, w.Body, w.Header().Get("Retry-After"))
	}
	asked := cp.asked.Load()
	for range 10 { // the address's burst of 2 is spent after 1 more: the rest never reach the cap
		do(h, "GET", "/api/v1/stores", "192.0.2.1:1")
	}
	if n := cp.asked.Load() - asked; n != 1 {
		t.Errorf("10 requests of a client over its limit asked the cap %d times, want 1", n)
	}
	for _, path := range []string{"/admin/v1/cluster", "/pos/v1/orders/new", "/pay/v1/notify/wechatpay", "/healthz"} {
		if w := do(h, "GET", path, "192.0.2.1:1"); w.Code != 200 {
			t.Errorf("%s: %d", path, w.Code)
		}
	}
	cp.allow.Store(true)
	if w := do(h, "GET", "/api/v1/stores", "192.0.2.2:1"); w.Code != 200 {
		t.Errorf("under the cap: %d", w.Code)
	}
}

// TestPerUserAndRouteLimits: a customer's own limit and the expensive
// route's, each counted per customer.
func TestPerUserAndRouteLimits(t *testing.T) {
	e := New(Config{UserRPS: 10, RouteRPS: map[string]float64{RouteOrder: 1}}, nil, nil)
	now := time.Unix(1000, 0)
	e.now = func() time.Time { return now }
	h := chain(e, nil, ok)
	count := func(method, path, user string, n int) (passed int) {
		for range n {
			if w := do(h, method, path, "127.0.0.1:1", "X-User", user); w.Code == 200 {
				passed++
			} else if w.Code != 429 || code(t, w) != "rate_limited" {
				t.Fatalf("%d %s", w.Code, w.Body)
			}
		}
		return passed
	}
	if n := count("POST", "/api/v1/orders", "7", 5); n != 2 {
		t.Fatalf("orders: %d passed, want the route's burst of 2", n)
	}
	if n := count("POST", "/api/v1/orders", "8", 5); n != 2 {
		t.Fatalf("another customer's orders: %d passed, want 2", n)
	}
	// user 7 has spent 5 of 20 on the user limit; reads are not the route's
	if n := count("GET", "/api/v1/orders", "7", 20); n != 15 {
		t.Fatalf("reads: %d passed, want the 15 left of the user's burst", n)
	}
	if n := count("GET", "/api/v1/stores", "", 50); n != 50 {
		t.Fatalf("anonymous reads: %d passed (no user limit applies)", n)
	}
}

// TestInflightCaps: the hard cap's shares keep room for the other
// classes: customers flooding a node leave POS terminals and callbacks
// served, operators cannot take more than their tenth.
func TestInflightCaps(t *testing.T) {
	e := New(Config{MaxInflight: 20}, nil, nil)
	release := make(chan struct{})
	var entered sync.WaitGroup
	blocking := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("X-Block") != "" {
			entered.Done()
			<-release
		}
		web.JSON(w, 200, nil)
	})
	h := chain(e, nil, blocking)
	hold := func(path, client string, n int) {
		entered.Add(n)
		for range n {
			go do(h, "GET", path, "192.0.2.1:1", "X-Block", "1", "X-Client", client)
		}
		entered.Wait()
	}
	hold("/api/v1/stores", "app", 10) // app's share: 50% of 20
	if w := do(h, "GET", "/api/v1/stores", "192.0.2.1:1"); w.Code != 503 || code(t, w) != "overloaded" || w.Header().Get("Retry-After") != "1" {
		t.Fatalf("app over its share: %d %s", w.Code, w.Body)
	}
	hold("/api/v1/stores", "h5", 4) // customers together: 70% = 14
	if w := do(h, "GET", "/api/v1/stores", "192.0.2.1:1", "X-Client", "mini"); w.Code != 503 {
		t.Fatalf("customers over their 70%%: %d", w.Code)
	}
	hold("/admin/v1/x", "", 2) // operators: 10% = 2
	if w := do(h, "GET", "/admin/v1/x", "192.0.2.1:1"); w.Code != 503 {
		t.Fatalf("operators over their tenth: %d", w.Code)
	}
	for _, path := range []string{"/pos/v1/orders/new", "/pay/v1/notify/wechatpay", "/healthz"} {
		if w := do(h, "GET", path, "192.0.2.1:1"); w.Code != 200 {
			t.Fatalf("%s under a customer flood: %d", path, w.Code)
		}
	}
	hold("/pos/v1/orders/new", "", 4) // 16 + 4 = the whole cap
	if w := do(h, "GET", "/pay/v1/notify/wechatpay", "192.0.2.1:1"); w.Code != 503 {
		t.Fatalf("over the whole cap: %d", w.Code)
	}
	if w := do(h, "GET", "/healthz", "192.0.2.1:1"); w.Code != 200 {
		t.Fatalf("probes are never refused: %d", w.Code)
	}
	close(release)
	eventuallyZero(t, e)
	if w := do(h, "GET", "/api/v1/stores", "192.0.2.1:1"); w.Code != 200 {
		t.Fatalf("after the flood: %d", w.Code)
	}
}

func eventuallyZero(t *testing.T, e *Edge) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); e.shed.inflight.Load() != 0; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("in flight: %d", e.shed.inflight.Load())
		}
	}
}

// TestAdaptiveShedding: while the node is overloaded (CPU hot, or
// goroutines waiting for a core), customers' requests beyond what the node
// has shown it carries wait for a place, briefly, and are then refused;
// writes get half again more room; POS terminals and callbacks never wait;
// while it is not, nothing waits.
func TestAdaptiveShedding(t *testing.T) {
	e := New(Config{Shed: ShedBBR}, nil, nil)
	sh := e.shed
	var cpu, wait atomic.Int64 // per mille; µs
	cpu.Store(500)
	sh.usage = func(time.Time) float64 { return float64(cpu.Load()) / 1000 }
	sh.waited = func() time.Duration { return time.Duration(wait.Load()) * time.Microsecond }
	sh.busyNow = func(int64) float64 { return 0 } // no early refusals here (TestEarlyRefusals)
	// A measured past: 100 requests per 100 ms bucket at 20 ms each ->
	// 1,000/s x 0.02 s = 20 in flight; the gate's limit is half again: 30
	// reads, 45 with writes.
	now := time.Now()
	for i := 1; i <= 10; i++ {
		t0 := now.Add(-time.Duration(i) * bucketDur).UnixNano()
		b := &sh.win[t0/int64(bucketDur)%buckets]
		*b = bucket{start: t0 - t0%int64(bucketDur), pass: 100, rtSum: 100 * int64(20*time.Millisecond)}
	}
	if l := sh.limit(now); l != 20 {
		t.Fatalf("limit %d, want 20", l)
	}
	release := make(chan struct{})
	var entered sync.WaitGroup
	h := chain(e, nil, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("X-Block") != "" {
			entered.Done()
			<-release
		}
		web.JSON(w, 200, nil)
	}))
	hold := func(method, path string, n int) {
		entered.Add(n)
		for range n {
			go do(h, method, path, "192.0.2.1:1", "X-Block", "1")
		}
		entered.Wait()
	}
	hold("GET", "/api/v1/stores", 40) // past the limit, but the node is not overloaded: all enter
	refusedAfterWait := func(what, method, path string) {
		t.Helper()
		t0 := time.Now()
		w := do(h, method, path, "192.0.2.1:1")
		took := time.Since(t0)
		if w.Code != 503 || code(t, w) != "overloaded" {
			t.Fatalf("%s: %d %s, want 503 overloaded", what, w.Code, w.Body)
		}
		if took < 70*time.Millisecond || took > time.Second { // 4 x the lowest latency, 20 ms
			t.Fatalf("%s refused after %v, want after its wait of ~80 ms", what, took)
		}
	}
	wait.Store(50_000)               // goroutines wait for a core, the process's CPU is not hot: other processes take the cores
	hold("GET", "/api/v1/stores", 1) // enters: 41 in flight
	cpu.Store(950)
	wait.Store(0)
	refusedAfterWait("a read past the limit", "GET", "/api/v1/stores")
	hold("POST", "/api/v1/orders", 4) // writes go to 45
	refusedAfterWait("a write past half again the limit", "POST", "/api/v1/orders")
	for _, path := range []string{"/pos/v1/orders/new", "/pay/v1/notify/wechatpay", "/healthz"} {
		if w := do(h, "GET", path, "192.0.2.1:1"); w.Code != 200 {
			t.Fatalf("%s while customers wait: %d", path, w.Code)
		}
	}
	// A read waiting when a place frees gets it.
	got := make(chan int, 1)
	go func() { got <- do(h, "GET", "/api/v1/stores", "192.0.2.1:1").Code }()
	for deadline := time.Now().Add(5 * time.Second); sh.gate.queued() == 0; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the read did not wait (answered %d)", <-got)
		}
	}
	cpu.Store(100) // the limit lifts with the overload: every waiter goes
	sh.dropped.Store(0)
	close(release)
	if c := <-got; c != 200 {
		t.Fatalf("a waiting read when places freed: %d", c)
	}
	eventuallyZero(t, e)
	if st := e.Stats()["classes"].(map[string]ClassStats)["app"]; st.Shed != 2 {
		t.Fatalf("app shed %d, want 2", st.Shed)
	}
}

// TestEarlyRefusals: the chance of refusing a customer's request as it
// arrives rises while the process is busy and its goroutines wait for a
// core, and falls back to 0 when they stop waiting or the CPU is not busy;
// reads are refused with it, writes with half of it, POS terminals and
// callbacks never.
func TestEarlyRefusals(t *testing.T) {
	e := New(Config{Shed: ShedBBR}, nil, nil)
	sh := e.shed
	var busy, wait atomic.Int64 // per mille; µs
	sh.usage = func(time.Time) float64 { return 0 }
	sh.busyNow = func(int64) float64 { return float64(busy.Load()) / 1000 }
	sh.waited = func() time.Duration { return time.Duration(wait.Load()) * time.Microsecond }
	step := func() float64 { sh.pNext.Store(time.Now().UnixNano()); return sh.dropP() } // one period has passed
	busy.Store(950)
	wait.Store(700)
	if p := step(); p != 0 {
		t.Fatalf("p %.2f with short waits", p)
	}
	wait.Store(2000)
	p1 := step()
	p2 := step()
	if p1 <= 0 || p2 <= p1 {
		t.Fatalf("p %.2f then %.2f with waits of 2 ms: want rising", p1, p2)
	}
	wait.Store(10_000)
	if p := step(); p < 0.5 {
		t.Fatalf("p %.2f with waits of 10 ms: want at least 0.5 at once", p)
	}
	for range 10 {
		step()
	}
	if p := step(); p != 0.99 {
		t.Fatalf("p %.2f after a second of long waits, want 0.99", p)
	}
	// Frozen at 0.99: a read is refused 99 times in 100, a write about half
	// as often, a POS request or a callback never.
	sh.pNext.Store(math.MaxInt64)
	h := chain(e, nil, ok)
	count := func(method, path string) (refused int) {
		for range 1000 {
			if w := do(h, method, path, "192.0.2.1:1"); w.Code == 503 {
				refused++
			} else if w.Code != 200 {
				t.Fatalf("%s %s: %d", method, path, w.Code)
			}
		}
		return refused
	}
	if n := count("GET", "/api/v1/stores"); n < 950 {
		t.Fatalf("%d reads of 1000 refused, want ~990", n)
	}
	if n := count("POST", "/api/v1/orders"); n < 400 || n > 600 {
		t.Fatalf("%d writes of 1000 refused, want ~495", n)
	}
	for _, path := range []string{"/pos/v1/orders/new", "/pay/v1/notify/wechatpay"} {
		if n := count("GET", path); n != 0 {
			t.Fatalf("%s: %d refused", path, n)
		}
	}
	// No request for a second after the overload: the next one finds the
	// chance decayed as if updated all along, not stale.
	wait.Store(700) // neither rise nor decay of its own
	sh.pNext.Store(time.Now().Add(-time.Second).UnixNano())
	if p := sh.dropP(); p > 0.01 {
		t.Fatalf("p %.3f after a second without requests, want 0.99 halved ten times", p)
	}
	wait.Store(10_000)
	for range 12 {
		step()
	}
	// The CPU no longer busy: it falls to 0 within half a second.
	busy.Store(300)
	for range 5 {
		step()
	}
	if p := step(); p != 0 {
		t.Fatalf("p %.2f after half a second with the CPU at 30%%", p)
	}
	busy.Store(950) // busy again, waits short: it stays at 0
	wait.Store(100)
	if p := step(); p != 0 {
		t.Fatalf("p %.2f with short waits", p)
	}
}

// TestGate: places up to the limit; then waiters, parked, served newest
// first, writes before reads; a waiter past its wait, or whose client
// went away, or pushed out of a full stack, is refused; without a limit
// everyone enters.
func TestGate(t *testing.T) {
	var g gate
	ctx := context.Background()
	for range 2 {
		if !g.acquire(ctx, false, 2, time.Millisecond) {
			t.Fatal("refused under the limit")
		}
	}
	if g.acquire(ctx, false, 2, 10*time.Millisecond) {
		t.Fatal("a read past the limit entered")
	}
	if !g.acquire(ctx, true, 2, time.Millisecond) { // writes: half again, 3
		t.Fatal("a write refused under half again the limit")
	}
	order := make(chan string, 3)
	start := func(name string, write bool, queued int) {
		go func() {
			if g.acquire(ctx, write, 2, 5*time.Second) {
				order <- name
			} else {
				order <- "refused " + name
			}
		}()
		for g.queued() != queued {
			time.Sleep(time.Millisecond)
		}
	}
	start("old read", false, 1)
	start("new read", false, 2)
	start("write", true, 3)
	g.release(2) // 2 in use: the write may go to 3, a read not
	if got := <-order; got != "write" {
		t.Fatalf("first served: %s, want the write", got)
	}
	g.release(2)
	g.release(2) // 1 in use: one read
	if got := <-order; got != "new read" {
		t.Fatalf("then %s, want the newest read", got)
	}
	cctx, cancel := context.WithCancel(ctx)
	done := make(chan bool)
	go func() { done <- g.acquire(cctx, false, 2, 5*time.Second) }()
	for g.queued() != 2 {
		time.Sleep(time.Millisecond)
	}
	cancel()
	if <-done {
		t.Fatal("a waiter whose client went away entered")
	}
	if !g.acquire(ctx, false, 0, 0) {
		t.Fatal("refused without a limit")
	}
	g.release(0) // no limit: the old read goes too
	if got := <-order; got != "old read" {
		t.Fatalf("without a limit: %s", got)
	}
	// A full stack pushes its oldest out.
	var g2 gate
	g2.used.Store(1)
	refused := make(chan int, maxQueue+1)
	for i := range maxQueue + 1 {
		go func() {
			if !g2.acquire(ctx, false, 1, 5*time.Second) {
				refused <- i
			}
		}()
		for g2.queued() < min(i+1, maxQueue) {
			time.Sleep(100 * time.Microsecond)
		}
	}
	if got := <-refused; got != 0 {
		t.Fatalf("pushed out: waiter %d, want the oldest (0)", got)
	}
	g2.release(0)
	if len(refused) != 0 {
		t.Fatalf("%d more refused", len(refused))
	}
}

// TestLimitListener: connections over the cap get a 503 and are closed;
// a closed one frees its place.
func TestLimitListener(t *testing.T) {
	srv := httptest.NewUnstartedServer(ok)
	ll := LimitListener(srv.Listener, 2)
	srv.Listener = ll
	srv.Start()
	defer srv.Close()
	c1, c2 := &http.Client{Transport: &http.Transport{}}, &http.Client{Transport: &http.Transport{}}
	for _, c := range []*http.Client{c1, c2} { // each keeps its connection open
		resp, err := c.Get(srv.URL)
		if err != nil || resp.StatusCode != 200 {
			t.Fatal(err, resp)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	// Over the cap: the answer comes at once, before any request (an HTTP
	// client may see it as a broken connection instead; read it raw).
	raw, err := net.Dial("tcp", srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	raw.SetDeadline(time.Now().Add(5 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(raw), nil)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	raw.Close()
	if resp.StatusCode != 503 || resp.Header.Get("Retry-After") != "1" || !json.Valid(body) {
		t.Fatalf("over the cap: %d %q %s", resp.StatusCode, resp.Header.Get("Retry-After"), body)
	}
	c3 := &http.Client{Transport: &http.Transport{}}
	c1.Transport.(*http.Transport).CloseIdleConnections()
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if open, _ := ll.Open(); open < 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("a closed connection kept its place")
		}
	}
	resp, err = c3.Get(srv.URL)
	if err != nil || resp.StatusCode != 200 {
		t.Fatal(err, resp)
	}
	resp.Body.Close()
	if _, refused := ll.Open(); refused != 1 {
		t.Fatalf("refused %d", refused)
	}
}

// TestStepsAllocateNothing: the edge's steps add no allocation to a
// request that passes them (the chain's one allocation is Trace's).
func TestStepsAllocateNothing(t *testing.T) {
	e := New(Config{IPRPS: 1e9, UserRPS: 1e9, RouteRPS: map[string]float64{RouteOrder: 1e9}, MaxInflight: 1 << 20, Shed: ShedBBR}, &fakeCap{}, nil)
	e.cap.(*fakeCap).allow.Store(true)
	noop := http.HandlerFunc(func(http.ResponseWriter, *http.Request) {})
	base := web.Chain(noop, web.Trace{Log: quiet})
	full := chain(e, nil, noop)
	r := httptest.NewRequest("POST", "/api/v1/orders", nil)
	r.RemoteAddr = "192.0.2.1:1"
	r.Header.Set("X-User", "7")
	w := httptest.NewRecorder()
	a0 := testing.AllocsPerRun(1000, func() { base.ServeHTTP(w, r) })
	a1 := testing.AllocsPerRun(1000, func() { full.ServeHTTP(w, r) })
	if a1 > a0 {
		t.Fatalf("the edge's steps allocate: %.1f allocations a request, %.1f without them", a1, a0)
	}
}

// BenchmarkSteps is the cost of the edge's steps on a request that passes
// them all (every limit on), over the chain without them.
func BenchmarkSteps(b *testing.B) {
	e := New(Config{IPRPS: 1e9, UserRPS: 1e9, RouteRPS: map[string]float64{RouteOrder: 1e9}, MaxInflight: 1 << 20, Shed: ShedBBR}, nil, nil)
	noop := http.HandlerFunc(func(http.ResponseWriter, *http.Request) {})
	for _, bc := range []struct {
		name string
		h    http.Handler
	}{{"trace-only", web.Chain(noop, web.Trace{Log: quiet})}, {"edge", chain(e, nil, noop)}} {
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				r := httptest.NewRequest("POST", "/api/v1/orders", nil)
				r.RemoteAddr = "192.0.2.1:1"
				r.Header.Set("X-User", "7")
				w := httptest.NewRecorder()
				for pb.Next() {
					bc.h.ServeHTTP(w, r)
				}
			})
		})
	}
}
