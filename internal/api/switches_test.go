package api_test

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/surge-platform/surge/internal/eventually"
	"github.com/surge-platform/surge/internal/node"
	"github.com/surge-platform/surge/internal/nodetest"
	"github.com/surge-platform/surge/internal/payment/paysim"
	"github.com/surge-platform/surge/internal/platform/switches"
)

// flip sets a switch through the admin API and fails the test otherwise.
func flip(t *testing.T, base, name string, on bool) {
	t.Helper()
	a := &nodetest.Client{T: t, Base: base, Token: admin}
	if r := a.Do("PUT", "/admin/v1/switches/"+name, fmt.Sprintf(`{"on":%v}`, on)); r.Status != 200 {
		t.Fatalf("set %s %v: %d %s", name, on, r.Status, r.Body)
	}
}

// TestSwitchesOnOneNode: the admin routes, and the switches that gate a
// customer route.
func TestSwitchesOnOneNode(t *testing.T) {
	t.Parallel()
	base := startNode(t)
	t.Run("admin routes", func(t *testing.T) { adminRoutes(t, base) })
	t.Run("order history", func(t *testing.T) { cutsOrderHistory(t, base) })
	t.Run("coupon list", func(t *testing.T) { turnsOffCouponList(t, base) })
}

func adminRoutes(t *testing.T, base string) {
	a := &nodetest.Client{T: t, Base: base, Token: admin}
	list := decode[struct{ Switches []switches.Status }](t, a.Do("GET", "/admin/v1/switches", ""))
	if len(list.Switches) != 6 { // 4 of the service, one per payment channel
		t.Fatalf("switches: %+v", list)
	}
	for _, s := range list.Switches {
		if !s.On || !s.Default || s.Description == "" || s.WhenOff == "" || s.ChangedAt != nil {
			t.Errorf("fresh switch %+v", s)
		}
	}
	for _, c := range []struct {
		name, method, path, body, token string
		hdr                             []string
		status                          int
		code                            string
	}{
		{"no token", "PUT", "/admin/v1/switches/notify.send", `{"on":false}`, "", nil, 401, "unauthorized"},
		{"unknown switch", "PUT", "/admin/v1/switches/orders.everything", `{"on":false}`, admin, nil, 404, "unknown_switch"},
		{"no on", "PUT", "/admin/v1/switches/notify.send", `{}`, admin, nil, 400, "invalid_json"},
		{"on as text", "PUT", "/admin/v1/switches/notify.send", `{"on":"off"}`, admin, nil, 400, "invalid_json"},
		{"operator with a space", "PUT", "/admin/v1/switches/notify.send", `{"on":false}`, admin, []string{"X-Operator", "a b"}, 400, "invalid_operator"},
		{"history of an unknown switch", "GET", "/admin/v1/switches/nope/history", "", admin, nil, 404, "unknown_switch"},
		{"list without token", "GET", "/admin/v1/switches", "", "", nil, 401, "unauthorized"},
	} {
		t.Run(c.name, func(t *testing.T) {
			cl := &nodetest.Client{T: t, Base: base, Token: c.token}
			if r := cl.Do(c.method, c.path, c.body, c.hdr...); r.Status != c.status || r.Code() != c.code {
				t.Errorf("%d %s, want %d %s", r.Status, r.Body, c.status, c.code)
			}
		})
	}
	r := a.Do("PUT", "/admin/v1/switches/notify.send", `{"on":false}`, "X-Operator", "alice")
	rec := decode[switches.Record](t, r)
	if r.Status != 200 || rec.On || !rec.Old || rec.By != "alice@127.0.0.1" || rec.Revision == 0 {
		t.Fatalf("set: %d %s", r.Status, r.Body)
	}
	flip(t, base, switches.NotifySend, true) // no X-Operator: "admin@<address>"
	list = decode[struct{ Switches []switches.Status }](t, a.Do("GET", "/admin/v1/switches", ""))
	for _, s := range list.Switches {
		if s.Name == switches.NotifySend && (!s.On || s.ChangedBy != "admin@127.0.0.1" || s.ChangedAt == nil) {
			t.Errorf("after two changes: %+v", s)
		}
	}
	h := decode[struct {
		Name    string
		Changes []switches.Record
	}](t, a.Do("GET", "/admin/v1/switches/notify.send/history", ""))
	if len(h.Changes) != 2 || h.Changes[0].By != "admin@127.0.0.1" || !h.Changes[0].On || h.Changes[0].Old ||
		h.Changes[1].By != "alice@127.0.0.1" || h.Changes[1].On {
		t.Fatalf("history (newest first): %+v", h)
	}
}

