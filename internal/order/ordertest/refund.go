package ordertest

import (
	"database/sql"
	"errors"
	"testing"

	"github.com/surge-platform/surge/internal/order"
	"github.com/surge-platform/surge/internal/platform/sqldb"
)

// refund records a refund of skus (nil = all not refunded) of an order as
// the payments centre does: read, RefundTx in a transaction on the order's
// database, again after ErrChanged.
func (f *fixture) refund(orderID, refundID int64, skus []int64, before bool) (*order.RefundRecord, error) {
	for {
		o, err := f.ord.Peek(f.ctx, orderID)
		if err != nil {
			return nil, err
		}
		var rec *order.RefundRecord
		err = sqldb.Tx(f.ctx, f.c.ForID(orderID), func(tx *sql.Tx) error {
			var err error
			rec, err = f.ord.RefundTx(f.ctx, tx, o, order.Refund{ID: refundID, SKUs: skus, Before: before, By: order.ByStore})
			return err
		})
		if errors.Is(err, order.ErrChanged) {
			continue
		}
		if err == nil {
			f.ord.Recorded(f.ctx, rec)
		}
		return rec, err
	}
}

// refunded tells the order that the channel made refund refundID.
func (f *fixture) refunded(t *testing.T, orderID, refundID int64, last bool) error {
	t.Helper()
	return sqldb.Tx(f.ctx, f.c.ForID(orderID), func(tx *sql.Tx) error {
		return f.ord.RefundedTx(f.ctx, tx, orderID, refundID, last)
	})
}

// events counts the order's events of type typ in the outboxes.
func (f *fixture) events(t *testing.T, orderID int64, typ string) int {
	t.Helper()
	n := 0
	for _, r := range f.outbox(t) {
		if r.typ == typ && r.ev.OrderID == orderID {
			n++
		}
	}
	return n
}

// testRefundLineRace: 20 refunds of the same line at once: exactly one
// records it (its payable, once), the others are told it is refunded
// already; the order's refunded never passes its payable and its status
// stays paid while lines are left.
func testRefundLineRace(t *testing.T, open func(t testing.TB) *sqldb.Cluster) {
	f := newFixture(t, open, nil)
	c := f.mustCreate(t, 71, "", f.req(line(f.latte, 2), line(f.bagel, 1), line(f.mooncake, 1)))
	if r, err := f.ord.MarkPaid(f.ctx, c.OrderID, 9001); err != nil || r != order.PaidNow {
		t.Fatalf("mark paid: %v %v", r, err)
	}
	won := make([]*order.RefundRecord, 20)
	errs := race(20, func(i int) error {
		var err error
		won[i], err = f.refund(c.OrderID, int64(100+i), []int64{f.latte.SKU}, false)
		return err
	})
	var ok int
	for i, err := range errs {
		switch {
		case err == nil:
			ok++
			if won[i].Amount != 2*f.latte.Price || won[i].Full {
				t.Errorf("the refund that won: %+v, want %d fen, not full", won[i], 2*f.latte.Price)
			}
		case !errors.Is(err, order.ErrAlreadyRefunded):
			t.Errorf("refund %d: %v, want ErrAlreadyRefunded", i, err)
		}
	}
	if ok != 1 {
		t.Fatalf("%d of 20 refunds of one line recorded, want 1", ok)
	}
	o := f.mustGet(t, 71, c.OrderID)
	if o.Status != order.Paid || o.Refunded != 2*f.latte.Price || o.Items[0].Refunded != o.Items[0].Payable || o.Items[0].RefundID == 0 ||
		o.Items[1].RefundID != 0 {
		t.Fatalf("after the race: %s, refunded %d, lines %+v", o.Status, o.Refunded, o.Items)
	}
	if n := f.events(t, c.OrderID, order.EvRefunding); n != 1 {
		t.Fatalf("%d order.refunding events, want 1", n)
	}
	if _, err := f.refund(c.OrderID, 200, []int64{f.muffin.SKU}, false); !errors.Is(err, order.ErrUnknownSKU) {
		t.Fatalf("refund of a sku not on the order: %v, want ErrUnknownSKU", err)
	}
	// The rest, by lines at once: every line once, the sum exactly the payable.
	errs = race(6, func(i int) error {
		_, err := f.refund(c.OrderID, int64(300+i), [][]int64{{f.bagel.SKU}, {f.mooncake.SKU}, nil}[i%3], false)
		return err
	})
	for _, err := range errs {
		if err != nil && !errors.Is(err, order.ErrAlreadyRefunded) && !errors.Is(err, order.ErrNothingToRefund) {
			t.Fatal(err)
		}
	}
	o = f.mustGet(t, 71, c.OrderID)
	if o.Status != order.Refunding || o.Refunded != o.Payable {
		t.Fatalf("all lines refunded: %s, refunded %d of %d", o.Status, o.Refunded, o.Payable)
	}
	var sum int64
	for _, l := range o.Items {
		if l.RefundID == 0 || l.Refunded != l.Payable {
			t.Errorf("line %+v not refunded", l)
		}
		sum += l.Refunded
	}
	if sum != o.Payable || f.countAll(t, `SELECT COUNT(*) FROM orders WHERE id = $1 AND refunded = payable`, c.OrderID) != 1 {
		t.Fatalf("lines refunded %d, order %d, payable %d", sum, o.Refunded, o.Payable)
	}
	if _, err := f.refund(c.OrderID, 400, nil, false); !errors.Is(err, order.ErrNothingToRefund) {
		t.Fatalf("refund of a refunded order: %v, want ErrNothingToRefund", err)
	}
}

