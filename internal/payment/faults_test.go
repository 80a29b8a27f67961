package payment_test

import (
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/surge-platform/surge/internal/eventually"
	"github.com/surge-platform/surge/internal/order"
	"github.com/surge-platform/surge/internal/payment"
	"github.com/surge-platform/surge/internal/payment/paysim"
)

// Callbacks the simulator sends twice (two notices per payment, at once)
// and out of order (held and sent in reverse, in batches) settle every paid
// order exactly once, and every copy is acknowledged.
func TestReorderedAndDuplicatedCallbacksSettleOnce(t *testing.T) {
	t.Parallel()
	e := mustStart(t, envOpts{})
	for _, ch := range channels {
		e.mustFaults(ch, paysim.Faults{Reorder: true, DuplicateCallbacks: true})
	}
	const orders = 12
	type paid struct {
		oid int64
		st  started
	}
	var all []paid
	c := e.mustCustomer()
	for i := range orders {
		oid := c.mustOrder()
		all = append(all, paid{oid, c.mustPay(oid, channels[i%2])})
	}
	// Paid in order; the callbacks arrive in another order, twice each.
	for _, p := range all {
		e.mustPayAtChannel(p.st)
	}
	for _, ch := range channels {
		e.waitStats(ch, "every callback acknowledged", func(s paysim.Stats) bool {
			return s.Paid == orders/2 && s.Pending == 0 && s.Held == 0
		})
		if s := e.n.Sim.Stats(ch); s.Acked != orders || s.GaveUp != 0 || s.Dropped != 0 {
			t.Errorf("%s: %+v; want %d callbacks (two per payment) acknowledged", ch, s, orders)
		}
	}
	for _, p := range all {
		e.mustSettledOnce(p.oid, p.st.PaymentID)
		if an := e.anomaliesOf(p.oid); len(an) != 0 {
			t.Errorf("order %d: anomalies %+v, want none", p.oid, an)
		}
	}
}

// A second successful payment of an order (on the other channel, or a new
// payment on the same one) is detected: exactly one payment pays the order,
// the other is refunded at its channel and recorded as a duplicate_payment
// anomaly naming both payments.
func TestSecondPaymentRefunded(t *testing.T) {
	t.Parallel()
	e := mustStart(t, envOpts{})
	for _, tc := range []struct{ first, second string }{{"wechatpay", "alipay"}, {"alipay", "wechatpay"}, {"wechatpay", "wechatpay"}} {
		t.Run(tc.first+"_then_"+tc.second, func(t *testing.T) {
			t.Parallel()
			c := e.mustCustomer()
			oid := c.mustOrder()
			p1 := c.mustPay(oid, tc.first)
			p2 := c.mustPay(oid, tc.second) // the order is still unpaid: a second payment may start
			// Both are paid, at the same moment.
			var wg sync.WaitGroup
			for _, st := range []started{p1, p2} {
				wg.Go(func() { e.mustPayAtChannel(st) })
			}
			wg.Wait()
			e.waitPaid(oid, 10*time.Second)
			winner := e.peek(oid).PaymentID
			if winner != p1.PaymentID && winner != p2.PaymentID {
				t.Fatalf("order paid by %d, want %d or %d", winner, p1.PaymentID, p2.PaymentID)
			}
			loser, loserCh := p2, tc.second
			if winner == p2.PaymentID {
				loser, loserCh = p1, tc.first
			}
			eventually.Saw(t, 10*time.Second, "the second payment refunded at its channel", func() (bool, string) {
				s, err := e.sim[loserCh].Query(e.ctx, loser.PaymentID)
				an := e.anomaliesOf(oid)
				return err == nil && s.State == payment.Refunded && len(an) == 1 && an[0].Refund == "done",
					fmt.Sprintf("channel %s %v, anomalies %+v", s.State, err, an)
			})
			e.mustSettledOnce(oid, winner)
			if s, err := e.sim[map[int64]string{p1.PaymentID: tc.first, p2.PaymentID: tc.second}[winner]].Query(e.ctx, winner); err != nil || s.State != payment.Paid {
				t.Errorf("winner at its channel: %s %v, want paid", s.State, err)
			}
			if p := e.payment(oid, loser.PaymentID); p.State != "refund" {
				t.Errorf("refunded payment is %s in the ledger, want refund", p.State)
			}
			an := e.anomaliesOf(oid)
			if len(an) != 1 || an[0].Kind != "duplicate_payment" || an[0].PaymentID != loser.PaymentID || an[0].OtherID != winner ||
				an[0].Refund != "done" {
				t.Errorf("anomalies %+v; want one duplicate_payment of payment %d, other %d, refund done", an, loser.PaymentID, winner)
			}
		})
	}
}

