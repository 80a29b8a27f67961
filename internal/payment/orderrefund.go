package payment

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/surge-platform/surge/internal/order"
	"github.com/surge-platform/surge/internal/platform/bus"
	"github.com/surge-platform/surge/internal/platform/errkind"
	"github.com/surge-platform/surge/internal/platform/id"
	"github.com/surge-platform/surge/internal/platform/sqldb"
	"github.com/surge-platform/surge/internal/promo"
)

// Refunds of orders: the customer cancels a paid order the store has not
// accepted (all of it comes back), the store or an operator refunds the
// whole order or chosen lines. Each request is one refund of the payment
// that paid the order, with an id of its own: it is recorded on the order
// and in the ledger in one transaction on the order's database (the order
// marks its lines, see order/refund.go, and the refund row is written
// pending), then sent to the channel; a channel that is down or refuses is
// asked again by Repair, as every refund is. When the channel has made it,
// the transaction that marks it done tells the order (order.refunded; the
// last refund of an order refunded in full makes it refunded).
//
// The store's fulfilment record decides between a customer's cancel and
// the store's accept (Stores): a refund that leaves nothing of a paid
// order withdraws it from the store first; if the store accepted it
// first, the customer's cancel is refused, and a store's or operator's
// refund goes on as one after acceptance. Limited stock comes back for
// lines refunded before acceptance.

var (
	ErrRefundReason  = errkind.New(errkind.Invalid, "invalid_reason", "a refund's reason is at most 200 characters")
	ErrTooManySKUs   = errkind.New(errkind.Invalid, "too_many_skus", "at most 50 sku_ids per refund")
	ErrRefundExceeds = errkind.New(errkind.Conflict, "refund_exceeds_payment", "the payment no longer holds that much: part of it was refunded at the channel outside surge")
)

// MaxReason bounds a refund's reason (in characters).
const MaxReason = 200

// Stores is what refunds of orders need of the stores' fulfilment
// (fulfil.Service).
type Stores interface {
	// Withdraw takes a paid order its store has not accepted away from
	// the store for good (true), or reports that the store accepted it
	// first (false). Idempotent.
	Withdraw(ctx context.Context, orderID, storeID, userID int64, by string) (bool, error)
	// Accepted reports whether the store has accepted the order.
	Accepted(ctx context.Context, orderID, storeID int64) (bool, error)
}

// OrderRefund asks for a refund of an order's lines.
type OrderRefund struct {
	OrderID int64
	SKUs    []int64 // the skus whose lines to refund; none = every line not refunded yet
	Reason  string
	// By is order.ByCustomer (a cancel: all of a paid order its store has
	// not accepted; SKUs must be empty), order.ByStore or order.ByOperator.
	By      string
	UserID  int64 // when not 0, the order must be this customer's
	StoreID int64 // when not 0, the order must be this store's
}

func (r OrderRefund) check() error {
	switch {
	case len([]rune(r.Reason)) > MaxReason:
		return ErrRefundReason.With("the reason has %d characters; at most %d", len([]rune(r.Reason)), MaxReason)
	case len(r.SKUs) > order.MaxLines:
		return ErrTooManySKUs.With("%d sku_ids; at most %d (an order has at most %d lines)", len(r.SKUs), order.MaxLines, order.MaxLines)
	case r.By == order.ByCustomer && len(r.SKUs) > 0:
		return errkind.ErrInvalid.With("a customer cancels all of an order")
	}
	return nil
}

// OrderRefunded is a refund of an order's lines as RefundOrder made it.
type OrderRefunded struct {
	RefundID int64        `json:"refund_id,string"`
	Amount   int64        `json:"amount"`
	SKUs     promo.IDs    `json:"sku_ids"`
	State    string       `json:"state"` // pending (on its way to the channel) or done
	Order    *order.Order `json:"order"`
}

