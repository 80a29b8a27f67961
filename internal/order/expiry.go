package order

import (
	"context"
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

// dueOrders reads the unpaid orders whose time passed before $1, oldest
// first, at most $2. Its status condition is the orders_pending_expires
// index's, written as it is there: a partial index serves only a query
// that names its condition.
const dueOrders = `SELECT id FROM orders WHERE status = '` + string(PendingPayment) + `' AND expires_at < $1 ORDER BY expires_at LIMIT $2`

// ExpireDue is the backstop of the timers: it expires unpaid orders whose
// time passed more than grace ago, from the index of unpaid orders of
// every shard, at most limit per shard. It returns how many it expired.
func (s *Service) ExpireDue(ctx context.Context, grace time.Duration, limit int) (int, error) {
	n := 0
	for _, d := range s.db.Shards() {
		ids, err := sqldb.IDs(ctx, d.R, dueOrders, s.now().Add(-grace).UnixMilli(), limit)
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
