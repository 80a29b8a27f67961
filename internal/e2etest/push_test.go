package e2etest

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/surge-platform/surge/internal/eventually"
	"github.com/surge-platform/surge/internal/platform/bus/bustest"
	"github.com/surge-platform/surge/internal/push/pushtest"
)

// cluster is the distributed topology of the push tests: a front (api,
// worker, paysim), a fulfilment process and two push nodes, all on
// PostgreSQL x2, Redis and an external NATS.
type cluster struct {
	t                   *testing.T
	mu                  sync.Mutex // guards the proc fields, replaced by restart
	front, fulfil, a, b *proc
	args                map[string][]string // per process, to restart it on its address
}

// url returns the base URL of the named process (the address stays across
// restarts).
func (c *cluster) url(name string) string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return map[string]*proc{"front": c.front, "fulfil": c.fulfil, "a": c.a, "b": c.b}[name].base
}

const pushAdmin = "e2e-admin"

func startCluster(t *testing.T) *cluster {
	t.Helper()
	dbs := pgURLs(t, 2)
	common := []string{"--admin-token", pushAdmin, "--db", dbs[0], "--db", dbs[1], "--db-max-conns", "4", "--kv", redisURL(t),
		"--bus", bustest.Namespaced(t, bustest.ExternalURL(t)), "--ws-ping", "2s"}
	c := &cluster{t: t, args: map[string][]string{}}
	for _, r := range []struct {
		name, roles string
		p           **proc
	}{{"front", "api,worker,paysim", &c.front}, {"fulfil", "fulfil", &c.fulfil}, {"a", "push", &c.a}, {"b", "push", &c.b}} {
		addr := freeAddr(t)
		args := append([]string{"serve", "--roles", r.roles, "--addr", addr, "--data", t.TempDir()}, common...)
		if r.name == "front" {
			args = append(args, "--seed-demo")
		}
		c.args[r.name] = args
		*r.p = start(t, addr, args...)
	}
	return c
}

// restart kills p with SIGKILL and starts the same process again.
func (c *cluster) restart(name string, p **proc, down time.Duration) {
	c.t.Helper()
	c.mu.Lock()
	old := *p
	c.mu.Unlock()
	killNine(c.t, old)
	time.Sleep(down)
	np := start(c.t, old.base[len("http://"):], c.args[name]...)
	c.mu.Lock()
	*p = np
	c.mu.Unlock()
}

func (c *cluster) posKey(store string) string {
	c.t.Helper()
	_, b, _ := call(c.front.base, "GET", "/admin/v1/stores/"+store, pushAdmin, "")
	var st struct {
		POSKey string `json:"pos_key"`
	}
	json.Unmarshal(b, &st)
	if st.POSKey == "" {
		c.t.Fatalf("no POS key for %s: %s", store, b)
	}
	return st.POSKey
}

// payNew places an order of one item and pays it at the simulator.
func payNew(base, token, store string) (string, error) {
	status, b, err := call(base, "POST", "/api/v1/orders", token, `{"store_id":"`+store+`","items":[{"sku_id":"`+store+`010","qty":1}]}`)
	var o struct {
		OrderID string `json:"order_id"`
	}
	json.Unmarshal(b, &o)
	if err != nil || status != 201 {
		return "", fmt.Errorf("order: %d %s %v", status, b, err)
	}
	status, b, err = call(base, "POST", "/api/v1/orders/"+o.OrderID+"/pay", token, `{"channel":"wechatpay"}`)
	var p struct {
		PayURL string `json:"pay_url"`
	}
	json.Unmarshal(b, &p)
	if err != nil || status != 201 {
		return "", fmt.Errorf("pay: %d %s %v", status, b, err)
	}
	res, err := http.Post(p.PayURL, "", nil)
	if err != nil {
		return "", err
	}
	res.Body.Close()
	if res.StatusCode != 200 {
		return "", fmt.Errorf("payer pays: %d", res.StatusCode)
	}
	return o.OrderID, nil
}

func dialWS(t *testing.T, base, path, token, query string) *pushtest.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := pushtest.Dial(ctx, base, path, token, query)
	if err != nil {
		t.Fatalf("dial %s%s: %v", base, path, err)
	}
	t.Cleanup(func() { c.WS.CloseNow() })
	if _, _, err := c.Until(10*time.Second, func(m pushtest.Msg) bool { return m.Type == "hello" }); err != nil {
		t.Fatalf("hello on %s: %v", path, err)
	}
	return c
}