// Paying an order that is cancelled, expired or already paid is refused
// with 409 order_not_payable before any channel is called: no payment row,
// no transaction at the simulator.
func TestPayingUnpayableOrderRefused(t *testing.T) {
	t.Parallel()
	const ttl = 2 * time.Second
	e := mustStart(t, envOpts{orderTTL: ttl})
	txns := func() int64 { return e.n.Sim.Stats("wechatpay").Transactions + e.n.Sim.Stats("alipay").Transactions }
	refused := func(t *testing.T, c *customer, oid int64, wantPayments int) {
		t.Helper()
		before := txns()
		for _, ch := range []string{"", "wechatpay", "alipay"} {
			if _, r := c.pay(oid, ch); r.status != 409 || r.code() != order.ErrNotPayable.Code {
				t.Errorf("pay at %q: %d %s, want 409 %s", ch, r.status, r.body, order.ErrNotPayable.Code)
			}
		}
		if n := txns(); n != before {
			t.Errorf("the simulator has %d new transactions, want none", n-before)
		}
		if ps := e.payments(oid); len(ps) != wantPayments {
			t.Errorf("order has %d payments, want %d", len(ps), wantPayments)
		}
	}
	t.Run("cancelled", func(t *testing.T) {
		c := e.mustCustomer()
		oid := c.mustOrder()
		if r := e.do("POST", fmt.Sprintf("/api/v1/orders/%d/cancel", oid), c.token, nil, nil); r.status != 200 {
			t.Fatalf("cancel: %d %s", r.status, r.body)
		}
		refused(t, c, oid, 0)
	})
	t.Run("expired", func(t *testing.T) {
		c := e.mustCustomer()
		oid := c.mustOrder()
		exp := e.peek(oid).ExpiresAt
		for time.Now().Before(exp) { // the pay request comes just after expires_at
			time.Sleep(10 * time.Millisecond)
		}
		refused(t, c, oid, 0)
		if o := e.peek(oid); o.Status != order.Cancelled || o.Reason != order.ByExpiry {
			t.Errorf("order %s (%q), want cancelled by expiry", o.Status, o.Reason)
		}
	})
	t.Run("paid", func(t *testing.T) {
		c := e.mustCustomer()
		oid := c.mustOrder()
		st := c.mustPay(oid, "wechatpay")
		e.mustPayAtChannel(st)
		e.mustSettledOnce(oid, st.PaymentID)
		refused(t, c, oid, 1)
	})
}

