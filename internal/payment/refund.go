package payment

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/surge-platform/surge/internal/platform/errkind"
	"github.com/surge-platform/surge/internal/platform/id"
	"github.com/surge-platform/surge/internal/platform/sqldb"
)

// Refunds, surge's and the channels'.
//
// surge refunds a payment that must not pay its order (a duplicate, a
// payment after the order was cancelled, what is left of one refunded in
// part outside surge): one refund per payment (kind refundPayment), of all
// the payment still holds. A payment may take more refunds (kind
// refundOrder, see orderrefund.go): each refund has an id of its own,
// fixed when it is recorded, so the channel makes it once however often it
// is asked. payments.refunded is what the channel has refunded of the
// payment as far as surge knows, by surge or outside it; a payment keeps
// amount - refunded.
//
// A refund made at the channel without surge (the provider's merchant
// console) reaches surge as a channel's word that the payment is refunded
// (a callback, a query, the statement) and never pays an order: see
// refundedAt.

// refundedAt applies the channel's word that payment p (as just read) is
// refunded there, st.Refunded fen of it in all:
//   - not yet applied (pending, or captured and due to be refunded as a
//     duplicate or late payment): it becomes reversed and never pays its
//     order; the anomaly refunded_outside records what was captured and
//     refunded, and surge refunds what is left;
//   - applied (it paid its order): surge's refunds of the order's lines
//     explain as much as they come to (made, or on their way); anything
//     more was refunded outside surge: the order stays paid, and the
//     anomaly paid_order_refunded_outside names it for the operator to
//     decide;
//   - being refunded by surge: surge's refund explains the channel's until
//     it is done or given up; the ledger's refunded is raised.
//
// Idempotent; safe against a concurrent callback or query about p.
func (s *Service) refundedAt(ctx context.Context, p *Payment, st Status) error {
	refunded := st.Refunded
	if refunded <= 0 || refunded > p.Amount {
		refunded = p.Amount // not a figure (observe resolves an unknown amount first): at most all of it
	}
	paidAt := st.PaidAt
	if paidAt.IsZero() {
		paidAt = s.now()
	}
	for range 5 {
		switch p.State {
		case stCreated, stPending, stClosed, stFailed:
			// Not applied, so surge has refunded none of it: a refund of
			// surge's means p is stale (another word of the refund reversed
			// it and surge refunded the rest, which refunded, read before
			// this, may count): read it again.
			var ours int
			if err := s.db.ForID(p.ID).W.QueryRowContext(ctx, `SELECT count(*) FROM refunds WHERE payment_id = $1`, p.ID).Scan(&ours); err != nil {
				return fmt.Errorf("refunds of payment %d: %w", p.ID, err)
			}
			if ours > 0 {
				var err error
				if p, err = s.get(ctx, p.ID); err != nil {
					return err
				}
				continue
			}
			// Recorded first: a crash before the change below leaves the
			// payment as it was, and the channel's next word does it again.
			if err := s.anomaly(ctx, outsideAnomaly(p, refunded, false)); err != nil {
				return err
			}
			n, err := sqldb.Exec(ctx, s.db.ForID(p.ID), `UPDATE payments SET state = $1, paid_at = $2, refunded = $3, updated_at = $4,
				channel_txn = CASE WHEN channel_txn = '' THEN $5 ELSE channel_txn END
				WHERE id = $6 AND state IN ($7, $8, $9, $10)`, stReversed, paidAt.UnixMilli(), refunded, s.now().UnixMilli(),
				st.ChannelTxnID, p.ID, stCreated, stPending, stClosed, stFailed)
			if err != nil {
				return fmt.Errorf("reverse payment %d: %w", p.ID, err)
			}
			if n == 1 {
				p.State, p.Refunded = stReversed, refunded
				return s.refund(ctx, p, anomalyOutside) // what is left, if anything
			}
			// Moved meanwhile: a paid callback applied it first, or another
			// word of the refund reversed it.
			if p, err = s.get(ctx, p.ID); err != nil {
				return err
			}
			if p.State == stSettled { // it paid its order after all: the next round says so
				if err := s.dropAnomaly(ctx, anomalyOutside, p.ID); err != nil {
					return err
				}
			}
		case stPaid:
			if err := s.raiseRefunded(ctx, p, refunded); err != nil {
				return err
			}
			return s.settleRead(ctx, p) // refunded in part: reverse
		case stSettled:
			if refunded <= p.Refunded {
				return nil // known
			}
			done, sent, err := s.ourRefunds(ctx, p.ID)
			if err != nil {
				return err
			}
			// What was refunded outside surge as far as the ledger knew,
			// plus all surge's refunds the channel may have made.
			if refunded > max(0, p.Refunded-done)+sent {
				if err := s.anomaly(ctx, outsideAnomaly(p, refunded, true)); err != nil {
					return err
				}
			}
			return s.raiseRefunded(ctx, p, refunded)
		case stRefund, stReversed:
			if refunded <= p.Refunded {
				return nil // known
			}
			state, err := s.refundState(ctx, p.ID)
			if err != nil {
				return err
			}
			if state != "pending" && state != "done" { // not ours: none, or ours given up
				if err := s.anomaly(ctx, outsideAnomaly(p, refunded, false)); err != nil {
					return err
				}
			}
			return s.raiseRefunded(ctx, p, refunded)
		default:
			return fmt.Errorf("payment %d in unknown state %q", p.ID, p.State)
		}
	}
	return fmt.Errorf("payment %d refunded at its channel: it keeps changing, try again", p.ID)
}

