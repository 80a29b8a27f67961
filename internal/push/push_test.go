package push_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/surge-platform/surge/internal/eventually"
	"github.com/surge-platform/surge/internal/node"
	"github.com/surge-platform/surge/internal/nodetest"
	"github.com/surge-platform/surge/internal/platform/bus"
	"github.com/surge-platform/surge/internal/push"
	"github.com/surge-platform/surge/internal/push/pushtest"
)

func dial(t *testing.T, base, path, token, query string) *pushtest.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := pushtest.Dial(ctx, base, path, token, query)
	if err != nil {
		t.Fatalf("dial %s: %v", path, err)
	}
	t.Cleanup(func() { c.WS.CloseNow() })
	return c
}

func expect(t *testing.T, c *pushtest.Conn, what string, ok func(pushtest.Msg) bool) pushtest.Msg {
	t.Helper()
	m, seen, err := c.Until(10*time.Second, ok)
	if err != nil {
		t.Fatalf("waiting for %s: %v (got %d other messages: %v)", what, err, len(seen), seen)
	}
	return m
}

// customerSocket logs a customer in and opens their socket (hello read);
// it returns the customer, the socket and the customer's user id.
func customerSocket(t *testing.T, n *node.Node, phone string) (*nodetest.Client, *pushtest.Conn, string) {
	t.Helper()
	cust := nodetest.Login(t, n.URL(), phone)
	c := dial(t, n.URL(), "/api/v1/ws", cust.Token, "")
	hello := expect(t, c, "hello", func(m pushtest.Msg) bool { return m.Type == "hello" })
	var me struct {
		UserID string `json:"user_id"`
	}
	if err := json.Unmarshal(hello.Raw, &me); err != nil || me.UserID == "" {
		t.Fatalf("hello %s: %v", hello.Raw, err)
	}
	return cust, c, me.UserID
}

func event(typ, orderID string) func(pushtest.Msg) bool {
	return func(m pushtest.Msg) bool { return m.Type == typ && m.OrderID == orderID }
}

// The seed's main flow over sockets: the paid order reaches its store's
// POS socket (and no other store's), the POS accepts, the customer's socket
// gets the pickup code (and no other customer's socket hears of it).
func TestOrderToPickupCodeOverSockets(t *testing.T) {
	t.Parallel()
	n := nodetest.Start(t)
	base := n.URL()
	alice := nodetest.Login(t, base, "+8613912340001")
	bob := nodetest.Login(t, base, "+8613912340002")
	pos := nodetest.POS(t, base, "1003")
	otherPOS := nodetest.POS(t, base, "1004")

	aws := dial(t, base, "/api/v1/ws", alice.Token, "")
	bws := dial(t, base, "/api/v1/ws", bob.Token, "")
	pws := dial(t, base, "/pos/v1/ws", pos.Token, "")
	ows := dial(t, base, "/pos/v1/ws", otherPOS.Token, "")
	for _, c := range []*pushtest.Conn{aws, bws, pws, ows} {
		expect(t, c, "hello", func(m pushtest.Msg) bool { return m.Type == "hello" })
	}

	oid := nodetest.PayOrder(t, alice, "1003", "1003010")
	paid := expect(t, aws, "order.paid", event("order.paid", oid))
	if paid.Status != "paid" || paid.ID == "" {
		t.Fatalf("paid event: %s", paid.Raw)
	}
	nw := expect(t, pws, "new order on the POS socket", func(m pushtest.Msg) bool { return m.Type == "order.new" })
	if nw.Order.OrderID != oid || nw.Order.StoreID != "1003" {
		t.Fatalf("POS got %s, want order %s", nw.Raw, oid)
	}
	r := pos.Do("POST", "/pos/v1/orders/"+oid+"/accept", "")
	var acc struct {
		PickupCode string `json:"pickup_code"`
	}
	json.Unmarshal(r.Body, &acc)
	if r.Status != 200 || acc.PickupCode == "" {
		t.Fatalf("accept: %d %s", r.Status, r.Body)
	}
	got := expect(t, aws, "order.accepted", event("order.accepted", oid))
	if got.PickupCode != acc.PickupCode || got.Status != "accepted" {
		t.Fatalf("customer got %s, want pickup code %s", got.Raw, acc.PickupCode)
	}
	pos.Do("POST", "/pos/v1/orders/"+oid+"/ready", "")
	expect(t, aws, "order.ready", event("order.ready", oid))

	// Bob's socket and the other store's POS heard nothing of it. A ping
	// round trip after the events proves their sockets were delivering.
	for name, c := range map[string]*pushtest.Conn{"other customer": bws, "other store's POS": ows} {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		c.Send(ctx, map[string]string{"type": "ping"})
		cancel()
		_, seen, err := c.Until(5*time.Second, func(m pushtest.Msg) bool { return m.Type == "pong" })
		if err != nil || len(seen) != 0 {
			t.Fatalf("%s: %v, messages before pong: %d (%v)", name, err, len(seen), seen)
		}
	}
}

