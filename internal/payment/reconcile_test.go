package payment_test

import (
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/surge-platform/surge/internal/eventually"
	"github.com/surge-platform/surge/internal/order"
	"github.com/surge-platform/surge/internal/payment"
	"github.com/surge-platform/surge/internal/payment/paysim"
)

// finding is the part of a reconciliation finding the test predicts.
type finding struct {
	Kind                        string
	PaymentID, OrderID          int64
	ChannelAmount, LedgerAmount int64
}

func (f finding) String() string {
	return fmt.Sprintf("%s payment %d order %d channel %d ledger %d", f.Kind, f.PaymentID, f.OrderID, f.ChannelAmount, f.LedgerAmount)
}

func sortedFindings(fs []finding) []string {
	out := make([]string, 0, len(fs))
	for _, f := range fs {
		out = append(out, f.String())
	}
	slices.Sort(out)
	return out
}

// Reconciliation with one injected discrepancy of each kind among clean
// payments on both channels finds every one of them and invents none;
// what it fixes (a payment paid at the channel that the ledger missed, a
// duplicate payment) does not come back on the next run, what it only
// reports (paid without a channel record, amount mismatch) does.
func TestReconcileFindsEveryDiscrepancyAndInventsNone(t *testing.T) {
	t.Parallel()
	e := mustStart(t, envOpts{}) // no active queries: only reconciliation repairs
	ctx := e.ctx
	day := time.Now().UTC()
	if day.Add(time.Minute).Day() != day.Day() {
		t.Skip("too close to midnight UTC: the payments would straddle two statements")
	}
	c := e.mustCustomer()
	amountOf := func(oid int64) int64 { return e.peek(oid).Payable }

	// Clean payments on both channels, paid and called back normally.
	type pay struct {
		oid int64
		st  started
	}
	var clean []pay
	for i := range 6 {
		oid := c.mustOrder()
		clean = append(clean, pay{oid, c.mustPay(oid, channels[i%2])})
	}
	// (c) amount mismatch: paid normally, then our ledger's amount is edited.
	oidC := c.mustOrder()
	stC := c.mustPay(oidC, "wechatpay")
	// (d) duplicate: order D is paid by D1 normally; D2, started before,
	// is paid at the channel too, and its callback is lost.
	oidD := c.mustOrder()
	stD1 := c.mustPay(oidD, "wechatpay")
	stD2 := c.mustPay(oidD, "wechatpay")
	// (a) paid at the channel, the callback lost, never queried.
	oidA := c.mustOrder()
	stA := c.mustPay(oidA, "wechatpay")
	// (b) the ledger says settled; the channel never saw a payment.
	oidB := c.mustOrder()
	stB := c.mustPay(oidB, "wechatpay")

	for _, p := range append(slices.Clone(clean), pay{oidC, stC}, pay{oidD, stD1}) {
		e.mustPayAtChannel(p.st)
	}
	for _, p := range append(slices.Clone(clean), pay{oidC, stC}, pay{oidD, stD1}) {
		e.mustSettledOnce(p.oid, p.st.PaymentID)
	}
	// Also clean: anomalies the callbacks already handled, each refunded at
	// the channel: a second payment of order E, and a payment of order F
	// made after its customer cancelled it.
	// F's payer pays just before the cancel, and its callback is late:
	// closing it at the channel finds it paid.
	e.mustFaults("wechatpay", paysim.Faults{CallbackDelayMS: 1500})
	oidE := c.mustOrder()
	stE1, stE2 := c.mustPay(oidE, "wechatpay"), c.mustPay(oidE, "wechatpay")
	oidF := c.mustOrder()
	stF := c.mustPay(oidF, "wechatpay")
	for _, st := range []started{stE1, stE2, stF} {
		e.mustPayAtChannel(st)
	}
	if r := e.do("POST", fmt.Sprintf("/api/v1/orders/%d/cancel", oidF), c.token, nil, nil); r.status != 200 {
		t.Fatalf("cancel: %d %s", r.status, r.body)
	}
	e.mustFaults("wechatpay", paysim.Faults{})
	eventually.Saw(t, 10*time.Second, "E and F refunded", func() (bool, string) {
		ae, af := e.anomaliesOf(oidE), e.anomaliesOf(oidF)
		return len(ae) == 1 && ae[0].Refund == "done" && len(af) == 1 && af[0].Refund == "done", fmt.Sprintf("E %+v F %+v", ae, af)
	})
	e.waitStats("wechatpay", "every callback acknowledged", func(s paysim.Stats) bool { return s.Pending == 0 })
	e.mustFaults("wechatpay", paysim.Faults{DropCallbacks: true})
	e.mustPayAtChannel(stA)
	e.mustPayAtChannel(stD2)
	e.waitStats("wechatpay", "dropped two callbacks", func(s paysim.Stats) bool { return s.Dropped == 2 })

	amtC := amountOf(oidC)
	if _, err := e.n.DB.ForID(stC.PaymentID).W.ExecContext(ctx, `UPDATE payments SET amount = amount + 100 WHERE id = $1`, stC.PaymentID); err != nil {
		t.Fatal(err)
	}
	if _, err := e.n.DB.ForID(stB.PaymentID).W.ExecContext(ctx, `UPDATE payments SET state = 'settled', paid_at = $1, updated_at = $1 WHERE id = $2`,
		time.Now().UnixMilli(), stB.PaymentID); err != nil {
		t.Fatal(err)
	}

	run := func(channel string) *payment.Report {
		t.Helper()
		rep, err := e.n.Payments.Reconcile(ctx, channel, day)
		if err != nil {
			t.Fatalf("reconcile %s: %v", channel, err)
		}
		var b strings.Builder
		rep.Print(&b)
		t.Logf("%s", b.String())
		return rep
	}
	got := func(rep *payment.Report) []finding {
		var out []finding
		for _, f := range rep.Findings {
			out = append(out, finding{f.Kind, f.PaymentID, f.OrderID, f.ChannelAmount, f.LedgerAmount})
		}
		return out
	}
	expect := func(what string, rep *payment.Report, want []finding) {
		t.Helper()
		if g, w := sortedFindings(got(rep)), sortedFindings(want); !slices.Equal(g, w) {
			t.Errorf("%s: findings\n\t%s\nwant\n\t%s", what, strings.Join(g, "\n\t"), strings.Join(w, "\n\t"))
		}
	}
	amtA, amtB, amtD := amountOf(oidA), amountOf(oidB), amountOf(oidD)

	rep := run("wechatpay")
	expect("first wechatpay run", rep, []finding{
		{payment.FindPaidNotInLedger, stA.PaymentID, oidA, amtA, amtA},
		{payment.FindNoChannelRecord, stB.PaymentID, oidB, 0, amtB},
		{payment.FindAmountMismatch, stC.PaymentID, oidC, amtC, amtC + 100},
		{payment.FindDuplicate, stD2.PaymentID, oidD, amtD, amtD},
	})
	// Statement: 3 clean + C + D1 + E1 + E2 + F + A + D2 paid, 2 refunds (E, F);
	// ledger paid that day: 3 clean + C + D1 + E1 + E2 + F + B.
	if rep.StatementLines != 12 || rep.LedgerPayments != 9 {
		t.Errorf("first run read %d statement lines and %d ledger payments, want 12 and 9", rep.StatementLines, rep.LedgerPayments)
	}

	// What was fixed: A paid its order exactly once; D2 refunded at the
	// channel and recorded with both payments.
	e.mustSettledOnce(oidA, stA.PaymentID)
	if s, err := e.sim["wechatpay"].Query(ctx, stD2.PaymentID); err != nil || s.State != payment.Refunded {
		t.Errorf("D2 at the channel: %s %v, want refunded", s.State, err)
	}
	if an := e.anomaliesOf(oidD); len(an) != 1 || an[0].Kind != "duplicate_payment" || an[0].PaymentID != stD2.PaymentID ||
		an[0].OtherID != stD1.PaymentID || an[0].Refund != "done" {
		t.Errorf("order D anomalies %+v; want duplicate_payment of %d, other %d, refund done", an, stD2.PaymentID, stD1.PaymentID)
	}
	e.mustSettledOnce(oidD, stD1.PaymentID)
	// What was only reported is left alone.
	if o := e.peek(oidB); o.Status != order.PendingPayment {
		t.Errorf("order B is %s; a ledger-only payment must never be fixed automatically", o.Status)
	}
	if p := e.payment(oidC, stC.PaymentID); p.Amount != amtC+100 || p.State != "settled" {
		t.Errorf("payment C %+v changed", p)
	}

	expect("alipay run (clean)", run("alipay"), nil)

	rep = run("wechatpay")
	expect("second wechatpay run", rep, []finding{
		{payment.FindNoChannelRecord, stB.PaymentID, oidB, 0, amtB},
		{payment.FindAmountMismatch, stC.PaymentID, oidC, amtC, amtC + 100},
	})
	if rep.StatementLines != 13 || rep.LedgerPayments != 11 {
		t.Errorf("second run read %d statement lines and %d ledger payments, want 13 (D2's refund) and 11 (A, D2)", rep.StatementLines, rep.LedgerPayments)
	}
	for _, p := range append(slices.Clone(clean), pay{oidA, stA}, pay{oidD, stD1}) {
		if an := e.anomaliesOf(p.oid); p.oid != oidD && len(an) != 0 {
			t.Errorf("order %d: anomalies %+v", p.oid, an)
		}
	}
}

