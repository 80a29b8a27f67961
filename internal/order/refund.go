package order

import (
	"context"
	"database/sql"
	"fmt"
	"slices"

	"github.com/surge-platform/surge/internal/inventory"
	"github.com/surge-platform/surge/internal/platform/errkind"
	"github.com/surge-platform/surge/internal/platform/id"
	"github.com/surge-platform/surge/internal/platform/outbox"
	"github.com/surge-platform/surge/internal/promo"
)

// Refunds of orders.
//
// A refund takes whole lines of a paid order (the lines of the skus asked
// for, or every line not refunded yet) and gives back their apportioned
// payable: what the customer paid for them after every discount. It is
// recorded on the order in the payment centre's transaction (RefundTx),
// with the refund that carries the money to the channel: the lines keep
// the refund's id and their payable as refunded, the order adds it to its
// refunded, and order.refunding goes out. A line is refunded once (its
// refund_id is set from 0 by compare-and-set), and the order's refunded
// never passes its payable (a condition of the same update). A refund that
// leaves nothing of the order moves it to refunding; any other leaves its
// status as it is.
//
// When the channel has made the refund, the payment centre tells the order
// in the transaction that records it (RefundedTx), once per refund:
// order.refunded goes out, and what the refunded lines used comes back. A
// refund of part of the order gives back the special-price quota of its
// lines (its coupons and first-order offer stay used: the rest of the
// order still has them); the last refund of an order refunded in full
// moves it from refunding to refunded, whose transition gives back all it
// used (promo.Restore: coupons still valid, the quotas left, the
// first-order offer).
//
// Limited stock comes back for lines refunded before the store accepted
// the order (it will not make them): Recorded gives it back at once and
// the ledger again from order.refunding (inventory.Return: once per refund
// and sku).

var (
	ErrNotRefundable   = errkind.New(errkind.Conflict, "order_not_paid", "only a paid order can be refunded")
	ErrAlreadyRefunded = errkind.New(errkind.Conflict, "already_refunded", "a chosen line of the order is refunded already")
	ErrNothingToRefund = errkind.New(errkind.Conflict, "nothing_to_refund", "every line of the order is refunded already")
)

// Refund is a refund to record on an order (RefundTx).
type Refund struct {
	ID     int64   // the payment centre's refund id; every line it refunds keeps it
	SKUs   []int64 // the skus whose lines to refund; nil = every line not refunded yet
	Before bool    // the store has not accepted the order and will not make these lines: their limited stock comes back
	By     string  // ByCustomer, ByStore or ByOperator
	Reason string
}

// RefundRecord is a refund recorded on an order.
type RefundRecord struct {
	RefundID int64
	Amount   int64   // the refunded lines' payable
	SKUs     []int64 // of the refunded lines
	Full     bool    // nothing of the order is left: it is refunding
	Restock  []inventory.Line
	Order    *Order // after the refund
}

