// Package ordertest is the conformance suite of the order store: every
// database engine and shard layout that orders may live on must pass Run
// before it counts as done. Each subtest builds the real services (id,
// inventory, catalog, order) on a fresh cluster, seeds a store, and checks
// what the services answer against what the databases hold.
package ordertest

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/surge-platform/surge/internal/catalog"
	"github.com/surge-platform/surge/internal/inventory"
	"github.com/surge-platform/surge/internal/order"
	"github.com/surge-platform/surge/internal/platform/bus"
	"github.com/surge-platform/surge/internal/platform/errkind"
	"github.com/surge-platform/surge/internal/platform/id"
	"github.com/surge-platform/surge/internal/platform/outbox"
	"github.com/surge-platform/surge/internal/platform/sqldb"
)

// ttl is the order service's default time to pay (order.Config{}).
const ttl = 15 * time.Minute

// mooncakeStock is the stock the seeded limited item starts with.
const mooncakeStock = 100

// waitFor bounds every poll of the suite.
const waitFor = 10 * time.Second

// Run runs the suite. open must return a fresh, migrated cluster that no
// other test writes to and that is closed when its test ends
// (sqldbtest.Engines does that). Subtests run in parallel, each on a
// cluster of its own.
func Run(t *testing.T, open func(t testing.TB) *sqldb.Cluster) {
	tests := []struct {
		name string
		fn   func(t *testing.T, open func(t testing.TB) *sqldb.Cluster)
	}{
		{"CreateGetList", testCreateGetList},
		{"ShardRouting", testShardRouting},
		{"Outbox", testOutbox},
		{"SoldOutRace", testSoldOutRace},
		{"MixedQtyRace", testMixedQtyRace},
		{"CancelReleasesOnce", testCancelReleasesOnce},
		{"CancelRace", testCancelRace},
		{"Idempotency", testIdempotency},
		{"IdempotencyUnlimited", testIdempotencyUnlimited},
		{"ForgetKeys", testForgetKeys},
		{"ForgetSeen", testForgetSeen},
		{"BadInput", testBadInput},
		{"FailedInsertReleases", testFailedInsertReleases},
		{"OtherUsersOrder", testOtherUsersOrder},
		{"Expiry", testExpiry},
		{"MarkPaid", testMarkPaid},
		{"PayTx", testPayTx},
		{"PayMatched", testPayMatched},
		{"Handoff", testHandoff},
		{"SweepByFate", testSweepByFate},
		{"RefundLineRace", testRefundLineRace},
		{"RefundPartialThenFull", testRefundPartialThenFull},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			tt.fn(t, open)
		})
	}
}

// fixture is the services on one cluster and a seeded store: an open store
// with two categories, three unlimited items, one limited item (mooncake)
// with mooncakeStock units, and an unavailable item; plus a second store
// with one item of its own.
type fixture struct {
	c   *sqldb.Cluster
	ids *id.Generator
	inv *inventory.Service
	cat *catalog.Service
	ord *order.Service
	ctx context.Context // bounds every call of the test
	// handed is what the order service handed its relay.
	handed *handoffs

	store                catalog.Store
	latte, bagel, muffin catalog.Item // unlimited
	mooncake             catalog.Item // limited
	soldOut              catalog.Item // unavailable
	otherStore           catalog.Store
	otherItem            catalog.Item // on otherStore's menu
}

// newFixture builds the services on a fresh cluster. wrap, when not nil,
// wraps the inventory the order service reserves through.
func newFixture(t *testing.T, open func(t testing.TB) *sqldb.Cluster, wrap func(order.Stock) order.Stock) *fixture {
	t.Helper()
	c := open(t)
	ids, err := id.New(7)
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{c: c, ids: ids, inv: inventory.New(c), ctx: testContext(t), handed: &handoffs{}}
	f.cat = catalog.New(c, ids, f.inv, nil)
	var stock order.Stock = f.inv
	if wrap != nil {
		stock = wrap(f.inv)
	}
	f.ord = order.New(c, ids, f.cat, stock, f.handed, slog.New(slog.NewTextHandler(io.Discard, nil)), order.Config{})

	f.store = f.mustStore(t, "Peoples Square", true)
	drinks := f.mustCategory(t, f.store.ID, "Drinks", 1)
	food := f.mustCategory(t, f.store.ID, "Food", 2)
	f.latte = f.mustItem(t, f.store.ID, catalog.ItemInput{CategoryID: drinks.ID, Name: "Latte", Price: 1800})
	f.bagel = f.mustItem(t, f.store.ID, catalog.ItemInput{CategoryID: food.ID, Name: "Bagel", Price: 1250})
	f.muffin = f.mustItem(t, f.store.ID, catalog.ItemInput{CategoryID: food.ID, Name: "Muffin", Price: 990})
	f.mooncake = f.mustLimited(t, "Mooncake", 3000, mooncakeStock)
	no := false
	f.soldOut = f.mustItem(t, f.store.ID, catalog.ItemInput{CategoryID: food.ID, Name: "Eggnog", Price: 2000, Available: &no})

	f.otherStore = f.mustStore(t, "Jingan", true)
	oc := f.mustCategory(t, f.otherStore.ID, "Drinks", 1)
	f.otherItem = f.mustItem(t, f.otherStore.ID, catalog.ItemInput{CategoryID: oc.ID, Name: "Mocha", Price: 2200})
	return f
}

func (f *fixture) mustStore(t *testing.T, name string, open bool) catalog.Store {
	t.Helper()
	st, err := f.cat.CreateStore(f.ctx, 0, catalog.StoreInput{Name: name, City: "Shanghai", Open: &open})
	if err != nil {
		t.Fatalf("create store %q: %v", name, err)
	}
	return st
}

func (f *fixture) mustCategory(t *testing.T, storeID int64, name string, sort int) catalog.Category {
	t.Helper()
	cat, err := f.cat.CreateCategory(f.ctx, storeID, 0, catalog.CategoryInput{Name: name, Sort: sort})
	if err != nil {
		t.Fatalf("create category %q: %v", name, err)
	}
	return cat
}

func (f *fixture) mustItem(t *testing.T, storeID int64, in catalog.ItemInput) catalog.Item {
	t.Helper()
	it, err := f.cat.PutItem(f.ctx, storeID, 0, in)
	if err != nil {
		t.Fatalf("put item %q: %v", in.Name, err)
	}
	return it
}

// mustLimited adds a limited item with stock to the seeded store.
func (f *fixture) mustLimited(t *testing.T, name string, price, stock int64) catalog.Item {
	t.Helper()
	cat := f.mustCategory(t, f.store.ID, "Limited "+name, 9)
	it := f.mustItem(t, f.store.ID, catalog.ItemInput{CategoryID: cat.ID, Name: name, Price: price, Limited: true, Stock: &stock})
	if got := f.level(t, it.SKU); got != stock {
		t.Fatalf("stock of new item %q = %d, want %d", name, got, stock)
	}
	return it
}

func line(it catalog.Item, qty int) order.RequestLine {
	return order.RequestLine{SKU: it.SKU, Qty: qty}
}

func (f *fixture) req(lines ...order.RequestLine) order.Request {
	return order.Request{StoreID: f.store.ID, Items: lines}
}

func (f *fixture) mustCreate(t *testing.T, userID int64, key string, req order.Request) order.Created {
	t.Helper()
	c, err := f.ord.Create(f.ctx, userID, key, req)
	if err != nil {
		t.Fatalf("create order for user %d: %v", userID, err)
	}
	return c
}

func (f *fixture) mustGet(t *testing.T, userID, orderID int64) *order.Order {
	t.Helper()
	o, err := f.ord.Get(f.ctx, userID, orderID)
	if err != nil {
		t.Fatalf("get order %d of user %d: %v", orderID, userID, err)
	}
	return o
}

// level returns the stock of sku as inventory reports it.
func (f *fixture) level(t *testing.T, sku int64) int64 {
	t.Helper()
	m, err := f.inv.Levels(f.ctx, []int64{sku})
	if err != nil {
		t.Fatalf("levels: %v", err)
	}
	q, ok := m[sku]
	if !ok {
		t.Fatalf("sku %d has no stock level", sku)
	}
	return q
}

// scalar runs a query returning one integer on d.
func scalar(t *testing.T, ctx context.Context, d *sqldb.DB, q string, args ...any) int64 {
	t.Helper()
	var n int64
	if err := d.R.QueryRowContext(ctx, q, args...).Scan(&n); err != nil {
		t.Fatalf("%s on %s: %v", q, d.Name, err)
	}
	return n
}