// cutsOrderHistory: with orders.history_full off a customer sees the
// latest 20 orders and no more.
func cutsOrderHistory(t *testing.T, base string) {
	c := nodetest.Login(t, base, "+8613911114444")
	for i := range 21 {
		if r := c.Do("POST", "/api/v1/orders", `{"store_id":"1001","items":[{"sku_id":"1001006","qty":1}]}`); r.Status != 201 {
			t.Fatalf("order %d: %d %s", i, r.Status, r.Body)
		}
	}
	type page struct {
		Orders []struct {
			OrderID string `json:"order_id"`
		}
		NextCursor string `json:"next_cursor"`
		Truncated  *bool
	}
	full := decode[page](t, c.Do("GET", "/api/v1/orders", ""))
	if len(full.Orders) != 20 || full.NextCursor == "" || full.Truncated != nil {
		t.Fatalf("switch on, first page: %+v", full)
	}
	flip(t, base, switches.OrdersHistoryFull, false)
	for _, tc := range []struct {
		name, query string
		orders      int
		truncated   bool
	}{
		{"first page", "", 20, true},
		{"first page, 100 asked", "?limit=100", 20, true},
		{"first page, 5 asked", "?limit=5", 5, true},
		{"a later page", "?cursor=" + full.NextCursor, 0, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := c.Do("GET", "/api/v1/orders"+tc.query, "")
			p := decode[page](t, r)
			if r.Status != 200 || len(p.Orders) != tc.orders || p.NextCursor != "" || p.Truncated == nil || *p.Truncated != tc.truncated {
				t.Errorf("%d %s", r.Status, r.Body)
			}
		})
	}
	flip(t, base, switches.OrdersHistoryFull, true)
	if p := decode[page](t, c.Do("GET", "/api/v1/orders?cursor="+full.NextCursor, "")); len(p.Orders) != 1 {
		t.Fatalf("back on, second page: %+v", p)
	}
}

func turnsOffCouponList(t *testing.T, base string) {
	c := &nodetest.Client{T: t, Base: base}
	flip(t, base, switches.PromoCouponList, false)
	r := c.Do("GET", "/api/v1/coupons", "")
	if r.Status != 503 || r.Code() != "switched_off" || r.Header.Get("Retry-After") != "60" || r.Header.Get("Cache-Control") != "no-store" {
		t.Fatalf("switched off: %d %v %s", r.Status, r.Header, r.Body)
	}
	flip(t, base, switches.PromoCouponList, true)
	if r := c.Do("GET", "/api/v1/coupons", ""); r.Status != 200 {
		t.Fatalf("back on: %d %s", r.Status, r.Body)
	}
}

// TestSwitchesOfPaymentsAndNotifications: the switches that gate work
// behind the customer routes.
func TestSwitchesOfPaymentsAndNotifications(t *testing.T) {
	t.Parallel()
	n := nodetest.Start(t, func(c *node.Config) { c.PayQuery = time.Hour }) // the worker's query stays out of it
	t.Run("payment query on read", func(t *testing.T) { stopsPaymentQueryOnRead(t, n) })
	t.Run("notifications", func(t *testing.T) { suppressesNotifications(t, n) })
}

// stopsPaymentQueryOnRead: with orders.read_pay_query off, an unpaid
// order's read never asks the channel, so a payment whose callback was
// lost shows only once the switch is back on.
func stopsPaymentQueryOnRead(t *testing.T, n *node.Node) {
	base := n.URL()
	if err := n.Sim.SetFaults("wechatpay", paysim.Faults{DropCallbacks: true}); err != nil {
		t.Fatal(err)
	}
	flip(t, base, switches.OrdersReadPayQuery, false)
	c := nodetest.Login(t, base, "+8613911115555")
	oid := nodetest.PayOrder(t, c, "1001", "1001000")
	status := func() string {
		var o struct{ Status string }
		json.Unmarshal(c.Do("GET", "/api/v1/orders/"+oid, "").Body, &o)
		return o.Status
	}
	// The read leaves payments younger than 2 s to their callback: read
	// on past that.
	for start := time.Now(); time.Since(start) < 2500*time.Millisecond; time.Sleep(100 * time.Millisecond) {
		if s := status(); s != "pending_payment" {
			t.Fatalf("switched off, the read says %s: it asked the channel", s)
		}
	}
	flip(t, base, switches.OrdersReadPayQuery, true)
	if err := n.Sim.SetFaults("wechatpay", paysim.Faults{}); err != nil {
		t.Fatal(err)
	}
	// A read asks the channel off its own path; a later read shows what
	// it said.
	eventually.True(t, 5*time.Second, "switched on, a read asks the channel and a later one shows paid", func() bool {
		return status() == "paid"
	})
}

