package payment_test

import (
	"encoding/json"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/surge-platform/surge/internal/demo"
	"github.com/surge-platform/surge/internal/eventually"
	"github.com/surge-platform/surge/internal/fulfil"
	"github.com/surge-platform/surge/internal/order"
	"github.com/surge-platform/surge/internal/payment"
	"github.com/surge-platform/surge/internal/payment/paysim"
)

// The proofs of refunds of orders (issue 10) on the payments centre: a
// node with the demo promotions, an order holding a coupon and a
// special-price unit (a per-customer quota), paid and accepted.

// mustCoupon claims the demo template's coupon for c and waits until it is
// in the wallet; it returns the coupon id.
func (c *customer) mustCoupon() string {
	c.e.tb.Helper()
	var list struct {
		Templates []struct {
			ID string `json:"template_id"`
		}
	}
	json.Unmarshal(c.e.do("GET", "/api/v1/coupons", c.token, nil, nil).body, &list)
	if len(list.Templates) != 1 {
		c.e.tb.Fatalf("claimable templates: %+v", list)
	}
	var r resp
	eventually.True(c.e.tb, 10*time.Second, "the claim taken", func() bool { // 503 while a new node rebuilds its counters: try again, as clients do
		r = c.e.do("POST", "/api/v1/coupons/"+list.Templates[0].ID+"/claim", c.token, nil, nil)
		return r.status != 503
	})
	var out struct {
		CouponID string `json:"coupon_id"`
	}
	if json.Unmarshal(r.body, &out); r.status != 201 {
		c.e.tb.Fatalf("claim: %d %s", r.status, r.body)
	}
	eventually.True(c.e.tb, 10*time.Second, "the coupon in the wallet", func() bool { return c.couponState(out.CouponID) == "available" })
	return out.CouponID
}

func (c *customer) couponState(cid string) string {
	var w struct {
		Coupons []struct {
			ID    string `json:"coupon_id"`
			State string
		}
	}
	json.Unmarshal(c.e.do("GET", "/api/v1/me/coupons", c.token, nil, nil).body, &w)
	for _, x := range w.Coupons {
		if x.ID == cid {
			return x.State
		}
	}
	return ""
}

// quota is how many special-price units of sku the customer of order oid
// holds or used.
func (e *env) quota(oid, sku int64) int64 {
	e.tb.Helper()
	o := e.peek(oid)
	var used int64
	err := e.n.DB.ForID(oid).W.QueryRowContext(e.ctx, `SELECT CAST(COALESCE(SUM(used), 0) AS BIGINT) FROM quota_used
		WHERE user_id = $1 AND sku_id = $2`, o.UserID, sku).Scan(&used)
	if err != nil {
		e.tb.Fatal(err)
	}
	return used
}

// TestOrderRefundsChannelDownReordered: two refunds of an accepted order
// (the special-price line, then the rest) made while the channel is down
// wait, pending; when it is back, the channel makes them in the reverse
// order, each asked several times at once and by Repair too. Each is made
// once; the order becomes refunded once, after both; the quota and the
// coupon come back once; the channel's refund notices are recognised as
// surge's own (no anomaly); the payment's refunded is the whole amount.
func TestOrderRefundsChannelDownReordered(t *testing.T) {
	t.Parallel()
	for _, ch := range channels { // WeChat Pay notifies each refund; Alipay all refunded so far
		t.Run(ch, func(t *testing.T) {
			t.Parallel()
			orderRefundsChannelDownReordered(t, ch)
		})
	}
}

