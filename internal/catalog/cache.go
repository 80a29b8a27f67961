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
	"time"

	"database/sql"

	"golang.org/x/sync/singleflight"
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
)

type entry struct {
	menu    *Menu
	err     error // negative entry: the store does not exist
	expires time.Time
}

type cache struct {
	s      *Service
	flight singleflight.Group

	mu       sync.RWMutex
	menus    map[int64]*entry // guarded by mu
	list     []Store          // guarded by mu
	listExp  time.Time        // guarded by mu
	gen      uint64           // bumped by drop, guarded by mu
	inflight sync.Map         // store id -> struct{}: a background refresh runs
}

func newCache(s *Service) *cache { return &cache{s: s, menus: map[int64]*entry{}} }

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

func jitter(d time.Duration) time.Duration { return d + time.Duration(rand.Int64N(int64(d)/5+1)) }

func (c *cache) menu(ctx context.Context, storeID int64) (*Menu, error) {
	c.mu.RLock()
	e := c.menus[storeID]
	c.mu.RUnlock()
	now := time.Now()
	if e != nil {
		if now.After(e.expires) {
			if e.err != nil {
				return c.load(ctx, storeID)
			}
			if _, busy := c.inflight.LoadOrStore(storeID, struct{}{}); !busy {
				go func() {
					defer c.inflight.Delete(storeID)
					ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
					defer cancel()
					c.load(ctx, storeID)
				}()
			}
		}
		return e.menu, e.err
	}
	return c.load(ctx, storeID)
}

// load builds the menu once for all concurrent callers and caches it unless
// the store was invalidated meanwhile.
func (c *cache) load(ctx context.Context, storeID int64) (*Menu, error) {
	key := strconv.FormatInt(storeID, 10)
	v, err, _ := c.flight.Do(key, func() (any, error) {
		// Shared by every caller waiting on it: not cut short by the first
		// caller going away.
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		c.mu.RLock()
		gen := c.gen
		c.mu.RUnlock()
		m, err := c.s.buildMenu(ctx, storeID)
		e := &entry{menu: m, err: err}
		switch {
		case errors.Is(err, ErrNoStore):
			e.expires = time.Now().Add(negativeTTL)
		case err != nil:
			return nil, err // not cached: a database error
		default:
			e.expires = time.Now().Add(jitter(menuTTL))
			if m.MaxAge == stockTTL {
				e.expires = time.Now().Add(stockTTL)
			}
		}
		c.mu.Lock()
		if c.gen == gen {
			c.menus[storeID] = e
		}
		c.mu.Unlock()
		return m, err
	})
	if err != nil {
		return nil, err
	}
	return v.(*Menu), nil
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
	h := fnv.New64a()
	h.Write(m.Body)
	m.ETag = fmt.Sprintf(`"%x"`, h.Sum64())
	m.ETagHeader = []string{m.ETag}
	m.CacheHeader = []string{fmt.Sprintf("public, max-age=%d", int(m.MaxAge.Seconds()))}
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