// Sockets are opened with the same credentials as the HTTP API, and a
// customer's socket carries only that customer's events.
func TestSocketAuthorization(t *testing.T) {
	t.Parallel()
	n := nodetest.Start(t)
	base := n.URL()
	alice := nodetest.Login(t, base, "+8613912340011")
	pos := nodetest.POS(t, base, "1005")
	forged := []byte(pos.Token)
	forged[len(forged)-1] ^= 1 // another character, whatever the last one is
	for _, tc := range []struct {
		name, path, token, query string
		status                   int
	}{
		{"customer without token", "/api/v1/ws", "", "", 401},
		{"customer forged token", "/api/v1/ws", alice.Token + "x", "", 401},
		{"customer with a POS key", "/api/v1/ws", pos.Token, "", 401},
		{"POS without key", "/pos/v1/ws", "", "", 401},
		{"POS with a customer token", "/pos/v1/ws", alice.Token, "", 401},
		{"POS forged key", "/pos/v1/ws", string(forged), "", 401},
		{"negative cursor", "/pos/v1/ws", pos.Token, "cursor=-1", 400},
		{"bad last_event_id", "/api/v1/ws", alice.Token, "last_event_id=abc", 400},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			c, err := pushtest.Dial(ctx, base, tc.path, tc.token, tc.query)
			var re *pushtest.RefusedError
			if err == nil {
				c.WS.CloseNow()
				t.Fatalf("connected; want %d", tc.status)
			}
			if !errors.As(err, &re) || re.Status != tc.status {
				t.Fatalf("got %v; want %d", err, tc.status)
			}
		})
	}
	// The token in the query string (for browsers) works too, and a
	// user_id parameter does not change whose events the socket gets.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := pushtest.Dial(ctx, base, "/api/v1/ws", "", pushtest.Query("access_token", alice.Token, "user_id", "1"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.WS.CloseNow()
	hello := expect(t, c, "hello", func(m pushtest.Msg) bool { return m.Type == "hello" })
	var me struct {
		UserID string `json:"user_id"`
	}
	json.Unmarshal(hello.Raw, &me)
	r := alice.Do("GET", "/api/v1/orders", "")
	if me.UserID == "1" || me.UserID == "" || r.Status != 200 {
		t.Fatalf("socket of user %q", me.UserID)
	}
}