// The seed's main flow with real processes: the POS socket is on one push
// node, the customer's on another; the order is paid at the simulator, the
// POS gets it on its socket, accepts, and the customer's socket gets the
// pickup code. Then with both push nodes down: the POS's poll and the
// customer's read still get there, and the customer's socket, back, replays
// what it missed.
func TestPushAcrossNodes(t *testing.T) {
	t.Parallel()
	c := startCluster(t)
	tok := mustLogin(t, c.front.base, "+8613900000201")
	key := c.posKey("1011")
	pos := dialWS(t, c.a.base, "/pos/v1/ws", key, "")
	cust := dialWS(t, c.b.base, "/api/v1/ws", tok, "")

	oid, err := payNew(c.front.base, tok, "1011")
	if err != nil {
		t.Fatal(err)
	}
	m, _, err := pos.Until(15*time.Second, func(m pushtest.Msg) bool { return m.Type == "order.new" })
	if err != nil || m.Order.OrderID != oid || m.Order.StoreID != "1011" {
		t.Fatalf("POS socket: %s %v; want order %s", m.Raw, err, oid)
	}
	status, b, err := call(c.fulfil.base, "POST", "/pos/v1/orders/"+oid+"/accept", key, "")
	var acc struct {
		PickupCode string `json:"pickup_code"`
	}
	json.Unmarshal(b, &acc)
	if err != nil || status != 200 {
		t.Fatalf("accept: %d %s %v", status, b, err)
	}
	got, _, err := cust.Until(15*time.Second, func(m pushtest.Msg) bool { return m.Type == "order.accepted" })
	if err != nil || got.OrderID != oid || got.PickupCode != acc.PickupCode {
		t.Fatalf("customer socket: %s %v; want order %s code %s", got.Raw, err, oid, acc.PickupCode)
	}

	// Push down: the POS polls, the customer reads.
	killNine(t, c.a)
	killNine(t, c.b)
	oid2, err := payNew(c.front.base, tok, "1011")
	if err != nil {
		t.Fatal(err)
	}
	var code2 string
	deadline := time.Now().Add(15 * time.Second)
	for code2 == "" {
		_, b, _ := call(c.fulfil.base, "GET", "/pos/v1/orders/new?cursor="+m.Seq.String(), key, "")
		var page struct {
			Orders []struct {
				Order struct {
					OrderID string `json:"order_id"`
				} `json:"order"`
			} `json:"orders"`
		}
		json.Unmarshal(b, &page)
		if len(page.Orders) == 1 && page.Orders[0].Order.OrderID == oid2 {
			_, b, _ := call(c.fulfil.base, "POST", "/pos/v1/orders/"+oid2+"/accept", key, "")
			json.Unmarshal(b, &acc)
			code2 = acc.PickupCode
		}
		if time.Now().After(deadline) {
			t.Fatalf("the POS's poll never got order %s: %s", oid2, b)
		}
		time.Sleep(50 * time.Millisecond)
	}
	deadline = time.Now().Add(15 * time.Second)
	for {
		_, b, _ := call(c.front.base, "GET", "/api/v1/orders/"+oid2, tok, "")
		var o struct {
			Status     string `json:"status"`
			PickupCode string `json:"pickup_code"`
		}
		json.Unmarshal(b, &o)
		if o.Status == "accepted" && o.PickupCode == code2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the customer's read: %s; want accepted with code %s", b, code2)
		}
		time.Sleep(50 * time.Millisecond)
	}

	// The customer's push node comes back (and with it the routing of the
	// events made while no push node ran); resuming from the last event seen
	// gets the second order's events, replayed or live.
	c.b = start(t, c.b.base[len("http://"):], c.args["b"]...)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	r, err := pushtest.Dial(ctx, c.b.base, "/api/v1/ws", tok, "last_event_id="+got.ID)
	if err != nil {
		t.Fatal(err)
	}
	defer r.WS.CloseNow()
	// Routed from a backlog, the two may come in either order (each carries
	// the order's status; docs/api.md).
	missed := map[string]pushtest.Msg{}
	_, _, err = r.Until(15*time.Second, func(m pushtest.Msg) bool {
		if m.Type != "hello" {
			missed[m.Type+" "+m.OrderID] = m
		}
		return len(missed) == 2
	})
	if err != nil || missed["order.paid "+oid2].Status != "paid" || missed["order.accepted "+oid2].PickupCode != code2 {
		t.Fatalf("resumed after %s: %v %v; want order %s paid and accepted with %s", got.ID, missed, err, oid2, code2)
	}
}