func orderRefundsChannelDownReordered(t *testing.T, ch string) {
	e := mustStart(t, envOpts{})
	if err := demo.SeedPromotions(e.ctx, e.n.Catalog, e.n.Promo); err != nil {
		t.Fatal(err)
	}
	c := e.mustCustomer()
	cid := c.mustCoupon()
	special := int64(demo.ExampleStore * 1000)
	body := fmt.Sprintf(`{"store_id":"%d","items":[{"sku_id":"%d","qty":1},{"sku_id":"%d","qty":1},{"sku_id":"%d","qty":1}],"coupon_ids":["%s"]}`,
		demo.ExampleStore, special, demo.ExampleSKU, demo.ExampleSKU+2, cid)
	oid := c.mustPlace(body)
	st := c.mustPay(oid, ch)
	e.mustPayAtChannel(st)
	e.mustSettledOnce(oid, st.PaymentID)
	o := e.peek(oid)
	eventually.True(t, 10*time.Second, "the store accepts", func() bool {
		_, err := e.n.Fulfil.Step(e.ctx, o.StoreID, oid, fulfil.Accepted, "")
		return err == nil
	})
	eventually.True(t, 10*time.Second, "the order accepted", func() bool { return e.peek(oid).Status == order.Accepted })
	if q := e.quota(oid, special); q != 1 || c.couponState(cid) != "used" {
		t.Fatalf("paid: quota %d, coupon %s", q, c.couponState(cid))
	}

	e.mustFaults(ch, paysim.Faults{Outage: true})
	first, err := e.n.Payments.RefundOrder(e.ctx, payment.OrderRefund{OrderID: oid, SKUs: []int64{special}, By: order.ByStore, StoreID: o.StoreID})
	if err != nil || first.State != "pending" || first.Order.Status == order.Refunding {
		t.Fatalf("refund of the special line, channel down: %+v %v", first, err)
	}
	rest, err := e.n.Payments.RefundOrder(e.ctx, payment.OrderRefund{OrderID: oid, By: order.ByOperator})
	if err != nil || rest.State != "pending" || rest.Order.Status != order.Refunding || first.Amount+rest.Amount != o.Payable {
		t.Fatalf("refund of the rest, channel down: %+v %v (first %d, payable %d)", rest, err, first.Amount, o.Payable)
	}
	// Repair keeps out of it until the refunds are asked for below.
	if _, err := e.n.DB.ForID(oid).W.ExecContext(e.ctx, `UPDATE refunds SET retry_at = $1 WHERE order_id = $2`,
		time.Now().Add(time.Hour).UnixMilli(), oid); err != nil {
		t.Fatal(err)
	}
	if q := e.quota(oid, special); q != 1 || c.couponState(cid) != "used" {
		t.Fatalf("refunds pending: quota %d, coupon %s; want both still used", q, c.couponState(cid))
	}
	e.mustFaults(ch, paysim.Faults{})

	// The rest first: the order stays refunding (the first is on its way).
	if err := payment.SendRefund(e.ctx, e.n.Payments, rest.RefundID); err != nil {
		t.Fatal(err)
	}
	if got := e.peek(oid); got.Status != order.Refunding || e.quota(oid, special) != 1 || c.couponState(cid) != "used" {
		t.Fatalf("the rest made first: %s, quota %d, coupon %s", got.Status, e.quota(oid, special), c.couponState(cid))
	}
	// Then everything again, many times at once, and Repair.
	if _, err := e.n.DB.ForID(oid).W.ExecContext(e.ctx, `UPDATE refunds SET retry_at = 0 WHERE order_id = $1`, oid); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			id := []int64{first.RefundID, rest.RefundID}[i%2]
			if err := payment.SendRefund(e.ctx, e.n.Payments, id); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Go(func() {
		if err := e.n.Payments.Repair(e.ctx); err != nil {
			t.Error(err)
		}
	})
	wg.Wait()

	got := e.peek(oid)
	if got.Status != order.Refunded || got.Refunded != o.Payable || got.Version != o.Version+4 { // accepted, 2 refunds recorded, refunded
		t.Fatalf("after both refunds: %s version %d (from %d), refunded %d of %d", got.Status, got.Version, o.Version, got.Refunded, o.Payable)
	}
	if q := e.quota(oid, special); q != 0 {
		t.Fatalf("quota %d after the refunds, want 0", q)
	}
	if st := c.couponState(cid); st != "available" {
		t.Fatalf("coupon %s after the order was refunded in full, want available", st)
	}
	refunds, err := e.n.Payments.RefundsOf(e.ctx, oid)
	if err != nil || len(refunds) != 2 || refunds[0].State != "done" || refunds[1].State != "done" {
		t.Fatalf("refunds %+v %v, want two done", refunds, err)
	}
	eventually.Saw(t, 10*time.Second, "the channel's word and the ledger agree", func() (bool, string) {
		s, err := e.sim[ch].Query(e.ctx, st.PaymentID)
		p := e.payment(oid, st.PaymentID)
		return err == nil && s.Refunded == o.Payable && p.Refunded == o.Payable && p.State == "settled",
			fmt.Sprintf("channel %+v %v, payment %+v", s, err, *p)
	})
	e.waitStats(ch, "every refund notice acknowledged", func(s paysim.Stats) bool { return s.Pending == 0 })
	if an := e.anomaliesOf(oid); len(an) != 0 {
		t.Fatalf("anomalies %+v: surge's own refunds taken for refunds outside surge", an)
	}
	eventually.Saw(t, 10*time.Second, "the refund events out, once each", func() (bool, string) {
		ro, rs := e.events(oid, order.EvRefunding)
		do, ds := e.events(oid, order.EvRefunded)
		return ro == 0 && rs == 2 && do == 0 && ds == 2, fmt.Sprintf("refunding %d+%d, refunded %d+%d", ro, rs, do, ds)
	})
}

// TestWithdrawnRefundedFromEvent: a customer's cancel that withdrew the
// order from its store but died before refunding it is finished from
// order.withdrawn by the worker; a late, repeated event changes nothing.
func TestWithdrawnRefundedFromEvent(t *testing.T) {
	t.Parallel()
	e := mustStart(t, envOpts{})
	c := e.mustCustomer()
	oid := c.mustOrder()
	st := c.mustPay(oid, "alipay")
	e.mustPayAtChannel(st)
	e.mustSettledOnce(oid, st.PaymentID)
	o := e.peek(oid)
	// The first half of a cancel: the store's record only.
	if ok, err := e.n.Fulfil.Withdraw(e.ctx, oid, o.StoreID, o.UserID, order.ByCustomer); err != nil || !ok {
		t.Fatalf("withdraw: %v %v", ok, err)
	}
	eventually.Saw(t, 10*time.Second, "the order refunded from order.withdrawn", func() (bool, string) {
		got := e.peek(oid)
		return got.Status == order.Refunded, string(got.Status)
	})
	again, err := e.n.Payments.RefundOrder(e.ctx, payment.OrderRefund{OrderID: oid, By: order.ByCustomer, UserID: o.UserID})
	if err != nil || again.Order.Status != order.Refunded || again.RefundID != 0 {
		t.Fatalf("the cancel's request, late: %+v %v; want the order as it is", again, err)
	}
	refunds, err := e.n.Payments.RefundsOf(e.ctx, oid)
	if err != nil || len(refunds) != 1 || refunds[0].Amount != o.Payable || refunds[0].State != "done" {
		t.Fatalf("refunds %+v %v, want one of %d fen", refunds, err, o.Payable)
	}
	if s, err := e.sim["alipay"].Query(e.ctx, st.PaymentID); err != nil || s.Refunded != o.Payable {
		t.Fatalf("channel: %+v %v", s, err)
	}
}