// A customer who reconnects with the last event id gets what was missed,
// in order, once; with an id the window cannot vouch for, a resync.
func TestCustomerResume(t *testing.T) {
	t.Parallel()
	n := nodetest.Start(t)
	base := n.URL()
	alice := nodetest.Login(t, base, "+8613912340021")
	pos := nodetest.POS(t, base, "1006")

	c := dial(t, base, "/api/v1/ws", alice.Token, "")
	first := nodetest.PayOrder(t, alice, "1006", "1006010")
	paid := expect(t, c, "first order.paid", event("order.paid", first))
	c.WS.CloseNow()

	// Missed while away: the second order paid, the first accepted.
	second := nodetest.PayOrder(t, alice, "1006", "1006011")
	eventually.True(t, 10*time.Second, "first order queued for the POS", func() bool {
		return pos.Do("POST", "/pos/v1/orders/"+first+"/accept", "").Status == 200
	})
	var missed []pushtest.Msg
	for attempt := 0; len(missed) < 2; attempt++ {
		if attempt == 50 {
			t.Fatalf("missed events never all replayed: %v", missed)
		}
		time.Sleep(50 * time.Millisecond) // routing is asynchronous: reconnect until both are in the window
		r := dial(t, base, "/api/v1/ws", alice.Token, "last_event_id="+paid.ID)
		_, seen, err := r.Until(10*time.Second, func(m pushtest.Msg) bool { return m.Type == "hello" })
		r.WS.CloseNow()
		if err != nil {
			t.Fatal(err)
		}
		missed = seen
	}
	// The two missed events, in the order of their ids (routing may order
	// events of different orders either way).
	byType := map[string]string{missed[0].Type: missed[0].OrderID, missed[1].Type: missed[1].OrderID}
	if len(missed) != 2 || byType["order.paid"] != second || byType["order.accepted"] != first {
		t.Fatalf("replayed %v; want %s paid and %s accepted", missed, second, first)
	}
	a, _ := strconv.ParseUint(missed[0].ID, 10, 64)
	b, _ := strconv.ParseUint(missed[1].ID, 10, 64)
	p, _ := strconv.ParseUint(paid.ID, 10, 64)
	if !(p < a && a < b) {
		t.Fatalf("ids not increasing: %d %d %d", p, a, b)
	}

	// Resuming from the newest id replays nothing; an id past the end of
	// the stream (another deployment's) gets a resync.
	r := dial(t, base, "/api/v1/ws", alice.Token, "last_event_id="+missed[1].ID)
	if _, seen, err := r.Until(10*time.Second, func(m pushtest.Msg) bool { return m.Type == "hello" }); err != nil || len(seen) != 0 {
		t.Fatalf("resume from the newest id: %v %v", seen, err)
	}
	r = dial(t, base, "/api/v1/ws", alice.Token, "last_event_id=999999999")
	if _, seen, err := r.Until(10*time.Second, func(m pushtest.Msg) bool { return m.Type == "hello" }); err != nil ||
		len(seen) != 1 || seen[0].Type != "resync" {
		t.Fatalf("resume past the end: %v %v", seen, err)
	}

	// More events than the window holds since the id: resync, then the
	// window's events.
	var ids []string
	for range push.Window/2 + 1 {
		ids = append(ids, nodetest.PayOrder(t, alice, "1006", "1006012"))
	}
	for _, id := range ids {
		eventually.True(t, 10*time.Second, "queued for the POS", func() bool {
			return pos.Do("POST", "/pos/v1/orders/"+id+"/accept", "").Status == 200
		})
	}
	eventually.True(t, 20*time.Second, "a resync after the window", func() bool {
		r := dial(t, base, "/api/v1/ws", alice.Token, "last_event_id="+paid.ID)
		defer r.WS.CloseNow()
		_, seen, err := r.Until(10*time.Second, func(m pushtest.Msg) bool { return m.Type == "hello" })
		if err != nil || len(seen) != push.Window+1 || seen[0].Type != "resync" {
			t.Logf("resume after the window: %d messages, err %v", len(seen), err)
			return false
		}
		for _, m := range seen[1:] {
			if m.Type == "order.accepted" && m.OrderID == ids[len(ids)-1] {
				return true
			}
		}
		return false
	})
}

