package payment

import (
	"context"
	"fmt"
	"time"
)

// Anomaly is one recorded payment anomaly.
type Anomaly struct {
	ID        int64     `json:"id,string"`
	Kind      string    `json:"kind"`
	OrderID   int64     `json:"order_id,string"`
	PaymentID int64     `json:"payment_id,string"`
	OtherID   int64     `json:"other_payment_id,string,omitempty"`
	Detail    string    `json:"detail"`
	At        time.Time `json:"at"`
	Refund    string    `json:"refund,omitempty"` // pending | done | failed: surge's refund of all the payment held, if it made one
	// Kinds about money refunded at the channel say how much the payment
	// captured, how much was refunded and by whom ("outside surge": the
	// provider's merchant console or another system holding the keys).
	Captured   int64  `json:"captured,omitempty"`
	Refunded   int64  `json:"refunded,omitempty"`
	RefundedBy string `json:"refunded_by,omitempty"`
}

// RefundedOutside is Anomaly.RefundedBy of a refund surge did not make.
const RefundedOutside = "outside surge"

// anomaly records a once per kind and payment (ID and At are set here).
// Recorded again with more refunded, it takes the new amount and detail.
func (s *Service) anomaly(ctx context.Context, a Anomaly) error {
	aid, err := s.ids.Next(0)
	if err != nil {
		return fmt.Errorf("record anomaly %s of payment %d: %w", a.Kind, a.PaymentID, err)
	}
	res, err := s.db.Main().W.ExecContext(ctx, `INSERT INTO anomalies (id, kind, order_id, payment_id, other_id, detail, created_at, captured, refunded, refunded_by)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
		ON CONFLICT (kind, payment_id) DO UPDATE SET refunded = excluded.refunded, detail = excluded.detail WHERE anomalies.refunded < excluded.refunded`,
		aid, a.Kind, a.OrderID, a.PaymentID, a.OtherID, a.Detail, s.now().UnixMilli(), a.Captured, a.Refunded, a.RefundedBy)
	if err != nil {
		return fmt.Errorf("record anomaly %s of payment %d: %w", a.Kind, a.PaymentID, err)
	}
	if n, _ := res.RowsAffected(); n > 0 {
		s.log.Warn("payment anomaly", "kind", a.Kind, "order_id", a.OrderID, "payment_id", a.PaymentID, "other_id", a.OtherID,
			"captured", a.Captured, "refunded", a.Refunded, "detail", a.Detail)
	}
	return nil
}

// dropAnomaly deletes the anomaly of kind about paymentID (one recorded
// ahead of a change that then went another way).
func (s *Service) dropAnomaly(ctx context.Context, kind string, paymentID int64) error {
	if _, err := s.db.Main().W.ExecContext(ctx, `DELETE FROM anomalies WHERE kind = $1 AND payment_id = $2`, kind, paymentID); err != nil {
		return fmt.Errorf("drop anomaly %s of payment %d: %w", kind, paymentID, err)
	}
	return nil
}

// Anomalies lists the latest anomalies (newest first), with their refund state.
func (s *Service) Anomalies(ctx context.Context, limit int) ([]Anomaly, error) {
	rows, err := s.db.Main().R.QueryContext(ctx, `SELECT id, kind, order_id, payment_id, other_id, detail, created_at, captured, refunded, refunded_by
		FROM anomalies ORDER BY id DESC LIMIT $1`, limit)
	if err != nil {
		return nil, fmt.Errorf("anomalies: %w", err)
	}
	var out []Anomaly
	for rows.Next() {
		var a Anomaly
		var at int64
		if err := rows.Scan(&a.ID, &a.Kind, &a.OrderID, &a.PaymentID, &a.OtherID, &a.Detail, &at, &a.Captured, &a.Refunded, &a.RefundedBy); err != nil {
			rows.Close()
			return nil, err
		}
		a.At = time.UnixMilli(at).UTC()
		out = append(out, a)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("anomalies: %w", err)
	}
	for i := range out {
		var st string
		if err := s.db.ForID(out[i].PaymentID).R.QueryRowContext(ctx, `SELECT state FROM refunds WHERE payment_id = $1 AND kind = $2`,
			out[i].PaymentID, refundPayment).Scan(&st); err == nil {
			out[i].Refund = st
		}
	}
	if out == nil {
		out = []Anomaly{}
	}
	return out, nil
}
