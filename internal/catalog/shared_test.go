package catalog_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"net/url"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/surge-platform/surge/internal/catalog"
	"github.com/surge-platform/surge/internal/inventory"
	"github.com/surge-platform/surge/internal/platform/bus"
	"github.com/surge-platform/surge/internal/platform/errkind"
	"github.com/surge-platform/surge/internal/platform/faultnet"
	"github.com/surge-platform/surge/internal/platform/id"
	"github.com/surge-platform/surge/internal/platform/kv"
	"github.com/surge-platform/surge/internal/platform/kv/kvtest"
	"github.com/surge-platform/surge/internal/platform/sqldb"
	"github.com/surge-platform/surge/internal/platform/sqldb/sqldbtest"
)

// cluster is n catalog nodes as n api nodes run them: one PostgreSQL
// database (each node with its own connection pool, which a test may close
// to take the database away from that node), one kv store, one bus for the
// invalidations, and a local cache each.
type cluster struct {
	t     *testing.T
	url   string
	kvURL string
	bus   *bus.Bus
	ids   *id.Generator
	nodes []*catalog.Service
	dbs   []*sqldb.Cluster
}

// sharedRedis returns the URL of the shared test Redis (SURGE_TEST_REDIS) under
// a fresh key prefix.
func sharedRedis(t *testing.T) string {
	t.Helper()
	raw := os.Getenv("SURGE_TEST_REDIS")
	if raw == "" {
		raw = "redis://127.0.0.1:6379/0"
	}
	u, err := url.Parse(raw)
	if err != nil {
		t.Fatalf("SURGE_TEST_REDIS: %v", err)
	}
	q := u.Query()
	q.Set("prefix", "surgetest:catalog:"+rand.Text()[:12]+":")
	u.RawQuery = q.Encode()
	return u.String()
}

func newCluster(t *testing.T, n int, kvURL string) *cluster {
	t.Helper()
	c := &cluster{t: t, url: sqldbtest.PostgresURLs(t, 1)[0], kvURL: kvURL}
	var err error
	if c.bus, err = bus.Open(context.Background(), "embedded:"+t.TempDir()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.bus.Close() })
	c.ids, _ = id.New(1)
	for range n {
		c.add()
	}
	return c
}

// add starts one more node (its local cache empty) and returns it.
func (c *cluster) add() *catalog.Service {
	t := c.t
	t.Helper()
	db := sqldbtest.Open(t, c.url)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	store, err := kv.Open(ctx, c.kvURL)
	if err != nil {
		if os.Getenv("SURGE_TEST_SKIP_REDIS") == "1" {
			t.Skipf("Redis unavailable, skipped by SURGE_TEST_SKIP_REDIS=1: %v", err)
		}
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	s := catalog.New(db, c.ids, inventory.New(db), c.bus, catalog.WithKV(store))
	follow(t, c.bus, s)
	c.nodes = append(c.nodes, s)
	c.dbs = append(c.dbs, db)
	return s
}

// builds is the number of database builds of menus on all nodes.
func (c *cluster) builds() int64 {
	var n int64
	for _, s := range c.nodes {
		n += s.CacheStats().Builds
	}
	return n
}

// newStore creates a store with one item at price on node s.
func newStore(t *testing.T, s *catalog.Service, price int64) (storeID, sku int64) {
	t.Helper()
	ctx := t.Context()
	st, err := s.CreateStore(ctx, 0, catalog.StoreInput{Name: "Store"})
	if err != nil {
		t.Fatal(err)
	}
	cat, err := s.CreateCategory(ctx, st.ID, 0, catalog.CategoryInput{Name: "Tea"})
	if err != nil {
		t.Fatal(err)
	}
	it, err := s.PutItem(ctx, st.ID, 0, catalog.ItemInput{CategoryID: cat.ID, Name: "Oolong", Price: price})
	if err != nil {
		t.Fatal(err)
	}
	return st.ID, it.SKU
}

func setPrice(t *testing.T, s *catalog.Service, storeID, sku, price int64) {
	t.Helper()
	m, err := s.Menu(t.Context(), storeID)
	if err != nil {
		t.Fatal(err)
	}
	it := m.Items[sku]
	if _, err := s.PutItem(t.Context(), storeID, sku, catalog.ItemInput{CategoryID: it.CategoryID, Name: it.Name, Price: price}); err != nil {
		t.Fatal(err)
	}
}

// concurrently runs fn n times at once, spread over the nodes.
func (c *cluster) concurrently(n int, fn func(s *catalog.Service)) {
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			fn(c.nodes[i%len(c.nodes)])
		}()
	}
	close(start)
	wg.Wait()
}