// A POS socket starts with everything its store has not acknowledged, and
// an acknowledgement sent on the socket holds across reconnects.
func TestPOSSocketCursor(t *testing.T) {
	t.Parallel()
	n := nodetest.Start(t)
	base := n.URL()
	alice := nodetest.Login(t, base, "+8613912340031")
	pos := nodetest.POS(t, base, "1008")
	var oids []string
	for range 3 {
		oids = append(oids, nodetest.PayOrder(t, alice, "1008", "1008010"))
	}
	eventually.True(t, 10*time.Second, "3 orders queued", func() bool {
		var p struct{ Orders []any }
		json.Unmarshal(pos.Do("GET", "/pos/v1/orders/new?cursor=0", "").Body, &p)
		return len(p.Orders) == 3
	})
	c := dial(t, base, "/pos/v1/ws", pos.Token, "cursor=0")
	var seqs, got []string // in queue order (paid orders are queued in any order)
	for range 3 {
		m := expect(t, c, "queued order", func(m pushtest.Msg) bool { return m.Type == "order.new" })
		seqs, got = append(seqs, m.Seq.String()), append(got, m.Order.OrderID)
	}
	if !slices.Equal(slices.Sorted(slices.Values(got)), slices.Sorted(slices.Values(oids))) {
		t.Fatalf("POS got %v; want %v", got, oids)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c.Send(ctx, map[string]string{"type": "ack", "cursor": seqs[1]})
	c.Send(ctx, map[string]string{"type": "ping"})
	expect(t, c, "pong", func(m pushtest.Msg) bool { return m.Type == "pong" })
	c.Send(ctx, map[string]any{"type": "ack", "cursor": -3})
	if m := expect(t, c, "error", func(m pushtest.Msg) bool { return m.Type == "error" }); m.Error.Code != "invalid_cursor" {
		t.Fatalf("bad ack: %s", m.Raw)
	}
	c.WS.CloseNow()

	c = dial(t, base, "/pos/v1/ws", pos.Token, "cursor=0")
	m := expect(t, c, "the unacknowledged order", func(m pushtest.Msg) bool { return m.Type == "order.new" })
	if m.Order.OrderID != got[2] {
		t.Fatalf("after ack of %s got %s; want only %s", seqs[1], m.Raw, got[2])
	}
	fourth := nodetest.PayOrder(t, alice, "1008", "1008010")
	if m := expect(t, c, "live order", func(m pushtest.Msg) bool { return m.Type == "order.new" }); m.Order.OrderID != fourth {
		t.Fatalf("live: %s; want %s", m.Raw, fourth)
	}
}

// A client that stops answering pings is dropped; one that answers stays.
func TestDeadSocketDropped(t *testing.T) {
	t.Parallel()
	n := nodetest.Start(t, func(c *node.Config) { c.WSPing = 200 * time.Millisecond })
	base := n.URL()
	alice := nodetest.Login(t, base, "+8613912340041")
	bob := nodetest.Login(t, base, "+8613912340042")

	// Alive: reads (so answers pings) for well past the dead time.
	alive := dial(t, base, "/api/v1/ws", bob.Token, "")
	aliveErr := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		for {
			if _, _, err := alive.WS.Read(ctx); err != nil {
				if errors.Is(err, context.DeadlineExceeded) {
					err = nil
				}
				aliveErr <- err
				return
			}
		}
	}()

	// Dead: never reads, so never answers a ping.
	dead := dial(t, base, "/api/v1/ws", alice.Token, "")
	eventually.True(t, 5*time.Second, "the silent socket dropped", func() bool { return n.Push.Stats().Dead >= 1 })
	if err := <-aliveErr; err != nil {
		t.Fatalf("the reading socket was dropped: %v", err)
	}
	dead.WS.CloseNow()
}