// A channel outage mid-flow: routed payments move to the other channel
// (failing over while the router still believes in the broken one, then
// not trying it at all); asking for the broken channel says 503
// channel_unavailable; payments paid at the channel before the outage,
// whose callbacks it held back and then lost, are repaired by the active
// queries once it is back.
func TestChannelOutageMidFlow(t *testing.T) {
	t.Parallel()
	e := mustStart(t, envOpts{payQuery: 2 * time.Second})
	c := e.mustCustomer()

	// Payments started at wechatpay (not paid): a record of successful
	// calls, so the router keeps wechatpay in rotation for a while after the
	// outage begins.
	for range 9 {
		c.mustPay(c.mustOrder(), "wechatpay")
	}
	// Paid at wechatpay just before the outage; their callbacks are not
	// sent yet, nor are they queried yet.
	e.mustFaults("wechatpay", paysim.Faults{CallbackDelayMS: 3000})
	const stuck = 3
	var before []int64
	var beforeSt []started
	for range stuck {
		oid := c.mustOrder()
		st := c.mustPay(oid, "wechatpay")
		e.mustPayAtChannel(st)
		before, beforeSt = append(before, oid), append(beforeSt, st)
	}
	e.mustFaults("wechatpay", paysim.Faults{CallbackDelayMS: 3000, Outage: true})
	if s := e.n.Sim.Stats("wechatpay"); s.Attempts != 0 {
		t.Fatalf("wechatpay tried %d callbacks before the outage; the test needs them held back", s.Attempts)
	}

	// Routed payments while wechatpay is down but the router has not noticed:
	// each lands on alipay, after one failed try at wechatpay at most (about
	// half of them pick wechatpay first).
	var moved []started
	var movedOrders []int64
	routed := func(phase string, n int) {
		for range n {
			oid := c.mustOrder()
			st, r := c.pay(oid, "")
			if r.status != 201 || st.Channel != "alipay" {
				t.Errorf("%s: routed payment of order %d: %d %s; want 201 on alipay", phase, oid, r.status, r.body)
				continue
			}
			moved, movedOrders = append(moved, st), append(movedOrders, oid)
		}
	}
	routed("before the router noticed", 16)

	// The held callbacks are parked by the outage, and the failed calls (the
	// routed tries and the active queries of the stuck payments) take wechatpay
	// out of the rotation.
	e.waitStats("wechatpay", "parked the held callbacks", func(s paysim.Stats) bool { return s.Parked == stuck })
	eventually.Saw(t, 10*time.Second, "router takes wechatpay out", func() (bool, string) {
		for _, s := range e.n.Payments.Router.States() {
			if s.Name == "wechatpay" {
				return s.Out && s.Effective == 0, fmt.Sprintf("%+v", s)
			}
		}
		return false, "no wechatpay"
	})
	// Asked for explicitly while down: a clear code, no payment started.
	for range 3 {
		oid := c.mustOrder()
		if _, r := c.pay(oid, "wechatpay"); r.status != 503 || r.code() != payment.ErrChannelDown.Code {
			t.Errorf("explicit wechatpay while down: %d %s; want 503 %s", r.status, r.body, payment.ErrChannelDown.Code)
		}
		if ps := e.payments(oid); len(ps) != 0 {
			t.Errorf("explicit wechatpay while out of rotation wrote payments %+v", ps)
		}
	}
	routed("after the router noticed", 4)

	// The moved payments work on alipay.
	for i, st := range moved {
		e.mustPayAtChannel(st)
		e.mustSettledOnce(movedOrders[i], st.PaymentID)
	}
	for _, oid := range before {
		if o := e.peek(oid); o.Status != order.PendingPayment {
			t.Errorf("stuck order %d is %s during the outage, want pending_payment", oid, o.Status)
		}
	}

	// Recovery; the parked callbacks are lost on the way (dropped), so only
	// the active queries can repair the stuck payments.
	e.mustFaults("wechatpay", paysim.Faults{DropCallbacks: true})
	for i, oid := range before {
		e.waitPaid(oid, 20*time.Second)
		e.mustSettledOnce(oid, beforeSt[i].PaymentID)
	}
	if s := e.n.Sim.Stats("wechatpay"); s.Dropped != stuck || s.Acked != 0 {
		t.Errorf("wechatpay %+v; want the %d held callbacks dropped and none delivered", s, stuck)
	}
	for _, oid := range append(slices.Clone(before), movedOrders...) {
		if an := e.anomaliesOf(oid); len(an) != 0 {
			t.Errorf("order %d: anomalies %+v", oid, an)
		}
	}
}

// A missing callback: the payment is found paid by the active query and
// the order becomes paid; and an order read over the API while its payment
// is paid at the channel but unconfirmed queries the channel and shows paid.
func TestMissingCallback(t *testing.T) {
	t.Parallel()
	t.Run("active query", func(t *testing.T) {
		t.Parallel()
		e := mustStart(t, envOpts{payQuery: time.Second})
		c := e.mustCustomer()
		for _, ch := range channels {
			e.mustFaults(ch, paysim.Faults{DropCallbacks: true})
			oid := c.mustOrder()
			st := c.mustPay(oid, ch)
			e.mustPayAtChannel(st)
			e.waitPaid(oid, 10*time.Second)
			e.mustSettledOnce(oid, st.PaymentID)
			if s := e.n.Sim.Stats(ch); s.Dropped != 1 || s.Acked != 0 {
				t.Errorf("%s: %+v; want the callback dropped, none delivered", ch, s)
			}
		}
	})
	t.Run("order read", func(t *testing.T) {
		t.Parallel()
		e := mustStart(t, envOpts{}) // no active queries during the test
		c := e.mustCustomer()
		for _, ch := range channels {
			e.mustFaults(ch, paysim.Faults{DropCallbacks: true})
			oid := c.mustOrder()
			st := c.mustPay(oid, ch)
			e.mustPayAtChannel(st)
			e.waitStats(ch, "dropped the callback", func(s paysim.Stats) bool { return s.Dropped == 1 })
			// Only a read can find out now. Reads within 2 s of the payment's
			// start leave it to its callback; a later one asks the channel,
			// off its own path (it answers from the database at once), and
			// a next read shows what the channel said.
			if o := e.peek(oid); o.Status != order.PendingPayment {
				t.Fatalf("order %s before any read, want pending_payment", o.Status)
			}
			deadline := time.Now().Add(10 * time.Second)
			for {
				got := c.getOrder(oid)
				if got.Status == order.Paid {
					if got.PaymentID != st.PaymentID {
						t.Errorf("read shows paid by %d, want %d", got.PaymentID, st.PaymentID)
					}
					break
				}
				if got.Status != order.PendingPayment || time.Now().After(deadline) {
					t.Fatalf("%s: read shows %s; want paid within 10 s", ch, got.Status)
				}
				time.Sleep(100 * time.Millisecond)
			}
			e.mustSettledOnce(oid, st.PaymentID)
		}
	})
}

