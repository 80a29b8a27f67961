package ordertest

// Idempotency keys: duplicates race for one order, a key's request must
// match, and keys (and the ledger's records of seen events) are forgotten
// after their time.

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/surge-platform/surge/internal/catalog"
	"github.com/surge-platform/surge/internal/inventory"
	"github.com/surge-platform/surge/internal/order"
	"github.com/surge-platform/surge/internal/platform/id"
	"github.com/surge-platform/surge/internal/platform/sqldb"
)

// sameKeyRace places req n times at once under one key and checks that
// every request got the same answer and one order was written; it returns
// that answer.
func (f *fixture) sameKeyRace(t *testing.T, user int64, key string, req order.Request, n int) order.Created {
	t.Helper()
	got := make([]order.Created, n)
	errs := race(n, func(i int) error {
		var err error
		got[i], err = f.ord.Create(f.ctx, user, key, req)
		return err
	})
	for i, err := range errs {
		if err != nil {
			t.Fatalf("request %d with the same key: %v", i, err)
		}
		if !sameCreated(got[i], got[0]) {
			t.Errorf("request %d got %+v, request 0 got %+v: want the same answer", i, got[i], got[0])
		}
	}
	if c := f.countAll(t, `SELECT COUNT(*) FROM orders WHERE user_id = $1`, user); c != 1 {
		t.Errorf("%d concurrent requests with one key wrote %d orders, want 1", n, c)
	}
	return got[0]
}

func testIdempotency(t *testing.T, open func(t testing.TB) *sqldb.Cluster) {
	f := newFixture(t, open, nil)
	ctx := f.ctx
	const user, twin, same = 8001, 8002, 50
	const key = "checkout-7f3a"
	req := f.req(line(f.mooncake, 2), line(f.latte, 1))
	first := f.sameKeyRace(t, user, key, req, same)
	if lvl := f.level(t, f.mooncake.SKU); lvl != mooncakeStock-2 {
		t.Errorf("stock %d, want %d: reserved more than once", lvl, mooncakeStock-2)
	}
	if n := len(f.outbox(t)); n != 1 {
		t.Errorf("%d outbox rows, want 1", n)
	}

	// Later replays get the stored answer.
	if again, err := f.ord.Create(ctx, user, key, req); err != nil || !sameCreated(again, first) {
		t.Errorf("replay: %+v, %v; want %+v", again, err, first)
	}
	// The same key for another request is refused.
	if _, err := f.ord.Create(ctx, user, key, f.req(line(f.latte, 3))); !errors.Is(err, order.ErrKeyReused) {
		t.Errorf("same key, other request: %v, want ErrKeyReused", err)
	}
	if n := f.countAll(t, `SELECT COUNT(*) FROM orders WHERE user_id = $1`, user); n != 1 {
		t.Errorf("user %d has %d orders after the replays, want 1", user, n)
	}
	// Keys are per user.
	other := f.mustCreate(t, twin, key, req)
	if other.OrderID == first.OrderID || id.Gene(other.OrderID) != id.GeneOf(twin) {
		t.Errorf("another user with the same key got %+v, want an order of its own", other)
	}
	if n := f.countAll(t, `SELECT COUNT(*) FROM orders WHERE user_id = $1`, twin); n != 1 {
		t.Errorf("user %d has %d orders, want 1", twin, n)
	}
	// Without a key every request is a new order.
	a, b := f.mustCreate(t, user, "", req), f.mustCreate(t, user, "", req)
	if a.OrderID == b.OrderID || a.OrderID == first.OrderID {
		t.Errorf("requests without a key gave orders %d and %d (keyed one %d), want distinct", a.OrderID, b.OrderID, first.OrderID)
	}
	// Bad keys.
	for _, bad := range []string{"has space", "tab\t", strings.Repeat("k", order.MaxKey+1), "ümlaut"} {
		if _, err := f.ord.Create(ctx, user, bad, req); !errors.Is(err, order.ErrBadKey) {
			t.Errorf("key %q: %v, want ErrBadKey", bad, err)
		}
	}
	// A request that failed lets go of its key: the retry is carried out.
	item := f.mustLimited(t, "Lantern", 8800, 1)
	const retry = "retry-after-restock"
	if _, err := f.ord.Create(ctx, user, retry, f.req(line(item, 2))); !errors.Is(err, inventory.ErrSoldOut) {
		t.Fatalf("ordering 2 of 1: %v, want ErrSoldOut", err)
	}
	if err := f.cat.SetStock(ctx, item.SKU, 2); err != nil {
		t.Fatal(err)
	}
	c := f.mustCreate(t, user, retry, f.req(line(item, 2)))
	if lvl := f.level(t, item.SKU); lvl != 0 || f.reserved(t, c.OrderID, item.SKU) != 2 {
		t.Errorf("retry after restock: stock %d, reserved %d; want 0 and 2", lvl, f.reserved(t, c.OrderID, item.SKU))
	}
}