// testRefundPartialThenFull: a refund of one line, then of the rest (the
// lines refunded before the store accepted the order give their limited
// stock back, once however often asked); the channel's word on the
// refunds, reordered and repeated, moves the order to refunded once, when
// the last refund on its way is made; a store's step that comes after
// changes nothing.
func testRefundPartialThenFull(t *testing.T, open func(t testing.TB) *sqldb.Cluster) {
	f := newFixture(t, open, nil)
	const user = 72
	c := f.mustCreate(t, user, "", f.req(line(f.mooncake, 3), line(f.latte, 1)))
	if _, err := f.refund(c.OrderID, 1, nil, false); !errors.Is(err, order.ErrNotRefundable) {
		t.Fatalf("refund of an unpaid order: %v, want ErrNotRefundable", err)
	}
	if r, err := f.ord.MarkPaid(f.ctx, c.OrderID, 9002); err != nil || r != order.PaidNow {
		t.Fatalf("mark paid: %v %v", r, err)
	}
	if got := f.level(t, f.mooncake.SKU); got != mooncakeStock-3 {
		t.Fatalf("stock %d after the payment, want %d", got, mooncakeStock-3)
	}
	const first, second = 501, 502
	part, err := f.refund(c.OrderID, first, []int64{f.mooncake.SKU}, true)
	if err != nil || part.Full || part.Amount != 3*f.mooncake.Price || len(part.Restock) != 1 {
		t.Fatalf("refund of the mooncakes: %+v %v", part, err)
	}
	f.ord.Recorded(f.ctx, part) // again, as a retry would: the stock comes back once
	if got := f.level(t, f.mooncake.SKU); got != mooncakeStock {
		t.Fatalf("stock %d after the mooncakes were refunded before acceptance, want %d", got, mooncakeStock)
	}
	rest, err := f.refund(c.OrderID, second, nil, false)
	if err != nil || !rest.Full || rest.Amount != f.latte.Price || rest.Order.Status != order.Refunding {
		t.Fatalf("refund of the rest: %+v %v", rest, err)
	}
	// The channel makes the second first, then the first (the payments
	// centre tells the order once per refund; a word repeated anyway
	// changes no status).
	for _, step := range []struct {
		id   int64
		last bool
		want order.Status
	}{{second, false, order.Refunding}, {first, true, order.Refunded}, {first, true, order.Refunded}} {
		if err := f.refunded(t, c.OrderID, step.id, step.last); err != nil {
			t.Fatalf("refund %d made: %v", step.id, err)
		}
		if o := f.mustGet(t, user, c.OrderID); o.Status != step.want {
			t.Fatalf("after refund %d made: %s, want %s", step.id, o.Status, step.want)
		}
	}
	o := f.mustGet(t, user, c.OrderID)
	if o.Refunded != o.Payable || o.Version != 5 { // created, paid, two refunds recorded, refunded
		t.Fatalf("refunded order: refunded %d of %d, version %d, want 5", o.Refunded, o.Payable, o.Version)
	}
	if err := f.ord.Fulfilled(f.ctx, c.OrderID, order.EvAccepted, "1234"); err != nil {
		t.Fatalf("a store's accept after the refund: %v, want a no-op", err)
	}
	if o := f.mustGet(t, user, c.OrderID); o.Status != order.Refunded || o.PickupCode != "" {
		t.Fatalf("after a late accept: %s, code %q", o.Status, o.PickupCode)
	}
	if f.level(t, f.mooncake.SKU) != mooncakeStock {
		t.Fatalf("stock %d at the end, want %d", f.level(t, f.mooncake.SKU), mooncakeStock)
	}
	if n := f.events(t, c.OrderID, order.EvRefunding); n != 2 {
		t.Fatalf("%d order.refunding events, want 2", n)
	}
}