// TestColdMenuOneBuildAcrossThreeNodes: 1,000 concurrent reads of a cold
// menu on 3 nodes sharing PostgreSQL and Redis make exactly one database
// build; every reader gets the same menu.
func TestColdMenuOneBuildAcrossThreeNodes(t *testing.T) {
	t.Parallel()
	c := newCluster(t, 3, sharedRedis(t))
	sid, sku := newStore(t, c.nodes[0], 900)
	before := c.builds()
	var mu sync.Mutex
	etags := map[string]int{}
	c.concurrently(1000, func(s *catalog.Service) {
		m, err := s.Menu(context.Background(), sid)
		mu.Lock()
		defer mu.Unlock()
		if err != nil {
			t.Error(err)
			return
		}
		if m.Items[sku].Price != 900 || m.Stale {
			t.Errorf("menu: price %d stale %v", m.Items[sku].Price, m.Stale)
		}
		etags[m.ETag]++
	})
	if got := c.builds() - before; got != 1 {
		t.Errorf("%d database builds of the cold menu, want 1", got)
	}
	if len(etags) != 1 {
		t.Errorf("the nodes served different menus: %v", etags)
	}
	var waits, hits int64
	for _, s := range c.nodes {
		st := s.CacheStats()
		waits, hits = waits+st.LockWaits, hits+st.KVHits
	}
	t.Logf("builds 1, lock waits %d, kv hits %d", waits, hits)
}

// TestUnknownStoreFloodReachesTheDatabaseOnce: negative copies, local and
// in kv, keep 1,000 reads of a store that does not exist from the database.
func TestUnknownStoreFloodReachesTheDatabaseOnce(t *testing.T) {
	t.Parallel()
	c := newCluster(t, 3, sharedRedis(t))
	before := c.builds()
	c.concurrently(1000, func(s *catalog.Service) {
		if _, err := s.Menu(context.Background(), 987654321); !errors.Is(err, catalog.ErrNoStore) {
			t.Errorf("unknown store: %v, want ErrNoStore", err)
		}
	})
	for _, s := range c.nodes { // and again, one after the other
		if _, err := s.Menu(context.Background(), 987654321); !errors.Is(err, catalog.ErrNoStore) {
			t.Errorf("unknown store: %v, want ErrNoStore", err)
		}
	}
	if got := c.builds() - before; got > 3 {
		t.Errorf("%d database reads for 1,003 reads of an unknown store, want at most 3", got)
	}
	// A store created with that id is seen at once on every node.
	if _, err := c.nodes[0].CreateStore(t.Context(), 987654321, catalog.StoreInput{Name: "Late"}); err != nil {
		t.Fatal(err)
	}
	for i, s := range c.nodes {
		waitFor(t, "node "+strconv.Itoa(i)+" sees the new store", func() bool {
			_, err := s.Menu(context.Background(), 987654321)
			return err == nil
		})
	}
}

// TestChangeReachesEveryNodeAndKV: a change on node A is served by B and C
// once its bus message arrives, and a node that learns nothing from the bus
// (a new one, its cache empty) never gets the kv copy from before it.
func TestChangeReachesEveryNodeAndKV(t *testing.T) {
	t.Parallel()
	c := newCluster(t, 3, sharedRedis(t))
	sid, sku := newStore(t, c.nodes[0], 900)
	for _, s := range c.nodes { // every tier holds the 900 menu
		if m, err := s.Menu(t.Context(), sid); err != nil || m.Items[sku].Price != 900 {
			t.Fatalf("menu: %v", err)
		}
	}
	for round, price := range []int64{1200, 1500, 1800} {
		setPrice(t, c.nodes[0], sid, sku, price)
		fresh := c.add()
		if m, err := fresh.Menu(t.Context(), sid); err != nil || m.Items[sku].Price != price {
			t.Fatalf("round %d: a new node got price %d (%v) from kv right after the change to %d", round, m.Items[sku].Price, err, price)
		}
		for i, s := range c.nodes[1:3] {
			waitFor(t, "node "+strconv.Itoa(i+1)+" serves the new price", func() bool {
				m, err := s.Menu(t.Context(), sid)
				return err == nil && m.Items[sku].Price == price
			})
			for range 20 { // and never the old one again
				if m, _ := s.Menu(t.Context(), sid); m.Items[sku].Price != price {
					t.Fatalf("node %d went back to price %d", i+1, m.Items[sku].Price)
				}
			}
		}
	}
}