// Refundable says which lines of o (indexes into Items) refunding skus
// would take (nil: every line not refunded yet), what they come to, and
// whether nothing of the order would be left. Errors: ErrNotRefundable (o
// is not paid), ErrUnknownSKU (a sku not on the order), ErrAlreadyRefunded
// (a sku whose lines are refunded), ErrNothingToRefund.
func (o *Order) Refundable(skus []int64) (lines []int, amount int64, full bool, err error) {
	switch o.Status {
	case Paid, Accepted, Ready, Completed:
	case Refunding, Refunded:
		if len(skus) > 0 {
			return nil, 0, false, ErrAlreadyRefunded.With("order %d is %s: every line is refunded already", o.ID, o.Status)
		}
		return nil, 0, false, ErrNothingToRefund.With("order %d is %s: every line is refunded already", o.ID, o.Status)
	default:
		return nil, 0, false, ErrNotRefundable.With("order %d is %s; only a paid order can be refunded", o.ID, o.Status)
	}
	take := func(i int) {
		if !slices.Contains(lines, i) {
			lines = append(lines, i)
			amount += o.Items[i].Payable - o.Items[i].Refunded
		}
	}
	if len(skus) == 0 {
		for i, l := range o.Items {
			if l.RefundID == 0 {
				take(i)
			}
		}
		if len(lines) == 0 {
			return nil, 0, false, ErrNothingToRefund.With("every line of order %d is refunded already", o.ID)
		}
	}
	for _, sku := range skus {
		found, open := false, false
		for i, l := range o.Items {
			if l.SKU != sku {
				continue
			}
			found = true
			if l.RefundID == 0 {
				open = true
				take(i)
			}
		}
		switch {
		case !found:
			return nil, 0, false, ErrUnknownSKU.With("sku %d is not on order %d", sku, o.ID)
		case !open:
			return nil, 0, false, ErrAlreadyRefunded.With("sku %d of order %d is refunded already", sku, o.ID)
		}
	}
	slices.Sort(lines)
	if o.Refunded+amount > o.Payable {
		// Lines sum to the payable, so this means a broken record.
		return nil, 0, false, fmt.Errorf("order %d: refunding %d fen on top of %d would pass its payable %d", o.ID, amount, o.Refunded, o.Payable)
	}
	left := 0
	for _, l := range o.Items {
		if l.RefundID == 0 {
			left++
		}
	}
	return lines, amount, left == len(lines), nil
}

// RefundTx records refund rf on o (as read, with its lines), in the
// caller's transaction on the order's database (the payment centre records
// the money's refund in the same one): see the top of this file. A change
// of the order since it was read (another refund, a store's step) gives
// ErrChanged: roll back, read again, retry. Errors of Refundable. After the
// commit the caller must call Recorded.
func (s *Service) RefundTx(ctx context.Context, tx *sql.Tx, o *Order, rf Refund) (*RefundRecord, error) {
	idx, amount, full, err := o.Refundable(rf.SKUs)
	if err != nil {
		return nil, err
	}
	next := *o
	next.Items = slices.Clone(o.Items)
	next.Version, next.UpdatedAt, next.Refunded = o.Version+1, s.now(), o.Refunded+amount
	if full {
		next.Status = Refunding
	}
	res, err := tx.ExecContext(ctx, `UPDATE orders SET status = $1, version = $2, updated_at = $3, refunded = refunded + $4
		WHERE id = $5 AND status = $6 AND version = $7 AND refunded + $4 <= payable`,
		string(next.Status), next.Version, next.UpdatedAt.UnixMilli(), amount, o.ID, string(o.Status), o.Version)
	if n, err := rowsAffected(res, err); err != nil {
		return nil, fmt.Errorf("refund order %d: %w", o.ID, err)
	} else if n != 1 {
		return nil, ErrChanged.With("order %d changed meanwhile", o.ID)
	}
	r := &RefundRecord{RefundID: rf.ID, Amount: amount, Full: full, Order: &next}
	for _, i := range idx {
		l := &next.Items[i]
		res, err := tx.ExecContext(ctx, `UPDATE order_items SET refunded = payable, refund_id = $1
			WHERE order_id = $2 AND line = $3 AND refund_id = 0`, rf.ID, o.ID, i)
		if n, err := rowsAffected(res, err); err != nil {
			return nil, fmt.Errorf("refund order %d line %d: %w", o.ID, i, err)
		} else if n != 1 {
			return nil, ErrChanged.With("order %d line %d changed meanwhile", o.ID, i)
		}
		l.Refunded, l.RefundID = l.Payable, rf.ID
		r.SKUs = append(r.SKUs, l.SKU)
		if rf.Before && o.SaleID == 0 { // a sale's order took none of the store's stock
			r.Restock = append(r.Restock, inventory.Line{SKU: l.SKU, Qty: int64(l.Qty)})
		}
	}
	ev, err := s.newEvent(&next, EvRefunding)
	if err != nil {
		return nil, err
	}
	ev.RefundID, ev.Amount, ev.Refunded, ev.SKUs, ev.By, ev.Reason = rf.ID, amount, next.Refunded, r.SKUs, rf.By, rf.Reason
	for _, l := range r.Restock {
		ev.Restock = append(ev.Restock, RestockLine{SKU: l.SKU, Qty: l.Qty})
	}
	if err := outbox.Insert(ctx, tx, ev.outbox(), next.UpdatedAt); err != nil {
		return nil, err
	}
	return r, nil
}

