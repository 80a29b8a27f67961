package payment_test

import (
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/surge-platform/surge/internal/eventually"
	"github.com/surge-platform/surge/internal/order"
	"github.com/surge-platform/surge/internal/payment"
	"github.com/surge-platform/surge/internal/payment/paysim"
)

// The proofs of issue 16: a refund made at the channel outside surge (in
// the simulator's merchant console) is never taken for a payment, on both
// channels, whichever way surge learns of it (the active query, a
// callback, reconciliation), and every order conserves its money: what the
// channels keep of its payments (captured - refunded) is what the ledger
// keeps.

// eachChannel runs f on one node started with o, for each channel in
// parallel, each with a customer of its own.
func eachChannel(t *testing.T, o envOpts, f func(t *testing.T, e *env, ch string, c *customer)) {
	eachOf(t, channels, o, f)
}

// eachOf is eachChannel over the channels in list.
func eachOf(t *testing.T, list []string, o envOpts, f func(t *testing.T, e *env, ch string, c *customer)) {
	e := mustStart(t, o)
	for _, ch := range list {
		t.Run(ch, func(t *testing.T) {
			t.Parallel()
			f(t, e, ch, e.mustCustomer())
		})
	}
}

// console refunds amount fen of payment pid in the simulator's merchant
// console (0 = all that is left), over HTTP with the admin token.
func (e *env) console(pid, amount int64) paysim.ConsoleRefund {
	e.tb.Helper()
	r, err := paysim.Control{BaseURL: e.base, Token: adminToken, HTTP: httpc}.Refund(e.ctx, "", pid, amount)
	if err != nil {
		e.tb.Fatalf("console refund of payment %d: %v", pid, err)
	}
	return r
}

// consoleDropped refunds payment pid at the console while the channel
// drops callbacks, and waits until the refund's callback was dropped: a
// fault cleared before that would let it through.
func (e *env) consoleDropped(channel string, pid, amount int64) paysim.ConsoleRefund {
	e.tb.Helper()
	dropped := e.n.Sim.Stats(channel).Dropped
	r := e.console(pid, amount)
	e.waitStats(channel, "dropped the refund's callback", func(s paysim.Stats) bool { return s.Dropped > dropped })
	return r
}

// channelNotice is the notice channel would send now about payment pid:
// the channel's own view of it, as it is.
func (e *env) channelNotice(channel string, pid int64) payment.Notice {
	e.tb.Helper()
	st, err := e.sim[channel].Query(e.ctx, pid)
	if err != nil {
		e.tb.Fatalf("query %s payment %d: %v", channel, pid, err)
	}
	return payment.Notice{Status: st, NoticeID: "test" + fmt.Sprint(time.Now().UnixNano()), Timestamp: time.Now()}
}

// mustCallback posts n signed by channel and wants the channel's ack.
func (e *env) mustCallback(channel string, n payment.Notice) {
	e.tb.Helper()
	h, b := e.mustEncode(channel, n)
	if r := e.notify(channel, h, b); r.status != 200 || string(r.body) != acks[channel] {
		e.tb.Fatalf("%s callback %+v: %d %s", channel, n.Status, r.status, r.body)
	}
}

// queryNow makes payment pid due for the worker's active query.
func (e *env) queryNow(pid int64) {
	e.tb.Helper()
	if _, err := e.n.DB.ForID(pid).W.ExecContext(e.ctx, `UPDATE payments SET query_at = 0 WHERE id = $1`, pid); err != nil {
		e.tb.Fatal(err)
	}
}

// kept sums, over order oid's payments, what the channels keep (captured
// minus refunded, as each answers a query) and what the ledger keeps.
func (e *env) kept(oid int64) (channel, ledger int64, saw string) {
	e.tb.Helper()
	for _, p := range e.payments(oid) {
		st, err := e.sim[p.Channel].Query(e.ctx, p.ID)
		if err != nil {
			e.tb.Fatalf("query %s payment %d: %v", p.Channel, p.ID, err)
		}
		if st.State == payment.Paid || st.State == payment.Refunded {
			channel += st.Amount - st.Refunded
		}
		ledger += p.Kept
		saw += fmt.Sprintf("[payment %d %s: channel %s %d-%d, ledger %d-%d kept %d] ", p.ID, p.Channel, st.State, st.Amount, st.Refunded,
			p.Amount, p.Refunded, p.Kept)
	}
	return channel, ledger, saw
}