// RefundOrder refunds the lines of an order that r asks for: each line
// gives back its apportioned payable, once; the order shows it at once
// (its lines' refunded, its refunded, status refunding when nothing of it
// is left) and the channel is asked right away (and again until it takes
// it). Errors: order.ErrNotFound (no such order, or not the customer's or
// store's), order.ErrNotRefundable (not paid), order.ErrNotCancellable (a
// customer's cancel of an order the store accepted), order.ErrUnknownSKU,
// order.ErrAlreadyRefunded, order.ErrNothingToRefund, ErrRefundExceeds,
// the input errors, and order.ErrChanged when the order keeps changing.
//
// A customer's cancel of an order already withdrawn from its store (by
// this customer's earlier cancel) answers the order as it is.
func (s *Service) RefundOrder(ctx context.Context, r OrderRefund) (*OrderRefunded, error) {
	if err := r.check(); err != nil {
		return nil, err
	}
	if s.stores == nil {
		return nil, errkind.ErrInvalid.With("refunds of orders are not served by this node")
	}
	for range 5 {
		res, err := s.refundOrder(ctx, r)
		if !errors.Is(err, order.ErrChanged) {
			return res, err
		}
	}
	return nil, order.ErrChanged.With("order %d keeps changing; try again", r.OrderID)
}