// countAll sums a COUNT query over every physical database.
func (f *fixture) countAll(t *testing.T, q string, args ...any) int64 {
	t.Helper()
	var n int64
	for _, d := range f.c.Shards() {
		n += scalar(t, f.ctx, d, q, args...)
	}
	return n
}

// reserved returns the units held for orderID (0 = all orders) of sku (0 = all skus).
func (f *fixture) reserved(t *testing.T, orderID, sku int64) int64 {
	t.Helper()
	q, args := `SELECT CAST(COALESCE(SUM(qty), 0) AS BIGINT) FROM stock_reservations WHERE 1 = 1`, []any{}
	if orderID != 0 {
		args = append(args, orderID)
		q += fmt.Sprintf(" AND order_id = $%d", len(args))
	}
	if sku != 0 {
		args = append(args, sku)
		q += fmt.Sprintf(" AND sku_id = $%d", len(args))
	}
	return scalar(t, f.ctx, f.c.Main(), q, args...)
}

// reservationRows returns the reservation rows of sku: order id -> qty.
func (f *fixture) reservationRows(t *testing.T, sku int64) map[int64]int64 {
	t.Helper()
	rows, err := f.c.Main().R.QueryContext(f.ctx, `SELECT order_id, qty FROM stock_reservations WHERE sku_id = $1`, sku)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	out := map[int64]int64{}
	for rows.Next() {
		var o, q int64
		if err := rows.Scan(&o, &q); err != nil {
			t.Fatal(err)
		}
		if _, dup := out[o]; dup {
			t.Errorf("order %d holds two reservation rows of sku %d", o, sku)
		}
		out[o] = q
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// homes returns the indexes of the physical databases that hold a row of
// table with column = v.
func (f *fixture) homes(t *testing.T, table, column string, v int64) []int {
	t.Helper()
	var out []int
	for i, d := range f.c.Shards() {
		if scalar(t, f.ctx, d, `SELECT COUNT(*) FROM `+table+` WHERE `+column+` = $1`, v) > 0 {
			out = append(out, i)
		}
	}
	return out
}

func (f *fixture) index(d *sqldb.DB) int { return slices.Index(f.c.Shards(), d) }

type outboxRow struct {
	shard     int
	id        int64
	subject   string
	typ       string
	createdAt int64
	ev        order.Event
}

// outbox returns every outbox row of the cluster, by database then id.
// outbox returns the order events waiting in the outbox of every database
// (the expiry timers, rows of another stream, are left out: see timers).
func (f *fixture) outbox(t *testing.T) []outboxRow {
	t.Helper()
	var out []outboxRow
	for i, d := range f.c.Shards() {
		rows, err := d.R.QueryContext(f.ctx, `SELECT id, subject, type, payload, created_at FROM outbox
			WHERE subject LIKE 'orders.events.%' ORDER BY id`)
		if err != nil {
			t.Fatal(err)
		}
		for rows.Next() {
			r := outboxRow{shard: i}
			var payload string
			if err := rows.Scan(&r.id, &r.subject, &r.typ, &payload, &r.createdAt); err != nil {
				t.Fatal(err)
			}
			if err := json.Unmarshal([]byte(payload), &r.ev); err != nil {
				t.Errorf("outbox row %d: payload %q: %v", r.id, payload, err)
			}
			out = append(out, r)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			t.Fatal(err)
		}
	}
	return out
}

// timers returns the expiry timers waiting in the outboxes: order id -> headers.
func (f *fixture) timers(t *testing.T) map[int64]string {
	t.Helper()
	out := map[int64]string{}
	for _, d := range f.c.Shards() {
		rows, err := d.R.QueryContext(f.ctx, `SELECT payload, headers FROM outbox WHERE subject LIKE 'timers.%'`)
		if err != nil {
			t.Fatal(err)
		}
		for rows.Next() {
			var payload, hdr string
			if err := rows.Scan(&payload, &hdr); err != nil {
				t.Fatal(err)
			}
			oid, _ := strconv.ParseInt(payload, 10, 64)
			if _, dup := out[oid]; dup {
				t.Errorf("order %d has two timers", oid)
			}
			out[oid] = hdr
		}
		rows.Close()
	}
	return out
}

// testContext bounds every call of a test, so that a hung database fails
// the test instead of hanging it.
func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// race runs fn(i) for i in 0..n-1 on n goroutines released together and
// returns their errors.
func race(n int, fn func(i int) error) []error {
	errs := make([]error, n)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			<-start
			errs[i] = fn(i)
		})
	}
	close(start)
	wg.Wait()
	return errs
}