// Recorded finishes a committed RefundTx: its event goes out and the stock
// of lines the store will not make comes back (again, idempotently, from
// the event if this fails).
func (s *Service) Recorded(ctx context.Context, r *RefundRecord) {
	s.wake(id.Gene(r.Order.ID))
	lines := make([]RestockLine, len(r.Restock))
	for i, l := range r.Restock {
		lines[i] = RestockLine{SKU: l.SKU, Qty: l.Qty}
	}
	if err := s.restock(ctx, r.RefundID, r.Order.ID, lines); err != nil {
		s.log.Warn("return stock of refunded lines (will be retried from the event)", "order_id", r.Order.ID, "refund_id", r.RefundID, "err", err)
	}
}

func (s *Service) restock(ctx context.Context, refundID, orderID int64, lines []RestockLine) error {
	if len(lines) == 0 {
		return nil
	}
	inv := make([]inventory.Line, len(lines))
	for i, l := range lines {
		inv[i] = inventory.Line{SKU: l.SKU, Qty: l.Qty}
	}
	_, err := s.stock.Return(ctx, refundID, orderID, inv)
	return err
}

// RefundedTx records, in the payment centre's transaction that marks
// refund refundID done (once), that the channel made it: order.refunded
// goes out, and what the refunded lines used comes back. last says that no
// other refund of the order is still on its way: the last refund of an
// order refunded in full moves it to refunded (promo.Restore gives back
// everything it used); any other gives back the special-price quota of its
// own lines. A change of the order meanwhile gives ErrChanged (roll back;
// the refund stays pending and is done again). After the commit the caller
// must call RefundDone.
func (s *Service) RefundedTx(ctx context.Context, tx *sql.Tx, orderID, refundID int64, last bool) error {
	o, err := s.head(ctx, tx, orderID)
	if err != nil {
		return err
	}
	rows, err := tx.QueryContext(ctx, `SELECT sku_id, refunded FROM order_items WHERE order_id = $1 AND refund_id = $2 ORDER BY line`,
		orderID, refundID)
	if err != nil {
		return fmt.Errorf("lines of refund %d: %w", refundID, err)
	}
	var skus []int64
	var amount int64
	for rows.Next() {
		var sku, refunded int64
		if err := rows.Scan(&sku, &refunded); err != nil {
			rows.Close()
			return err
		}
		skus, amount = append(skus, sku), amount+refunded
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return err
	}
	now := s.now()
	after := o
	if o.Status == Refunding && last {
		next := *o
		next.Status, next.Version, next.UpdatedAt = Refunded, o.Version+1, now
		if err := s.transitionTx(ctx, tx, o, &next, ""); err != nil { // effects: promo.Restore
			return err
		}
		after = &next
	} else if len(o.Discounts) > 0 {
		if err := promo.GiveBack(ctx, tx, tx, orderID, skus); err != nil {
			return err
		}
	}
	ev, err := s.newEvent(after, EvRefunded)
	if err != nil {
		return err
	}
	ev.RefundID, ev.Amount, ev.Refunded, ev.SKUs, ev.At = refundID, amount, after.Refunded, skus, now.UTC()
	return outbox.Insert(ctx, tx, ev.outbox(), now)
}

// RefundDone finishes a committed RefundedTx: its event goes out.
func (s *Service) RefundDone(_ context.Context, orderID int64) { s.wake(id.Gene(orderID)) }