// mustConserved waits until order oid conserves its money (what the
// channels keep of its payments is what the ledger keeps; refunds in
// flight settle), and wants that to be want.
func (e *env) mustConserved(oid, want int64) {
	e.tb.Helper()
	eventually.Saw(e.tb, 10*time.Second, fmt.Sprintf("order %d conserves its money at %d fen", oid, want), func() (bool, string) {
		ch, led, saw := e.kept(oid)
		return ch == led && led == want, saw
	})
}

// mustAnomaly wants exactly one anomaly of order oid, of kind about payment
// pid with the amounts given, and returns it.
func (e *env) mustAnomaly(oid, pid int64, kind string, captured, refunded int64) payment.Anomaly {
	e.tb.Helper()
	an := e.anomaliesOf(oid)
	if len(an) != 1 || an[0].Kind != kind || an[0].PaymentID != pid || an[0].Captured != captured || an[0].Refunded != refunded ||
		an[0].RefundedBy != payment.RefundedOutside || !strings.Contains(an[0].Detail, fmt.Sprint(oid)) {
		e.tb.Fatalf("anomalies of order %d: %+v; want one %s of payment %d, captured %d, refunded %d outside surge, naming the order",
			oid, an, kind, pid, captured, refunded)
	}
	return an[0]
}

// mustUnpaid wants order oid unpaid: pending_payment at version 1, no
// order.paid event.
func (e *env) mustUnpaid(oid int64) {
	e.tb.Helper()
	if o := e.peek(oid); o.Status != order.PendingPayment || o.Version != 1 || o.PaymentID != 0 {
		e.tb.Errorf("order %d: %s version %d paid by %d; want pending_payment version 1, unpaid", oid, o.Status, o.Version, o.PaymentID)
	}
	if out, seen := e.events(oid, order.EvPaid); out+seen != 0 {
		e.tb.Errorf("order %d has %d order.paid events, want none", oid, out+seen)
	}
}

// waitPayment waits until payment pid of order oid is in state.
func (e *env) waitPayment(oid, pid int64, state string) *payment.Payment {
	e.tb.Helper()
	var p *payment.Payment
	eventually.Saw(e.tb, 10*time.Second, fmt.Sprintf("payment %d %s", pid, state), func() (bool, string) {
		p = e.payment(oid, pid)
		return p.State == state, fmt.Sprintf("%+v", *p)
	})
	return p
}

// paidDropped is an order paid at channel whose callback the simulator
// dropped: the payer paid, surge has heard nothing.
func (e *env) paidDropped(c *customer, channel string) (int64, started) {
	e.tb.Helper()
	dropped := e.n.Sim.Stats(channel).Dropped
	e.mustFaults(channel, paysim.Faults{DropCallbacks: true})
	oid := c.mustOrder()
	st := c.mustPay(oid, channel)
	e.mustPayAtChannel(st)
	e.waitStats(channel, "dropped the callback", func(s paysim.Stats) bool { return s.Dropped > dropped })
	return oid, st
}