// A payment that succeeds on an order the customer cancelled meanwhile is
// refunded at its channel and recorded as paid_after_cancel; the order
// stays cancelled and is never paid. The payer paid just before the
// cancel, and surge had not heard: closing the payment at its channel
// finds it paid, and the query that follows applies it as a late payment.
func TestPaymentAfterCancelRefunded(t *testing.T) {
	t.Parallel()
	e := mustStart(t, envOpts{})
	for _, ch := range channels {
		t.Run(ch, func(t *testing.T) {
			t.Parallel()
			c := e.mustCustomer()
			oid, st := e.paidDropped(c, ch) // the payer paid; its callback is lost
			if r := e.do("POST", fmt.Sprintf("/api/v1/orders/%d/cancel", oid), c.token, nil, nil); r.status != 200 {
				t.Fatalf("cancel: %d %s", r.status, r.body)
			}
			eventually.Saw(t, 10*time.Second, "the late payment refunded at its channel", func() (bool, string) {
				s, err := e.sim[ch].Query(e.ctx, st.PaymentID)
				an := e.anomaliesOf(oid)
				return err == nil && s.State == payment.Refunded && len(an) == 1 && an[0].Refund == "done",
					fmt.Sprintf("channel %s %v, anomalies %+v", s.State, err, an)
			})
			e.mustFaults(ch, paysim.Faults{})
			e.waitStats(ch, "callbacks acknowledged", func(s paysim.Stats) bool { return s.Pending == 0 })
			if o := e.peek(oid); o.Status != order.Cancelled || o.Version != 2 || o.PaymentID != 0 {
				t.Errorf("order %s version %d paid by %d; want cancelled version 2, unpaid", o.Status, o.Version, o.PaymentID)
			}
			if out, seen := e.events(oid, order.EvPaid); out+seen != 0 {
				t.Errorf("%d order.paid events of a cancelled order", out+seen)
			}
			if p := e.payment(oid, st.PaymentID); p.State != "refund" {
				t.Errorf("payment is %s in the ledger, want refund", p.State)
			}
			if an := e.anomaliesOf(oid); len(an) != 1 || an[0].Kind != "paid_after_cancel" || an[0].PaymentID != st.PaymentID {
				t.Errorf("anomalies %+v; want one paid_after_cancel of payment %d", an, st.PaymentID)
			}
		})
	}
}

// An order cancelled (or expired) with a payment open at its channel has
// the payment closed there: the payer can no longer pay it, and the
// ledger says closed.
func TestCancelledOrderClosesItsPayment(t *testing.T) {
	t.Parallel()
	eachOf(t, channels, envOpts{}, func(t *testing.T, e *env, ch string, c *customer) {
		oid := c.mustOrder()
		st := c.mustPay(oid, ch)
		if r := e.do("POST", fmt.Sprintf("/api/v1/orders/%d/cancel", oid), c.token, nil, nil); r.status != 200 {
			t.Fatalf("cancel: %d %s", r.status, r.body)
		}
		e.waitPayment(oid, st.PaymentID, "closed")
		if err := paysim.Pay(e.ctx, nil, st.PayURL); !errors.Is(err, paysim.ErrRejected) {
			t.Fatalf("paying a closed payment at %s: %v, want refused", ch, err)
		}
		if s, err := e.sim[ch].Query(e.ctx, st.PaymentID); err != nil || s.State != payment.Closed {
			t.Fatalf("the channel has %+v %v, want closed", s, err)
		}
		if an := e.anomaliesOf(oid); len(an) != 0 {
			t.Fatalf("anomalies %+v", an)
		}
	})
}
