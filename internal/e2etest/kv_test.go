package e2etest

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/surge-platform/surge/internal/platform/bus/bustest"
	"github.com/surge-platform/surge/internal/platform/kv/kvtest"
)

// pullPOS is a store's POS terminal that only polls: it pulls with its
// cursor (from one fulfilment node, then the other), accepts every order
// it is shown that it has not accepted yet, and moves its cursor to the
// answer's. It counts what it was shown and what the server answered.
type pullPOS struct {
	store, key string
	mu         sync.Mutex
	cursor     string
	shown      map[string]int // order -> times shown
	accepted   map[string]int // order -> accepts answered 200
	wrong      []string       // orders of another store
	statuses   map[string]int // "<status> <code>" of pulls that were not 200
	slowest    time.Duration  // the longest pull
	paused     atomic.Bool    // the terminal is off: orders wait in the queue
}

func (p *pullPOS) run(ctx context.Context, t *testing.T, fulfil []string) {
	for i := 0; ctx.Err() == nil; i++ {
		if p.paused.Load() {
			time.Sleep(20 * time.Millisecond)
			continue
		}
		base := fulfil[i%len(fulfil)]
		p.mu.Lock()
		cursor := p.cursor
		p.mu.Unlock()
		t0 := time.Now()
		status, b, err := call(base, "GET", "/pos/v1/orders/new?cursor="+cursor, p.key, "")
		took := time.Since(t0)
		var page struct {
			Orders []struct {
				Order struct {
					OrderID string `json:"order_id"`
					StoreID string `json:"store_id"`
				} `json:"order"`
			} `json:"orders"`
			Cursor string `json:"cursor"`
			Error  struct {
				Code string `json:"code"`
			} `json:"error"`
		}
		json.Unmarshal(b, &page)
		p.mu.Lock()
		p.slowest = max(p.slowest, took)
		switch {
		case err != nil:
			p.statuses["error "+err.Error()]++
		case status != 200:
			p.statuses[strconv.Itoa(status)+" "+page.Error.Code]++
		}
		p.mu.Unlock()
		if err != nil || status != 200 {
			time.Sleep(100 * time.Millisecond)
			continue
		}
		for _, o := range page.Orders {
			p.take(t, base, o.Order.OrderID, o.Order.StoreID)
		}
		p.mu.Lock()
		p.cursor = page.Cursor
		p.mu.Unlock()
		if len(page.Orders) == 0 {
			time.Sleep(100 * time.Millisecond)
		}
	}
}