// A payment refunded at the channel before surge heard of it, in full or
// in part, never pays its order, whichever way surge hears: the active
// query, the refund's callback, a late paid callback; a signed refunded
// callback for a payment the payer never made pays nothing either. Each is
// recorded as refunded_outside with what was captured and refunded, and
// what was left is refunded by surge.
//
// Where a protocol's query cannot say it, the day's bill does: WeChat
// Pay's query says a transaction is refunded, not by how much (surge
// raises refunded_amount_unknown and waits for the bill), and Alipay's
// does not show a refund in part at all (the payment pays its order, and
// the bill raises paid_order_refunded_outside).
func TestRefundedOutsideBeforeApplied(t *testing.T) {
	t.Parallel()
	day := time.Now().UTC()
	if day.Add(time.Minute).Day() != day.Day() {
		t.Skip("too close to midnight UTC: a payment would straddle two bills")
	}
	// queried makes surge query payment pid of order oid, refunded at
	// channel ch outside surge, and if the query cannot tell, reconciles
	// the day.
	queried := func(t *testing.T, e *env, ch string, oid, pid int64) {
		e.queryNow(pid)
		if ch != "wechatpay" {
			return
		}
		eventually.Saw(t, 10*time.Second, "refunded_amount_unknown", func() (bool, string) {
			an := e.anomaliesOf(oid)
			return len(an) == 1 && an[0].Kind == "refunded_amount_unknown", fmt.Sprintf("%+v", an)
		})
		e.mustUnpaid(oid)
		if _, err := e.n.Payments.Reconcile(e.ctx, ch, day); err != nil {
			t.Fatal(err)
		}
	}
	eachChannel(t, envOpts{}, func(t *testing.T, e *env, ch string, c *customer) { // no active queries unless a test makes a payment due
		t.Run("query, refunded in full", func(t *testing.T) {
			oid, st := e.paidDropped(c, ch)
			amount := e.peek(oid).Payable
			if r := e.console(st.PaymentID, 0); r.Amount != amount || r.Channel != ch {
				t.Fatalf("console refund %+v", r)
			}
			queried(t, e, ch, oid, st.PaymentID)
			p := e.waitPayment(oid, st.PaymentID, "reversed")
			if p.Refunded != amount || p.Kept != 0 || p.PaidAt.IsZero() {
				t.Errorf("payment %+v; want refunded %d, kept 0, with paid_at", *p, amount)
			}
			a := e.mustAnomaly(oid, st.PaymentID, "refunded_outside", amount, amount)
			if a.Refund != "" {
				t.Errorf("anomaly %+v: nothing was left, surge refunds nothing", a)
			}
			e.mustUnpaid(oid)
			e.mustConserved(oid, 0)
		})
		t.Run("query, refunded in part", func(t *testing.T) {
			oid, st := e.paidDropped(c, ch)
			amount := e.peek(oid).Payable
			e.console(st.PaymentID, 100)
			if ch == "alipay" { // the query shows the trade paid: it pays its order, and the bill tells
				e.queryNow(st.PaymentID)
				e.waitPaid(oid, 10*time.Second)
				if _, err := e.n.Payments.Reconcile(e.ctx, ch, day); err != nil {
					t.Fatal(err)
				}
				e.mustAnomaly(oid, st.PaymentID, "paid_order_refunded_outside", amount, 100)
				e.mustConserved(oid, amount-100)
				return
			}
			queried(t, e, ch, oid, st.PaymentID)
			e.waitPayment(oid, st.PaymentID, "reversed")
			eventually.Saw(t, 10*time.Second, "the rest refunded by surge", func() (bool, string) {
				an := e.anomaliesOf(oid)
				return len(an) == 1 && an[0].Refund == "done", fmt.Sprintf("%+v", an)
			})
			e.mustAnomaly(oid, st.PaymentID, "refunded_outside", amount, 100)
			if s, err := e.sim[ch].Query(e.ctx, st.PaymentID); err != nil || s.Refunded != amount {
				t.Errorf("channel %+v %v; want all %d refunded (100 in the console, the rest by surge)", s, err, amount)
			}
			if p := e.payment(oid, st.PaymentID); p.Refunded != amount || p.Kept != 0 {
				t.Errorf("payment %+v; want refunded %d, kept 0", *p, amount)
			}
			e.mustUnpaid(oid)
			e.mustConserved(oid, 0)
		})
		t.Run("callback of the refund, then a late paid callback", func(t *testing.T) {
			oid, st := e.paidDropped(c, ch)
			amount := e.peek(oid).Payable
			late := e.channelNotice(ch, st.PaymentID) // signed while paid, delivered after the refund
			if late.State != payment.Paid {
				t.Fatalf("channel says %s before the refund", late.State)
			}
			e.mustFaults(ch, paysim.Faults{}) // the refund's callback goes through
			e.console(st.PaymentID, 0)
			e.waitPayment(oid, st.PaymentID, "reversed")
			e.mustAnomaly(oid, st.PaymentID, "refunded_outside", amount, amount)
			e.mustCallback(ch, late)
			if p := e.payment(oid, st.PaymentID); p.State != "reversed" {
				t.Errorf("after the late paid callback: payment %s, want reversed", p.State)
			}
			e.mustUnpaid(oid)
			e.mustConserved(oid, 0)
		})
		t.Run("signed refunded callback of a payment never made", func(t *testing.T) {
			oid := c.mustOrder()
			st := c.mustPay(oid, ch) // the payer never pays
			n := e.channelNotice(ch, st.PaymentID)
			n.State, n.Refunded, n.PaidAt = payment.Refunded, n.Amount, time.Now().UTC().Truncate(time.Second)
			if ch == "wechatpay" { // a refund is its own notice
				n.ChannelTxnID = "4200000000" + strconv.FormatInt(st.PaymentID, 10)
				n.Refund = &payment.RefundNote{OutRefundNo: "console-1", ChannelRefundID: "50300000000000000001", Amount: n.Amount,
					Succeeded: true, At: n.PaidAt}
			}
			e.mustCallback(ch, n)
			if p := e.payment(oid, st.PaymentID); p.State != "reversed" || p.Kept != 0 {
				t.Errorf("payment %+v; want reversed, kept 0", *p)
			}
			e.mustAnomaly(oid, st.PaymentID, "refunded_outside", n.Amount, n.Amount)
			e.mustUnpaid(oid)
			e.mustConserved(oid, 0)
		})
	})
}