// outsideAnomaly describes payment p, refunded fen of which were refunded
// at its channel outside surge, after it paid its order (applied) or
// before.
func outsideAnomaly(p *Payment, refunded int64, applied bool) Anomaly {
	a := Anomaly{Kind: anomalyOutside, OrderID: p.OrderID, PaymentID: p.ID, Captured: p.Amount, Refunded: refunded,
		RefundedBy: RefundedOutside}
	left := p.Amount - refunded
	switch {
	case applied:
		a.Kind = anomalyPaidOutside
		a.Detail = fmt.Sprintf("payment captured %d fen and paid order %d; %d fen of it were refunded at the channel outside surge since: the order stays paid, the operator decides",
			p.Amount, p.OrderID, refunded)
	case left > 0:
		a.Detail = fmt.Sprintf("payment captured %d fen, %d fen were refunded at the channel outside surge before surge applied it: it does not pay order %d; surge refunds the %d fen left",
			p.Amount, refunded, p.OrderID, left)
	default:
		a.Detail = fmt.Sprintf("payment captured %d fen, all refunded at the channel outside surge before surge applied it: it does not pay order %d",
			p.Amount, p.OrderID)
	}
	return a
}

// raiseRefunded records that the channel refunded refunded fen of p (never
// lowering what is known) and updates p.
func (s *Service) raiseRefunded(ctx context.Context, p *Payment, refunded int64) error {
	if _, err := sqldb.Exec(ctx, s.db.ForID(p.ID), `UPDATE payments SET refunded = $1, updated_at = $2 WHERE id = $3 AND refunded < $1`,
		refunded, s.now().UnixMilli(), p.ID); err != nil {
		return fmt.Errorf("payment %d refunded %d: %w", p.ID, refunded, err)
	}
	p.Refunded = max(p.Refunded, refunded)
	if captured(p.State) {
		p.Kept = p.Amount - p.Refunded
	}
	return nil
}

// reverse takes a captured payment that was refunded at its channel in
// part before it was applied (state paid, Refunded > 0): it never pays its
// order, and what is left goes back.
func (s *Service) reverse(ctx context.Context, p *Payment) error {
	o, err := s.orders.Peek(ctx, p.OrderID)
	if err != nil {
		return err
	}
	if o.PaymentID == p.ID { // it paid its order before the refund was known: finish that
		if err := s.anomaly(ctx, outsideAnomaly(p, p.Refunded, true)); err != nil {
			return err
		}
		return s.setState(ctx, p.ID, stPaid, stSettled)
	}
	if err := s.anomaly(ctx, outsideAnomaly(p, p.Refunded, false)); err != nil {
		return err
	}
	n, err := sqldb.Exec(ctx, s.db.ForID(p.ID), `UPDATE payments SET state = $1, updated_at = $2 WHERE id = $3 AND state = $4`,
		stReversed, s.now().UnixMilli(), p.ID, stPaid)
	if err != nil || n != 1 {
		return err // moved meanwhile: whoever moved it finishes
	}
	p.State = stReversed
	return s.refund(ctx, p, anomalyOutside)
}

// Kinds of surge's refunds (refunds.kind).
const (
	refundPayment = "payment" // all that is left of a payment that must not pay its order: one per payment
	refundOrder   = "order"   // lines of the order the payment paid: any number per payment
)

