package payment

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/surge-platform/surge/internal/order"
	"github.com/surge-platform/surge/internal/platform/bus"
)

// Closing at the channel. An order cancelled or expired unpaid may still
// have payments the payer could finish at the channel (an open pay page):
// each is closed there, so that it can no longer be paid. A payment that
// slips through anyway (paid just before the close) is refunded as a late
// payment, as before: closing makes that rare, the refund stays the net.

// closeDeliveries bounds the deliveries of one order.cancelled.
const closeDeliveries = 20

// ConsumeCancelled closes, until ctx is done, the unpaid payments of the
// orders cancelled or expired (order.cancelled) at their channels.
func (s *Service) ConsumeCancelled(ctx context.Context, b *bus.Bus) error {
	return s.consumeOrders(ctx, b, "payment-close", order.EvCancelled, closeDeliveries,
		func(ctx context.Context, ev order.Event) error { return s.CloseUnpaid(ctx, ev.OrderID) })
}

// consumeOrders runs f on every order event of type typ, until ctx is
// done, as durable consumer name (at most deliveries tries each). An
// event that does not decode is logged and dropped.
func (s *Service) consumeOrders(ctx context.Context, b *bus.Bus, name, typ string, deliveries int, f func(context.Context, order.Event) error) error {
	if err := b.EnsureStream(ctx, order.Stream); err != nil {
		return err
	}
	return b.Consume(ctx, bus.ConsumerConfig{Stream: order.Stream.Name, Durable: name, MaxAckPending: 256, Workers: 4,
		MaxDeliver: deliveries, FilterSubjects: order.Types(typ)},
		func(ctx context.Context, m bus.Msg) error {
			var ev order.Event
			if err := json.Unmarshal(m.Data, &ev); err != nil || ev.OrderID == 0 || ev.Type != typ {
				s.log.Error(typ+": undecodable, dropped", "subject", m.Subject, "seq", m.Seq, "err", err)
				return nil
			}
			return f(ctx, ev)
		})
}

// CloseUnpaid closes order orderID's pending payments at their channels.
// A channel that says one is paid after all has it queried at once (its
// answer is applied as a callback's: the late payment is refunded); one
// that is down leaves the error for a later try.
func (s *Service) CloseUnpaid(ctx context.Context, orderID int64) error {
	ps, err := s.OfOrder(ctx, orderID)
	if err != nil {
		return err
	}
	var errs []error
	for _, p := range ps {
		if p.State != stPending && p.State != stCreated {
			continue
		}
		ch := s.channels[p.Channel]
		if ch == nil {
			continue
		}
		err := s.call(ctx, p.Channel, func() error { return ch.Close(ctx, p.ID) })
		switch {
		case err == nil:
			if err := s.setState(ctx, p.ID, p.State, stClosed); err != nil {
				errs = append(errs, err)
			}
		case errors.Is(err, ErrPaidAtChannel):
			errs = append(errs, s.query(ctx, p))
		default:
			errs = append(errs, fmt.Errorf("close payment %d at %s: %w", p.ID, p.Channel, err))
		}
	}
	return errors.Join(errs...)
}