// A payment that paid its order and is refunded outside surge afterwards
// (in part, then the rest) leaves the order paid and raises
// paid_order_refunded_outside naming the order, with the amounts kept up
// to date; the ledger keeps what the channel keeps.
func TestRefundedOutsideAfterApplied(t *testing.T) {
	t.Parallel()
	eachOf(t, channels, envOpts{}, func(t *testing.T, e *env, ch string, c *customer) {
		oid := c.mustOrder()
		st := c.mustPay(oid, ch)
		e.mustPayAtChannel(st)
		e.mustSettledOnce(oid, st.PaymentID)
		amount := e.peek(oid).Payable
		e.mustConserved(oid, amount)

		e.console(st.PaymentID, 100) // surge hears of it from the refund's callback
		eventually.Saw(t, 10*time.Second, "the refund recorded", func() (bool, string) {
			p := e.payment(oid, st.PaymentID)
			return p.Refunded == 100, fmt.Sprintf("%+v", *p)
		})
		e.mustAnomaly(oid, st.PaymentID, "paid_order_refunded_outside", amount, 100)
		e.mustConserved(oid, amount-100)

		e.console(st.PaymentID, 0)
		eventually.Saw(t, 10*time.Second, "the second refund recorded", func() (bool, string) {
			an := e.anomaliesOf(oid)
			return len(an) == 1 && an[0].Refunded == amount, fmt.Sprintf("%+v", an)
		})
		e.mustAnomaly(oid, st.PaymentID, "paid_order_refunded_outside", amount, amount)
		e.mustConserved(oid, 0)
		e.mustSettledOnce(oid, st.PaymentID) // still paid, by one change: the operator decides
		if p := e.payment(oid, st.PaymentID); p.Refunded != amount || p.Kept != 0 {
			t.Errorf("payment %+v; want refunded %d, kept 0", *p, amount)
		}
	})
}

