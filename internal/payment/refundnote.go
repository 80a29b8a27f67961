package payment

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/surge-platform/surge/internal/platform/sqldb"
)

// A channel that notifies each refund on its own (WeChat Pay's REFUND.*
// notices) does not say how much of a payment it has refunded in all, nor
// do its queries (trade_state REFUND). surge knows it one refund at a
// time: its own refunds (table refunds) and those it did not make, each
// recorded once by the channel's refund number (table channel_refunds,
// from the notices and the bills). What the channel has refunded of a
// payment is then the sum of both, as far as surge has heard.

// refundNoted takes a channel's word on one refund of p and returns st
// with what the channel has refunded of p in all, as far as surge knows
// now. One of surge's own refunds that succeeded is done (the channel
// made it even if surge's call did not hear so, or surge gave it up after
// the channel refused it); one surge did not make
// is recorded once. A refund that did not succeed moved no money: st
// comes back with no state, which changes nothing.
func (s *Service) refundNoted(ctx context.Context, p *Payment, st Status, note RefundNote) (Status, error) {
	if !note.Succeeded {
		st.State = ""
		return st, nil
	}
	ours := false
	if rid, ok := ParseID(note.OutRefundNo); ok {
		var r Refund
		var orderID int64
		var state, kind string
		err := s.db.ForID(p.ID).W.QueryRowContext(ctx, `SELECT id, payment_id, order_id, amount, reason, state, kind FROM refunds
			WHERE id = $1 AND payment_id = $2`, rid, p.ID).Scan(&r.RefundID, &r.PaymentID, &orderID, &r.Amount, &r.Reason, &state, &kind)
		switch {
		case err == nil:
			ours = true
			if state == "pending" || state == "failed" { // given up, and made after all
				if err := s.refundDone(ctx, r, orderID, kind); err != nil {
					return st, err
				}
			}
		case !errors.Is(err, sql.ErrNoRows):
			return st, fmt.Errorf("refund %d of payment %d: %w", rid, p.ID, err)
		}
	}
	if !ours {
		if err := s.channelRefund(ctx, p.ID, note.OutRefundNo, note.Amount, note.At); err != nil {
			return st, err
		}
	}
	known, err := s.knownRefunded(ctx, p.ID)
	if err != nil {
		return st, err
	}
	st.State, st.Refunded = Refunded, min(known, p.Amount)
	return st, nil
}

// channelRefund records, once, the channel's refund refundNo of amount
// fen of payment paymentID, one surge did not make.
func (s *Service) channelRefund(ctx context.Context, paymentID int64, refundNo string, amount int64, at time.Time) error {
	n, err := sqldb.Exec(ctx, s.db.ForID(paymentID), `INSERT INTO channel_refunds (payment_id, refund_no, amount, at)
		VALUES ($1, $2, $3, $4) ON CONFLICT (payment_id, refund_no) DO NOTHING`, paymentID, refundNo, amount, at.UnixMilli())
	if err != nil {
		return fmt.Errorf("record refund %q of payment %d: %w", refundNo, paymentID, err)
	}
	if n > 0 { // the amount is known now: what follows records it as it is
		return s.dropAnomaly(ctx, anomalyUnknown, paymentID)
	}
	return nil
}

// knownRefunded is what surge knows the channel has refunded of payment
// paymentID: its own refunds done and the channel's it did not make.
func (s *Service) knownRefunded(ctx context.Context, paymentID int64) (int64, error) {
	var ours, theirs int64
	d := s.db.ForID(paymentID).W
	if err := d.QueryRowContext(ctx, `SELECT COALESCE(SUM(amount), 0) FROM refunds WHERE payment_id = $1 AND state = 'done'`,
		paymentID).Scan(&ours); err != nil {
		return 0, fmt.Errorf("refunds of payment %d: %w", paymentID, err)
	}
	if err := d.QueryRowContext(ctx, `SELECT COALESCE(SUM(amount), 0) FROM channel_refunds WHERE payment_id = $1`,
		paymentID).Scan(&theirs); err != nil {
		return 0, fmt.Errorf("channel refunds of payment %d: %w", paymentID, err)
	}
	return ours + theirs, nil
}
