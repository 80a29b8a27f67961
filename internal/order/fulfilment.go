package order

import (
	"context"
	"errors"
	"fmt"

	"github.com/surge-platform/surge/internal/platform/sqldb"
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
	// The usual case, the step that follows the order's status, is one
	// compare-and-set on that status, with no read of the order before it:
	// a fulfilment step has no effects and no event of its own (the store's
	// event is the record). An effect added to these steps in effects would
	// have to be carried out here too.
	d := s.db.ForID(orderID)
	n, err := sqldb.Exec(ctx, d, `UPDATE orders SET status = $1, version = version + 1,
		pickup_code = CASE WHEN $2 = '' THEN pickup_code ELSE $2 END, updated_at = $3
		WHERE id = $4 AND status = $5`, string(st.to), pickupCode, s.now().UnixMilli(), orderID, string(st.from))
	if err != nil {
		return fmt.Errorf("order %d %s -> %s: %w", orderID, st.from, st.to, err)
	}
	if n == 1 {
		return nil
	}
	// Applied, passed, refunded or not yet at st.from: read it to say which.
	rank := map[Status]int{Paid: 1, Accepted: 2, Ready: 3, Completed: 4}
	for range 5 {
		o, err := s.head(ctx, d.R, orderID) // the transition's CAS catches a stale read
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
