package order_test

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/surge-platform/surge/internal/catalog"
	"github.com/surge-platform/surge/internal/inventory"
	"github.com/surge-platform/surge/internal/order"
	"github.com/surge-platform/surge/internal/platform/id"
	"github.com/surge-platform/surge/internal/platform/sqldb"
	"github.com/surge-platform/surge/internal/platform/sqldb/sqldbtest"
)

// gateStock holds the first request that reserves, right after its
// reservation, until the gate opens: a request that is slow but alive.
type gateStock struct {
	order.Stock
	first sync.Once
	held  chan struct{} // closed once the first request is held
	gate  chan struct{} // closed to let it go on
}

func (g *gateStock) Reserve(ctx context.Context, orderID int64, lines []inventory.Line) error {
	err := g.Stock.Reserve(ctx, orderID, lines)
	hold := false
	g.first.Do(func() { hold = true })
	if hold {
		close(g.held)
		<-g.gate
	}
	return err
}

// TestTakeoverOfSlowClaimKeepsStock: a request with an Idempotency-Key
// reserves stock and then stalls for longer than KeyTakeover; a duplicate
// takes the claim over (same order id) and places the order. When the first
// request wakes up, its insert of the same order id fails — and it must not
// release the reservation that the placed order now stands on.
func TestTakeoverOfSlowClaimKeepsStock(t *testing.T) {
	t.Parallel()
	for _, e := range sqldbtest.Engines() {
		if !strings.HasSuffix(e.Name, "/2") { // main database and order shard apart
			continue
		}
		t.Run(e.Name, func(t *testing.T) {
			t.Parallel()
			c := openCapped(e.Open)(t)
			ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
			defer cancel()
			ids, err := id.New(3)
			if err != nil {
				t.Fatal(err)
			}
			inv := inventory.New(c)
			cat := catalog.New(c, ids, inv, nil)
			g := &gateStock{Stock: inv, held: make(chan struct{}), gate: make(chan struct{})}
			var open sync.Once
			letGo := func() { open.Do(func() { close(g.gate) }) }
			t.Cleanup(letGo)
			svc := order.New(c, ids, cat, g, nil, slog.New(slog.DiscardHandler),
				order.Config{KeyTakeover: 100 * time.Millisecond, KeyWait: 10 * time.Second})

			st, err := cat.CreateStore(ctx, 0, catalog.StoreInput{Name: "Bund"})
			if err != nil {
				t.Fatal(err)
			}
			cg, err := cat.CreateCategory(ctx, st.ID, 0, catalog.CategoryInput{Name: "Limited"})
			if err != nil {
				t.Fatal(err)
			}
			const stock, qty = 10, 3
			level := int64(stock)
			it, err := cat.PutItem(ctx, st.ID, 0, catalog.ItemInput{CategoryID: cg.ID, Name: "Lantern", Price: 8800, Limited: true, Stock: &level})
			if err != nil {
				t.Fatal(err)
			}
			req := order.Request{StoreID: st.ID, Items: []order.RequestLine{{SKU: it.SKU, Qty: qty}}}
			const user, key = 1023, "slow-but-alive" // the last gene: the last database

			type result struct {
				c   order.Created
				err error
			}
			first := make(chan result, 1)
			go func() {
				c, err := svc.Create(ctx, user, key, req)
				first <- result{c, err}
			}()
			select {
			case <-g.held:
			case <-ctx.Done():
				t.Fatal("the first request never reserved")
			}
			// The duplicate waits, finds the claim stale and takes it over
			// (or, were the first request known to be alive, gives up busy).
			second, err := svc.Create(ctx, user, key, req)
			if err != nil && !errors.Is(err, order.ErrKeyBusy) {
				t.Fatalf("duplicate after the claim went stale: %v", err)
			}
			letGo()
			r := <-first
			t.Logf("first request: %+v, %v; duplicate: %+v, %v", r.c, r.err, second, err)

			placed := ordersOf(t, c, user)
			if len(placed) != 1 {
				t.Fatalf("user %d has orders %v, want exactly 1", user, placed)
			}
			oid := placed[0]
			o, gerr := svc.Get(ctx, user, oid)
			if gerr != nil || o.Status != order.PendingPayment {
				t.Fatalf("the placed order %d: %+v, %v", oid, o, gerr)
			}
			levels, lerr := inv.Levels(ctx, []int64{it.SKU})
			if lerr != nil {
				t.Fatal(lerr)
			}
			var held int64
			if err := c.Main().R.QueryRowContext(ctx, `SELECT CAST(COALESCE(SUM(qty), 0) AS BIGINT) FROM stock_reservations WHERE order_id = $1`,
				oid).Scan(&held); err != nil {
				t.Fatal(err)
			}
			if levels[it.SKU] != stock-qty || held != qty {
				t.Errorf("pending order %d of %d units: stock %d and %d reserved, want %d and %d — "+
					"a request that lost the race for the order id released the reservation the placed order stands on",
					oid, qty, levels[it.SKU], held, stock-qty, qty)
			}
			// Each request gets the placed order or a documented error; a raw
			// database error is a 5xx for an order that was in fact placed.
			for name, res := range map[string]result{"first": r, "duplicate": {second, err}} {
				switch {
				case res.err == nil && res.c.OrderID != oid:
					t.Errorf("%s request got order %d, but order %d was placed", name, res.c.OrderID, oid)
				case res.err != nil && !errors.Is(res.err, order.ErrKeyBusy):
					t.Errorf("%s request got %v, want order %d or ErrKeyBusy", name, res.err, oid)
				}
			}
		})
	}
}

// ordersOf returns the ids of user's orders on every physical database.
func ordersOf(t *testing.T, c *sqldb.Cluster, user int64) []int64 {
	t.Helper()
	var out []int64
	for _, d := range c.Shards() {
		rows, err := d.R.QueryContext(t.Context(), `SELECT id FROM orders WHERE user_id = $1`, user)
		if err != nil {
			t.Fatal(err)
		}
		for rows.Next() {
			var x int64
			if err := rows.Scan(&x); err != nil {
				t.Fatal(err)
			}
			out = append(out, x)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			t.Fatal(err)
		}
	}
	return out
}
