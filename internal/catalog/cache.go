package catalog

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"math/rand/v2"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"database/sql"

	"golang.org/x/sync/singleflight"

	"github.com/surge-platform/surge/internal/platform/errkind"
)

// Menu is a store's menu as served: the rendered JSON body with its ETag,
// and the items by SKU for pricing orders.
type Menu struct {
	Store Store
	Items map[int64]Item
	Body  []byte
	ETag  string
	// MaxAge is how long clients and CDNs may keep Body.
	MaxAge time.Duration
	// Ready-made header values (shared, never modified).
	ETagHeader, CacheHeader []string
	// Stale marks the last good copy, served when neither kv nor the
	// database gave a fresh one in time: its Body starts with
	// "stale":true, its ETag is weak and its Cache-Control is no-cache (a
	// CDN revalidates it on every request).
	Stale bool
}

// staleCopy returns m marked stale.
func (m *Menu) staleCopy() *Menu {
	c := *m
	c.Stale = true
	c.Body = append([]byte(`{"stale":true,`), m.Body[1:]...)
	c.ETag = "W/" + m.ETag
	c.ETagHeader = []string{c.ETag}
	c.CacheHeader = []string{"no-cache"}
	return &c
}

// seal computes m's ETag and header values from its Body and MaxAge.
func (m *Menu) seal() {
	h := fnv.New64a()
	h.Write(m.Body)
	m.ETag = fmt.Sprintf(`"%x"`, h.Sum64())
	m.ETagHeader = []string{m.ETag}
	m.CacheHeader = []string{fmt.Sprintf("public, max-age=%d", int(m.MaxAge.Seconds()))}
}

type menuView struct {
	Store      Store          `json:"store"`
	Categories []categoryView `json:"categories"`
}

type categoryView struct {
	Category
	Items []itemView `json:"items"`
}

type itemView struct {
	SKU       int64  `json:"sku_id,string"`
	Name      string `json:"name"`
	Price     int64  `json:"price"`
	Available bool   `json:"available"`
	Limited   bool   `json:"limited,omitempty"`
	Stock     *int64 `json:"stock,omitempty"`
}

// Freshness of cached entries. Menus with limited items show stock, so they
// are rebuilt more often; either way a stale entry is served while one
// rebuild runs in the background (no stampede), and operators' changes drop
// entries at once.
const (
	menuTTL     = 30 * time.Second
	stockTTL    = time.Second
	negativeTTL = 5 * time.Second
	// fillTimeout bounds one fill of a menu (the shared tier, the wait
	// for another node's build, the database), shared by every caller
	// waiting on it.
	fillTimeout = 5 * time.Second
	// readWait: a reader that has a last good copy of the menu gets that
	// copy, marked stale, when the fill takes longer than this.
	readWait = time.Second
	// staleRetry: how long a stale copy is served before the next try
	// (made in the background, one at a time).
	staleRetry = time.Second
)

type entry struct {
	menu    *Menu
	err     error // negative entry: the store does not exist
	expires time.Time
}

type cache struct {
	s      *Service
	shared *shared // nil without a kv store
	flight singleflight.Group

	mu       sync.RWMutex
	menus    map[int64]*entry // guarded by mu
	last     map[int64]*Menu  // guarded by mu: the last good menu of each store, kept across drops
	list     []Store          // guarded by mu
	listExp  time.Time        // guarded by mu
	gen      uint64           // bumped by drop, guarded by mu
	inflight sync.Map         // store id -> struct{}: a background refresh runs

	builds, kvHits, lockWaits, staleServed atomic.Int64
	reads, misses                          atomic.Int64 // menu lookups, and those this node's copy did not answer
	staleLogged                            atomic.Int64 // unix nanos of the last stale warning
}

func newCache(s *Service) *cache {
	c := &cache{s: s, menus: map[int64]*entry{}, last: map[int64]*Menu{}}
	if s.kv != nil {
		c.shared = &shared{kv: s.kv}
	}
	return c
}

// CacheStats counts what the menu cache did since the service started.
type CacheStats struct {
	Reads     int64 `json:"reads"`      // menu lookups (browsing and pricing)
	Misses    int64 `json:"misses"`     // lookups this node's copy did not answer (absent, or a remembered error expired)
	Builds    int64 `json:"builds"`     // menus (or "no such store" answers) built from the database
	KVHits    int64 `json:"kv_hits"`    // local misses answered by the shared tier
	KVErrors  int64 `json:"kv_errors"`  // calls to the shared tier that failed (it is then skipped for a while)
	LockWaits int64 `json:"lock_waits"` // cold menus this node waited for while another node built them
	Stale     int64 `json:"stale"`      // times the last good copy was served because the fill failed or was slow
}