// poll calls cond until it reports true or waitFor passes.
func poll(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitFor)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("gave up after %v waiting for %s", waitFor, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func sameCreated(a, b order.Created) bool {
	return a.OrderID == b.OrderID && a.Status == b.Status && a.Total == b.Total && a.Payable == b.Payable &&
		a.ExpiresAt.Equal(b.ExpiresAt)
}

// --- the subtests ---

func testCreateGetList(t *testing.T, open func(t testing.TB) *sqldb.Cluster) {
	f := newFixture(t, open, nil)
	ctx := f.ctx
	const user = 4242
	req := f.req(line(f.latte, 2), line(f.mooncake, 3), line(f.bagel, 1), line(f.latte, 1))
	wantTotal := f.latte.Price*2 + f.mooncake.Price*3 + f.bagel.Price*1 + f.latte.Price*1

	before := time.Now()
	c := f.mustCreate(t, user, "", req)
	after := time.Now()
	if c.OrderID <= 0 || c.Status != order.PendingPayment || c.Total != wantTotal || c.Payable != wantTotal {
		t.Fatalf("created %+v, want a new pending_payment order with total = payable = %d", c, wantTotal)
	}
	if lo, hi := before.Add(ttl).Truncate(time.Millisecond), after.Add(ttl); c.ExpiresAt.Before(lo) || c.ExpiresAt.After(hi) {
		t.Errorf("expires_at %v, want within [%v, %v] (now + %v)", c.ExpiresAt, lo, hi, ttl)
	}
	if got := f.level(t, f.mooncake.SKU); got != mooncakeStock-3 {
		t.Errorf("mooncake stock after ordering 3: %d, want %d", got, mooncakeStock-3)
	}

	for _, asker := range []int64{user, 0} {
		o := f.mustGet(t, asker, c.OrderID)
		if o.ID != c.OrderID || o.UserID != user || o.StoreID != f.store.ID || o.Status != order.PendingPayment ||
			o.Version != 1 || o.Total != wantTotal || o.Payable != wantTotal || o.PickupCode != "" {
			t.Errorf("get as %d: %+v, want order %d of user %d, store %d, pending_payment v1, total %d",
				asker, o, c.OrderID, user, f.store.ID, wantTotal)
		}
		if !o.ExpiresAt.Equal(c.ExpiresAt) {
			t.Errorf("get: expires_at %v, create said %v", o.ExpiresAt, c.ExpiresAt)
		}
		if o.CreatedAt.Before(before.Truncate(time.Millisecond)) || o.CreatedAt.After(after) || !o.UpdatedAt.Equal(o.CreatedAt) {
			t.Errorf("get: created_at %v updated_at %v, want both within [%v, %v]", o.CreatedAt, o.UpdatedAt, before, after)
		}
		// Lines of one sku are one line (priced, discounted and refunded
		// as one), in the order of their first appearance.
		want := []order.Line{
			{SKU: f.latte.SKU, Name: "Latte", Price: f.latte.Price, Qty: 3, List: 3 * f.latte.Price, Payable: 3 * f.latte.Price},
			{SKU: f.mooncake.SKU, Name: "Mooncake", Price: f.mooncake.Price, Qty: 3, List: 3 * f.mooncake.Price, Payable: 3 * f.mooncake.Price},
			{SKU: f.bagel.SKU, Name: "Bagel", Price: f.bagel.Price, Qty: 1, List: f.bagel.Price, Payable: f.bagel.Price},
		}
		if !reflect.DeepEqual(o.Items, want) {
			t.Errorf("get: items %+v, want in request order, one line per sku %+v", o.Items, want)
		}
	}

	// 25 orders of another user, paged by 10: newest first, no gaps, no duplicates.
	const pager = 777
	var ids []int64
	for i := range 25 {
		c := f.mustCreate(t, pager, "", f.req(line(f.muffin, i%3+1)))
		if len(ids) > 0 && c.OrderID <= ids[len(ids)-1] {
			t.Fatalf("order ids not increasing: %d after %d", c.OrderID, ids[len(ids)-1])
		}
		ids = append(ids, c.OrderID)
	}
	slices.Reverse(ids) // newest first
	var got []int64
	var sizes []int
	cursor := int64(0)
	for range 10 {
		page, err := f.ord.List(ctx, pager, cursor, 10)
		if err != nil {
			t.Fatalf("list cursor %d: %v", cursor, err)
		}
		if page == nil {
			t.Fatalf("list cursor %d: nil page, want an empty slice", cursor)
		}
		sizes = append(sizes, len(page))
		if len(page) == 0 {
			break
		}
		for _, o := range page {
			if o.UserID != pager {
				t.Errorf("list of user %d returned order %d of user %d", pager, o.ID, o.UserID)
			}
			if len(o.Items) != 1 || o.Items[0].SKU != f.muffin.SKU {
				t.Errorf("list: order %d items %+v, want its one muffin line", o.ID, o.Items)
			}
			got = append(got, o.ID)
		}
		cursor = page[len(page)-1].ID
	}
	if !slices.Equal(sizes, []int{10, 10, 5, 0}) {
		t.Errorf("page sizes %v, want [10 10 5 0]", sizes)
	}
	if !slices.Equal(got, ids) {
		t.Errorf("paged ids %v\nwant newest first %v", got, ids)
	}
	if all, err := f.ord.List(ctx, pager, 0, 0); err != nil || len(all) != 20 {
		t.Errorf("list with limit 0: %d orders, %v; want the default 20", len(all), err)
	}
	if mine, err := f.ord.List(ctx, user, 0, 100); err != nil || len(mine) != 1 || mine[0].ID != c.OrderID || len(mine[0].Items) != 3 {
		t.Errorf("list of user %d: %v, %v; want only order %d with its 3 lines (4 asked, two of one sku)", user, mine, err, c.OrderID)
	}
	if none, err := f.ord.List(ctx, 999_999, 0, 10); err != nil || none == nil || len(none) != 0 {
		t.Errorf("list of a user without orders: %v, %v; want an empty slice", none, err)
	}
	if _, err := f.ord.List(ctx, pager, -1, 10); !errors.Is(err, order.ErrBadCursor) {
		t.Errorf("list with cursor -1: %v, want ErrBadCursor", err)
	}
}

func testShardRouting(t *testing.T, open func(t testing.TB) *sqldb.Cluster) {
	f := newFixture(t, open, nil)
	// Genes at both ends of every physical range for 1, 2, 4 and 8
	// databases, and a few in between; user ids far apart with those genes.
	genes := []int{0, 1, 127, 128, 255, 256, 257, 383, 511, 512, 513, 640, 767, 768, 769, 900, 1022, 1023}
	used := map[int]bool{}
	for i, g := range genes {
		user := int64(g) + int64(id.Genes)*int64(1+i*7919)
		if i%3 == 0 {
			user += 1 << 40
		}
		if id.GeneOf(user) != g {
			t.Fatalf("bad test data: user %d has gene %d, want %d", user, id.GeneOf(user), g)
		}
		home := -1
		for n := range 2 {
			c := f.mustCreate(t, user, "", f.req(line(f.latte, 1)))
			if got := id.Gene(c.OrderID); got != g {
				t.Errorf("user %d (gene %d): order %d has gene %d", user, g, c.OrderID, got)
			}
			dbs := f.homes(t, "orders", "id", c.OrderID)
			if len(dbs) != 1 {
				t.Fatalf("order %d is on physical databases %v, want exactly one", c.OrderID, dbs)
			}
			if want := f.index(f.c.ForID(c.OrderID)); dbs[0] != want || dbs[0] != f.c.Physical(g) {
				t.Errorf("order %d is on database %d; ForID says %d, Physical(gene %d) says %d", c.OrderID, dbs[0], want, g, f.c.Physical(g))
			}
			if items := f.homes(t, "order_items", "order_id", c.OrderID); !slices.Equal(items, dbs) {
				t.Errorf("lines of order %d are on databases %v, the order on %v", c.OrderID, items, dbs)
			}
			if n == 0 {
				home = dbs[0]
			} else if dbs[0] != home {
				t.Errorf("user %d has orders on databases %d and %d", user, home, dbs[0])
			}
			if o := f.mustGet(t, user, c.OrderID); o.UserID != user {
				t.Errorf("get order %d: user %d, want %d", c.OrderID, o.UserID, user)
			}
		}
		if dbs := f.homes(t, "orders", "user_id", user); !slices.Equal(dbs, []int{home}) {
			t.Errorf("orders of user %d are on databases %v, want only %d", user, dbs, home)
		}
		if list, err := f.ord.List(f.ctx, user, 0, 10); err != nil || len(list) != 2 {
			t.Errorf("list of user %d: %d orders, %v; want 2", user, len(list), err)
		}
		used[home] = true
	}
	if len(used) != len(f.c.Shards()) {
		t.Errorf("orders landed on databases %v of %d: routing does not spread", used, len(f.c.Shards()))
	}
}

func testOutbox(t *testing.T, open func(t testing.TB) *sqldb.Cluster) {
	f := newFixture(t, open, nil)
	ctx := f.ctx
	const user = 1023 + 5*1024 // the last gene: the last database
	c := f.mustCreate(t, user, "", f.req(line(f.mooncake, 2), line(f.latte, 1)))
	shard := f.index(f.c.ForID(c.OrderID))
	var orderCreated int64
	if err := f.c.ForID(c.OrderID).R.QueryRowContext(ctx, `SELECT created_at FROM orders WHERE id = $1`, c.OrderID).Scan(&orderCreated); err != nil {
		t.Fatal(err)
	}

	rows := f.outbox(t)
	if len(rows) != 1 {
		t.Fatalf("after one create the cluster holds %d outbox rows %+v, want 1", len(rows), rows)
	}
	r := rows[0]
	gene := id.Gene(c.OrderID)
	if r.shard != shard || r.typ != order.EvCreated || r.subject != order.Subject(gene, order.EvCreated) || r.createdAt != orderCreated {
		t.Errorf("outbox row %+v, want type %s, subject %s, on database %d, created_at %d like its order",
			r, order.EvCreated, order.Subject(gene, order.EvCreated), shard, orderCreated)
	}
	if e := r.ev; e.EventID != r.id || id.Gene(e.EventID) != gene || e.Type != order.EvCreated || e.OrderID != c.OrderID ||
		e.UserID != user || e.StoreID != f.store.ID || e.Status != order.PendingPayment || e.Version != 1 || e.Payable != c.Payable {
		t.Errorf("order.created payload %+v does not describe order %+v", e, c)
	}

	// Its expiry timer is written with it: one schedule at expires_at,
	// rounded up to the second, aimed at the shard's expiry subject.
	timers := f.timers(t)
	wantAt := bus.ScheduleAt(c.ExpiresAt)
	if h := timers[c.OrderID]; len(timers) != 1 || !strings.Contains(h, wantAt) || !strings.Contains(h, fmt.Sprintf("timers.expire.%d", gene)) {
		t.Errorf("timers %v, want one for order %d with %q", timers, c.OrderID, wantAt)
	}

	// A failed create writes no event and no timer.
	if _, err := f.ord.Create(ctx, user, "", f.req(line(f.mooncake, 99))); !errors.Is(err, inventory.ErrSoldOut) {
		t.Fatalf("ordering 99 of %d mooncakes: %v, want ErrSoldOut", mooncakeStock-2, err)
	}
	if n := len(f.outbox(t)); n != 1 {
		t.Errorf("a sold-out create left %d outbox rows, want still 1", n)
	}
	if n := len(f.timers(t)); n != 1 {
		t.Errorf("a sold-out create left %d timers, want still 1", n)
	}

	if _, err := f.ord.Cancel(ctx, user, c.OrderID); err != nil {
		t.Fatalf("cancel: %v", err)
	}
	rows = f.outbox(t)
	if len(rows) != 2 {
		t.Fatalf("after create and cancel the cluster holds %d outbox rows, want 2", len(rows))
	}
	r = rows[1]
	if r.shard != shard || r.typ != order.EvCancelled || r.subject != order.Subject(gene, order.EvCancelled) || r.id <= rows[0].id {
		t.Errorf("second outbox row %+v, want %s on database %d after the first", r, order.EvCancelled, shard)
	}
	if e := r.ev; e.Type != order.EvCancelled || e.OrderID != c.OrderID || e.Status != order.Cancelled || e.Version != 2 ||
		e.UserID != user || id.Gene(e.EventID) != gene {
		t.Errorf("order.cancelled payload %+v, want order %d cancelled at version 2", e, c.OrderID)
	}
}

// testSoldOutRace: 200 buyers at once, 50 units of stock.
func testSoldOutRace(t *testing.T, open func(t testing.TB) *sqldb.Cluster) {
	f := newFixture(t, open, nil)
	const buyers, stock = 200, 50
	item := f.mustLimited(t, "Lantern", 8800, stock)
	ctx := f.ctx
	created := make([]order.Created, buyers)
	errs := race(buyers, func(i int) error {
		var err error
		created[i], err = f.ord.Create(ctx, int64(10_000+i*37), "", f.req(line(item, 1)))
		return err
	})
	won := map[int64]bool{}
	soldOut := 0
	for i, err := range errs {
		switch {
		case err == nil:
			if won[created[i].OrderID] {
				t.Errorf("order id %d handed out twice", created[i].OrderID)
			}
			won[created[i].OrderID] = true
		case errors.Is(err, inventory.ErrSoldOut):
			soldOut++
		default:
			t.Errorf("buyer %d: %v, want success or ErrSoldOut", i, err)
		}
	}
	if len(won) != stock || soldOut != buyers-stock {
		t.Errorf("%d orders succeeded and %d were sold out, want %d and %d", len(won), soldOut, stock, buyers-stock)
	}
	if got := f.level(t, item.SKU); got != 0 {
		t.Errorf("stock left %d, want 0", got)
	}
	res := f.reservationRows(t, item.SKU)
	if len(res) != stock {
		t.Errorf("%d reservation rows, want %d", len(res), stock)
	}
	for o, q := range res {
		if q != 1 || !won[o] {
			t.Errorf("reservation of %d for order %d, want 1 for a successful order", q, o)
		}
	}
	if n := f.countAll(t, `SELECT COUNT(*) FROM orders`); n != stock {
		t.Errorf("%d orders in the databases, want %d", n, stock)
	}
	if n := f.countAll(t, `SELECT COUNT(*) FROM order_items WHERE sku_id = $1`, item.SKU); n != stock {
		t.Errorf("%d order lines in the databases, want %d", n, stock)
	}
	for o := range won {
		if got := f.mustGet(t, 0, o); got.Status != order.PendingPayment {
			t.Errorf("order %d is %s, want pending_payment", o, got.Status)
		}
	}
}

// testMixedQtyRace: buyers of 1 to 3 units at once never take more than the stock.
func testMixedQtyRace(t *testing.T, open func(t testing.TB) *sqldb.Cluster) {
	f := newFixture(t, open, nil)
	const buyers, stock = 60, 40
	item := f.mustLimited(t, "Lantern", 8800, stock)
	qty := func(i int) int { return 1 + i%3 }
	ctx := f.ctx
	created := make([]order.Created, buyers)
	errs := race(buyers, func(i int) error {
		lines := []order.RequestLine{line(item, qty(i))}
		if i%2 == 1 {
			lines = append(lines, line(f.latte, 1))
		}
		var err error
		created[i], err = f.ord.Create(ctx, int64(20_000+i), "", f.req(lines...))
		return err
	})
	var sold int64
	smallestFailed := 1 << 30
	for i, err := range errs {
		switch {
		case err == nil:
			sold += int64(qty(i))
			if r := f.reserved(t, created[i].OrderID, item.SKU); r != int64(qty(i)) {
				t.Errorf("order %d of %d units holds %d", created[i].OrderID, qty(i), r)
			}
		case errors.Is(err, inventory.ErrSoldOut):
			smallestFailed = min(smallestFailed, qty(i))
		default:
			t.Errorf("buyer %d: %v, want success or ErrSoldOut", i, err)
		}
	}
	left := f.level(t, item.SKU)
	if sold > stock || left != stock-sold {
		t.Errorf("sold %d of %d, %d left: oversold or lost stock", sold, stock, left)
	}
	if r := f.reserved(t, 0, item.SKU); r != sold {
		t.Errorf("%d units reserved, %d sold", r, sold)
	}
	// Stock only goes down here, so a buyer refused for q units saw fewer
	// than q left, and fewer still are left at the end.
	if left >= int64(smallestFailed) {
		t.Errorf("a buyer of %d was refused, yet %d are left: sold out too early", smallestFailed, left)
	}
}

func testCancelReleasesOnce(t *testing.T, open func(t testing.TB) *sqldb.Cluster) {
	f := newFixture(t, open, nil)
	ctx := f.ctx
	const user = 31
	// The same limited sku on two lines: 5 units reserved in all.
	c := f.mustCreate(t, user, "", f.req(line(f.mooncake, 2), line(f.latte, 1), line(f.mooncake, 3)))
	if got := f.level(t, f.mooncake.SKU); got != mooncakeStock-5 {
		t.Fatalf("stock after ordering 5: %d, want %d", got, mooncakeStock-5)
	}
	o, err := f.ord.Cancel(ctx, user, c.OrderID)
	if err != nil {
		t.Fatalf("cancel: %v", err)
	}
	if o.Status != order.Cancelled || o.Version != 2 {
		t.Errorf("cancel returned status %s version %d, want cancelled 2", o.Status, o.Version)
	}
	if got := f.mustGet(t, user, c.OrderID); got.Status != order.Cancelled || got.Version != 2 {
		t.Errorf("after cancel the order reads %s version %d, want cancelled 2", got.Status, got.Version)
	}
	if got := f.level(t, f.mooncake.SKU); got != mooncakeStock {
		t.Errorf("stock after cancel: %d, want %d", got, mooncakeStock)
	}
	if r := f.reserved(t, c.OrderID, 0); r != 0 {
		t.Errorf("cancelled order still holds %d units", r)
	}

	if _, err := f.ord.Cancel(ctx, user, c.OrderID); !errors.Is(err, order.ErrNotCancellable) {
		t.Errorf("second cancel: %v, want ErrNotCancellable", err)
	}
	if back, err := f.inv.Release(ctx, c.OrderID); err != nil || back != 0 {
		t.Errorf("releasing a cancelled order again gave back %d (%v), want 0", back, err)
	}
	if got := f.level(t, f.mooncake.SKU); got != mooncakeStock {
		t.Errorf("stock after the second cancel and release: %d, want %d", got, mooncakeStock)
	}
	if got := f.mustGet(t, user, c.OrderID); got.Version != 2 {
		t.Errorf("a refused cancel changed the order to version %d", got.Version)
	}
}

func testCancelRace(t *testing.T, open func(t testing.TB) *sqldb.Cluster) {
	f := newFixture(t, open, nil)
	const orders, cancellers, qty = 5, 20, 2
	ctx := f.ctx
	for n := range orders {
		user := int64(500 + n*211)
		c := f.mustCreate(t, user, "", f.req(line(f.mooncake, qty), line(f.bagel, 1)))
		errs := race(cancellers, func(int) error {
			_, err := f.ord.Cancel(ctx, user, c.OrderID)
			return err
		})
		won := 0
		for i, err := range errs {
			switch {
			case err == nil:
				won++
			case errors.Is(err, order.ErrChanged), errors.Is(err, order.ErrNotCancellable):
			default:
				t.Errorf("order %d canceller %d: %v, want ErrChanged or ErrNotCancellable", c.OrderID, i, err)
			}
		}
		if won != 1 {
			t.Errorf("order %d: %d cancels succeeded, want exactly 1", c.OrderID, won)
		}
		if got := f.level(t, f.mooncake.SKU); got != mooncakeStock {
			t.Errorf("after cancelling order %d the stock is %d, want %d", c.OrderID, got, mooncakeStock)
		}
		if o := f.mustGet(t, user, c.OrderID); o.Status != order.Cancelled || o.Version != 2 {
			t.Errorf("order %d is %s version %d, want cancelled 2", c.OrderID, o.Status, o.Version)
		}
		cancelled := 0
		for _, r := range f.outbox(t) {
			if r.ev.OrderID == c.OrderID && r.typ == order.EvCancelled {
				cancelled++
			}
		}
		if cancelled != 1 {
			t.Errorf("order %d has %d order.cancelled events, want 1", c.OrderID, cancelled)
		}
	}
}

func testBadInput(t *testing.T, open func(t testing.TB) *sqldb.Cluster) {
	f := newFixture(t, open, nil)
	ctx := f.ctx
	closed := f.mustStore(t, "Closed for renovation", false)
	cc := f.mustCategory(t, closed.ID, "Drinks", 1)
	stock := int64(10)
	closedItem := f.mustItem(t, closed.ID, catalog.ItemInput{CategoryID: cc.ID, Name: "Tea", Price: 900, Limited: true, Stock: &stock})
	scarce := f.mustLimited(t, "Lantern", 8800, 5)

	many := func(n int) []order.RequestLine {
		out := make([]order.RequestLine, n)
		for i := range out {
			out[i] = line(f.latte, 1)
		}
		return out
	}
	tests := []struct {
		name string
		req  order.Request
		want error
	}{
		{"unknown store", order.Request{StoreID: f.otherStore.ID + 1_000_003, Items: []order.RequestLine{line(f.latte, 1)}}, catalog.ErrNoStore},
		{"no store", order.Request{Items: []order.RequestLine{line(f.latte, 1)}}, errkind.ErrInvalid},
		{"negative store", order.Request{StoreID: -f.store.ID, Items: []order.RequestLine{line(f.latte, 1)}}, errkind.ErrBadID},
		{"negative sku", f.req(order.RequestLine{SKU: -f.latte.SKU, Qty: 1}), errkind.ErrBadID},
		{"one sku over 99 in its lines", f.req(line(f.latte, 50), line(f.mooncake, 1), line(f.latte, 50)), order.ErrQty},
		{"sku of another store", f.req(line(f.mooncake, 1), line(f.otherItem, 1)), order.ErrUnknownSKU},
		{"sku of no store", f.req(line(f.mooncake, 1), order.RequestLine{SKU: 123456789, Qty: 1}), order.ErrUnknownSKU},
		{"sku 0", f.req(order.RequestLine{Qty: 1}), order.ErrUnknownSKU},
		{"qty 0", f.req(line(f.mooncake, 1), line(f.latte, 0)), order.ErrQty},
		{"qty 100", f.req(line(f.mooncake, 100)), order.ErrQty},
		{"qty -1", f.req(line(f.latte, -1)), order.ErrQty},
		{"0 lines", f.req(), order.ErrNoLines},
		{"51 lines", f.req(many(order.MaxLines + 1)...), order.ErrNoLines},
		{"unavailable item", f.req(line(f.mooncake, 1), line(f.soldOut, 1)), order.ErrUnavailable},
		{"closed store", order.Request{StoreID: closed.ID, Items: []order.RequestLine{line(closedItem, 1)}}, order.ErrStoreClosed},
		{"one line sold out", f.req(line(f.mooncake, 1), line(scarce, 6)), inventory.ErrSoldOut},
	}
	const user = 66
	for _, tt := range tests {
		for _, key := range []string{"", "key-" + strings.ReplaceAll(tt.name, " ", "-")} {
			_, err := f.ord.Create(ctx, user, key, tt.req)
			if !errors.Is(err, tt.want) {
				t.Errorf("%s (key %q): %v, want %v", tt.name, key, err, tt.want)
			}
		}
	}
	if n := f.reserved(t, 0, 0); n != 0 {
		t.Errorf("bad requests left %d units reserved", n)
	}
	for sku, want := range map[int64]int64{f.mooncake.SKU: mooncakeStock, scarce.SKU: 5, closedItem.SKU: 10} {
		if got := f.level(t, sku); got != want {
			t.Errorf("stock of sku %d is %d after bad requests, want %d", sku, got, want)
		}
	}
	for _, table := range []string{"orders", "order_items", "outbox", "idempotency"} {
		if n := f.countAll(t, `SELECT COUNT(*) FROM `+table); n != 0 {
			t.Errorf("bad requests left %d rows in %s", n, table)
		}
	}
	// The limits themselves are fine.
	edge := f.req(append(many(order.MaxLines-1), line(f.mooncake, order.MaxQty))...)
	c := f.mustCreate(t, user, "", edge)
	if want := int64(order.MaxLines-1)*f.latte.Price + order.MaxQty*f.mooncake.Price; c.Total != want {
		t.Errorf("50-line order total %d, want %d", c.Total, want)
	}
	// 49 lines of one sku and one of another: two lines once merged.
	if items := f.mustGet(t, user, c.OrderID).Items; len(items) != 2 || items[0].Qty != order.MaxLines-1 || items[1].Qty != order.MaxQty {
		t.Errorf("50-line order reads back %+v, want latte x%d and mooncake x%d", items, order.MaxLines-1, order.MaxQty)
	}
}

// spyStock wraps the inventory: it counts releases per order and runs a
// hook after every successful reservation.
type spyStock struct {
	order.Stock

	mu           sync.Mutex
	afterReserve func(ctx context.Context, orderID int64) // guarded by mu; nil = none
	releases     map[int64]int                            // guarded by mu
}

func (s *spyStock) Reserve(ctx context.Context, orderID int64, lines []inventory.Line) error {
	if err := s.Stock.Reserve(ctx, orderID, lines); err != nil {
		return err
	}
	s.mu.Lock()
	hook := s.afterReserve
	s.mu.Unlock()
	if hook != nil {
		hook(ctx, orderID)
	}
	return nil
}

func (s *spyStock) Release(ctx context.Context, orderID int64) (int64, error) {
	s.mu.Lock()
	s.releases[orderID]++
	s.mu.Unlock()
	return s.Stock.Release(ctx, orderID)
}

func (s *spyStock) hook(fn func(ctx context.Context, orderID int64)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.afterReserve = fn
}

func (s *spyStock) released(orderID int64) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.releases[orderID]
}