// refund marks a paid p for refund (reversed payments stay reversed) and
// asks its channel to refund all p still holds (amount - refunded, read in
// the same transaction); nothing is asked when nothing is left. A failed
// call is retried by Repair. A payment has one such refund, whose id is
// fixed when it is recorded: the channel refunds once however often it is
// asked.
func (s *Service) refund(ctx context.Context, p *Payment, reason string) error {
	now := s.now().UnixMilli()
	rid, err := s.ids.Next(id.Gene(p.ID))
	if err != nil {
		return fmt.Errorf("refund payment %d: %w", p.ID, err)
	}
	err = sqldb.Tx(ctx, s.db.ForID(p.ID), func(tx *sql.Tx) error {
		// retry_at: Repair leaves it to this call for a few seconds.
		if _, err := tx.ExecContext(ctx, `INSERT INTO refunds (id, payment_id, order_id, channel, amount, reason, state, created_at, updated_at, retry_at, kind)
			SELECT $1, id, order_id, channel, amount - refunded, $2, 'pending', $3, $3, $4, $5 FROM payments WHERE id = $6 AND amount > refunded
			ON CONFLICT (payment_id) WHERE kind = 'payment' DO NOTHING`, rid, reason, now, now+repairAfter.Milliseconds(), refundPayment, p.ID); err != nil {
			return err
		}
		_, err := tx.ExecContext(ctx, `UPDATE payments SET state = $1, updated_at = $2 WHERE id = $3 AND state = $4`, stRefund, now, p.ID, stPaid)
		return err
	})
	if err != nil {
		return fmt.Errorf("refund payment %d: %w", p.ID, err)
	}
	return s.sendPaymentRefund(ctx, p.ID)
}

// sendPaymentRefund sends paymentID's refund of all it held (see refund),
// if it has one.
func (s *Service) sendPaymentRefund(ctx context.Context, paymentID int64) error {
	var rid int64
	err := s.db.ForID(paymentID).W.QueryRowContext(ctx, `SELECT id FROM refunds WHERE payment_id = $1 AND kind = $2`,
		paymentID, refundPayment).Scan(&rid)
	if errors.Is(err, sql.ErrNoRows) {
		return nil // nothing was left to refund
	}
	if err != nil {
		return fmt.Errorf("read refund of payment %d: %w", paymentID, err)
	}
	return s.sendRefund(ctx, rid)
}

// repairAfter is how long Repair leaves a fresh refund (or paid payment)
// to the request that is handling it.
const repairAfter = 5 * time.Second

// refundState is the state of surge's refund of all paymentID held (kind
// refundPayment): "" (none), pending, done or failed.
func (s *Service) refundState(ctx context.Context, paymentID int64) (string, error) {
	var st string
	err := s.db.ForID(paymentID).W.QueryRowContext(ctx, `SELECT state FROM refunds WHERE payment_id = $1 AND kind = $2`,
		paymentID, refundPayment).Scan(&st)
	if err != nil && !errors.Is(err, sql.ErrNoRows) {
		return "", fmt.Errorf("refund of payment %d: %w", paymentID, err)
	}
	return st, nil
}

// refused reports whether err is the channel's answer "no" to a refund
// (it has no such payment, the refund exceeds what is left, ...), as
// opposed to the channel being unreachable: asking again will not help.
func refused(err error) bool {
	if errors.Is(err, ErrChannelDown) || errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
		return false
	}
	e := errkind.Of(err)
	return e != nil && (e.Kind == errkind.NotFound || e.Kind == errkind.Conflict || e.Kind == errkind.Invalid)
}