// CacheStats returns the menu cache's counters.
func (s *Service) CacheStats() CacheStats {
	c := s.cache
	st := CacheStats{Reads: c.reads.Load(), Misses: c.misses.Load(), Builds: c.builds.Load(), KVHits: c.kvHits.Load(),
		LockWaits: c.lockWaits.Load(), Stale: c.staleServed.Load()}
	if c.shared != nil {
		st.KVErrors = c.shared.errors.Load()
	}
	return st
}

func (c *cache) drop(storeID int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.gen++
	c.list = nil
	if storeID == 0 {
		clear(c.menus)
		return
	}
	delete(c.menus, storeID)
}

// atLeast: the store's copies in the shared tier older than version are
// not to be taken.
func (c *cache) atLeast(storeID, version int64) {
	if c.shared != nil {
		c.shared.atLeast(storeID, version)
	}
}

// moveOn makes the shared tier's copies of the store unreachable.
func (c *cache) moveOn(storeID int64) {
	if c.shared != nil && storeID != 0 {
		c.shared.moveOn(storeID)
	}
}

func jitter(d time.Duration) time.Duration { return d + time.Duration(rand.Int64N(int64(d)/5+1)) }

// menu is the read path. A local hit costs a map read under a read lock
// and nothing else: no kv call, no allocation.
func (c *cache) menu(ctx context.Context, storeID int64) (*Menu, error) {
	c.reads.Add(1)
	c.mu.RLock()
	e := c.menus[storeID]
	c.mu.RUnlock()
	now := time.Now()
	if e != nil {
		if now.After(e.expires) {
			if e.err != nil {
				c.misses.Add(1)
				return c.load(ctx, storeID)
			}
			if _, busy := c.inflight.LoadOrStore(storeID, struct{}{}); !busy {
				go c.refresh(storeID)
			}
		}
		return e.menu, e.err
	}
	c.misses.Add(1)
	return c.load(ctx, storeID)
}