// Reconciliation compares net amounts per payment and fixes only what the
// net says: a payment captured and refunded at the channel (in full or in
// part) that surge never heard of is recorded as such and pays nothing,
// the rest of a partial one goes back; a payment that paid its order and
// was refunded outside surge since is recorded and the order named; a
// clean payment is no finding; the second run finds nothing of these.
func TestReconcileNetPerPayment(t *testing.T) {
	t.Parallel()
	day := time.Now().UTC()
	if day.Add(time.Minute).Day() != day.Day() {
		t.Skip("too close to midnight UTC: the payments would straddle two statements")
	}
	eachOf(t, channels, envOpts{}, func(t *testing.T, e *env, ch string, c *customer) { // no active queries: only reconciliation repairs
		full, stFull := e.paidDropped(c, ch)
		e.consoleDropped(ch, stFull.PaymentID, 0)
		part, stPart := e.paidDropped(c, ch)
		e.consoleDropped(ch, stPart.PaymentID, 100)
		e.mustFaults(ch, paysim.Faults{})
		clean := c.mustOrder()
		stClean := c.mustPay(clean, ch)
		e.mustPayAtChannel(stClean)
		e.mustSettledOnce(clean, stClean.PaymentID)
		applied := c.mustOrder()
		stApplied := c.mustPay(applied, ch)
		e.mustPayAtChannel(stApplied)
		e.mustSettledOnce(applied, stApplied.PaymentID)
		e.waitStats(ch, "every callback acknowledged", func(s paysim.Stats) bool { return s.Pending == 0 })
		e.mustFaults(ch, paysim.Faults{DropCallbacks: true})
		e.consoleDropped(ch, stApplied.PaymentID, 100)
		e.mustFaults(ch, paysim.Faults{})
		a := e.peek(full).Payable // every order here has the same amount

		rep, err := e.n.Payments.Reconcile(e.ctx, ch, day)
		if err != nil {
			t.Fatal(err)
		}
		var b strings.Builder
		rep.Print(&b)
		t.Logf("%s", b.String())
		got := map[int64]payment.Finding{}
		for _, f := range rep.Findings {
			got[f.PaymentID] = f
		}
		want := map[int64]payment.Finding{
			stFull.PaymentID: {Kind: payment.FindRefundedNotInLedger, PaymentID: stFull.PaymentID, OrderID: full,
				ChannelAmount: a, ChannelRefunded: a, ChannelNet: 0, LedgerAmount: a, LedgerRefunded: 0, LedgerNet: 0},
			stPart.PaymentID: {Kind: payment.FindRefundedNotInLedger, PaymentID: stPart.PaymentID, OrderID: part,
				ChannelAmount: a, ChannelRefunded: 100, ChannelNet: a - 100, LedgerAmount: a, LedgerRefunded: 0, LedgerNet: 0},
			stApplied.PaymentID: {Kind: payment.FindRefundedNotInLedger, PaymentID: stApplied.PaymentID, OrderID: applied,
				ChannelAmount: a, ChannelRefunded: 100, ChannelNet: a - 100, LedgerAmount: a, LedgerRefunded: 0, LedgerNet: a},
		}
		if len(got) != len(want) || len(rep.Findings) != len(want) {
			t.Errorf("findings %+v; want one for each of payments %d, %d, %d", rep.Findings, stFull.PaymentID, stPart.PaymentID, stApplied.PaymentID)
		}
		for pid, w := range want {
			g := got[pid]
			w.Action = g.Action
			if g != w || !strings.HasPrefix(g.Action, "fixed: ") {
				t.Errorf("finding of payment %d:\n\tgot  %+v\n\twant %+v, fixed", pid, g, w)
			}
		}
		// What the fixes did: net 0 pays nothing; the rest of a partial
		// refund goes back; a paid order stays paid and is named.
		e.waitPayment(full, stFull.PaymentID, "reversed")
		e.mustAnomaly(full, stFull.PaymentID, "refunded_outside", a, a)
		e.mustUnpaid(full)
		e.mustConserved(full, 0)
		e.waitPayment(part, stPart.PaymentID, "reversed")
		e.mustAnomaly(part, stPart.PaymentID, "refunded_outside", a, 100)
		e.mustUnpaid(part)
		e.mustConserved(part, 0)
		e.mustAnomaly(applied, stApplied.PaymentID, "paid_order_refunded_outside", a, 100)
		e.mustSettledOnce(applied, stApplied.PaymentID)
		e.mustConserved(applied, a-100)
		e.mustConserved(clean, a)

		rep, err = e.n.Payments.Reconcile(e.ctx, ch, day)
		if err != nil {
			t.Fatal(err)
		}
		if len(rep.Findings) != 0 {
			t.Errorf("second run: findings %+v, want none", rep.Findings)
		}
	})
}