// TestRedisDownThenDatabaseDown: with Redis gone, reads (and changes) go on
// from the database; with the database gone too, a node serves its last
// good copy marked stale, and a menu it never had is Unavailable (503),
// not a bug (500).
func TestRedisDownThenDatabaseDown(t *testing.T) {
	t.Parallel()
	srv := kvtest.StartRedis(t)
	c := newCluster(t, 2, srv.URL("timeout=300ms"))
	a, b := c.nodes[0], c.nodes[1]
	sid, sku := newStore(t, a, 900)
	other, _ := newStore(t, a, 100)
	if _, err := b.Menu(t.Context(), sid); err != nil {
		t.Fatal(err)
	}
	srv.Kill()

	setPrice(t, a, sid, sku, 1300)
	waitFor(t, "node b serves the change with Redis down", func() bool {
		m, err := b.Menu(t.Context(), sid)
		return err == nil && m.Items[sku].Price == 1300 && !m.Stale
	})
	if m, err := a.Menu(t.Context(), other); err != nil || m.Stale {
		t.Fatalf("a cold menu with Redis down: %v", err)
	}

	c.dbs[1].Close() // node b loses the database too
	b.Invalidate(0)  // and its entries: only the last good copies are left
	t0 := time.Now()
	m, err := b.Menu(t.Context(), sid)
	if err != nil {
		t.Fatalf("a menu node b had, with Redis and the database down: %v, want the last good copy", err)
	}
	if !m.Stale || m.Items[sku].Price != 1300 || !bytes.HasPrefix(m.Body, []byte(`{"stale":true,"store":`)) ||
		m.CacheHeader[0] != "no-cache" || m.ETag[:2] != "W/" {
		t.Errorf("last good copy: stale %v price %d body %.40s cache %v etag %s", m.Stale, m.Items[sku].Price, m.Body, m.CacheHeader, m.ETag)
	}
	t.Logf("the last good copy came after %v", time.Since(t0))
	if m2, err := b.Menu(t.Context(), sid); err != nil || !m2.Stale {
		t.Errorf("second read: %v stale %v", err, m2 != nil && m2.Stale)
	}
	if st := b.CacheStats(); st.Stale == 0 {
		t.Errorf("stats count no stale read: %+v", st)
	}
	_, err = b.Menu(t.Context(), other)
	if e := errkind.Of(err); e == nil || e.Kind != errkind.Unavailable {
		t.Errorf("a menu node b never had: %v (%+v), want kind Unavailable", err, e)
	}
}