// take accepts an order shown to the POS unless it has accepted it
// already (as a real terminal keeps what it took).
func (p *pullPOS) take(t *testing.T, base, orderID, storeID string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.shown[orderID]++
	if storeID != p.store {
		p.wrong = append(p.wrong, orderID)
		return
	}
	if p.accepted[orderID] > 0 {
		return
	}
	for attempt := 0; ; attempt++ {
		status, b, err := call(base, "POST", "/pos/v1/orders/"+orderID+"/accept", p.key, "")
		if err == nil && status == 200 {
			p.accepted[orderID]++
			return
		}
		if attempt == 50 {
			t.Errorf("accept %s: %d %s %v", orderID, status, b, err)
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Redis is an accelerator, never the only copy: with PostgreSQL shards,
// NATS and two fulfilment nodes on one Redis, orders flow while Redis is
// restarted empty (no persistence) and then frozen (SIGSTOP) for 10 s.
// Every paid order reaches its store's POS and is accepted exactly once;
// no process exits; while Redis is frozen the POS pulls answer 503
// unavailable (quickly) and nothing else fails: orders are placed and paid
// throughout.
func TestRedisLostAndFrozen(t *testing.T) {
	t.Parallel()
	dbs := pgURLs(t, 2)
	redis := kvtest.StartRedis(t)
	common := []string{"--admin-token", pushAdmin, "--db", dbs[0], "--db", dbs[1], "--db-max-conns", "4",
		"--kv", redis.URL("prefix=e2e:"), "--bus", bustest.Namespaced(t, bustest.ExternalURL(t))}
	var procs []*proc
	var fulfil []string
	for i, roles := range []string{"api,worker,paysim", "fulfil", "fulfil"} {
		addr := freeAddr(t)
		// Node ids are leased in the main database: a frozen Redis does
		// not touch them.
		args := append([]string{"serve", "--roles", roles, "--addr", addr, "--data", t.TempDir()}, common...)
		if i == 0 {
			args = append(args, "--seed-demo")
		}
		procs = append(procs, start(t, addr, args...))
		if roles == "fulfil" {
			fulfil = append(fulfil, procs[i].base)
		}
	}
	front := procs[0].base
	c := &cluster{t: t, front: procs[0]}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stores := []string{"1014", "1015"}
	poss := map[string]*pullPOS{}
	var posDone sync.WaitGroup
	for _, s := range stores {
		p := &pullPOS{store: s, key: c.posKey(s), cursor: "0", shown: map[string]int{}, accepted: map[string]int{},
			statuses: map[string]int{}}
		poss[s] = p
		posDone.Go(func() { p.run(ctx, t, fulfil) })
	}

	var mu sync.Mutex
	paid := map[string]string{} // order -> store
	var failed []error
	stop := make(chan struct{})
	var customers sync.WaitGroup
	for i := range 4 {
		tok := mustLogin(t, front, fmt.Sprintf("+86139000004%02d", i))
		customers.Go(func() {
			for k := 0; ; k++ {
				select {
				case <-stop:
					return
				default:
				}
				store := stores[(i+k)%2]
				oid, err := payNew(front, tok, store)
				mu.Lock()
				if err != nil {
					failed = append(failed, err)
				} else {
					paid[oid] = store
				}
				mu.Unlock()
				time.Sleep(100 * time.Millisecond)
			}
		})
	}
	count := func() int {
		mu.Lock()
		defer mu.Unlock()
		return len(paid)
	}
	waitPaid := func(n int) {
		deadline := time.Now().Add(30 * time.Second)
		for count() < n {
			if time.Now().After(deadline) {
				t.Fatalf("only %d orders paid after 30s, want %d", count(), n)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}

	waitPaid(15)
	// The terminals go off, so that paid orders wait in the queues when
	// they are lost: only the fulfilment records have them then.
	for _, p := range poss {
		p.paused.Store(true)
	}
	waitPaid(count() + 15)
	redis.Restart() // empty: the queues and their counters are gone
	t.Logf("Redis restarted empty after %d paid orders", count())
	for _, p := range poss {
		p.paused.Store(false)
	}
	waitPaid(count() + 15)
	redis.Freeze()
	frozenAt, paidBefore := time.Now(), count()
	// readyz of a fulfilment node names kv alone.
	deadline := time.Now().Add(5 * time.Second)
	for {
		status, b, _ := call(fulfil[0], "GET", "/readyz", "", "")
		if status == 503 && bytes.Contains(b, []byte(`"failed":["kv"]`)) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("readyz with Redis frozen: %d %s; want 503 naming kv alone", status, b)
		}
		time.Sleep(100 * time.Millisecond)
	}
	time.Sleep(10*time.Second - time.Since(frozenAt)) // the freeze itself: 10 s of Redis answering nothing
	redis.Thaw()
	t.Logf("Redis frozen for %v; %d orders paid meanwhile", time.Since(frozenAt).Round(time.Millisecond), count()-paidBefore)
	if count()-paidBefore < 20 {
		t.Errorf("only %d orders paid while Redis was frozen: order creation and payment stalled", count()-paidBefore)
	}
	waitPaid(count() + 15)
	close(stop)
	customers.Wait()
	if len(failed) > 0 {
		t.Fatalf("%d orders failed to be placed or paid, first: %v", len(failed), failed[0])
	}

	deadline = time.Now().Add(60 * time.Second)
	for {
		missing := 0
		for oid, store := range paid {
			p := poss[store]
			p.mu.Lock()
			if p.accepted[oid] == 0 {
				missing++
			}
			p.mu.Unlock()
		}
		if missing == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d paid orders never reached their POS", missing, len(paid))
		}
		time.Sleep(100 * time.Millisecond)
	}
	cancel()
	posDone.Wait()

	shownTwice := 0
	for _, p := range poss {
		if len(p.wrong) > 0 {
			t.Errorf("store %s was shown orders of another store: %v", p.store, p.wrong)
		}
		for oid, n := range p.accepted {
			if paid[oid] != p.store || n != 1 {
				t.Errorf("store %s accepted order %s %d times (paid at store %q); want each of its paid orders once", p.store, oid, n, paid[oid])
			}
		}
		for _, n := range p.shown {
			if n > 1 {
				shownTwice++
			}
		}
		for s, n := range p.statuses {
			if s != "503 unavailable" {
				t.Errorf("store %s: %d pulls answered %s; only 503 unavailable is expected, while Redis is frozen", p.store, n, s)
			}
		}
		if p.statuses["503 unavailable"] == 0 {
			t.Errorf("store %s: no pull answered 503 unavailable while Redis was frozen", p.store)
		}
		if p.slowest > 3*time.Second {
			t.Errorf("store %s: a pull took %v; a frozen Redis must cost about its timeout (1 s)", p.store, p.slowest)
		}
		t.Logf("store %s: %d orders accepted, %d pulls answered 503 unavailable, slowest pull %v",
			p.store, len(p.accepted), p.statuses["503 unavailable"], p.slowest.Round(time.Millisecond))
	}
	// One order.accepted each: the store's step happened once per order.
	for oid := range paid {
		deadline := time.Now().Add(30 * time.Second)
		for {
			_, b, err := call(front, "GET", "/admin/v1/events?order_id="+oid, pushAdmin, "")
			if err == nil && bytes.Count(b, []byte(`"order.accepted"`)) == 1 {
				break
			}
			if time.Now().After(deadline) || bytes.Count(b, []byte(`"order.accepted"`)) > 1 {
				t.Fatalf("order %s: events %s %v; want one order.accepted", oid, b, err)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	for i, p := range procs {
		select {
		case err := <-p.done:
			p.done <- err
			t.Fatalf("process %d exited: %v\n%s", i, err, tail(p.out.String(), 3000))
		default:
		}
	}
	t.Logf("%d orders paid through a Redis restart and a 10 s freeze: each accepted once by its store (%d shown twice, after the rebuild)",
		len(paid), shownTwice)
}