// A refund the channel keeps refusing as unknown (here: a payment the
// channel never had, whose signed paid callback lands on a cancelled
// order) is tried a bounded number of times and then given up as the
// anomaly refund_refused, instead of being retried forever.
func TestRefundRefusedAsUnknownGivesUp(t *testing.T) {
	t.Parallel()
	const attempts = 6 // payment.Config's default
	eachChannel(t, envOpts{}, func(t *testing.T, e *env, ch string, c *customer) {
		oid := c.mustOrder()
		e.mustFaults(ch, paysim.Faults{Outage: true})
		if _, r := c.pay(oid, ch); r.status != 503 {
			t.Fatalf("pay during the outage: %d %s", r.status, r.body)
		}
		e.mustFaults(ch, paysim.Faults{})
		ps := e.payments(oid)
		if len(ps) != 1 || ps[0].State != "created" {
			t.Fatalf("payments %+v; want one created, never at the channel", ps)
		}
		pid, amount := ps[0].ID, ps[0].Amount
		if r := e.do("POST", fmt.Sprintf("/api/v1/orders/%d/cancel", oid), c.token, nil, nil); r.status != 200 {
			t.Fatalf("cancel: %d %s", r.status, r.body)
		}
		e.mustCallback(ch, payment.Notice{Status: payment.Status{PaymentID: pid, ChannelTxnID: "T" + fmt.Sprint(pid), State: payment.Paid,
			Amount: amount, PaidAt: time.Now().UTC().Truncate(time.Second)}, NoticeID: "never-paid", Timestamp: time.Now()})
		refund := func() (state string, tries int, msg string) {
			if err := e.n.DB.ForID(pid).W.QueryRowContext(e.ctx, `SELECT state, attempts, error FROM refunds WHERE payment_id = $1`, pid).
				Scan(&state, &tries, &msg); err != nil {
				t.Fatal(err)
			}
			return
		}
		// Each refusal puts the next try further off; the test brings it
		// forward, and the worker tries again within a second.
		eventually.Saw(t, 30*time.Second, "the refund given up", func() (bool, string) {
			if _, err := e.n.DB.ForID(pid).W.ExecContext(e.ctx, `UPDATE refunds SET retry_at = 0 WHERE payment_id = $1 AND state = 'pending'`, pid); err != nil {
				t.Fatal(err)
			}
			st, n, msg := refund()
			return st == "failed", fmt.Sprintf("%s after %d attempts: %s", st, n, msg)
		})
		unknown := map[string]string{"wechatpay": "RESOURCE_NOT_EXISTS", "alipay": "ACQ.TRADE_NOT_EXIST"}[ch]
		if st, n, msg := refund(); n != attempts || !strings.Contains(msg, unknown) {
			t.Errorf("refund %s after %d attempts (%s); want failed after %d, refused as unknown", st, n, msg, attempts)
		}
		// Given up means given up: nothing picks it again.
		for range 3 {
			if _, err := e.n.DB.ForID(pid).W.ExecContext(e.ctx, `UPDATE refunds SET retry_at = 0 WHERE payment_id = $1`, pid); err != nil {
				t.Fatal(err)
			}
			if err := e.n.Payments.Repair(e.ctx); err != nil {
				t.Fatal(err)
			}
		}
		if st, n, _ := refund(); st != "failed" || n != attempts {
			t.Errorf("after more repair rounds: refund %s after %d attempts", st, n)
		}
		kinds := map[string]payment.Anomaly{}
		for _, a := range e.anomaliesOf(oid) {
			kinds[a.Kind] = a
		}
		a, ok := kinds["refund_refused"]
		if len(kinds) != 2 || !ok || kinds["paid_after_cancel"].PaymentID != pid || a.PaymentID != pid || a.Refund != "failed" ||
			a.Captured != amount || !strings.Contains(a.Detail, fmt.Sprintf("%d times", attempts)) {
			t.Errorf("anomalies %+v; want paid_after_cancel and refund_refused (refund failed, %d times) of payment %d", kinds, attempts, pid)
		}
		if o := e.peek(oid); o.Status != order.Cancelled {
			t.Errorf("order %s, want cancelled", o.Status)
		}
	})
}