// posSim is a store's POS terminal: it takes new orders from its socket
// (reconnecting with its cursor) and from a poll of the pull API (the
// seed's 60 s poll, made every 500 ms here), accepts each, then
// acknowledges it.
type posSim struct {
	store, key string
	mu         sync.Mutex
	cursor     int64
	codes      map[string]string // order -> pickup code
	wrong      []string          // orders of another store
}

func (p *posSim) take(fulfilBase, orderID, storeID string, seq int64) {
	if storeID != p.store {
		p.mu.Lock()
		p.wrong = append(p.wrong, orderID)
		p.mu.Unlock()
		return
	}
	for {
		status, b, err := call(fulfilBase, "POST", "/pos/v1/orders/"+orderID+"/accept", p.key, "")
		if err == nil && status == 200 {
			var acc struct {
				PickupCode string `json:"pickup_code"`
			}
			json.Unmarshal(b, &acc)
			p.mu.Lock()
			p.codes[orderID] = acc.PickupCode
			p.cursor = max(p.cursor, seq)
			p.mu.Unlock()
			return
		}
		time.Sleep(100 * time.Millisecond) // the fulfilment role may be down
	}
}

func (p *posSim) run(ctx context.Context, c *cluster) {
	go func() { // the poll
		for ctx.Err() == nil {
			p.mu.Lock()
			cur := p.cursor
			p.mu.Unlock()
			_, b, err := call(c.url("fulfil"), "GET", "/pos/v1/orders/new?cursor="+strconv.FormatInt(cur, 10), p.key, "")
			var page struct {
				Orders []struct {
					Seq   int64 `json:"seq"`
					Order struct {
						OrderID string `json:"order_id"`
						StoreID string `json:"store_id"`
					} `json:"order"`
				} `json:"orders"`
			}
			if err == nil && json.Unmarshal(b, &page) == nil {
				for _, o := range page.Orders {
					p.take(c.url("fulfil"), o.Order.OrderID, o.Order.StoreID, o.Seq)
				}
			}
			time.Sleep(500 * time.Millisecond)
		}
	}()
	for ctx.Err() == nil { // the socket
		p.mu.Lock()
		cur := p.cursor
		p.mu.Unlock()
		ws, err := pushtest.Dial(ctx, c.url("a"), "/pos/v1/ws", p.key, "cursor="+strconv.FormatInt(cur, 10))
		if err != nil {
			time.Sleep(100 * time.Millisecond)
			continue
		}
		for {
			m, err := ws.Next(ctx)
			if err != nil {
				break
			}
			if m.Type == "order.new" {
				seq, _ := m.Seq.Int64()
				p.take(c.url("fulfil"), m.Order.OrderID, m.Order.StoreID, seq)
				ws.Send(ctx, map[string]string{"type": "ack", "cursor": m.Seq.String()})
			}
		}
		ws.WS.CloseNow()
	}
}

// custSim is a customer's app: a socket that reconnects with the last
// event id it saw and records the pickup codes it is told.
type custSim struct {
	token   string
	mu      sync.Mutex
	last    string
	codes   map[string]string
	resyncs int
}

func (u *custSim) run(ctx context.Context, c *cluster) {
	for ctx.Err() == nil {
		u.mu.Lock()
		q := ""
		if u.last != "" {
			q = "last_event_id=" + u.last
		}
		u.mu.Unlock()
		ws, err := pushtest.Dial(ctx, c.url("b"), "/api/v1/ws", u.token, q)
		if err != nil {
			time.Sleep(100 * time.Millisecond)
			continue
		}
		for {
			m, err := ws.Next(ctx)
			if err != nil {
				break
			}
			u.mu.Lock()
			if m.ID != "" {
				u.last = m.ID
			}
			if m.Type == "resync" {
				u.resyncs++
			}
			if m.Type == "order.accepted" {
				u.codes[m.OrderID] = m.PickupCode
			}
			u.mu.Unlock()
		}
		ws.WS.CloseNow()
	}
}