// suppressesNotifications: with notify.send off, a store's steps send the
// customer nothing, and the messages are counted as suppressed.
func suppressesNotifications(t *testing.T, n *node.Node) {
	base := n.URL()
	flip(t, base, switches.NotifySend, false)
	c := nodetest.Login(t, base, "+8613911116666")
	pos := nodetest.POS(t, base, "1009")
	oid := nodetest.PayOrder(t, c, "1009", "1009010")
	for _, step := range []string{"accept", "ready"} {
		eventually.True(t, 10*time.Second, step, func() bool {
			return pos.Do("POST", "/pos/v1/orders/"+oid+"/"+step, "").Status == 200
		})
	}
	eventually.True(t, 10*time.Second, "two messages suppressed", func() bool { return n.Notify.Stats().Suppressed == 2 })
	if st := n.Notify.Stats(); st.Sent != 0 || st.Failed != 0 {
		t.Fatalf("switched off, yet %+v", st)
	}
}

// TestChannelSwitchIsClusterWide: three nodes sharing a database and a
// bus; switching a channel off through one node's existing route
// (PUT /admin/v1/payments/channels/{channel}) takes it off every node's
// router within a second.
func TestChannelSwitchIsClusterWide(t *testing.T) {
	t.Parallel()
	first := nodetest.Start(t, func(c *node.Config) { c.Bus = "embedded:" + c.Data + "/nats?listen=127.0.0.1:0" })
	nodes := []*node.Node{first}
	for range 2 {
		nodes = append(nodes, nodetest.Start(t, func(c *node.Config) {
			c.DB, c.Bus, c.Roles, c.PayURL = first.Config().DB, first.Bus.ClientURL(), []string{"api"}, first.URL()
		}))
	}
	a := &nodetest.Client{T: t, Base: first.URL(), Token: admin}
	if r := a.Do("PUT", "/admin/v1/payments/channels/nope", `{"enabled":false}`); r.Status != 400 || r.Code() != "unknown_channel" {
		t.Fatalf("unknown channel: %d %s", r.Status, r.Body)
	}
	start := time.Now()
	r := a.Do("PUT", "/admin/v1/payments/channels/wechatpay", `{"enabled":false}`)
	if r.Status != 200 || !strings.Contains(string(r.Body), `"name":"wechatpay"`) {
		t.Fatalf("switch wechatpay off: %d %s", r.Status, r.Body)
	}
	type channels struct {
		Channels []struct {
			Name      string
			ForcedOff bool `json:"forced_off"`
		}
	}
	for i, n := range nodes {
		cl := &nodetest.Client{T: t, Base: n.URL(), Token: admin}
		eventually.True(t, time.Second, fmt.Sprintf("node %d sees wechatpay off", i), func() bool {
			cs := decode[channels](t, cl.Do("GET", "/admin/v1/payments/channels", ""))
			off := 0
			for _, c := range cs.Channels {
				if c.ForcedOff {
					off++
					if c.Name != "wechatpay" {
						return false
					}
				}
			}
			return len(cs.Channels) == 2 && off == 1
		})
	}
	fmt.Printf("channel switch on 3 nodes (over HTTP): all off within %v\n", time.Since(start))
	c := nodetest.Login(t, nodes[2].URL(), "+8613911117777")
	o := decode[struct {
		OrderID string `json:"order_id"`
	}](t, c.Do("POST", "/api/v1/orders", `{"store_id":"1001","items":[{"sku_id":"1001000","qty":1}]}`))
	if r := c.Do("POST", "/api/v1/orders/"+o.OrderID+"/pay", `{"channel":"wechatpay"}`); r.Status != 503 || r.Code() != "channel_unavailable" {
		t.Fatalf("pay with wechatpay off on another node: %d %s", r.Status, r.Body)
	}
	if r := c.Do("POST", "/api/v1/orders/"+o.OrderID+"/pay", `{}`); r.Status != 201 || !strings.Contains(string(r.Body), `"channel":"alipay"`) {
		t.Fatalf("pay without a channel: %d %s", r.Status, r.Body)
	}
	h := decode[struct{ Changes []switches.Record }](t, a.Do("GET", "/admin/v1/switches/pay.channel.wechatpay/history", ""))
	if len(h.Changes) != 1 || h.Changes[0].On || !h.Changes[0].Old {
		t.Fatalf("history: %+v", h)
	}
}
