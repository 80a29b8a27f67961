package e2etest

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/surge-platform/surge/internal/eventually"
	"github.com/surge-platform/surge/internal/platform/bus/bustest"
	"github.com/surge-platform/surge/internal/push/pushtest"
)

// shopper is a customer of the refunds test, over the real binary's API.
type shopper struct {
	t     *testing.T
	base  string
	token string
}

func (s *shopper) do(method, path, body string, want int) []byte {
	s.t.Helper()
	status, b, err := call(s.base, method, path, s.token, body)
	if err != nil || status != want {
		s.t.Fatalf("%s %s: %d %s %v; want %d", method, path, status, b, err, want)
	}
	return b
}

// claim claims the demo coupon (满50减10) and waits until the wallet has
// it available; it returns the coupon id.
func (s *shopper) claim() string {
	s.t.Helper()
	var list struct {
		Templates []struct {
			ID   string `json:"template_id"`
			Name string `json:"name"`
		}
	}
	json.Unmarshal(s.do("GET", "/api/v1/coupons", "", 200), &list)
	if len(list.Templates) != 1 || list.Templates[0].Name != "满50减10" {
		s.t.Fatalf("claimable templates: %+v", list)
	}
	var c struct {
		CouponID string `json:"coupon_id"`
	}
	json.Unmarshal(s.do("POST", "/api/v1/coupons/"+list.Templates[0].ID+"/claim", "", 201), &c)
	eventually.True(s.t, 20*time.Second, "the coupon in the wallet", func() bool { return s.coupon(c.CouponID) == "available" })
	return c.CouponID
}

// coupon is the state of coupon cid in the wallet.
func (s *shopper) coupon(cid string) string {
	var w struct {
		Coupons []struct {
			ID    string `json:"coupon_id"`
			State string `json:"state"`
		}
	}
	json.Unmarshal(s.do("GET", "/api/v1/me/coupons", "", 200), &w)
	for _, c := range w.Coupons {
		if c.ID == cid {
			return c.State
		}
	}
	return ""
}

type e2eOrder struct {
	OrderID  string `json:"order_id"`
	Status   string `json:"status"`
	Payable  int64  `json:"payable"`
	Refunded int64  `json:"refunded"`
	Items    []struct {
		SKU      string `json:"sku_id"`
		Payable  int64  `json:"payable"`
		Refunded int64  `json:"refunded"`
	} `json:"items"`
}

func (s *shopper) order(oid string) e2eOrder {
	var o e2eOrder
	json.Unmarshal(s.do("GET", "/api/v1/orders/"+oid, "", 200), &o)
	return o
}

// buy previews the seeds' example cart (30.00 + 40.00 + 50.00 at store
// 1001, 满99减9) with coupon cid, orders it at the previewed payable, pays
// it at the simulator and waits until it is paid; it returns the order.
func (s *shopper) buy(cid string) e2eOrder {
	s.t.Helper()
	cart := `{"store_id":"1001","items":[{"sku_id":"1001030","qty":1},{"sku_id":"1001031","qty":1},{"sku_id":"1001032","qty":1}],` +
		`"coupon_ids":["` + cid + `"]`
	var pv struct {
		Total, Payable int64
		Discounts      []struct{ Kind string }
	}
	json.Unmarshal(s.do("POST", "/api/v1/orders/preview", cart+"}", 200), &pv)
	if pv.Total != 12000 || pv.Payable != 12000-900-1000 || len(pv.Discounts) != 2 {
		s.t.Fatalf("preview: %+v; want 120.00 - 9.00 (满99减9) - 10.00 (the coupon)", pv)
	}
	var created struct {
		OrderID string `json:"order_id"`
		Payable int64  `json:"payable"`
	}
	json.Unmarshal(s.do("POST", "/api/v1/orders", cart+fmt.Sprintf(`,"expected_payable":%d}`, pv.Payable), 201), &created)
	var p struct {
		PayURL string `json:"pay_url"`
	}
	json.Unmarshal(s.do("POST", "/api/v1/orders/"+created.OrderID+"/pay", `{"channel":"wechatpay"}`, 201), &p)
	if status, b, err := call(p.PayURL, "POST", "", "", ""); err != nil || status != 200 {
		s.t.Fatalf("payer pays: %d %s %v", status, b, err)
	}
	eventually.True(s.t, 20*time.Second, "the order paid", func() bool { return s.order(created.OrderID).Status == "paid" })
	if st := s.coupon(cid); st != "used" {
		s.t.Fatalf("coupon of the paid order is %q, want used", st)
	}
	o := s.order(created.OrderID)
	var sum int64
	for _, l := range o.Items {
		sum += l.Payable
	}
	if o.Payable != pv.Payable || sum != o.Payable || len(o.Items) != 3 {
		s.t.Fatalf("order %+v: lines sum to %d, want %d", o, sum, pv.Payable)
	}
	return o
}