// A client may send its first message in the same write as the upgrade
// request; the socket's small buffers keep it.
func TestMessageRightAfterUpgrade(t *testing.T) {
	t.Parallel()
	n := nodetest.Start(t)
	alice := nodetest.Login(t, n.URL(), "+8613912340061")
	conn, err := net.Dial("tcp", strings.TrimPrefix(n.URL(), "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	payload := []byte(`{"type":"ping"}`)
	mask := [4]byte{1, 2, 3, 4}
	frame := append([]byte{0x81, 0x80 | byte(len(payload))}, mask[:]...)
	for i, c := range payload {
		frame = append(frame, c^mask[i%4])
	}
	req := "GET /api/v1/ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
		"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n" +
		"Authorization: Bearer " + alice.Token + "\r\n\r\n"
	if _, err := conn.Write(append([]byte(req), frame...)); err != nil {
		t.Fatal(err)
	}
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	var got []byte
	buf := make([]byte, 4096)
	for !strings.Contains(string(got), `{"type":"pong"}`) {
		k, err := conn.Read(buf)
		if err != nil {
			t.Fatalf("got %q (%v); want the upgrade and a pong", got, err)
		}
		got = append(got, buf[:k]...)
	}
	if !strings.Contains(string(got), "101 Switching Protocols") {
		t.Fatalf("got %q; want the upgrade first", got)
	}
}

// An event whose announcement never came (lost in a bus reconnect, say)
// still reaches the socket: the heartbeat reads the window.
func TestHeartbeatCatchesUpWithoutAnnouncement(t *testing.T) {
	t.Parallel()
	n := nodetest.Start(t, func(c *node.Config) { c.WSPing = 200 * time.Millisecond })
	_, c, me := customerSocket(t, n, "+8613912340071")
	ev := `{"type":"order.ready","event_id":"7","order_id":"42","store_id":"1001","status":"ready","pickup_code":"1234"}`
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := n.Bus.Publish(ctx, bus.Msg{Subject: "push.log.u." + me, ID: "silent-7", Data: []byte(ev)}); err != nil {
		t.Fatal(err)
	}
	if m := expect(t, c, "the unannounced event", func(m pushtest.Msg) bool { return m.Type == "order.ready" }); m.PickupCode != "1234" || m.ID == "" {
		t.Fatalf("got %s", m.Raw)
	}
}

// Announced events go straight to a socket that has sent everything before
// them; an event put in the window by someone else (another router) is not
// skipped: the next announcement no longer follows the socket's cursor, so
// the socket reads the window, and gets both, in order, once.
func TestAnnouncedEventsFollowTheWindow(t *testing.T) {
	t.Parallel()
	n := nodetest.Start(t)
	alice, c, me := customerSocket(t, n, "+8613912340081")

	var got []pushtest.Msg
	for i := range 3 {
		oid := nodetest.PayOrder(t, alice, "1007", "1007011")
		got = append(got, expect(t, c, fmt.Sprintf("order %d paid", i), event("order.paid", oid)))
	}
	// The first follows the stream's end, not a known predecessor: read
	// from the window. The next two follow the one before.
	if d := n.Push.Stats().Direct; d != 2 {
		t.Fatalf("%d events sent straight from their announcement; want 2", d)
	}

	silent := `{"type":"order.ready","event_id":"9","order_id":"43","store_id":"1007","status":"ready","pickup_code":"4321"}`
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := n.Bus.Publish(ctx, bus.Msg{Subject: "push.log.u." + me, ID: "other-router-9", Data: []byte(silent)}); err != nil {
		t.Fatal(err)
	}
	last := nodetest.PayOrder(t, alice, "1007", "1007011")
	m, seen, err := c.Until(10*time.Second, event("order.paid", last))
	if err != nil {
		t.Fatalf("waiting for the last order's paid event: %v (got %v)", err, seen)
	}
	if len(seen) != 1 || seen[0].Type != "order.ready" || seen[0].PickupCode != "4321" {
		t.Fatalf("before the last paid event the socket got %v; want just the unannounced event", seen)
	}
	got = append(got, seen[0], m)
	for i := 1; i < len(got); i++ {
		a, _ := strconv.ParseUint(got[i-1].ID, 10, 64)
		b, _ := strconv.ParseUint(got[i].ID, 10, 64)
		if a == 0 || a >= b {
			t.Fatalf("event ids not increasing: %v", got)
		}
	}
	if d := n.Push.Stats().Direct; d != 2 {
		t.Fatalf("after the gap %d events were sent straight; want still 2", d)
	}

	// An announcement whose predecessor is not the socket's cursor (one was
	// lost or overtaken) is not trusted: the socket reads the window.
	put := func(id, code string) uint64 {
		ev := `{"type":"order.ready","event_id":"` + id + `","order_id":"44","store_id":"1007","status":"ready","pickup_code":"` + code + `"}`
		seq, err := n.Bus.Publish(ctx, bus.Msg{Subject: "push.log.u." + me, ID: "put-" + id, Data: []byte(ev)})
		if err != nil {
			t.Fatal(err)
		}
		return seq
	}
	announce := func(seq, prev uint64, code string) {
		msg := fmt.Sprintf(`{"seq":%d,"order_id":44,"prev":%d,"msg":{"type":"order.ready","id":"%d","pickup_code":"%s"}}`, seq, prev, seq, code)
		if err := n.Bus.PublishCore("push.live.u."+me, []byte(msg)); err != nil {
			t.Fatal(err)
		}
	}
	s1 := put("10", "5555")
	announce(s1, 1, "FAKE") // the socket has sent more than seq 1
	if m := expect(t, c, "the event after a gap", func(m pushtest.Msg) bool { return m.Type == "order.ready" }); m.PickupCode != "5555" {
		t.Fatalf("after an announcement with a wrong predecessor the socket sent %s; want the window's event", m.Raw)
	}
	s2 := put("11", "6666")
	announce(s2, s1, "SENT") // right after the socket's cursor: sent as announced
	if m := expect(t, c, "the next event", func(m pushtest.Msg) bool { return m.Type == "order.ready" }); m.PickupCode != "SENT" {
		t.Fatalf("an announcement right after the cursor: the socket sent %s; want the announced message", m.Raw)
	}

	// Nothing more comes (no event twice).
	if extra, seen, err := c.Until(300*time.Millisecond, func(pushtest.Msg) bool { return true }); err == nil {
		t.Fatalf("an extra message: %s (after %v)", extra.Raw, seen)
	}
}

// A rotated POS key stops working at once on sockets too: the store's open
// sockets are closed (code 4001), a socket the announcement missed is
// closed by its heartbeat's check of the key, and a new socket with the old
// key is refused. The new key connects and gets the store's orders.
func TestRotatedKeyClosesPOSSockets(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name     string
		announce bool // the rotation's announcement reaches the push node
	}{{"announced", true}, {"heartbeat", false}} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ping := time.Hour // no heartbeat: only the announcement can close the socket
			if !tc.announce {
				ping = 200 * time.Millisecond
			}
			n := nodetest.Start(t, func(c *node.Config) { c.WSPing = ping })
			base := n.URL()
			old := nodetest.POS(t, base, "1009")
			c := dial(t, base, "/pos/v1/ws", old.Token, "")
			expect(t, c, "hello", func(m pushtest.Msg) bool { return m.Type == "hello" })
			if !tc.announce {
				push.DropRevocations(n.Push, true)
			}
			admin := &nodetest.Client{T: t, Base: base, Token: nodetest.Admin}
			if r := admin.Do("POST", "/admin/v1/stores/1009/pos-key", ""); r.Status != 200 {
				t.Fatalf("rotate: %d %s", r.Status, r.Body)
			}
			_, seen, err := c.Until(10*time.Second, func(pushtest.Msg) bool { return false })
			if got := websocket.CloseStatus(err); got != 4001 {
				t.Fatalf("socket with the rotated key: %v (close status %d, messages %v); want closed with 4001", err, got, seen)
			}
			if r := n.Push.Stats().Revoked; r != 1 {
				t.Errorf("push stats count %d sockets closed for a rotated key, want 1", r)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			var re *pushtest.RefusedError
			if again, err := pushtest.Dial(ctx, base, "/pos/v1/ws", old.Token, ""); !errors.As(err, &re) || re.Status != 401 {
				if err == nil {
					again.WS.CloseNow()
				}
				t.Fatalf("a new socket with the old key: %v; want 401", err)
			}
			// The new key's socket opens after the order is paid (it gets
			// the queue on connect): with heartbeats 200 ms apart, a socket
			// left unread while the order is placed could be dropped.
			oid := nodetest.PayOrder(t, nodetest.Login(t, base, "+8613912340091"), "1009", "1009010")
			fresh := nodetest.POS(t, base, "1009")
			nc := dial(t, base, "/pos/v1/ws", fresh.Token, "")
			if m := expect(t, nc, "the new order", func(m pushtest.Msg) bool { return m.Type == "order.new" }); m.Order.OrderID != oid {
				t.Fatalf("got %s; want order %s", m.Raw, oid)
			}
		})
	}
}
