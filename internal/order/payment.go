package order

import (
	"context"
	"database/sql"
	"errors"
	"fmt"

	"github.com/surge-platform/surge/internal/platform/id"
	"github.com/surge-platform/surge/internal/platform/outbox"
)

// PaidResult says what MarkPaid did.
type PaidResult int

const (
	PaidNow     PaidResult = iota // this payment moved the order to paid
	PaidAlready                   // the order was already paid by this very payment
	PaidByOther                   // the order was paid by another payment: refund this one
	NotPayable                    // the order is cancelled (by the user or expiry): refund this one
)

// MarkPaid records that paymentID paid the order: pending_payment -> paid by
// compare-and-set, with an order.paid event, and turns its stock reservation
// into a sale. Idempotent per payment.
func (s *Service) MarkPaid(ctx context.Context, orderID, paymentID int64) (PaidResult, error) {
	for range 5 {
		// A read on the reader pool is fresh enough: the transition's
		// compare-and-set catches a change since.
		o, err := s.head(ctx, s.db.ForID(orderID).R, orderID)
		if err != nil {
			return 0, err
		}
		if res, done := paidBefore(o, paymentID); done {
			return res, nil
		}
		err = s.transition(ctx, o, Paid, EvPaid, func(o *Order) { o.PaymentID = paymentID })
		if errors.Is(err, ErrChanged) {
			continue
		}
		if err != nil {
			return 0, err
		}
		if o.StockHeld {
			if err := s.stock.Commit(ctx, orderID); err != nil {
				s.log.Warn("commit stock of a paid order", "order_id", orderID, "err", err)
			}
		}
		return PaidNow, nil
	}
	return 0, ErrChanged.With("order %d keeps changing", orderID)
}

// paidBefore says what paying o with paymentID comes to when o is no
// longer waiting for payment (done), and false when it is.
func paidBefore(o *Order, paymentID int64) (res PaidResult, done bool) {
	switch o.Status {
	case PendingPayment:
		return 0, false
	case Paid, Accepted, Ready, Completed, Refunding, Refunded:
		if o.PaymentID == paymentID {
			return PaidAlready, true
		}
		return PaidByOther, true
	default:
		return NotPayable, true
	}
}

// PayTx is MarkPaid inside the caller's transaction on the order's
// database (the payments centre settles a payment and pays its order in
// one commit). After the commit the caller must call Paid when the result
// is PaidNow, with held as PayTx returned it (the order holds limited
// stock). A concurrent change gives ErrChanged: roll back and retry.
func (s *Service) PayTx(ctx context.Context, tx *sql.Tx, orderID, paymentID int64) (res PaidResult, held bool, err error) {
	o, err := s.head(ctx, tx, orderID)
	if err != nil {
		return 0, false, err
	}
	if res, done := paidBefore(o, paymentID); done {
		return res, false, nil
	}
	next := *o
	next.Status, next.Version, next.UpdatedAt, next.PaymentID = Paid, o.Version+1, s.now(), paymentID
	if err := s.transitionTx(ctx, tx, o, &next, EvPaid); err != nil {
		return 0, false, err
	}
	return PaidNow, o.StockHeld, nil
}

// Paid finishes a PayTx that paid the order, once committed: the event goes
// out and the stock reservation, if the order holds one, becomes a sale.
func (s *Service) Paid(ctx context.Context, orderID int64, held bool) {
	s.wake(id.Gene(orderID))
	s.commitStock(ctx, orderID, held)
}

// commitStock makes the stock reservation of a paid order a sale, if the
// order holds one.
func (s *Service) commitStock(ctx context.Context, orderID int64, held bool) {
	if !held {
		return // nothing to read or write (the sweep would still commit a reservation)
	}
	if err := s.stock.Commit(ctx, orderID); err != nil {
		s.log.Warn("commit stock of a paid order", "order_id", orderID, "err", err)
	}
}

// Payable returns the order if userID may pay it now (unpaid, not expired),
// or ErrNotPayable / ErrNotFound. An order found past its time is expired
// on the spot.
func (s *Service) Payable(ctx context.Context, userID, orderID int64) (*Order, error) {
	o, err := s.Get(ctx, userID, orderID)
	if err != nil {
		return nil, err
	}
	if o.Status != PendingPayment {
		return nil, ErrNotPayable.With("order %d is %s", orderID, o.Status)
	}
	return o, nil
}

// PayMatched is PayTx's common case as one update of the order, for a
// payment notice: it pays the order whose id the subquery match selects (a
// payment of the caller's that says what the notice says), if that order
// is on this database and waits for payment, uses its discounts' holds,
// and writes its order.paid event. In match, $3 is paymentID (the order is
// paid by the payment that matched) and args are numbered from $5 ($1, $2
// and $4 are the update's own). ok is false when nothing was paid: match
// selected no payment, or its order is not here or no longer waits for
// payment. The caller then rolls back and takes PayTx's way, which tells
// those apart. After the commit, call PaidMatched.
//
// The update is a compare-and-set on the status, the version moving on
// with it; on PostgreSQL it takes the order's row lock first, as PayTx
// does (the subquery locks nothing).
func (s *Service) PayMatched(ctx context.Context, tx *sql.Tx, paymentID int64, match string, args ...any) (m Matched, ok bool, err error) {
	next, err := scanOrder(tx.QueryRowContext(ctx, `UPDATE orders SET status = $1, version = version + 1, updated_at = $2, payment_id = $3
		WHERE id = (`+match+`) AND status = $4 RETURNING `+orderCols,
		append([]any{string(Paid), s.now().UnixMilli(), paymentID, string(PendingPayment)}, args...)...))
	if errors.Is(err, sql.ErrNoRows) {
		return Matched{}, false, nil
	}
	if err != nil {
		return Matched{}, false, fmt.Errorf("pay order of payment %d: %w", paymentID, err)
	}
	was := *next
	was.Status, was.Version, was.PaymentID = PendingPayment, next.Version-1, 0
	if err := s.effects(ctx, tx, &was, next); err != nil {
		return Matched{}, false, err
	}
	ev, err := s.event(next, EvPaid)
	if err != nil {
		return Matched{}, false, err
	}
	if err := outbox.Insert(ctx, tx, ev, next.UpdatedAt); err != nil {
		return Matched{}, false, err
	}
	return Matched{OrderID: next.ID, Held: next.StockHeld, ev: ev}, true, nil
}

// Matched is an order PayMatched paid.
type Matched struct {
	OrderID int64
	Held    bool         // the order holds limited stock
	ev      outbox.Event // its order.paid, as committed
}

// PaidMatched finishes the PayMatched that paid m, once committed, as Paid
// does after PayTx; the relay of this process takes the event over.
func (s *Service) PaidMatched(ctx context.Context, m Matched) {
	outbox.Committed(ctx, s.waker, id.Gene(m.OrderID), m.ev)
	s.commitStock(ctx, m.OrderID, m.Held)
}