// testFailedInsertReleases makes the order's own transaction fail after the
// stock was reserved: the reservation must be released at once, and
// nothing of the transaction (order, lines, event) may remain. A
// reservation whose order never appeared at all is the sweeper's.
func testFailedInsertReleases(t *testing.T, open func(t testing.TB) *sqldb.Cluster) {
	spy := &spyStock{releases: map[int64]int{}}
	f := newFixture(t, open, func(s order.Stock) order.Stock { spy.Stock = s; return spy })
	ctx := f.ctx

	left := func(t *testing.T, orderID int64) {
		t.Helper()
		if n := spy.released(orderID); n != 1 {
			t.Errorf("order %d: released %d times after the failed insert, want once", orderID, n)
		}
		if r := f.reserved(t, orderID, 0); r != 0 {
			t.Errorf("order %d still holds %d units", orderID, r)
		}
		if got := f.level(t, f.mooncake.SKU); got != mooncakeStock {
			t.Errorf("stock %d after the failed order, want %d", got, mooncakeStock)
		}
		if n := f.countAll(t, `SELECT COUNT(*) FROM orders WHERE id = $1`, orderID); n != 0 {
			t.Errorf("the failed transaction left order %d behind", orderID)
		}
		if rows := f.outbox(t); len(rows) != 0 {
			t.Errorf("the failed transaction left outbox rows %+v", rows)
		}
	}

	t.Run("line conflicts", func(t *testing.T) {
		// A row in the way of the order's second line.
		var failed int64
		spy.hook(func(ctx context.Context, orderID int64) {
			failed = orderID
			exec(t, ctx, f.c.ForID(orderID), `INSERT INTO order_items (order_id, line, sku_id, name, price, qty) VALUES ($1, 1, $2, 'in the way', 1, 1)`,
				orderID, f.latte.SKU)
		})
		defer spy.hook(nil)
		const user = 71
		if c, err := f.ord.Create(ctx, user, "", f.req(line(f.mooncake, 2), line(f.latte, 1))); err == nil {
			t.Fatalf("create succeeded (%+v) although its line could not be written", c)
		}
		if failed == 0 {
			t.Fatal("the order never reserved")
		}
		left(t, failed)
		if n := f.countAll(t, `SELECT COUNT(*) FROM order_items WHERE order_id = $1`, failed); n != 1 {
			t.Errorf("order %d has %d lines, want only the row that was in the way", failed, n)
		}
	})

	t.Run("claim lost", func(t *testing.T) {
		// The idempotency claim vanishes before the commit: the last step of
		// the transaction fails, after the order, lines and event were written.
		const user, key = 72, "lost-claim"
		var failed int64
		spy.hook(func(ctx context.Context, orderID int64) {
			failed = orderID
			exec(t, ctx, f.c.ForID(orderID), `DELETE FROM idempotency WHERE user_id = $1 AND idem_key = $2`, user, key)
		})
		_, err := f.ord.Create(ctx, user, key, f.req(line(f.mooncake, 3), line(f.latte, 1)))
		spy.hook(nil)
		if !errors.Is(err, order.ErrKeyBusy) {
			t.Fatalf("create whose claim vanished: %v, want ErrKeyBusy", err)
		}
		left(t, failed)
		if n := f.countAll(t, `SELECT COUNT(*) FROM order_items WHERE order_id = $1`, failed); n != 0 {
			t.Errorf("the failed transaction left %d lines of order %d", n, failed)
		}
		// The key is free again.
		c := f.mustCreate(t, user, key, f.req(line(f.mooncake, 3), line(f.latte, 1)))
		if c.OrderID == failed || f.reserved(t, c.OrderID, f.mooncake.SKU) != 3 {
			t.Errorf("retry: order %d holding %d units; want a new order holding 3", c.OrderID, f.reserved(t, c.OrderID, f.mooncake.SKU))
		}
	})

	t.Run("sweeper", func(t *testing.T) {
		// A reservation whose order never appeared (the process died between
		// the two steps) is released by the sweeper after the grace; one
		// whose order exists is kept.
		base := f.level(t, f.mooncake.SKU)
		const user = 90
		live := f.mustCreate(t, user, "", f.req(line(f.mooncake, 2)))
		orphan, _ := f.ids.Next(id.GeneOf(user))
		if err := f.inv.Reserve(ctx, orphan, []inventory.Line{{SKU: f.mooncake.SKU, Qty: 3}}); err != nil {
			t.Fatal(err)
		}
		if got := f.level(t, f.mooncake.SKU); got != base-5 {
			t.Fatalf("stock %d, want %d", got, base-5)
		}
		if ok, err := f.ord.Exists(ctx, live.OrderID); err != nil || !ok {
			t.Fatalf("Exists(live order) = %v, %v", ok, err)
		}
		if ok, err := f.ord.Exists(ctx, orphan); err != nil || ok {
			t.Fatalf("Exists(orphan) = %v, %v", ok, err)
		}
		if n, err := f.inv.Sweep(ctx, time.Hour, f.ord.Fate); err != nil || n != 0 {
			t.Fatalf("sweep within the grace released %d (%v), want 0", n, err)
		}
		if f.reserved(t, orphan, 0) != 3 {
			t.Fatal("sweep within the grace touched the orphan")
		}
		swept := 0
		poll(t, "the sweeper to release the orphan", func() bool {
			n, err := f.inv.Sweep(ctx, 0, f.ord.Fate)
			if err != nil {
				t.Fatalf("sweep: %v", err)
			}
			swept += n
			return f.reserved(t, orphan, 0) == 0
		})
		if swept != 1 {
			t.Errorf("sweeps released %d orders, want 1 (the orphan)", swept)
		}
		if r := f.reserved(t, live.OrderID, 0); r != 2 {
			t.Errorf("the live order holds %d units after the sweep, want 2", r)
		}
		if got := f.level(t, f.mooncake.SKU); got != base-2 {
			t.Errorf("stock %d after the sweep, want %d", got, base-2)
		}
		if n, err := f.inv.Sweep(ctx, 0, f.ord.Fate); err != nil || n != 0 {
			t.Errorf("second sweep released %d (%v), want 0", n, err)
		}
		if _, err := f.ord.Cancel(ctx, user, live.OrderID); err != nil {
			t.Fatal(err)
		}
		if got := f.level(t, f.mooncake.SKU); got != base {
			t.Errorf("stock %d after cancelling the live order, want %d", got, base)
		}
	})
}