// sendRefund asks the channel to make refund refundID, if it is still
// pending. On success the refund is done and the payment's refunded says
// so: all of it for a refund of all it held, at least the sum of its done
// refunds of its order's lines (whose completion the order is told of in
// the same transaction). A channel that is down is asked again in a few
// seconds (Repair); one that refuses, again after a growing back-off, and
// after RefundAttempts refusals the refund is given up (failed) with the
// anomaly refund_refused, for an operator.
func (s *Service) sendRefund(ctx context.Context, refundID int64) error {
	d := s.db.ForID(refundID) // a refund id carries its payment's gene
	var r Refund
	var orderID int64
	var channel, state, kind string
	var attempts int
	err := d.W.QueryRowContext(ctx, `SELECT r.id, r.payment_id, r.order_id, r.amount, r.reason, r.channel, r.state, r.attempts, r.kind, p.amount
		FROM refunds r JOIN payments p ON p.id = r.payment_id WHERE r.id = $1`,
		refundID).Scan(&r.RefundID, &r.PaymentID, &orderID, &r.Amount, &r.Reason, &channel, &state, &attempts, &kind, &r.Total)
	if errors.Is(err, sql.ErrNoRows) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read refund %d: %w", refundID, err)
	}
	if state != "pending" {
		return nil
	}
	if r.Amount == 0 {
		// Lines that cost nothing (gifts): there is no money to move, and
		// channels refuse a refund of 0. Done here, or the order would wait
		// in refunding for a refund no channel makes.
		return s.refundDone(ctx, r, orderID, kind)
	}
	ch := s.channels[channel]
	if ch == nil {
		return fmt.Errorf("refund %d of payment %d: channel %q not configured", refundID, r.PaymentID, channel)
	}
	r.NotifyURL = s.cfg.NotifyBase + "/pay/v1/notify/" + channel // WeChat Pay sends a refund's notice where its request says
	err = s.call(ctx, channel, func() error { return ch.Refund(ctx, r) })
	now := s.now()
	if err == nil {
		return s.refundDone(ctx, r, orderID, kind)
	}
	msg := err.Error()
	if len(msg) > 500 {
		msg = msg[:500]
	}
	if !refused(err) {
		s.log.Warn("refund failed, will retry", "refund_id", refundID, "payment_id", r.PaymentID, "err", err)
		_, uerr := d.W.ExecContext(ctx, `UPDATE refunds SET retry_at = $1, error = $2, updated_at = $3 WHERE id = $4 AND state = 'pending'`,
			now.Add(repairAfter).UnixMilli(), msg, now.UnixMilli(), refundID)
		return uerr
	}
	attempts++
	if attempts < s.cfg.RefundAttempts {
		s.log.Warn("refund refused by the channel, will retry", "refund_id", refundID, "payment_id", r.PaymentID, "attempts", attempts, "err", err)
		backoff := min(repairAfter<<(attempts-1), 5*time.Minute)
		_, uerr := d.W.ExecContext(ctx, `UPDATE refunds SET attempts = $1, retry_at = $2, error = $3, updated_at = $4 WHERE id = $5 AND state = 'pending'`,
			attempts, now.Add(backoff).UnixMilli(), msg, now.UnixMilli(), refundID)
		return uerr
	}
	p, gerr := s.get(ctx, r.PaymentID)
	if gerr != nil {
		return gerr
	}
	// One anomaly per payment: a second refund of the payment given up is
	// in the refunds of its order (GET /admin/v1/orders/{id}/refunds).
	if err := s.anomaly(ctx, Anomaly{Kind: anomalyRefused, OrderID: p.OrderID, PaymentID: p.ID, Captured: p.Amount,
		Detail: fmt.Sprintf("the channel refused surge's refund %d of %d fen %d times, last: %s; it is no longer retried: check the payment at the channel",
			r.RefundID, r.Amount, attempts, msg)}); err != nil {
		return err
	}
	n, uerr := sqldb.Exec(ctx, d, `UPDATE refunds SET state = 'failed', attempts = $1, error = $2, updated_at = $3 WHERE id = $4 AND state = 'pending'`,
		attempts, msg, now.UnixMilli(), refundID)
	if uerr == nil && n == 0 { // done meanwhile (the channel's notice): the anomaly written ahead may be moot
		return s.refusedResolved(ctx, r.PaymentID)
	}
	return uerr
}

// refundDone records that the channel made refund r (of kind, for
// orderID), once: the first caller to move it from pending (or failed:
// given up, yet the channel made it) to done raises
// the payment's refunded and, for a refund of an order's lines, tells the
// order in the same transaction.
func (s *Service) refundDone(ctx context.Context, r Refund, orderID int64, kind string) error {
	now := s.now().UnixMilli()
	done, wasFailed := false, false
	err := sqldb.Tx(ctx, s.db.ForID(r.RefundID), func(tx *sql.Tx) error {
		done = false
		var was string
		if err := tx.QueryRowContext(ctx, `SELECT state FROM refunds WHERE id = $1`, r.RefundID).Scan(&was); err != nil {
			return err
		}
		wasFailed = was == "failed"
		res, err := tx.ExecContext(ctx, `UPDATE refunds SET state = 'done', error = '', updated_at = $1 WHERE id = $2 AND state IN ('pending', 'failed')`,
			now, r.RefundID)
		if err != nil {
			return err
		}
		if n, err := res.RowsAffected(); err != nil || n != 1 {
			return err // done by another caller
		}
		done = true
		if kind == refundPayment {
			// All that was left: the channel now has the whole payment refunded.
			_, err = tx.ExecContext(ctx, `UPDATE payments SET refunded = amount, updated_at = $1 WHERE id = $2`, now, r.PaymentID)
			return err
		}
		return s.orderRefundDoneTx(ctx, tx, r, orderID)
	})
	if err != nil {
		return fmt.Errorf("refund %d of payment %d done: %w", r.RefundID, r.PaymentID, err)
	}
	if done && wasFailed {
		if err := s.refusedResolved(ctx, r.PaymentID); err != nil {
			return err
		}
	}
	if done && kind == refundOrder {
		s.orders.RefundDone(ctx, orderID)
	}
	return nil
}

// refusedResolved drops the anomaly refund_refused of a payment once none
// of its refunds is given up any more (the channel made them after all).
func (s *Service) refusedResolved(ctx context.Context, paymentID int64) error {
	var failed int
	if err := s.db.ForID(paymentID).W.QueryRowContext(ctx, `SELECT count(*) FROM refunds WHERE payment_id = $1 AND state = 'failed'`,
		paymentID).Scan(&failed); err != nil {
		return fmt.Errorf("refunds of payment %d: %w", paymentID, err)
	}
	if failed > 0 {
		return nil
	}
	return s.dropAnomaly(ctx, anomalyRefused, paymentID)
}