func (s *Service) refundOrder(ctx context.Context, r OrderRefund) (*OrderRefunded, error) {
	o, err := s.orders.Peek(ctx, r.OrderID)
	if err != nil {
		return nil, err
	}
	if r.UserID != 0 && o.UserID != r.UserID || r.StoreID != 0 && o.StoreID != r.StoreID {
		return nil, order.ErrNotFound.With("no order %d", r.OrderID) // do not tell others' orders exist
	}
	if r.By == order.ByCustomer {
		switch o.Status {
		case order.Paid:
		case order.Refunding, order.Refunded:
			accepted, err := s.stores.Accepted(ctx, o.ID, o.StoreID)
			if err != nil {
				return nil, err
			}
			if !accepted { // cancelled before: the same answer
				return &OrderRefunded{SKUs: promo.IDs{}, State: "", Order: o}, nil
			}
			return nil, order.ErrNotCancellable.With("order %d is %s already", o.ID, o.Status)
		default:
			return nil, order.ErrNotCancellable.With("order %d is %s; a paid order can be cancelled only until the store accepts it: ask the store for a refund", o.ID, o.Status)
		}
	}
	_, amount, full, err := o.Refundable(r.SKUs)
	if err != nil {
		return nil, err
	}
	p, err := s.get(ctx, o.PaymentID)
	if err != nil {
		return nil, err
	}
	if err := s.covers(ctx, s.db.ForID(p.ID).R, p, o.Refunded+amount); err != nil {
		return nil, err
	}
	before := false
	if o.Status == order.Paid { // the store may not have accepted it: its fulfilment record knows
		if full {
			if before, err = s.stores.Withdraw(ctx, o.ID, o.StoreID, o.UserID, r.By); err != nil {
				return nil, err
			}
			if r.By == order.ByCustomer && !before {
				return nil, order.ErrNotCancellable.With("the store accepted order %d already: ask the store for a refund", o.ID)
			}
		} else {
			accepted, err := s.stores.Accepted(ctx, o.ID, o.StoreID)
			if err != nil {
				return nil, err
			}
			before = !accepted
		}
	}
	rid, err := s.ids.Next(id.Gene(p.ID))
	if err != nil {
		return nil, err
	}
	var rec *order.RefundRecord
	reason := r.Reason
	if reason == "" {
		reason = "refund by the " + r.By
	}
	err = sqldb.Tx(ctx, s.db.ForID(o.ID), func(tx *sql.Tx) error {
		var err error
		if rec, err = s.orders.RefundTx(ctx, tx, o, order.Refund{ID: rid, SKUs: r.SKUs, Before: before, By: r.By, Reason: reason}); err != nil {
			return err
		}
		if err := s.covers(ctx, tx, p, rec.Order.Refunded); err != nil {
			return err
		}
		now := s.now().UnixMilli()
		_, err = tx.ExecContext(ctx, `INSERT INTO refunds (id, payment_id, order_id, channel, amount, reason, state, created_at, updated_at, retry_at, kind)
			VALUES ($1, $2, $3, $4, $5, $6, 'pending', $7, $7, $8, $9)`,
			rid, p.ID, o.ID, p.Channel, rec.Amount, reason, now, now+repairAfter.Milliseconds(), refundOrder)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("refund of order %d: %w", o.ID, err)
	}
	s.orders.Recorded(ctx, rec)
	if err := s.sendRefund(ctx, rid); err != nil {
		s.log.Warn("send a refund of an order (Repair sends it again)", "order_id", o.ID, "refund_id", rid, "err", err)
	}
	state := "pending"
	if err := s.db.ForID(rid).W.QueryRowContext(ctx, `SELECT state FROM refunds WHERE id = $1`, rid).Scan(&state); err != nil {
		s.log.Warn("read a refund just made", "refund_id", rid, "err", err)
	}
	return &OrderRefunded{RefundID: rid, Amount: rec.Amount, SKUs: rec.SKUs, State: state, Order: rec.Order}, nil
}

// covers checks that payment p (as read) can give back refunded fen of
// its order in all: what surge knows was refunded of it at the channel
// outside surge does not count (paid_order_refunded_outside: the refunds
// of the order would pass what the channel holds). A lower bound: the
// channel refuses what passes the rest.
func (s *Service) covers(ctx context.Context, q interface {
	QueryRowContext(ctx context.Context, q string, args ...any) *sql.Row
}, p *Payment, refunded int64) error {
	if p.State != stSettled {
		// It paid the order, and settles in a moment (Repair finishes it
		// after a crash): refunding before would look like a refund made
		// outside surge to the settling.
		return order.ErrChanged.With("payment %d of order %d is still being settled; try again in a moment", p.ID, p.OrderID)
	}
	var known, ours int64
	if err := q.QueryRowContext(ctx, `SELECT refunded, CAST(COALESCE((SELECT SUM(amount) FROM refunds
		WHERE payment_id = $1 AND kind = $2 AND state IN ('pending', 'done')), 0) AS BIGINT) FROM payments WHERE id = $1`,
		p.ID, refundOrder).Scan(&known, &ours); err != nil {
		return fmt.Errorf("refunds of payment %d: %w", p.ID, err)
	}
	if outside := max(0, known-ours); refunded+outside > p.Amount {
		return ErrRefundExceeds.With("payment %d of %d fen had %d fen refunded at the channel outside surge; %d fen of refunds of order %d would pass it",
			p.ID, p.Amount, outside, refunded, p.OrderID)
	}
	return nil
}

// orderRefundDoneTx records, in the transaction that marks r done, that
// the channel has it: the payment's refunded is at least its done refunds
// of its order, and the order is told (the last of its refunds on the way
// may make it refunded).
func (s *Service) orderRefundDoneTx(ctx context.Context, tx *sql.Tx, r Refund, orderID int64) error {
	// The payment's row lock first: two refunds of the order done at once
	// (on PostgreSQL) are then recorded one after the other, each seeing
	// the other's state, so the sum is whole and exactly one is the last.
	if _, err := tx.ExecContext(ctx, `UPDATE payments SET updated_at = $1 WHERE id = $2`, s.now().UnixMilli(), r.PaymentID); err != nil {
		return err
	}
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

// withdrawnDeliveries bounds the deliveries of one order.withdrawn.
const withdrawnDeliveries = 20

// ConsumeWithdrawn refunds, until ctx is done, the orders their stores'
// fulfilment withdrew (order.withdrawn): normally the request that
// withdrew one refunds it at once and this finds nothing to do; after a
// crash between the two, this does it. A refusal (already refunded, no
// longer paid) is the answer, not a failure: the event is done with.
func (s *Service) ConsumeWithdrawn(ctx context.Context, b *bus.Bus) error {
	return s.consumeOrders(ctx, b, "refunds", order.EvWithdrawn, withdrawnDeliveries, func(ctx context.Context, ev order.Event) error {
		by := ev.By
		if by != order.ByCustomer && by != order.ByStore {
			by = order.ByOperator
		}
		_, err := s.RefundOrder(ctx, OrderRefund{OrderID: ev.OrderID, By: by, Reason: "withdrawn before the store accepted it"})
		if e := errkind.Of(err); e != nil && (e.Kind == errkind.Conflict || e.Kind == errkind.NotFound || e.Kind == errkind.Invalid) &&
			!errors.Is(err, order.ErrChanged) {
			s.log.Info("order.withdrawn: nothing to refund", "order_id", ev.OrderID, "err", err)
			return nil
		}
		return err
	})
}
