package payment_test

import (
	"strconv"
	"testing"
	"time"

	"github.com/surge-platform/surge/internal/order"
	"github.com/surge-platform/surge/internal/payment"
	"github.com/surge-platform/surge/internal/payment/paysim"
)

// A refund of surge's that was given up (failed) and that the channel made
// after all (its notice says it succeeded) is done: the order is told, the
// payment's refunded counts it, the anomaly refund_refused is dropped (an
// operator must not refund it again by hand), and it is not taken for a
// refund outside surge.
func TestGivenUpRefundToldDone(t *testing.T) {
	t.Parallel()
	e := mustStart(t, envOpts{})
	c := e.mustCustomer()
	oid := c.mustPlace(`{"store_id":"1001","items":[{"sku_id":"1001006","qty":1},{"sku_id":"1001007","qty":2}]}`)
	st := c.mustPay(oid, "wechatpay")
	e.mustPayAtChannel(st)
	e.mustSettledOnce(oid, st.PaymentID)

	e.mustFaults("wechatpay", paysim.Faults{Outage: true})
	rf, err := e.n.Payments.RefundOrder(e.ctx, payment.OrderRefund{OrderID: oid, SKUs: []int64{1001006}, By: order.ByOperator})
	if err != nil || rf.State != "pending" {
		t.Fatalf("refund of one line with the channel down: %+v %v", rf, err)
	}
	d := e.n.DB.ForID(st.PaymentID).W
	// As if refused six times and given up: the refund failed, and the
	// anomaly that tells an operator.
	if _, err := d.ExecContext(e.ctx, `UPDATE refunds SET state = 'failed' WHERE id = $1`, rf.RefundID); err != nil {
		t.Fatal(err)
	}
	if _, err := e.n.DB.Main().W.ExecContext(e.ctx, `INSERT INTO anomalies (id, kind, order_id, payment_id, other_id, detail, created_at, captured, refunded, refunded_by)
		VALUES (1, 'refund_refused', $1, $2, 0, 'given up', 0, 0, 0, '')`, oid, st.PaymentID); err != nil {
		t.Fatal(err)
	}
	if an := e.anomaliesOf(oid); len(an) != 1 {
		t.Fatalf("anomalies %+v; want the refund_refused made by the test", an)
	}
	e.mustFaults("wechatpay", paysim.Faults{})

	n := e.notice("wechatpay", st.PaymentID)
	n.State = payment.Refunded
	n.Refund = &payment.RefundNote{OutRefundNo: strconv.FormatInt(rf.RefundID, 10), ChannelRefundID: "50300000000000000000000000001",
		Amount: rf.Amount, Succeeded: true, At: time.Now().UTC().Truncate(time.Second)}
	e.mustCallback("wechatpay", n)

	var state string
	if err := d.QueryRowContext(e.ctx, `SELECT state FROM refunds WHERE id = $1`, rf.RefundID).Scan(&state); err != nil || state != "done" {
		t.Fatalf("refund %d is %q (%v) after the channel said it succeeded; want done", rf.RefundID, state, err)
	}
	if p := e.payment(oid, st.PaymentID); p.Refunded != rf.Amount || p.State != "settled" {
		t.Fatalf("payment %+v; want settled, refunded %d", *p, rf.Amount)
	}
	if got := e.peek(oid); got.Refunded != rf.Amount {
		t.Fatalf("order refunded %d; want %d", got.Refunded, rf.Amount)
	}
	if an := e.anomaliesOf(oid); len(an) != 0 {
		t.Fatalf("anomalies %+v; want none: refund_refused resolved, and surge's own refund not taken for one outside surge", an)
	}
	var outside int
	if err := d.QueryRowContext(e.ctx, `SELECT count(*) FROM channel_refunds WHERE payment_id = $1`, st.PaymentID).Scan(&outside); err != nil || outside != 0 {
		t.Fatalf("%d refunds recorded as the channel's own (%v); want none", outside, err)
	}
}