// Races: the channel's word that a payment was refunded, arriving at once
// as many callbacks and many active queries, reverses it once (one
// anomaly, one refund of the rest; on Alipay, whose query shows a refund
// only in full, a refund of all of it, so that the queries say it too); a stale paid callback racing the query
// that says refunded ends one way or the other, never both and never an
// order paid without its anomaly, and the money is conserved either way.
func TestRefundedOutsideRaces(t *testing.T) {
	t.Parallel()
	eachChannel(t, envOpts{}, func(t *testing.T, e *env, ch string, c *customer) {
		t.Run("callbacks and queries at once", func(t *testing.T) {
			oid, st := e.paidDropped(c, ch)
			amount := e.peek(oid).Payable
			part := int64(100)
			if ch == "alipay" {
				part = amount
			}
			r := e.consoleDropped(ch, st.PaymentID, part)
			n := e.channelNotice(ch, st.PaymentID)
			if ch == "wechatpay" { // the refund's own notice, as WeChat Pay would send it again
				at, err := time.Parse(time.RFC3339, r.RefundedAt)
				if err != nil {
					t.Fatal(err)
				}
				n.Refund = &payment.RefundNote{OutRefundNo: strconv.FormatInt(r.RefundID, 10), ChannelRefundID: r.ChannelRefundID,
					Amount: r.Amount, Succeeded: true, At: at}
			}
			h, body := e.mustEncode(ch, n)
			e.queryNow(st.PaymentID)
			e.warmUp(16)
			var wg sync.WaitGroup
			gate := make(chan struct{})
			for i := range 32 {
				wg.Go(func() {
					<-gate
					if i%2 == 0 {
						if r := e.notify(ch, h.Clone(), body); r.status != 200 {
							t.Errorf("callback: %d %s", r.status, r.body)
						}
					} else if err := e.n.Payments.QueryPending(e.ctx, 200); err != nil {
						t.Errorf("query: %v", err)
					}
				})
			}
			close(gate)
			wg.Wait()
			e.waitPayment(oid, st.PaymentID, "reversed")
			e.mustAnomaly(oid, st.PaymentID, "refunded_outside", amount, part)
			e.mustUnpaid(oid)
			e.mustConserved(oid, 0)
			rest := 0 // surge's refund of what was left
			if part < amount {
				rest = 1
			}
			if s := e.n.Sim.Stats(ch); s.Refunds < int64(1+rest) {
				t.Errorf("%s refunds %d", ch, s.Refunds)
			}
			var refunds int
			if err := e.n.DB.ForID(st.PaymentID).W.QueryRowContext(e.ctx, `SELECT count(*) FROM refunds WHERE payment_id = $1`, st.PaymentID).Scan(&refunds); err != nil || refunds != rest {
				t.Errorf("%d refunds of the rest (%v), want %d", refunds, err, rest)
			}
		})
		t.Run("stale paid callback against the query", func(t *testing.T) {
			outcomes := map[string]int{}
			for round := range 6 {
				oid, st := e.paidDropped(c, ch)
				amount := e.peek(oid).Payable
				stale := e.channelNotice(ch, st.PaymentID) // signed while paid
				e.consoleDropped(ch, st.PaymentID, 100)
				e.queryNow(st.PaymentID)
				h, body := e.mustEncode(ch, stale)
				callback := func() {
					if r := e.notify(ch, h, body); r.status != 200 {
						t.Errorf("stale callback: %d %s", r.status, r.body)
					}
				}
				query := func() {
					if err := e.n.Payments.QueryPending(e.ctx, 200); err != nil {
						t.Errorf("query: %v", err)
					}
				}
				switch round { // one of each order for sure, then at once
				case 0:
					query()
					callback()
				case 1:
					callback()
					query()
				default:
					var wg sync.WaitGroup
					gate := make(chan struct{})
					wg.Go(func() { <-gate; callback() })
					wg.Go(func() { <-gate; query() })
					close(gate)
					wg.Wait()
				}
				p := e.payment(oid, st.PaymentID)
				told := "query"
				if p.State == "settled" && p.Refunded == 0 {
					// The callback settled it before the query picked it:
					// only reconciliation hears of the refund now.
					told = "reconciliation"
					if _, err := e.n.Payments.Reconcile(e.ctx, ch, time.Now().UTC()); err != nil {
						t.Fatal(err)
					}
					p = e.payment(oid, st.PaymentID)
				}
				switch p.State {
				case "reversed":
					outcomes["refund first"]++
					e.mustAnomaly(oid, st.PaymentID, "refunded_outside", amount, 100)
					e.mustUnpaid(oid)
					e.mustConserved(oid, 0)
				case "settled":
					outcomes["paid first, refund told by "+told]++
					e.mustAnomaly(oid, st.PaymentID, "paid_order_refunded_outside", amount, 100)
					e.mustSettledOnce(oid, st.PaymentID)
					e.mustConserved(oid, amount-100)
				default:
					t.Fatalf("round %d: payment %+v", round, *p)
				}
			}
			t.Logf("%s: %v", ch, outcomes)
		})
	})
}