// testForgetKeys: keys older than a day are deleted, in batches and on
// every database; younger keys and all orders stay; a retry with a
// forgotten key places a new order.
func testForgetKeys(t *testing.T, open func(t testing.TB) *sqldb.Cluster) {
	f := newFixture(t, open, nil)
	ctx := f.ctx
	req := f.req(line(f.latte, 1))
	// Customers on as many databases as the layout has, up to 3.
	var users []int64
	on := map[int]bool{}
	for u := int64(8192); len(users) < 3; u++ {
		if db := f.c.Physical(id.GeneOf(u)); !on[db] || len(on) == len(f.c.Shards()) {
			on[db] = true
			users = append(users, u)
		}
	}
	old := map[string]order.Created{}
	for i := range 7 { // 5 keys of the first user: more than one batch of 2
		u := users[max(0, i-4)]
		key := fmt.Sprintf("old-%d", i)
		old[key] = f.mustCreate(t, u, key, req)
	}
	kept := f.mustCreate(t, users[0], "new-0", req)
	dayAgo := time.Now().Add(-25 * time.Hour).UnixMilli()
	for _, d := range f.c.Shards() {
		exec(t, ctx, d, `UPDATE idempotency SET created_at = $1 WHERE idem_key LIKE 'old-%'`, dayAgo)
	}
	homes := 0
	for _, d := range f.c.Shards() {
		var k int64
		if err := d.W.QueryRowContext(ctx, `SELECT COUNT(*) FROM idempotency WHERE idem_key LIKE 'old-%'`).Scan(&k); err != nil {
			t.Fatal(err)
		}
		if k > 0 {
			homes++
		}
	}
	if want := min(len(f.c.Shards()), 3); homes != want {
		t.Fatalf("the old keys are on %d databases, want %d", homes, want)
	}
	n, err := f.ord.ForgetKeys(ctx, 2)
	if err != nil || n != 7 {
		t.Fatalf("ForgetKeys: %d, %v; want the 7 keys older than a day", n, err)
	}
	if left := f.countAll(t, `SELECT COUNT(*) FROM idempotency WHERE idem_key LIKE 'old-%'`); left != 0 {
		t.Errorf("%d old keys left", left)
	}
	if left := f.countAll(t, `SELECT COUNT(*) FROM idempotency WHERE idem_key = 'new-0'`); left != 1 {
		t.Errorf("%d rows of the young key, want 1", left)
	}
	if orders := f.countAll(t, `SELECT COUNT(*) FROM orders`); orders != 8 {
		t.Errorf("%d orders after forgetting keys, want all 8", orders)
	}
	if again, err := f.ord.Create(ctx, users[0], "new-0", req); err != nil || !sameCreated(again, kept) {
		t.Errorf("replay of the kept key: %+v, %v; want %+v", again, err, kept)
	}
	again, err := f.ord.Create(ctx, users[0], "old-0", req)
	if err != nil || again.OrderID == old["old-0"].OrderID {
		t.Errorf("retry with a forgotten key: %+v, %v; want a new order", again, err)
	}
	if n, err := f.ord.ForgetKeys(ctx, 0); err != nil || n != 0 {
		t.Errorf("ForgetKeys again: %d, %v; want nothing left to forget", n, err)
	}
}

// testForgetSeen: the records of events made more than a week ago are
// deleted, in batches and on every database; younger records stay.
func testForgetSeen(t *testing.T, open func(t testing.TB) *sqldb.Cluster) {
	f := newFixture(t, open, nil)
	ctx := f.ctx
	now := time.Now()
	oldest := id.Floor(now.Add(-30 * 24 * time.Hour))
	weekAgo := id.Floor(now.Add(-7*24*time.Hour - time.Minute)) // a minute inside what is forgotten
	young := id.Floor(now.Add(-7*24*time.Hour + time.Hour))
	// Per database, 3 old records (one a minute inside the week's edge,
	// more than one batch of 2 in all) and 2 young ones.
	for i, d := range f.c.Shards() {
		gene := int64(i * id.Genes / len(f.c.Shards())) // a gene this database holds
		if f.c.ForGene(int(gene)) != d {
			t.Fatalf("gene %d is not on database %d", gene, i)
		}
		for _, ev := range []int64{oldest | 1<<10 | gene, oldest | 2<<10 | gene, weekAgo | gene, young | gene, young | 1<<10 | gene} {
			exec(t, ctx, d, `INSERT INTO events_seen (event_id, type, order_id, deliveries, seen_at) VALUES ($1, 'order.paid', $2, 1, 0)`, ev, gene)
		}
	}
	dbs := int64(len(f.c.Shards()))
	n, err := f.ord.ForgetSeen(ctx, 2)
	if err != nil || n != 3*dbs {
		t.Fatalf("ForgetSeen: %d, %v; want the %d records older than a week", n, err, 3*dbs)
	}
	if left := f.countAll(t, `SELECT COUNT(*) FROM events_seen WHERE event_id < $1`, young); left != 0 {
		t.Errorf("%d old records left", left)
	}
	if left := f.countAll(t, `SELECT COUNT(*) FROM events_seen WHERE event_id >= $1`, young); left != 2*dbs {
		t.Errorf("%d young records left, want %d", left, 2*dbs)
	}
	if n, err := f.ord.ForgetSeen(ctx, 0); err != nil || n != 0 {
		t.Errorf("ForgetSeen again: %d, %v; want nothing left to forget", n, err)
	}
}