// TestSlowRedisAndDatabase: a frozen Redis and a database that blocks on a
// lock make a node serve its last good copy within about the read wait,
// and the fresh menu again once they answer.
func TestSlowRedisAndDatabase(t *testing.T) {
	t.Parallel()
	srv := kvtest.StartRedis(t)
	c := newCluster(t, 1, srv.URL("timeout=300ms"))
	a := c.nodes[0]
	sid, sku := newStore(t, a, 900)
	if _, err := a.Menu(t.Context(), sid); err != nil {
		t.Fatal(err)
	}
	blocker := sqldbtest.Open(t, c.url).Main().W
	tx, err := blocker.BeginTx(t.Context(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.ExecContext(t.Context(), "LOCK TABLE stores IN ACCESS EXCLUSIVE MODE"); err != nil {
		t.Fatal(err)
	}
	srv.Freeze()
	a.Invalidate(sid)
	t0 := time.Now()
	m, err := a.Menu(t.Context(), sid)
	took := time.Since(t0)
	if err != nil || !m.Stale || m.Items[sku].Price != 900 {
		t.Fatalf("slow kv and database: %v, want the last good copy marked stale", err)
	}
	if took > 2*time.Second {
		t.Errorf("the stale copy took %v, want about the read wait (1 s)", took)
	}
	srv.Thaw()
	tx.Rollback()
	waitFor(t, "the fresh menu once kv and the database answer", func() bool {
		m, err := a.Menu(t.Context(), sid)
		return err == nil && !m.Stale
	})
}

// TestKVRestartedEmpty: kv holds copies only: after a restart without
// persistence the menus are built again from the database, and shared again.
func TestKVRestartedEmpty(t *testing.T) {
	t.Parallel()
	srv := kvtest.StartRedis(t)
	c := newCluster(t, 1, srv.URL("timeout=300ms"))
	sid, sku := newStore(t, c.nodes[0], 900)
	if _, err := c.nodes[0].Menu(t.Context(), sid); err != nil {
		t.Fatal(err)
	}
	srv.Restart()
	before := c.builds()
	var b *catalog.Service
	waitFor(t, "a new node reads the menu after the restart", func() bool {
		b = c.add()
		m, err := b.Menu(t.Context(), sid)
		return err == nil && m.Items[sku].Price == 900 && b.CacheStats().KVErrors == 0
	})
	if c.builds() == before {
		t.Error("no database build after kv lost every copy")
	}
	built := c.builds()
	if m, err := c.add().Menu(t.Context(), sid); err != nil || m.Items[sku].Price != 900 {
		t.Fatalf("menu: %v", err)
	}
	if c.builds() != built {
		t.Error("the rebuilt copy was not shared through kv")
	}
}

// TestLockHolderDies: a node that took the build lock and died holds up
// the others at most until the lock expires; then one of them builds.
func TestLockHolderDies(t *testing.T) {
	t.Parallel()
	kvURL := sharedRedis(t)
	c := newCluster(t, 2, kvURL)
	sid, _ := newStore(t, c.nodes[0], 900)
	raw, err := kv.Open(t.Context(), kvURL)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	gen, err := raw.Get(t.Context(), "catalog:gen:"+strconv.FormatInt(sid, 10))
	if err != nil {
		t.Fatal(err)
	}
	if ok, err := raw.SetNX(t.Context(), "catalog:lock:"+strconv.FormatInt(sid, 10)+":"+string(gen), []byte("dead"), 2*time.Second); !ok || err != nil {
		t.Fatalf("take the lock: %v %v", ok, err)
	}
	before := c.builds()
	t0 := time.Now()
	c.concurrently(100, func(s *catalog.Service) {
		if _, err := s.Menu(context.Background(), sid); err != nil {
			t.Error(err)
		}
	})
	took := time.Since(t0)
	if took > 4*time.Second {
		t.Errorf("reads behind a dead lock holder took %v, want about its 2 s lock ttl", took)
	}
	if got := c.builds() - before; got != 1 {
		t.Errorf("%d builds after the dead holder's lock expired, want 1", got)
	}
}

// TestPreWarm: a pre-warm on one node builds every menu into kv; the other
// nodes then read them without a database build.
func TestPreWarm(t *testing.T) {
	t.Parallel()
	c := newCluster(t, 2, sharedRedis(t))
	var sids []int64
	for range 3 {
		sid, _ := newStore(t, c.nodes[0], 500)
		sids = append(sids, sid)
	}
	got, err := c.nodes[0].PreWarm(t.Context())
	if err != nil || got != (catalog.Prewarmed{Stores: 3, Built: 3}) {
		t.Fatalf("PreWarm = %+v, %v", got, err)
	}
	b := c.nodes[1]
	for _, sid := range sids {
		if _, err := b.Menu(t.Context(), sid); err != nil {
			t.Fatal(err)
		}
	}
	if st := b.CacheStats(); st.Builds != 0 || st.KVHits != 3 {
		t.Errorf("node b after the pre-warm: %+v, want 0 builds and 3 kv hits", st)
	}
}

func waitFor(t *testing.T, what string, ok func() bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); !ok(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("not within 5 s: %s", what)
		}
	}
}

// TestChangeWhileKVCutOffForItsNode: the node making a change cannot
// reach kv (so the shared tier's generation stays where it was) while the
// others can: they are told the store's new version with the invalidation
// and take no older copy from kv, rebuild from the database and put the
// new copy in kv over the old, where a node that was never told finds it.
func TestChangeWhileKVCutOffForItsNode(t *testing.T) {
	t.Parallel()
	kvURL := sharedRedis(t)
	c := newCluster(t, 3, kvURL)
	sid, sku := newStore(t, c.nodes[0], 900)
	for _, s := range c.nodes { // every tier holds the 900 menu
		if m, err := s.Menu(t.Context(), sid); err != nil || m.Items[sku].Price != 900 {
			t.Fatalf("menu: %v", err)
		}
	}
	u, _ := url.Parse(kvURL)
	px := faultnet.Start(t, u.Host)
	u.Host = px.Addr()
	c.kvURL = u.String()
	cut := c.add() // a node whose kv goes through px
	if m, err := cut.Menu(t.Context(), sid); err != nil || m.Items[sku].Price != 900 {
		t.Fatalf("menu through the proxy: %v", err)
	}
	px.Cut()
	setPrice(t, cut, sid, sku, 1300)
	for i, s := range c.nodes[:3] {
		waitFor(t, "node "+strconv.Itoa(i)+" serves the new price", func() bool {
			m, err := s.Menu(t.Context(), sid)
			return err == nil && m.Items[sku].Price == 1300
		})
	}
	c.kvURL = kvURL
	fresh := c.add() // never told: reads what kv holds at the old generation
	if m, err := fresh.Menu(t.Context(), sid); err != nil || m.Items[sku].Price != 1300 {
		t.Fatalf("a node that was not told got price %d (%v) from kv", m.Items[sku].Price, err)
	}
}