// Kill -9 of the fulfilment role and of each push node in the middle of a
// stream of orders: no order is lost or delivered to another store, and
// every accepted order's pickup code reaches its customer.
func TestPushSurvivesKills(t *testing.T) {
	t.Parallel()
	c := startCluster(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stores := []string{"1012", "1013"}
	poss := map[string]*posSim{}
	for _, s := range stores {
		poss[s] = &posSim{store: s, key: c.posKey(s), codes: map[string]string{}}
		go poss[s].run(ctx, c)
	}
	var custs []*custSim
	for i := range 4 {
		u := &custSim{token: mustLogin(t, c.front.base, fmt.Sprintf("+86139000003%02d", i)), codes: map[string]string{}}
		custs = append(custs, u)
		go u.run(ctx, c)
	}
	eventually.True(t, 15*time.Second, "the POS and customer sockets up", func() bool {
		return sockets(c.url("a"), "pos") >= len(stores) && sockets(c.url("b"), "customers") >= len(custs)
	})

	type paidOrder struct {
		store string
		cust  *custSim
	}
	var mu sync.Mutex
	paid := map[string]paidOrder{}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for i, u := range custs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := 0; ; k++ {
				select {
				case <-stop:
					return
				default:
				}
				store := stores[(i+k)%2]
				oid, err := payNew(c.url("front"), u.token, store)
				if err != nil {
					t.Errorf("customer %d: %v", i, err)
					return
				}
				mu.Lock()
				paid[oid] = paidOrder{store, u}
				mu.Unlock()
				time.Sleep(50 * time.Millisecond)
			}
		}()
	}
	// Each kill comes after some more orders were paid (not after a fixed
	// time: on a loaded machine that may be none).
	paidMore := func(n int) {
		mu.Lock()
		want := len(paid) + n
		mu.Unlock()
		eventually.True(t, 30*time.Second, fmt.Sprintf("%d more orders paid", n), func() bool {
			mu.Lock()
			defer mu.Unlock()
			return len(paid) >= want
		})
	}
	paidMore(8)
	c.restart("fulfil", &c.fulfil, 500*time.Millisecond)
	paidMore(4)
	c.restart("a", &c.a, 500*time.Millisecond) // the POS terminals' push node
	paidMore(4)
	c.restart("b", &c.b, 500*time.Millisecond) // the customers' push node
	paidMore(8)
	close(stop)
	wg.Wait()
	if len(paid) < 20 {
		t.Fatalf("only %d orders paid; the test proves little", len(paid))
	}

	deadline := time.Now().Add(60 * time.Second)
	for {
		accepted, told := 0, 0
		for oid, p := range paid {
			pos := poss[p.store]
			pos.mu.Lock()
			code, ok := pos.codes[oid]
			pos.mu.Unlock()
			if ok {
				accepted++
				p.cust.mu.Lock()
				if got, ok := p.cust.codes[oid]; ok {
					if got != code {
						t.Fatalf("order %s: customer told %q, POS got %q", oid, got, code)
					}
					told++
				}
				p.cust.mu.Unlock()
			}
		}
		if accepted == len(paid) && told == len(paid) {
			break
		}
		if time.Now().After(deadline) {
			for _, u := range custs {
				if u.resyncs > 0 {
					t.Logf("a customer was told to resync %d times", u.resyncs)
				}
			}
			t.Fatalf("of %d paid orders: %d accepted by their store, %d pickup codes pushed to their customer", len(paid), accepted, told)
		}
		time.Sleep(100 * time.Millisecond)
	}
	for _, p := range poss {
		p.mu.Lock()
		if len(p.wrong) > 0 {
			t.Fatalf("store %s was given orders of another store: %v", p.store, p.wrong)
		}
		for oid := range p.codes {
			if _, ok := paid[oid]; !ok {
				t.Fatalf("store %s accepted order %s nobody paid here", p.store, oid)
			}
		}
		p.mu.Unlock()
	}
	t.Logf("%d orders paid through kill -9 of fulfil and both push nodes: all accepted by their store, every pickup code pushed to its customer", len(paid))
}

// sockets returns a push node's count of open sockets of a kind
// ("customers" or "pos"), 0 when it does not answer.
func sockets(base, kind string) int {
	_, b, err := call(base, "GET", "/push/v1/stats", pushAdmin, "")
	var st map[string]any
	if err != nil || json.Unmarshal(b, &st) != nil {
		return 0
	}
	n, _ := st[kind].(float64)
	return int(n)
}