// Daily reconciliation of a UTC day runs once its bills are out, from 03:00
// UTC two days later, once, and catches up on days missed: the day done is recorded, so a second call (another leader) does nothing,
// and a day whose channel failed is tried again at the next call, never
// skipped.
func TestReconcileDueOncePerDay(t *testing.T) {
	t.Parallel()
	e := mustStart(t, envOpts{})
	var mu sync.Mutex
	now := time.Date(2030, 3, 6, 2, 55, 0, 0, time.UTC)
	payment.SetNow(e.n.Payments, func() time.Time { mu.Lock(); defer mu.Unlock(); return now })
	at := func(t time.Time) { mu.Lock(); now = t; mu.Unlock() }
	done := func() string {
		var v string
		e.n.DB.Main().R.QueryRowContext(e.ctx, `SELECT value FROM settings WHERE name = 'reconciled_through'`).Scan(&v)
		return v
	}
	if err := e.n.Payments.ReconcileDue(e.ctx); err != nil || done() != "2030-03-03" {
		t.Fatalf("at 02:55: %v, reconciled through %q; want 2030-03-03 (nothing of 2030-03-04 before 03:00 on the 6th)", err, done())
	}
	at(time.Date(2030, 3, 6, 3, 5, 0, 0, time.UTC))
	if err := e.n.Payments.ReconcileDue(e.ctx); err != nil || done() != "2030-03-04" {
		t.Fatalf("at 03:05: %v, reconciled through %q; want 2030-03-04", err, done())
	}
	// The channels down: a repeat for the same day must not even ask them.
	for _, ch := range channels {
		e.mustFaults(ch, paysim.Faults{Outage: true})
	}
	if err := e.n.Payments.ReconcileDue(e.ctx); err != nil {
		t.Fatalf("a second call the same day asked the channels: %v", err)
	}
	// The next day, with the channels down: not recorded, tried again.
	at(time.Date(2030, 3, 7, 3, 20, 0, 0, time.UTC))
	if err := e.n.Payments.ReconcileDue(e.ctx); err == nil || done() != "2030-03-04" {
		t.Fatalf("with the channels down: %v, reconciled through %q; want an error and 2030-03-04", err, done())
	}
	for _, ch := range channels {
		e.mustFaults(ch, paysim.Faults{})
	}
	if err := e.n.Payments.ReconcileDue(e.ctx); err != nil || done() != "2030-03-05" {
		t.Fatalf("channels back: %v, reconciled through %q; want 2030-03-05", err, done())
	}
	// No worker for two days: the days missed are done too, in order.
	at(time.Date(2030, 3, 10, 3, 30, 0, 0, time.UTC))
	if err := e.n.Payments.ReconcileDue(e.ctx); err != nil || done() != "2030-03-08" {
		t.Fatalf("after two days without a worker: %v, reconciled through %q; want 2030-03-08", err, done())
	}
}