type refundRow struct {
	Amount int64  `json:"amount"`
	State  string `json:"state"`
	Kind   string `json:"kind"`
}

func refundsOf(t *testing.T, base, admin, oid string) []refundRow {
	t.Helper()
	status, b, err := call(base, "GET", "/admin/v1/orders/"+oid+"/refunds", admin, "")
	var out struct{ Refunds []refundRow }
	if err != nil || status != 200 || json.Unmarshal(b, &out) != nil {
		t.Fatalf("refunds of %s: %d %s %v", oid, status, b, err)
	}
	return out.Refunds
}

// paymentRefunded is what the ledger has refunded of the order's payment.
func paymentRefunded(t *testing.T, base, admin, oid string) int64 {
	t.Helper()
	_, b, _ := call(base, "GET", "/admin/v1/orders/"+oid+"/payments", admin, "")
	var ps struct {
		Payments []struct {
			Refunded int64 `json:"refunded"`
		}
	}
	json.Unmarshal(b, &ps)
	if len(ps.Payments) != 1 {
		t.Fatalf("payments of %s: %s", oid, b)
	}
	return ps.Payments[0].Refunded
}

// TestRefunds runs the real binary: an order of the seeds' example with
// the demo coupon, paid, accepted at the POS, one line refunded by the
// POS: the refund is exactly that line's apportioned payable, at the
// channel too, the coupon stays used, and the customer's and the POS's
// sockets are told. Another order with a coupon, paid and cancelled by its
// customer before the store accepted it: all of its payable comes back,
// the store can no longer accept it, and the coupon is available again.
func TestRefunds(t *testing.T) {
	t.Parallel()
	addr := freeAddr(t)
	p := start(t, addr, "serve", "--addr", addr, "--admin-token", refundsAdmin, "--seed-demo", "--data", t.TempDir(), "--log-level", "warn")
	refunds(t, p.base, p.base)
}

// TestRefundsSeparateRoles is TestRefunds on PostgreSQL (2 databases),
// Redis and an external NATS, with the roles in two processes: customers,
// sockets and the simulator on one, the stores' fulfilment (the POS's HTTP
// calls) and the worker on the other. The customer's cancel withdraws the
// order from a store whose fulfilment runs elsewhere.
func TestRefundsSeparateRoles(t *testing.T) {
	t.Parallel()
	dbs := pgURLs(t, 2)
	front, back := freeAddr(t), freeAddr(t)
	common := []string{"--admin-token", refundsAdmin, "--db", dbs[0], "--db", dbs[1], "--db-max-conns", "6", "--kv", redisURL(t),
		"--bus", bustest.Namespaced(t, bustest.ExternalURL(t)), "--pay-url", "http://" + front, "--log-level", "warn"}
	f := start(t, front, append([]string{"serve", "--roles", "api,push,paysim", "--addr", front, "--seed-demo", "--data", t.TempDir()}, common...)...)
	b := start(t, back, append([]string{"serve", "--roles", "fulfil,worker", "--addr", back, "--data", t.TempDir()}, common...)...)
	refunds(t, f.base, b.base)
}

const refundsAdmin = "e2e-admin"