// freshMenu is menu for pricing an order: never the last good copy marked
// stale; while only that is cached it waits for the fill (its ctx bounds
// the wait) and fails with the fill's error.
func (c *cache) freshMenu(ctx context.Context, storeID int64) (*Menu, error) {
	c.mu.RLock()
	e := c.menus[storeID]
	c.mu.RUnlock()
	if e != nil && (e.menu == nil || !e.menu.Stale) {
		return c.menu(ctx, storeID)
	}
	ch := c.flight.DoChan(strconv.FormatInt(storeID, 10), func() (any, error) { return c.fill(ctx, storeID) })
	select {
	case r := <-ch:
		if r.Err != nil {
			return nil, r.Err
		}
		return r.Val.(*Menu), nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// refresh fills an expired entry in the background (its owner is the read
// that found it expired; it ends within fillTimeout).
func (c *cache) refresh(storeID int64) {
	defer c.inflight.Delete(storeID)
	c.load(context.Background(), storeID)
}

// load fills the menu once for all concurrent callers of this node. A
// caller that has a last good copy gets it, marked stale, when the fill
// fails or takes longer than readWait; one that has none waits for the
// fill (at most fillTimeout) or for its ctx. Errors: ErrNoStore, a kinded
// error of kind Unavailable when neither kv nor the database answered,
// ctx's error.
func (c *cache) load(ctx context.Context, storeID int64) (*Menu, error) {
	ch := c.flight.DoChan(strconv.FormatInt(storeID, 10), func() (any, error) { return c.fill(ctx, storeID) })
	var slow <-chan time.Time
	c.mu.RLock()
	hasLast := c.last[storeID] != nil
	c.mu.RUnlock()
	if hasLast {
		t := time.NewTimer(readWait)
		defer t.Stop()
		slow = t.C
	}
	for {
		select {
		case r := <-ch:
			if r.Err == nil {
				return r.Val.(*Menu), nil
			}
			if !errors.Is(r.Err, ErrNoStore) {
				if m := c.fallback(storeID, r.Err); m != nil {
					return m, nil
				}
			}
			return nil, r.Err
		case <-slow:
			if m := c.fallback(storeID, errSlow); m != nil {
				return m, nil
			}
			slow = nil
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

var errSlow = errors.New("the shared tier and the database did not answer within the read wait")

// fallback returns the store's last good menu marked stale (nil if there
// is none) and keeps serving it for staleRetry, or a fresh copy that
// arrived meanwhile.
func (c *cache) fallback(storeID int64, cause error) *Menu {
	now := time.Now()
	c.mu.Lock()
	if e := c.menus[storeID]; e != nil && e.menu != nil && !e.menu.Stale && now.Before(e.expires) {
		c.mu.Unlock()
		return e.menu
	}
	good := c.last[storeID]
	if good == nil {
		c.mu.Unlock()
		return nil
	}
	m := good.staleCopy()
	c.menus[storeID] = &entry{menu: m, expires: now.Add(staleRetry)}
	c.mu.Unlock()
	c.staleServed.Add(1)
	if last := c.staleLogged.Load(); now.UnixNano()-last > int64(10*time.Second) && c.staleLogged.CompareAndSwap(last, now.UnixNano()) {
		c.s.log.Warn("catalog: serving the last good menu, marked stale (at most one warning per 10 s)",
			"store_id", storeID, "err", cause, "stale_total", c.staleServed.Load())
	}
	return m
}

// fill gets the menu from the shared tier or the database and caches it
// locally unless the store was invalidated meanwhile.
func (c *cache) fill(ctx context.Context, storeID int64) (any, error) {
	// Shared by every caller waiting on it: not cut short by the first
	// caller going away.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), fillTimeout)
	defer cancel()
	c.mu.RLock()
	gen := c.gen
	c.mu.RUnlock()
	m, fromKV, err := c.fetch(ctx, storeID)
	e := &entry{menu: m, err: err, expires: time.Now()}
	switch {
	case errors.Is(err, ErrNoStore):
		e.expires = e.expires.Add(negativeTTL)
	case err != nil:
		return nil, unavailable(storeID, err) // not cached
	default:
		e.expires = e.expires.Add(localTTL(m, fromKV))
	}
	c.put(gen, storeID, e)
	return m, err
}

// put caches e unless the cache was dropped since gen was read. A menu
// becomes the store's last good copy either way: it was good when it was
// read, and the fallback marks it stale.
func (c *cache) put(gen uint64, storeID int64, e *entry) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e.menu != nil {
		c.last[storeID] = e.menu
	}
	if c.gen == gen {
		c.menus[storeID] = e
	}
}

// localTTL is how long this node keeps m. A menu showing stock that came
// from kv may be up to kvTTL(m) old already, so the two add up to stockTTL.
func localTTL(m *Menu, fromKV bool) time.Duration {
	switch {
	case m.MaxAge != stockTTL:
		return jitter(menuTTL)
	case fromKV:
		return stockTTL / 2
	}
	return stockTTL
}

// fetch reads the menu from the shared tier, or builds it from the
// database: after taking the shared tier's lock for it, or after waiting
// (bounded) for the node that holds the lock. Without a shared tier, or
// while it fails, straight from the database. fromKV says where m came
// from.
func (c *cache) fetch(ctx context.Context, storeID int64) (m *Menu, fromKV bool, err error) {
	sh := c.shared
	if sh == nil || !sh.up() {
		m, err = c.build(ctx, storeID)
		return m, false, err
	}
	gen, m, err := sh.read(ctx, storeID)
	switch {
	case err == nil || errors.Is(err, ErrNoStore):
		c.kvHits.Add(1)
		return m, true, err
	case err != errMiss: // kv failed: the database alone
		m, err = c.build(ctx, storeID)
		return m, false, err
	}
	locked, err := sh.lock(ctx, storeID, gen)
	if err != nil {
		m, err = c.build(ctx, storeID)
		return m, false, err
	}
	if !locked {
		c.lockWaits.Add(1)
		m, locked, err = sh.await(ctx, storeID, gen)
		if err != errMiss {
			if err == nil || errors.Is(err, ErrNoStore) {
				c.kvHits.Add(1)
				return m, true, err
			}
			m, err = c.build(ctx, storeID) // kv failed meanwhile
			return m, false, err
		}
		// Locked: the holder went away without a copy. Not locked: the
		// wait ran out; build all the same (a second build, never an
		// unbounded wait).
	}
	if locked {
		defer sh.unlock(storeID, gen)
		// The holder before this one may have put its copy just before
		// letting go of the lock.
		if m, err := sh.menu(ctx, storeID, gen); err != errMiss {
			if err == nil || errors.Is(err, ErrNoStore) {
				c.kvHits.Add(1)
				return m, true, err
			}
		}
	}
	m, err = c.build(ctx, storeID)
	if err == nil || errors.Is(err, ErrNoStore) {
		sh.write(ctx, storeID, gen, m, err)
	}
	return m, false, err
}

// build builds the menu from the database, counted.
func (c *cache) build(ctx context.Context, storeID int64) (*Menu, error) {
	c.builds.Add(1)
	return c.s.buildMenu(ctx, storeID)
}

// unavailable gives a database or kv failure without a kind the kind
// Unavailable (503 at the edge); kinded errors and cancellations stay as
// they are.
func unavailable(storeID int64, err error) error {
	if errkind.Of(err) != nil || errors.Is(err, context.Canceled) {
		return err
	}
	return fmt.Errorf("menu of store %d: %w (%w)", storeID, errkind.ErrUnavailable, err)
}

func (c *cache) stores(ctx context.Context) ([]Store, error) {
	c.mu.RLock()
	list, exp := c.list, c.listExp
	c.mu.RUnlock()
	if list != nil && time.Now().Before(exp) {
		return list, nil
	}
	v, err, _ := c.flight.Do("stores", func() (any, error) {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		c.mu.RLock()
		gen := c.gen
		c.mu.RUnlock()
		l, err := c.s.loadStores(ctx)
		if err != nil {
			return nil, err
		}
		if l == nil {
			l = []Store{}
		}
		c.mu.Lock()
		if c.gen == gen {
			c.list, c.listExp = l, time.Now().Add(jitter(menuTTL))
		}
		c.mu.Unlock()
		return l, nil
	})
	if err != nil {
		return nil, err
	}
	return v.([]Store), nil
}

func (s *Service) buildMenu(ctx context.Context, storeID int64) (*Menu, error) {
	st, err := s.storeRow(ctx, storeID)
	if err != nil {
		return nil, err
	}
	cats, err := s.categories(ctx, storeID)
	if err != nil {
		return nil, err
	}
	rows, err := s.db.R.QueryContext(ctx, `SELECT sku_id, category_id, name, price, limited, available, sort
		FROM menu_items WHERE store_id = $1`, storeID)
	if err != nil {
		return nil, fmt.Errorf("menu of store %d: %w", storeID, err)
	}
	defer rows.Close()
	m := &Menu{Store: st, Items: map[int64]Item{}, MaxAge: 5 * time.Second}
	var limited []int64
	for rows.Next() {
		it := Item{StoreID: storeID}
		var lim, avail int
		if err := rows.Scan(&it.SKU, &it.CategoryID, &it.Name, &it.Price, &lim, &avail, &it.Sort); err != nil {
			return nil, err
		}
		it.Limited, it.Available = lim == 1, avail == 1
		m.Items[it.SKU] = it
		if it.Limited {
			limited = append(limited, it.SKU)
		}
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	levels, err := s.stock.Levels(ctx, limited)
	if err != nil {
		return nil, err
	}
	if len(limited) > 0 {
		m.MaxAge = stockTTL
	}
	view := menuView{Store: st}
	byCat := map[int64]int{}
	for _, c := range cats {
		byCat[c.ID] = len(view.Categories)
		view.Categories = append(view.Categories, categoryView{Category: c, Items: []itemView{}})
	}
	items := make([]Item, 0, len(m.Items))
	for _, it := range m.Items {
		items = append(items, it)
	}
	sort.Slice(items, func(i, j int) bool {
		if items[i].Sort != items[j].Sort {
			return items[i].Sort < items[j].Sort
		}
		return items[i].SKU < items[j].SKU
	})
	for _, it := range items {
		ci, ok := byCat[it.CategoryID]
		if !ok {
			continue
		}
		v := itemView{SKU: it.SKU, Name: it.Name, Price: it.Price, Available: it.Available, Limited: it.Limited}
		if it.Limited {
			q := levels[it.SKU]
			v.Stock = &q
			if q == 0 {
				v.Available = false
			}
		}
		view.Categories[ci].Items = append(view.Categories[ci].Items, v)
	}
	if view.Categories == nil {
		view.Categories = []categoryView{}
	}
	m.Body, err = json.Marshal(view)
	if err != nil {
		return nil, err
	}
	m.seal()
	return m, nil
}

func (s *Service) storeRow(ctx context.Context, storeID int64) (Store, error) {
	var st Store
	var open int
	err := s.db.R.QueryRowContext(ctx, `SELECT id, name, city, address, is_open, version FROM stores WHERE id = $1`, storeID).
		Scan(&st.ID, &st.Name, &st.City, &st.Address, &open, &st.Version)
	if errors.Is(err, sql.ErrNoRows) {
		return Store{}, ErrNoStore.With("no store %d", storeID)
	}
	if err != nil {
		return Store{}, fmt.Errorf("read store %d: %w", storeID, err)
	}
	st.Open = open == 1
	return st, nil
}

func (s *Service) categories(ctx context.Context, storeID int64) ([]Category, error) {
	rows, err := s.db.R.QueryContext(ctx, `SELECT id, name, sort FROM categories WHERE store_id = $1 ORDER BY sort, id`, storeID)
	if err != nil {
		return nil, fmt.Errorf("categories of store %d: %w", storeID, err)
	}
	defer rows.Close()
	var out []Category
	for rows.Next() {
		c := Category{StoreID: storeID}
		if err := rows.Scan(&c.ID, &c.Name, &c.Sort); err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	return out, rows.Err()
}