func testOtherUsersOrder(t *testing.T, open func(t testing.TB) *sqldb.Cluster) {
	f := newFixture(t, open, nil)
	ctx := f.ctx
	const owner, stranger = 1001, 1001 + 1024 // same gene: same shard, other user
	c := f.mustCreate(t, owner, "", f.req(line(f.mooncake, 1)))
	for _, who := range []int64{stranger, 2} {
		if o, err := f.ord.Get(ctx, who, c.OrderID); !errors.Is(err, order.ErrNotFound) {
			t.Errorf("user %d reads user %d's order: %+v, %v; want ErrNotFound", who, owner, o, err)
		}
		if _, err := f.ord.Cancel(ctx, who, c.OrderID); !errors.Is(err, order.ErrNotFound) {
			t.Errorf("user %d cancels user %d's order: %v, want ErrNotFound", who, owner, err)
		}
		if list, err := f.ord.List(ctx, who, 0, 100); err != nil || len(list) != 0 {
			t.Errorf("user %d lists %d orders (%v), want none", who, len(list), err)
		}
	}
	if o := f.mustGet(t, owner, c.OrderID); o.Status != order.PendingPayment || o.Version != 1 {
		t.Errorf("after strangers' attempts the order is %s version %d, want untouched", o.Status, o.Version)
	}
	if got := f.level(t, f.mooncake.SKU); got != mooncakeStock-1 {
		t.Errorf("stock %d, want %d: a stranger's cancel released stock", got, mooncakeStock-1)
	}
	missing, _ := f.ids.Next(id.GeneOf(owner))
	if _, err := f.ord.Get(ctx, owner, missing); !errors.Is(err, order.ErrNotFound) {
		t.Errorf("get of an order never written: %v, want ErrNotFound", err)
	}
	if _, err := f.ord.Cancel(ctx, owner, missing); !errors.Is(err, order.ErrNotFound) {
		t.Errorf("cancel of an order never written: %v, want ErrNotFound", err)
	}
	if errkind.Of(order.ErrNotFound).Kind != errkind.NotFound {
		t.Error("ErrNotFound does not carry the NotFound kind")
	}
}