// refunds is the refunds scenario against a cluster whose customer API,
// sockets and operator API answer at base and whose POS HTTP calls answer
// at posBase.
func refunds(t *testing.T, base, posBase string) {
	const admin = refundsAdmin
	var st struct {
		POSKey string `json:"pos_key"`
	}
	_, b, _ := call(base, "GET", "/admin/v1/stores/1001", admin, "")
	if json.Unmarshal(b, &st); st.POSKey == "" {
		t.Fatalf("no POS key: %s", b)
	}
	pos := &shopper{t: t, base: posBase, token: st.POSKey}

	// A line refunded after acceptance.
	alice := &shopper{t: t, base: base, token: mustLogin(t, base, "+8613500000001")}
	cid := alice.claim()
	custWS := dialWS(t, base, "/api/v1/ws", alice.token, "")
	posWS := dialWS(t, base, "/pos/v1/ws", pos.token, "")
	o := alice.buy(cid)
	eventually.True(t, 20*time.Second, "the store accepts", func() bool {
		status, _, _ := call(pos.base, "POST", "/pos/v1/orders/"+o.OrderID+"/accept", pos.token, "")
		return status == 200
	})
	eventually.True(t, 20*time.Second, "the order accepted", func() bool { return alice.order(o.OrderID).Status == "accepted" })
	var want int64
	for _, l := range o.Items {
		if l.SKU == "1001031" {
			want = l.Payable
		}
	}
	var refund struct {
		Amount int64    `json:"amount"`
		SKUs   []string `json:"sku_ids"`
	}
	json.Unmarshal(pos.do("POST", "/pos/v1/orders/"+o.OrderID+"/refund", `{"sku_ids":["1001031"],"reason":"out of it"}`, 201), &refund)
	if want == 0 || refund.Amount != want || len(refund.SKUs) != 1 {
		t.Fatalf("refund of sku 1001031: %+v, want its apportioned payable %d", refund, want)
	}
	eventually.True(t, 20*time.Second, "the refund made at the channel", func() bool {
		rs := refundsOf(t, base, admin, o.OrderID)
		return len(rs) == 1 && rs[0].State == "done" && rs[0].Amount == want && paymentRefunded(t, base, admin, o.OrderID) == want
	})
	after := alice.order(o.OrderID)
	if after.Status != "accepted" || after.Refunded != want {
		t.Fatalf("order after the refund: %+v; want accepted, %d refunded", after, want)
	}
	for _, l := range after.Items {
		if (l.SKU == "1001031") != (l.Refunded == l.Payable && l.Refunded > 0) {
			t.Fatalf("line %+v: only sku 1001031 is refunded", l)
		}
	}
	if st := alice.coupon(cid); st != "used" {
		t.Fatalf("coupon after a refund of one line is %q, want used", st)
	}
	for _, s := range []struct {
		name string
		ws   *pushtest.Conn
	}{{"customer", custWS}, {"POS", posWS}} {
		m, _, err := s.ws.Until(20*time.Second, func(m pushtest.Msg) bool { return m.Type == "order.refunded" && m.OrderID == o.OrderID })
		if err != nil || m.Amount != want || m.Status != "accepted" {
			t.Fatalf("the %s's socket: %+v %v; want order.refunded of %d fen", s.name, m, err, want)
		}
	}

	// A paid order cancelled by its customer before the store accepted it.
	bob := &shopper{t: t, base: base, token: mustLogin(t, base, "+8613500000002")}
	cid2 := bob.claim()
	o2 := bob.buy(cid2)
	var cancelled e2eOrder
	json.Unmarshal(bob.do("POST", "/api/v1/orders/"+o2.OrderID+"/cancel", "", 200), &cancelled)
	if cancelled.Refunded != o2.Payable || (cancelled.Status != "refunding" && cancelled.Status != "refunded") {
		t.Fatalf("cancel of the paid order: %+v", cancelled)
	}
	if status, b, _ := call(pos.base, "POST", "/pos/v1/orders/"+o2.OrderID+"/accept", pos.token, ""); status != 409 || !strings.Contains(string(b), "order_cancelled") {
		t.Fatalf("accept of the cancelled order: %d %s", status, b)
	}
	eventually.True(t, 20*time.Second, "the cancelled order refunded", func() bool { return bob.order(o2.OrderID).Status == "refunded" })
	if rs := refundsOf(t, base, admin, o2.OrderID); len(rs) != 1 || rs[0].Amount != o2.Payable || rs[0].State != "done" {
		t.Fatalf("refunds of the cancelled order: %+v, want one of %d fen", rs, o2.Payable)
	}
	if got := paymentRefunded(t, base, admin, o2.OrderID); got != o2.Payable {
		t.Fatalf("payment refunded %d, want %d", got, o2.Payable)
	}
	if st := bob.coupon(cid2); st != "available" {
		t.Fatalf("coupon of the cancelled paid order is %q, want available", st)
	}
	t.Logf("line refund %d fen of %d; cancel refunded %d fen", want, o.Payable, o2.Payable)
}