// testIdempotencyUnlimited: an order without limited stock writes its key
// in the order's own transaction (no claim of its own); concurrent
// duplicates wait on it in the database and get the one answer.
func testIdempotencyUnlimited(t *testing.T, open func(t testing.TB) *sqldb.Cluster) {
	f := newFixture(t, open, nil)
	ctx := f.ctx
	const user, same = 8101, 50
	const key = "checkout-unlimited"
	req := f.req(line(f.latte, 2), line(f.bagel, 1))
	first := f.sameKeyRace(t, user, key, req, same)
	if rows := f.outbox(t); len(rows) != 1 || rows[0].ev.OrderID != first.OrderID {
		t.Errorf("outbox %+v, want the one order's event", rows)
	}
	if tm := f.timers(t); len(tm) != 1 {
		t.Errorf("%d expiry timers, want 1", len(tm))
	}
	if n := f.countAll(t, `SELECT COUNT(*) FROM idempotency WHERE user_id = $1 AND state = 'done' AND order_id = $2`, user, first.OrderID); n != 1 {
		t.Errorf("%d done keys for the order, want 1", n)
	}
	// A replay gets the stored answer even when the request could not be
	// carried out now: the store closed meanwhile.
	closed := false
	if _, err := f.cat.UpdateStore(ctx, f.store.ID, catalog.StoreInput{Name: f.store.Name, Open: &closed}); err != nil {
		t.Fatal(err)
	}
	if again, err := f.ord.Create(ctx, user, key, req); err != nil || !sameCreated(again, first) {
		t.Errorf("replay after the store closed: %+v, %v; want %+v", again, err, first)
	}
	if _, err := f.ord.Create(ctx, user, "fresh-key", req); !errors.Is(err, order.ErrStoreClosed) {
		t.Errorf("a new key at the closed store: %v, want ErrStoreClosed", err)
	}
	if _, err := f.ord.Create(ctx, user, key, f.req(line(f.latte, 3))); !errors.Is(err, order.ErrKeyReused) {
		t.Errorf("same key, other request: %v, want ErrKeyReused", err)
	}
	if n := f.countAll(t, `SELECT COUNT(*) FROM orders WHERE user_id = $1`, user); n != 1 {
		t.Errorf("user %d has %d orders after the replays, want 1", user, n)
	}
	reopen := true
	if _, err := f.cat.UpdateStore(ctx, f.store.ID, catalog.StoreInput{Name: f.store.Name, Open: &reopen}); err != nil {
		t.Fatal(err)
	}

	// A claim made apart and left behind (a node died mid-way, or an older
	// node claimed every keyed order) is taken over once stale: the key is
	// not stuck busy, and the order gets the claim's order id.
	const stale, staleUser = "left-behind", 8102
	staleID, _ := f.ids.Next(id.GeneOf(staleUser))
	exec(t, ctx, f.c.ForGene(id.GeneOf(staleUser)), `INSERT INTO idempotency (user_id, idem_key, order_id, state, req_hash, created_at)
		VALUES ($1, $2, $3, 'pending', $4, $5)`, staleUser, stale, staleID, hashOf(req), time.Now().Add(-time.Hour).UnixMilli())
	c, err := f.ord.Create(ctx, staleUser, stale, req)
	if err != nil {
		t.Fatalf("order under a stale claim: %v", err)
	}
	if c.OrderID != staleID {
		t.Errorf("order under a stale claim got id %d, want the claim's %d", c.OrderID, staleID)
	}
	if again, err := f.ord.Create(ctx, staleUser, stale, req); err != nil || !sameCreated(again, c) {
		t.Errorf("replay after the takeover: %+v, %v; want %+v", again, err, c)
	}
}

// hashOf is the request hash the order service stores with a key.
func hashOf(req order.Request) string {
	b, _ := json.Marshal(req)
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:16])
}