// testExpiry: unpaid orders past their time are cancelled exactly once, by
// the timer's Expire, by the sweep or on read, and a payment racing the
// expiry either wins (paid, stock sold) or loses (cancelled, stock back,
// told to refund) — never both.
func testExpiry(t *testing.T, open func(t testing.TB) *sqldb.Cluster) {
	f := newFixture(t, open, nil)
	ctx := f.ctx
	const ttl = 100 * time.Millisecond
	short := order.New(f.c, f.ids, f.cat, f.inv, nil, slog.New(slog.NewTextHandler(io.Discard, nil)), order.Config{TTL: ttl})
	const user = 4242
	// Before its time (a minute: a slow machine cannot pass it).
	long := order.New(f.c, f.ids, f.cat, f.inv, nil, slog.New(slog.NewTextHandler(io.Discard, nil)), order.Config{TTL: time.Minute})
	early, err := long.Create(ctx, user, "", f.req(line(f.latte, 1)))
	if err != nil {
		t.Fatal(err)
	}
	if ok, err := short.Expire(ctx, early.OrderID); err != nil || ok {
		t.Fatalf("expire before its time: %v %v, want false", ok, err)
	}
	c, err := short.Create(ctx, user, "", f.req(line(f.mooncake, 2)))
	if err != nil {
		t.Fatal(err)
	}
	poll(t, "the order's time to pass", func() bool { return time.Now().After(c.ExpiresAt) })
	if ok, err := short.Expire(ctx, c.OrderID); err != nil || !ok {
		t.Fatalf("expire after its time: %v %v, want true", ok, err)
	}
	if ok, err := short.Expire(ctx, c.OrderID); err != nil || ok {
		t.Fatalf("second expire: %v %v, want false", ok, err)
	}
	o := f.mustGet(t, user, c.OrderID)
	if o.Status != order.Cancelled || o.Reason != order.ByExpiry || f.level(t, f.mooncake.SKU) != mooncakeStock {
		t.Fatalf("expired order %s (%s), stock %d; want cancelled (expired), stock %d", o.Status, o.Reason, f.level(t, f.mooncake.SKU), mooncakeStock)
	}
	if r, err := short.MarkPaid(ctx, c.OrderID, 77); err != nil || r != order.NotPayable {
		t.Fatalf("paying an expired order: %v %v, want NotPayable", r, err)
	}

	// A read past the time never shows pending_payment, timer or not.
	c2, _ := short.Create(ctx, user, "", f.req(line(f.mooncake, 1)))
	poll(t, "the second order's time to pass", func() bool { return time.Now().After(c2.ExpiresAt) })
	if o, err := short.Get(ctx, user, c2.OrderID); err != nil || o.Status != order.Cancelled || o.Reason != order.ByExpiry {
		t.Fatalf("read after expiry: %+v %v", o, err)
	}

	// The sweep finds what the timers missed.
	var due []int64
	for i := range 5 {
		c, err := short.Create(ctx, int64(5000+i*313), "", f.req(line(f.latte, 1)))
		if err != nil {
			t.Fatal(err)
		}
		due = append(due, c.OrderID)
	}
	poll(t, "the sweep to expire 5 orders", func() bool {
		if _, err := short.ExpireDue(ctx, 0, 100); err != nil {
			t.Fatal(err)
		}
		for _, x := range due {
			if o, err := f.ord.Get(ctx, 0, x); err != nil || o.Status != order.Cancelled {
				return false
			}
		}
		return true
	})

	// Payment vs expiry at the same moment, 30 times.
	paid, expired := 0, 0
	for i := range 30 {
		u := int64(7000 + i*97)
		c, err := short.Create(ctx, u, "", f.req(line(f.mooncake, 1)))
		if err != nil {
			t.Fatal(err)
		}
		poll(t, "the order's time to pass", func() bool { return time.Now().After(c.ExpiresAt) })
		var res order.PaidResult
		var won bool
		var perr, eerr error
		start := make(chan struct{})
		var wg sync.WaitGroup
		wg.Add(2)
		go func() { defer wg.Done(); <-start; res, perr = short.MarkPaid(ctx, c.OrderID, int64(900000+i)) }()
		go func() { defer wg.Done(); <-start; won, eerr = short.Expire(ctx, c.OrderID) }()
		close(start)
		wg.Wait()
		if perr != nil || eerr != nil {
			t.Fatalf("race %d: pay %v, expire %v", i, perr, eerr)
		}
		o, _ := f.ord.Get(ctx, 0, c.OrderID)
		switch {
		case res == order.PaidNow && !won:
			paid++
			if o.Status != order.Paid || o.PaymentID != int64(900000+i) || f.reserved(t, c.OrderID, 0) != 0 {
				t.Fatalf("race %d: payment won but the order is %s paid by %d, %d units still reserved", i, o.Status, o.PaymentID, f.reserved(t, c.OrderID, 0))
			}
		case res == order.NotPayable && won:
			expired++
			if o.Status != order.Cancelled {
				t.Fatalf("race %d: expiry won but the order is %s", i, o.Status)
			}
		default:
			t.Fatalf("race %d: pay %v and expired %v: exactly one must win", i, res, won)
		}
	}
	// Stock: every paid order keeps its unit, every expired one gave it back.
	if want := int64(mooncakeStock - paid); f.level(t, f.mooncake.SKU) != want {
		t.Fatalf("stock %d after %d paid and %d expired, want %d", f.level(t, f.mooncake.SKU), paid, expired, want)
	}
	t.Logf("payment vs expiry: %d paid, %d expired", paid, expired)
}

