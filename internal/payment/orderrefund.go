package payment

import (
	"context"
	"database/sql"
	"fmt"
	"time"
)

// Refunds of an order's lines (kind refundOrder): each is one refund of
// the payment that paid the order, with an id and an amount of its own,
// recorded on the order and in the ledger in one transaction on the
// order's database (order.RefundTx) and sent to the channel like every
// refund. When the channel has made it, the transaction that marks it done
// tells the order (order.refunded; the last refund of an order refunded in
// full makes it refunded).

// orderRefundDoneTx records, in the transaction that marks r done, that
// the channel has it: the payment's refunded is at least its done refunds
// of its order, and the order is told (the last of its refunds on the way
// may make it refunded).
func (s *Service) orderRefundDoneTx(ctx context.Context, tx *sql.Tx, r Refund, orderID int64) error {
	var done int64
	var pending int
	if err := tx.QueryRowContext(ctx, `SELECT CAST(COALESCE(SUM(amount), 0) AS BIGINT) FROM refunds
		WHERE payment_id = $1 AND kind = $2 AND state = 'done'`, r.PaymentID, refundOrder).Scan(&done); err != nil {
		return err
	}
	if _, err := tx.ExecContext(ctx, `UPDATE payments SET refunded = $1, updated_at = $2 WHERE id = $3 AND refunded < $1`,
		done, s.now().UnixMilli(), r.PaymentID); err != nil {
		return err
	}
	if err := tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM refunds WHERE order_id = $1 AND kind = $2 AND state = 'pending'`,
		orderID, refundOrder).Scan(&pending); err != nil {
		return err
	}
	return s.orders.RefundedTx(ctx, tx, orderID, r.RefundID, pending == 0)
}

// ourRefunds returns what surge's refunds of an order's lines come to on
// payment paymentID: done, and done or pending (those the channel may
// have made already).
func (s *Service) ourRefunds(ctx context.Context, paymentID int64) (done, sent int64, err error) {
	err = s.db.ForID(paymentID).W.QueryRowContext(ctx, `SELECT
		CAST(COALESCE(SUM(CASE WHEN state = 'done' THEN amount ELSE 0 END), 0) AS BIGINT),
		CAST(COALESCE(SUM(amount), 0) AS BIGINT)
		FROM refunds WHERE payment_id = $1 AND kind = $2 AND state IN ('pending', 'done')`, paymentID, refundOrder).Scan(&done, &sent)
	if err != nil {
		return 0, 0, fmt.Errorf("refunds of payment %d: %w", paymentID, err)
	}
	return done, sent, nil
}

// RefundView is one of surge's refunds of an order, for operators.
type RefundView struct {
	RefundID  int64     `json:"refund_id,string"`
	PaymentID int64     `json:"payment_id,string"`
	Kind      string    `json:"kind"` // order: lines of the order; payment: all of a payment that did not pay it (an anomaly)
	Amount    int64     `json:"amount"`
	Reason    string    `json:"reason"`
	State     string    `json:"state"` // pending, done or failed (given up: see the anomaly refund_refused)
	Attempts  int       `json:"attempts"`
	Error     string    `json:"error,omitempty"` // the channel's last answer while pending or failed
	CreatedAt time.Time `json:"created_at"`
	UpdatedAt time.Time `json:"updated_at"`
}

// RefundsOf lists surge's refunds of an order, oldest first.
func (s *Service) RefundsOf(ctx context.Context, orderID int64) ([]RefundView, error) {
	rows, err := s.db.ForID(orderID).R.QueryContext(ctx, `SELECT id, payment_id, kind, amount, reason, state, attempts, error, created_at, updated_at
		FROM refunds WHERE order_id = $1 ORDER BY id`, orderID)
	if err != nil {
		return nil, fmt.Errorf("refunds of order %d: %w", orderID, err)
	}
	defer rows.Close()
	out := []RefundView{}
	for rows.Next() {
		var v RefundView
		var created, updated int64
		if err := rows.Scan(&v.RefundID, &v.PaymentID, &v.Kind, &v.Amount, &v.Reason, &v.State, &v.Attempts, &v.Error, &created, &updated); err != nil {
			return nil, err
		}
		v.CreatedAt, v.UpdatedAt = time.UnixMilli(created).UTC(), time.UnixMilli(updated).UTC()
		out = append(out, v)
	}
	return out, rows.Err()
}