// On the real protocols, a refund surge makes of one line of an order is
// told back by the channel (WeChat Pay: a REFUND.SUCCESS naming it;
// Alipay: refund_fee, all refunded so far): it is taken as surge's own,
// not a refund outside surge, and the ledger's refunded is the line's
// amount, not more. A console refund after it is outside surge, on top.
func TestOwnRefundToldBack(t *testing.T) {
	t.Parallel()
	eachOf(t, []string{"wechatpay", "alipay"}, envOpts{}, func(t *testing.T, e *env, ch string, c *customer) {
		oid := c.mustPlace(`{"store_id":"1001","items":[{"sku_id":"1001006","qty":1},{"sku_id":"1001007","qty":2}]}`)
		st := c.mustPay(oid, ch)
		e.mustPayAtChannel(st)
		e.mustSettledOnce(oid, st.PaymentID)
		o := e.peek(oid)
		acked := e.n.Sim.Stats(ch).Acked
		rf, err := e.n.Payments.RefundOrder(e.ctx, payment.OrderRefund{OrderID: oid, SKUs: []int64{1001006}, By: order.ByOperator})
		if err != nil || rf.State != "done" || rf.Amount <= 0 || rf.Amount >= o.Payable {
			t.Fatalf("refund of one line: %+v %v", rf, err)
		}
		e.waitStats(ch, "the refund's notice acknowledged", func(s paysim.Stats) bool { return s.Acked > acked && s.Pending == 0 })
		if p := e.payment(oid, st.PaymentID); p.Refunded != rf.Amount || p.State != "settled" {
			t.Fatalf("payment %+v; want settled, refunded %d (the line's)", *p, rf.Amount)
		}
		if an := e.anomaliesOf(oid); len(an) != 0 {
			t.Fatalf("anomalies %+v: surge's own refund taken for one outside surge", an)
		}
		e.mustConserved(oid, o.Payable-rf.Amount)

		e.console(st.PaymentID, 100)
		eventually.Saw(t, 10*time.Second, "the console's refund recorded", func() (bool, string) {
			p := e.payment(oid, st.PaymentID)
			return p.Refunded == rf.Amount+100, fmt.Sprintf("%+v", *p)
		})
		e.mustAnomaly(oid, st.PaymentID, "paid_order_refunded_outside", o.Payable, rf.Amount+100)
		e.mustConserved(oid, o.Payable-rf.Amount-100)
	})
}

// WeChat Pay's query says a payment is refunded, not how much. A payment
// paid and refunded at the console while every notice was lost is, to the
// active query, refunded by an unknown amount: it pays nothing, and the
// anomaly refunded_amount_unknown tells the operator. The day's bill then
// says how much: reconciliation records it as refunded outside surge,
// surge refunds the rest, and the unknown is gone.
func TestRefundedByAnUnknownAmount(t *testing.T) {
	t.Parallel()
	day := time.Now().UTC()
	if day.Add(time.Minute).Day() != day.Day() {
		t.Skip("too close to midnight UTC: the payment would straddle two statements")
	}
	eachOf(t, []string{"wechatpay"}, envOpts{}, func(t *testing.T, e *env, ch string, c *customer) {
		oid, st := e.paidDropped(c, ch)
		amount := e.peek(oid).Payable
		e.consoleDropped(ch, st.PaymentID, 100)
		e.mustFaults(ch, paysim.Faults{})
		e.queryNow(st.PaymentID)
		eventually.Saw(t, 10*time.Second, "refunded_amount_unknown", func() (bool, string) {
			an := e.anomaliesOf(oid)
			return len(an) == 1 && an[0].Kind == "refunded_amount_unknown" && an[0].Captured == amount, fmt.Sprintf("%+v", an)
		})
		if p := e.payment(oid, st.PaymentID); p.State != "pending" || p.Refunded != 0 {
			t.Fatalf("payment %+v; want pending, nothing known refunded", *p)
		}
		e.mustUnpaid(oid)

		if _, err := e.n.Payments.Reconcile(e.ctx, ch, day); err != nil {
			t.Fatal(err)
		}
		e.waitPayment(oid, st.PaymentID, "reversed")
		e.mustAnomaly(oid, st.PaymentID, "refunded_outside", amount, 100) // and the unknown dropped: exactly one
		e.mustUnpaid(oid)
		e.mustConserved(oid, 0)
	})
}