// testMarkPaid: idempotent per payment; a second payment is told apart.
func testMarkPaid(t *testing.T, open func(t testing.TB) *sqldb.Cluster) {
	f := newFixture(t, open, nil)
	ctx := f.ctx
	c := f.mustCreate(t, 31, "", f.req(line(f.mooncake, 3)))
	results := make([]order.PaidResult, 20)
	errs := race(20, func(i int) error {
		var err error
		results[i], err = f.ord.MarkPaid(ctx, c.OrderID, 555)
		return err
	})
	now := 0
	for i, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
		if results[i] == order.PaidNow {
			now++
		} else if results[i] != order.PaidAlready {
			t.Fatalf("result %v", results[i])
		}
	}
	if now != 1 {
		t.Fatalf("%d calls moved the order to paid, want 1", now)
	}
	if r, _ := f.ord.MarkPaid(ctx, c.OrderID, 556); r != order.PaidByOther {
		t.Fatalf("second payment: %v, want PaidByOther", r)
	}
	if _, err := f.ord.Cancel(ctx, 31, c.OrderID); !errors.Is(err, order.ErrNotCancellable) {
		t.Fatalf("cancel of a paid order: %v, want ErrNotCancellable", err)
	}
	paidEvents := 0
	for _, r := range f.outbox(t) {
		if r.typ == order.EvPaid && r.ev.OrderID == c.OrderID && r.ev.PaymentID == 555 {
			paidEvents++
		}
	}
	if paidEvents != 1 || f.level(t, f.mooncake.SKU) != mooncakeStock-3 || f.reserved(t, c.OrderID, 0) != 0 {
		t.Fatalf("%d order.paid events, stock %d, reserved %d", paidEvents, f.level(t, f.mooncake.SKU), f.reserved(t, c.OrderID, 0))
	}
}

// testPayTx: paying in the caller's transaction says whether the order
// holds limited stock, and Paid then turns its reservation into a sale; an
// order that holds none is paid without a look at the reservations.
func testPayTx(t *testing.T, open func(t testing.TB) *sqldb.Cluster) {
	f := newFixture(t, open, nil)
	ctx := f.ctx
	pay := func(orderID, paymentID int64) (order.PaidResult, bool) {
		t.Helper()
		var res order.PaidResult
		var held bool
		err := sqldb.Tx(ctx, f.c.ForID(orderID), func(tx *sql.Tx) error {
			var err error
			res, held, err = f.ord.PayTx(ctx, tx, orderID, paymentID)
			return err
		})
		if err != nil {
			t.Fatalf("pay order %d: %v", orderID, err)
		}
		return res, held
	}
	limited := f.mustCreate(t, 32, "", f.req(line(f.latte, 1), line(f.mooncake, 3)))
	plain := f.mustCreate(t, 32, "", f.req(line(f.latte, 2)))
	if res, held := pay(limited.OrderID, 700); res != order.PaidNow || !held {
		t.Fatalf("order with limited stock: %v, held %v; want PaidNow, held", res, held)
	}
	if f.reserved(t, limited.OrderID, 0) != 3 {
		t.Fatalf("reserved before Paid: %d, want 3", f.reserved(t, limited.OrderID, 0))
	}
	f.ord.Paid(ctx, limited.OrderID, true)
	if r, lvl := f.reserved(t, limited.OrderID, 0), f.level(t, f.mooncake.SKU); r != 0 || lvl != mooncakeStock-3 {
		t.Fatalf("after Paid: reserved %d, stock %d; want 0 and %d", r, lvl, mooncakeStock-3)
	}
	if res, held := pay(plain.OrderID, 701); res != order.PaidNow || held {
		t.Fatalf("order without limited stock: %v, held %v; want PaidNow, not held", res, held)
	}
	f.ord.Paid(ctx, plain.OrderID, false)
	if res, _ := pay(plain.OrderID, 701); res != order.PaidAlready {
		t.Fatalf("the same payment again: %v, want PaidAlready", res)
	}
	if o := f.mustGet(t, 32, plain.OrderID); o.Status != order.Paid || o.PaymentID != 701 {
		t.Fatalf("order %s paid by %d, want paid by 701", o.Status, o.PaymentID)
	}
}

// handoffs records what an order service hands its relay
// (outbox.Committed), as a relay of the same process would take it.
type handoffs struct {
	mu  sync.Mutex
	evs []outbox.Event
}

func (h *handoffs) Wake(int) {}

func (h *handoffs) Handoff(_ context.Context, _ int, evs ...outbox.Event) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.evs = append(h.evs, evs...)
}

// take returns what was handed since the last take.
func (h *handoffs) take() []outbox.Event {
	h.mu.Lock()
	defer h.mu.Unlock()
	evs := h.evs
	h.evs = nil
	return evs
}

// testHandoff: what the service hands its relay after a commit is the
// rows that commit wrote, each once: the order's event and its timer for a
// new order, its order.paid for a payment by PayMatched, once PaidMatched
// is called; nothing for a payment its match did not pick.
func testHandoff(t *testing.T, open func(t testing.TB) *sqldb.Cluster) {
	f := newFixture(t, open, nil)
	ctx := f.ctx
	committed := func(evs []outbox.Event, want int) {
		t.Helper()
		if len(evs) != want {
			t.Fatalf("%d rows handed, want %d", len(evs), want)
		}
		for _, ev := range evs {
			var subject, typ, payload string
			err := f.c.ForID(ev.ID).W.QueryRowContext(ctx, `SELECT subject, type, payload FROM outbox WHERE id = $1`, ev.ID).
				Scan(&subject, &typ, &payload)
			if err != nil {
				t.Fatalf("handed row %d (%s): %v", ev.ID, ev.Type, err)
			}
			if subject != ev.Subject || typ != ev.Type || payload != string(ev.Payload) {
				t.Fatalf("handed row %d: %s %s %s; committed %s %s %s", ev.ID, ev.Subject, ev.Type, ev.Payload, subject, typ, payload)
			}
		}
	}
	f.handed.take()
	c := f.mustCreate(t, 34, "", f.req(line(f.latte, 1)))
	evs := f.handed.take()
	committed(evs, 2)
	if evs[0].Type != order.EvCreated || evs[0].ID == evs[1].ID {
		t.Fatalf("a new order handed %s and %s, ids %d and %d; want %s and its timer", evs[0].Type, evs[1].Type, evs[0].ID, evs[1].ID, order.EvCreated)
	}
	pay := func(paymentID int64, match string) {
		t.Helper()
		var m order.Matched
		var ok bool
		err := sqldb.Tx(ctx, f.c.ForID(c.OrderID), func(tx *sql.Tx) error {
			var err error
			m, ok, err = f.ord.PayMatched(ctx, tx, paymentID, match, c.OrderID)
			return err
		})
		if err != nil {
			t.Fatalf("pay order %d: %v", c.OrderID, err)
		}
		if ok {
			f.ord.PaidMatched(ctx, m)
		}
	}
	pay(900, `SELECT CAST($5 AS BIGINT) WHERE 1 = 0`)
	committed(f.handed.take(), 0)
	pay(901, `SELECT CAST($5 AS BIGINT)`)
	evs = f.handed.take()
	committed(evs, 1)
	if evs[0].Type != order.EvPaid {
		t.Fatalf("a payment handed %s, want %s", evs[0].Type, order.EvPaid)
	}
}

