package order

import (
	"context"
	"errors"
	"fmt"
)

// steps of fulfilment: the status an event moves the order to, from which.
var steps = map[string]struct{ from, to Status }{
	EvAccepted:  {Paid, Accepted},
	EvReady:     {Accepted, Ready},
	EvCompleted: {Ready, Completed},
}

// Fulfilled applies a fulfilment step the store reported (order.accepted
// with its pickup code, order.ready, order.completed) by compare-and-set.
// A step already applied (or passed) is a no-op; a step that arrives
// before the one it follows returns an error so it is delivered again.
func (s *Service) Fulfilled(ctx context.Context, orderID int64, typ, pickupCode string) error {
	st, ok := steps[typ]
	if !ok {
		return fmt.Errorf("not a fulfilment step: %s", typ)
	}
	rank := map[Status]int{Paid: 1, Accepted: 2, Ready: 3, Completed: 4}
	for range 5 {
		o, err := s.head(ctx, s.db.ForID(orderID).R, orderID) // the transition's CAS catches a stale read
		if err != nil {
			return err
		}
		switch {
		case rank[o.Status] >= rank[st.to], o.Status == Refunding, o.Status == Refunded:
			// Applied or passed, or refunded in full meanwhile (a step the
			// store took before it learnt of the refund): nothing to do.
			return nil
		case o.Status != st.from:
			return fmt.Errorf("order %d is %s; %s waits for %s", orderID, o.Status, typ, st.from)
		}
		err = s.transition(ctx, o, st.to, "", func(o *Order) {
			if pickupCode != "" {
				o.PickupCode = pickupCode
			}
		})
		if errors.Is(err, ErrChanged) {
			continue
		}
		return err
	}
	return ErrChanged.With("order %d keeps changing", orderID)
}
