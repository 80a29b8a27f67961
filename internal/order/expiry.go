package order

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/surge-platform/surge/internal/platform/bus"
	"github.com/surge-platform/surge/internal/platform/id"
	"github.com/surge-platform/surge/internal/platform/outbox"
	"github.com/surge-platform/surge/internal/platform/sqldb"
)

// Timers is the stream of order timers: a schedule per unpaid order on
// timers.order.<order id> fires its order id on timers.expire.<gene>.
var Timers = bus.StreamConfig{Name: "TIMERS", Subjects: []string{"timers.>"}, Schedules: true, Duplicates: 10 * time.Minute}

// timer is the outbox row that schedules o's expiry; it is written in the
// order's own transaction, so every order has its timer.
func (s *Service) timer(o *Order) (outbox.Event, error) {
	gene := id.Gene(o.ID)
	evID, err := s.ids.Next(gene)
	return outbox.Event{ID: evID, Subject: "timers.order." + strconv.FormatInt(o.ID, 10), Type: "order.timer",
		Payload: []byte(strconv.FormatInt(o.ID, 10)),
		Header:  map[string]string{bus.Schedule: bus.ScheduleAt(o.ExpiresAt), bus.ScheduleTarget: "timers.expire." + strconv.Itoa(gene)}}, err
}

// Expire cancels the order if it is still unpaid and its time is up, and
// releases its stock. It reports whether this call expired it; an order that
// is paid, cancelled or not yet due is left alone. Safe to call any number
// of times from any node: the status CAS lets one caller win.
func (s *Service) Expire(ctx context.Context, orderID int64) (bool, error) {
	for range 3 {
		o, err := s.read(ctx, s.db.ForID(orderID).W, orderID)
		if errors.Is(err, ErrNotFound) {
			return false, nil // a timer of an order whose transaction failed
		}
		if err != nil {
			return false, err
		}
		if o.Status != PendingPayment || s.now().Before(o.ExpiresAt) {
			return false, nil
		}
		err = s.transition(ctx, o, Cancelled, EvCancelled, func(o *Order) { o.Reason = ByExpiry })
		if errors.Is(err, ErrChanged) {
			continue // paid or cancelled meanwhile: look again
		}
		if err != nil {
			return false, err
		}
		if _, err := s.stock.Release(ctx, orderID); err != nil {
			s.log.Warn("release on expiry (will be retried from the event)", "order_id", orderID, "err", err)
		}
		return true, nil
	}
	return false, nil
}

// ConsumeTimers expires orders as their timers fire, until ctx is done.
func (s *Service) ConsumeTimers(ctx context.Context, b *bus.Bus) error {
	if err := b.EnsureStream(ctx, Timers); err != nil {
		return err
	}
	return b.Consume(ctx, bus.ConsumerConfig{Stream: Timers.Name, Durable: "order-expiry", FilterSubjects: []string{"timers.expire.>"},
		MaxAckPending: 4096, Workers: 4}, func(ctx context.Context, m bus.Msg) error {
		oid, err := strconv.ParseInt(string(m.Data), 10, 64)
		if err != nil {
			s.log.Error("order timer: bad payload, dropped", "subject", m.Subject, "data", string(m.Data))
			return nil
		}
		_, err = s.Expire(ctx, oid)
		return err
	})
}

// ExpireDue is the backstop of the timers: it expires unpaid orders whose
// time passed more than grace ago, from the (status, expires_at) index of
// every shard, at most limit per shard. It returns how many it expired.
func (s *Service) ExpireDue(ctx context.Context, grace time.Duration, limit int) (int, error) {
	n := 0
	for _, d := range s.db.Shards() {
		ids, err := sqldb.IDs(ctx, d.R, `SELECT id FROM orders WHERE status = $1 AND expires_at < $2 ORDER BY expires_at LIMIT $3`,
			string(PendingPayment), s.now().Add(-grace).UnixMilli(), limit)
		if err != nil {
			return n, fmt.Errorf("due orders on %s: %w", d.Name, err)
		}
		for _, x := range ids {
			ok, err := s.Expire(ctx, x)
			if err != nil {
				return n, err
			}
			if ok {
				n++
			}
		}
	}
	return n, nil
}

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
		if err := s.stock.Commit(ctx, orderID); err != nil {
			s.log.Warn("commit stock of a paid order", "order_id", orderID, "err", err)
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
// is PaidNow. A concurrent change gives ErrChanged: roll back and retry.
func (s *Service) PayTx(ctx context.Context, tx *sql.Tx, orderID, paymentID int64) (PaidResult, error) {
	o, err := s.head(ctx, tx, orderID)
	if err != nil {
		return 0, err
	}
	if res, done := paidBefore(o, paymentID); done {
		return res, nil
	}
	next := *o
	next.Status, next.Version, next.UpdatedAt, next.PaymentID = Paid, o.Version+1, s.now(), paymentID
	if err := s.transitionTx(ctx, tx, o, &next, EvPaid); err != nil {
		return 0, err
	}
	return PaidNow, nil
}

// Paid finishes a PayTx that paid the order, once committed: the event goes
// out and the stock reservation becomes a sale.
func (s *Service) Paid(ctx context.Context, orderID int64) {
	s.wake(id.Gene(orderID))
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