// testPayMatched: the payment by one update of the order pays only an
// order its match picks (with $3, the paying payment) that waits for
// payment, bumps its version, writes one order.paid event of the order as
// paid, and says whether the order holds limited stock; anything else
// changes nothing.
func testPayMatched(t *testing.T, open func(t testing.TB) *sqldb.Cluster) {
	f := newFixture(t, open, nil)
	ctx := f.ctx
	pay := func(orderID, paymentID int64, match string) (int64, bool, bool) {
		t.Helper()
		var m order.Matched
		var ok bool
		err := sqldb.Tx(ctx, f.c.ForID(orderID), func(tx *sql.Tx) error {
			var err error
			m, ok, err = f.ord.PayMatched(ctx, tx, paymentID, match, orderID)
			return err
		})
		if err != nil {
			t.Fatalf("pay order %d: %v", orderID, err)
		}
		return m.OrderID, m.Held, ok
	}
	const pick, none = `SELECT CAST($5 AS BIGINT)`, `SELECT CAST($5 AS BIGINT) WHERE 1 = 0`
	const by801 = `SELECT CAST($5 AS BIGINT) WHERE $3 = 801` // picks the order only for payment 801
	paidEvents := func(orderID int64) (n int, last order.Event, createdAt int64) {
		for _, r := range f.outbox(t) {
			if r.ev.OrderID == orderID && r.typ == order.EvPaid {
				n, last, createdAt = n+1, r.ev, r.createdAt
			}
		}
		return n, last, createdAt
	}
	limited := f.mustCreate(t, 33, "", f.req(line(f.latte, 1), line(f.mooncake, 3)))
	plain := f.mustCreate(t, 33, "", f.req(line(f.latte, 2)))
	cancelled := f.mustCreate(t, 33, "", f.req(line(f.latte, 1)))
	if _, err := f.ord.Cancel(ctx, 33, cancelled.OrderID); err != nil {
		t.Fatal(err)
	}
	before := f.mustGet(t, 33, plain.OrderID)

	if _, _, ok := pay(plain.OrderID, 801, none); ok {
		t.Fatal("paid an order its match did not pick")
	}
	if _, _, ok := pay(plain.OrderID, 802, by801); ok {
		t.Fatal("paid an order by a payment its match did not pick ($3)")
	}
	if o := f.mustGet(t, 33, plain.OrderID); o.Status != order.PendingPayment || o.Version != before.Version {
		t.Fatalf("after a match of nothing: %s version %d, want %s version %d", o.Status, o.Version, order.PendingPayment, before.Version)
	}
	if got, held, ok := pay(limited.OrderID, 800, pick); !ok || !held || got != limited.OrderID {
		t.Fatalf("order with limited stock: paid %v, held %v, order %d; want paid, held, %d", ok, held, got, limited.OrderID)
	}
	if n, ev, _ := paidEvents(limited.OrderID); n != 1 || ev.Status != order.Paid || ev.PaymentID != 800 {
		t.Fatalf("order with limited stock: %d order.paid events, the last %+v", n, ev)
	}
	got, held, ok := pay(plain.OrderID, 801, by801)
	if !ok || held || got != plain.OrderID {
		t.Fatalf("order without limited stock: paid %v, held %v, order %d; want paid, not held, %d", ok, held, got, plain.OrderID)
	}
	o := f.mustGet(t, 33, plain.OrderID)
	if o.Status != order.Paid || o.PaymentID != 801 || o.Version != before.Version+1 {
		t.Fatalf("order %s paid by %d version %d, want paid by 801 version %d", o.Status, o.PaymentID, o.Version, before.Version+1)
	}
	n, ev, createdAt := paidEvents(plain.OrderID)
	if n != 1 || ev.Status != order.Paid || ev.Version != o.Version || ev.PaymentID != 801 || ev.UserID != 33 ||
		ev.StoreID != o.StoreID || ev.Payable != o.Payable || !ev.At.Equal(o.UpdatedAt) || createdAt != o.UpdatedAt.UnixMilli() {
		t.Fatalf("%d order.paid events, the last %+v written at %d; want one of the order as paid (%+v)", n, ev, createdAt, o)
	}
	for _, c := range []struct {
		name    string
		orderID int64
	}{{"paid already", plain.OrderID}, {"cancelled", cancelled.OrderID}} {
		for _, by := range []int64{801, 802} { // the same payment again, another
			if _, _, ok := pay(c.orderID, by, pick); ok {
				t.Errorf("%s: paid again by %d", c.name, by)
			}
		}
	}
	if o2 := f.mustGet(t, 33, plain.OrderID); o2.Version != o.Version || o2.PaymentID != 801 {
		t.Errorf("after a second payment: version %d paid by %d, want %d by 801", o2.Version, o2.PaymentID, o.Version)
	}
	if n, _, _ := paidEvents(plain.OrderID); n != 1 {
		t.Errorf("%d order.paid events after a second payment, want 1", n)
	}
	if o := f.mustGet(t, 33, cancelled.OrderID); o.Status != order.Cancelled {
		t.Errorf("the cancelled order is %s", o.Status)
	}
}

// testSweepByFate: reservations left behind by a lost step are settled by
// the sweeper from their order's status: a paid order's are committed (the
// stock stays sold), a cancelled order's are released (the stock comes
// back once), a pending order's are kept.
func testSweepByFate(t *testing.T, open func(t testing.TB) *sqldb.Cluster) {
	f := newFixture(t, open, nil)
	ctx := f.ctx
	main := f.c.Main()
	leftover := func(orderID, qty int64) { // a reservation whose Commit or Release was lost
		exec(t, ctx, main, `INSERT INTO stock_reservations (order_id, sku_id, qty, created_at) VALUES ($1, $2, $3, 0)`, orderID, f.mooncake.SKU, qty)
		exec(t, ctx, main, `UPDATE stock SET qty = qty - $1 WHERE sku_id = $2`, qty, f.mooncake.SKU)
	}
	paid := f.mustCreate(t, 61, "", f.req(line(f.mooncake, 2)))
	if r, err := f.ord.MarkPaid(ctx, paid.OrderID, 1); err != nil || r != order.PaidNow {
		t.Fatalf("mark paid: %v %v", r, err)
	}
	cancelled := f.mustCreate(t, 62, "", f.req(line(f.mooncake, 3)))
	if _, err := f.ord.Cancel(ctx, 62, cancelled.OrderID); err != nil {
		t.Fatal(err)
	}
	pending := f.mustCreate(t, 63, "", f.req(line(f.mooncake, 4)))
	base := f.level(t, f.mooncake.SKU) // 100 - 2 (sold) - 4 (pending)
	exec(t, ctx, main, `UPDATE stock_reservations SET created_at = 0 WHERE order_id = $1`, pending.OrderID)
	leftover(paid.OrderID, 2)      // the commit was lost: the stock counted twice now
	leftover(cancelled.OrderID, 3) // the release was lost
	if n, err := f.inv.Sweep(ctx, time.Minute, f.ord.Fate); err != nil || n != 2 {
		t.Fatalf("sweep settled %d orders (%v), want 2", n, err)
	}
	if got := f.level(t, f.mooncake.SKU); got != base-2 {
		t.Errorf("stock %d after the sweep, want %d (the cancelled order's 3 back, the paid order's 2 still sold)", got, base-2)
	}
	if r := f.reserved(t, paid.OrderID, 0) + f.reserved(t, cancelled.OrderID, 0); r != 0 {
		t.Errorf("%d units still reserved for the paid and cancelled orders", r)
	}
	if r := f.reserved(t, pending.OrderID, 0); r != 4 {
		t.Errorf("the pending order holds %d units after the sweep, want 4", r)
	}
}

func exec(t *testing.T, ctx context.Context, d *sqldb.DB, q string, args ...any) {
	t.Helper()
	if _, err := d.W.ExecContext(ctx, q, args...); err != nil {
		t.Errorf("%s: %v", q, err)
	}
}
