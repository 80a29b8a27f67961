// Package catalog owns stores and their menus (categories and items), in
// the main database, read through a local cache that operators' changes
// invalidate on every node.
package catalog

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/surge-platform/surge/internal/platform/errkind"
	"github.com/surge-platform/surge/internal/platform/id"
	"github.com/surge-platform/surge/internal/platform/kv"
	"github.com/surge-platform/surge/internal/platform/sqldb"
)

var (
	ErrNoStore    = errkind.New(errkind.NotFound, "store_not_found", "no such store")
	ErrNoItem     = errkind.New(errkind.NotFound, "sku_not_found", "no such item")
	ErrNoCategory = errkind.New(errkind.NotFound, "category_not_found", "no such category")
	ErrNotLimited = errkind.New(errkind.Conflict, "item_not_limited", "the item is not stock-limited: it has no stock to set")
)

// Bounds on what an operator sets (documented in docs/api.md); the Stock
// bounds stock levels.
const (
	MaxPrice   = 10_000_000 // fen (¥100,000) per unit
	MaxSort    = 1_000_000  // sort keys are -MaxSort..MaxSort
	MaxName    = 200        // characters of a store or item name
	MaxCatName = 100        // characters of a category name
	MaxCity    = 100        // characters
	MaxAddress = 500        // characters
)

// checkText bounds a text field of an operator's input: at most max
// characters, and not blank when required. (NUL characters never get here:
// web.Decode refuses them for every route.)
func checkText(field, s string, required bool, max int) error {
	if required && strings.TrimSpace(s) == "" {
		return errkind.ErrInvalid.With("%s is required (1 to %d characters)", field, max)
	}
	if n := utf8.RuneCountInString(s); n > max {
		return errkind.ErrInvalid.With("%s must be at most %d characters, got %d", field, max, n)
	}
	return nil
}

func checkSort(sort int) error {
	if sort < -MaxSort || sort > MaxSort {
		return errkind.ErrInvalid.With("sort must be %d to %d, got %d", -MaxSort, MaxSort, sort)
	}
	return nil
}

// Store is a shop of a chain.
type Store struct {
	ID      int64  `json:"store_id,string"`
	Name    string `json:"name"`
	City    string `json:"city"`
	Address string `json:"address"`
	Open    bool   `json:"open"`
	Version int64  `json:"version"`
	POSKey  string `json:"pos_key,omitempty"` // only in admin views
}

// Category groups items of a store's menu.
type Category struct {
	ID      int64  `json:"category_id,string"`
	StoreID int64  `json:"-"`
	Name    string `json:"name"`
	Sort    int    `json:"sort"`
}

// Item is a sellable SKU of one store. Price is in fen.
type Item struct {
	SKU        int64  `json:"sku_id,string"`
	StoreID    int64  `json:"store_id,string"`
	CategoryID int64  `json:"category_id,string"`
	Name       string `json:"name"`
	Price      int64  `json:"price"`
	Limited    bool   `json:"limited"`
	Available  bool   `json:"available"`
	Sort       int    `json:"sort"`
}

// Stock tells the current level of limited items (inventory implements it).
type Stock interface {
	Levels(ctx context.Context, skus []int64) (map[int64]int64, error)
	Set(ctx context.Context, sku, qty int64) error
	CheckLevel(qty int64) error // a kinded error for a level Set would refuse
}

// Invalidator tells every node that a store's cached data changed (the bus
// implements it; nil means this node only).
type Invalidator interface {
	PublishCore(subject string, data []byte) error
}

// InvalidateSubject carries the store id whose cache entries are stale.
const InvalidateSubject = "catalog.invalidate"

// Service reads and changes stores and menus.
type Service struct {
	db    *sqldb.DB
	ids   *id.Generator
	stock Stock
	inv   Invalidator
	kv    kv.Store // the shared tier; nil = none (local cache and database only)
	log   *slog.Logger
	cache *cache
	now   func() time.Time
}

// An Option changes a Service New makes.
type Option func(*Service)

// WithKV gives the menus a tier shared by the nodes between each node's
// local cache and the database: Redis in the distributed mode (one
// database build of a cold menu for the whole cluster), the process's
// memory store in the embedded mode. It holds copies only, rebuilt from
// the database when missing (see cache.go).
func WithKV(store kv.Store) Option { return func(s *Service) { s.kv = store } }

// WithLog sets where the cache reports serving a stale menu (default:
// nowhere).
func WithLog(log *slog.Logger) Option { return func(s *Service) { s.log = log } }

// New returns a service on the main database of c.
func New(c *sqldb.Cluster, ids *id.Generator, stock Stock, inv Invalidator, opts ...Option) *Service {
	s := &Service{db: c.Main(), ids: ids, stock: stock, inv: inv, now: time.Now, log: slog.New(slog.DiscardHandler)}
	for _, o := range opts {
		o(s)
	}
	s.cache = newCache(s)
	return s
}

// Invalidate drops the cached data of store (0 = everything). Call it when
// another node announces a change.
func (s *Service) Invalidate(storeID int64) { s.cache.drop(storeID) }

// OnInvalidate handles a message of InvalidateSubject: "<store id>", or
// "<store id>:<version>" when the change gave the store a new version.
// From then on this node takes no shared copy of the store's menu older
// than that version (it builds one from the database instead, and puts it
// in kv over the old): so a change whose node could not move the shared
// tier's generation on (kv down for it, up for the others) is not hidden
// behind the old copy for the copy's 15 minutes.
func (s *Service) OnInvalidate(data []byte) {
	id, v, _ := strings.Cut(string(data), ":")
	storeID, _ := strconv.ParseInt(id, 10, 64)
	if version, err := strconv.ParseInt(v, 10, 64); err == nil && storeID != 0 {
		s.cache.atLeast(storeID, version)
	}
	s.cache.drop(storeID)
}

// changed makes every cached copy of the store's data unreachable: the
// shared tier's first (its generation moves on), then this node's, then the
// other nodes' (the bus message, with the store's new version when there
// is one, 0 otherwise).
func (s *Service) changed(storeID, version int64) {
	s.cache.moveOn(storeID)
	if version > 0 {
		s.cache.atLeast(storeID, version)
	}
	s.cache.drop(storeID)
	if s.inv != nil {
		msg := strconv.FormatInt(storeID, 10)
		if version > 0 {
			msg += ":" + strconv.FormatInt(version, 10)
		}
		s.inv.PublishCore(InvalidateSubject, []byte(msg))
	}
}

// Stores lists all stores (cached).
func (s *Service) Stores(ctx context.Context) ([]Store, error) { return s.cache.stores(ctx) }

// Store returns one store (cached) or ErrNoStore.
func (s *Service) Store(ctx context.Context, storeID int64) (Store, error) {
	m, err := s.cache.menu(ctx, storeID)
	if err != nil {
		return Store{}, err
	}
	return m.Store, nil
}

// FreshMenu is Menu for pricing orders: it never returns the last good
// copy marked stale (which Menu serves browsing customers when kv and the
// database are slow or down); it waits for a fresh one, or fails.
func (s *Service) FreshMenu(ctx context.Context, storeID int64) (*Menu, error) {
	return s.cache.freshMenu(ctx, storeID)
}

// Menu returns the store's rendered menu (cached) or ErrNoStore.
func (s *Service) Menu(ctx context.Context, storeID int64) (*Menu, error) {
	return s.cache.menu(ctx, storeID)
}

func (s *Service) loadStores(ctx context.Context) ([]Store, error) {
	rows, err := s.db.R.QueryContext(ctx, `SELECT id, name, city, address, is_open, version FROM stores ORDER BY id`)
	if err != nil {
		return nil, fmt.Errorf("list stores: %w", err)
	}
	defer rows.Close()
	var out []Store
	for rows.Next() {
		var st Store
		var open int
		if err := rows.Scan(&st.ID, &st.Name, &st.City, &st.Address, &open, &st.Version); err != nil {
			return nil, err
		}
		st.Open = open == 1
		out = append(out, st)
	}
	return out, rows.Err()
}

// AdminStore returns a store with its POS key, uncached.
func (s *Service) AdminStore(ctx context.Context, storeID int64) (Store, error) {
	var st Store
	var open int
	err := s.db.W.QueryRowContext(ctx, `SELECT id, name, city, address, is_open, version, pos_key FROM stores WHERE id = $1`, storeID).
		Scan(&st.ID, &st.Name, &st.City, &st.Address, &open, &st.Version, &st.POSKey)
	if errors.Is(err, sql.ErrNoRows) {
		return Store{}, ErrNoStore.With("no store %d", storeID)
	}
	if err != nil {
		return Store{}, fmt.Errorf("read store %d: %w", storeID, err)
	}
	st.Open = open == 1
	return st, nil
}

// StoreInput is what an operator sets on a store.
type StoreInput struct {
	Name    string `json:"name"`
	City    string `json:"city"`
	Address string `json:"address"`
	Open    *bool  `json:"open"`
}

func (in StoreInput) check() error {
	return errors.Join(checkText("name", in.Name, true, MaxName), checkText("city", in.City, false, MaxCity),
		checkText("address", in.Address, false, MaxAddress))
}

// CreateStore adds a store with a fresh POS key. A non-zero storeID is used
// as is (the demo data set uses fixed ids); creating an existing id is a
// no-op that returns the existing store.
func (s *Service) CreateStore(ctx context.Context, storeID int64, in StoreInput) (Store, error) {
	if err := in.check(); err != nil {
		return Store{}, err
	}
	if storeID == 0 {
		var err error
		if storeID, err = s.ids.Next(0); err != nil {
			return Store{}, err
		}
	}
	open := 1
	if in.Open != nil && !*in.Open {
		open = 0
	}
	if _, err := s.db.W.ExecContext(ctx, `INSERT INTO stores (id, name, city, address, is_open, pos_key, version, updated_at)
		VALUES ($1, $2, $3, $4, $5, $6, 1, $7) ON CONFLICT (id) DO NOTHING`,
		storeID, in.Name, in.City, in.Address, open, NewPOSKey(), s.now().UnixMilli()); err != nil {
		return Store{}, fmt.Errorf("create store: %w", err)
	}
	s.changed(storeID, 1) // also drops the store list, on every node
	return s.AdminStore(ctx, storeID)
}

// UpdateStore changes a store's fields and bumps its version.
func (s *Service) UpdateStore(ctx context.Context, storeID int64, in StoreInput) (Store, error) {
	if err := in.check(); err != nil {
		return Store{}, err
	}
	open := 1
	if in.Open != nil && !*in.Open {
		open = 0
	}
	var version int64
	err := s.db.W.QueryRowContext(ctx, `UPDATE stores SET name = $1, city = $2, address = $3, is_open = $4,
		version = version + 1, updated_at = $5 WHERE id = $6 RETURNING version`, in.Name, in.City, in.Address, open, s.now().UnixMilli(), storeID).Scan(&version)
	if errors.Is(err, sql.ErrNoRows) {
		return Store{}, ErrNoStore.With("no store %d", storeID)
	}
	if err != nil {
		return Store{}, fmt.Errorf("update store %d: %w", storeID, err)
	}
	s.changed(storeID, version) // also drops the store list, on every node
	return s.AdminStore(ctx, storeID)
}

// NewPOSKey returns a fresh random store key.
func NewPOSKey() string {
	b := make([]byte, 18)
	rand.Read(b)
	return "pos_" + hex.EncodeToString(b)
}

// CategoryInput is what an operator sets on a category.
type CategoryInput struct {
	Name string `json:"name"`
	Sort int    `json:"sort"`
}

// CreateCategory adds a category to a store (id 0 = generate).
func (s *Service) CreateCategory(ctx context.Context, storeID, catID int64, in CategoryInput) (Category, error) {
	if err := errors.Join(checkText("name", in.Name, true, MaxCatName), checkSort(in.Sort)); err != nil {
		return Category{}, err
	}
	if _, err := s.AdminStore(ctx, storeID); err != nil {
		return Category{}, err
	}
	if catID == 0 {
		var err error
		if catID, err = s.ids.Next(0); err != nil {
			return Category{}, err
		}
	}
	if _, err := s.db.W.ExecContext(ctx, `INSERT INTO categories (id, store_id, name, sort) VALUES ($1, $2, $3, $4)
		ON CONFLICT (id) DO NOTHING`, catID, storeID, in.Name, in.Sort); err != nil {
		return Category{}, fmt.Errorf("create category: %w", err)
	}
	s.bump(ctx, storeID)
	return Category{ID: catID, StoreID: storeID, Name: in.Name, Sort: in.Sort}, nil
}

// ItemInput is what an operator sets on an item. Stock, when given, sets the
// level of a limited item.
type ItemInput struct {
	CategoryID int64  `json:"category_id,string"`
	Name       string `json:"name"`
	Price      int64  `json:"price"`
	Limited    bool   `json:"limited"`
	Available  *bool  `json:"available"`
	Sort       int    `json:"sort"`
	Stock      *int64 `json:"stock"`
}

func (in ItemInput) check() error {
	if err := errors.Join(checkText("name", in.Name, true, MaxName), checkSort(in.Sort)); err != nil {
		return err
	}
	switch {
	case in.Price < 0 || in.Price > MaxPrice:
		return errkind.ErrInvalid.With("price must be 0 to %d fen, got %d", MaxPrice, in.Price)
	case in.Stock != nil && !in.Limited:
		return ErrNotLimited.With("stock is only for limited items: send \"limited\":true with it")
	}
	return nil
}

// PutItem creates (sku 0 = generate) or replaces an item of a store.
func (s *Service) PutItem(ctx context.Context, storeID, sku int64, in ItemInput) (Item, error) {
	if err := in.check(); err != nil {
		return Item{}, err
	}
	if in.Stock != nil {
		if err := s.stock.CheckLevel(*in.Stock); err != nil {
			return Item{}, err
		}
	}
	var catStore int64
	err := s.db.W.QueryRowContext(ctx, `SELECT store_id FROM categories WHERE id = $1`, in.CategoryID).Scan(&catStore)
	if errors.Is(err, sql.ErrNoRows) || (err == nil && catStore != storeID) {
		return Item{}, ErrNoCategory.With("no category %d in store %d", in.CategoryID, storeID)
	}
	if err != nil {
		return Item{}, fmt.Errorf("read category: %w", err)
	}
	if sku == 0 {
		if sku, err = s.ids.Next(0); err != nil {
			return Item{}, err
		}
	}
	it := Item{SKU: sku, StoreID: storeID, CategoryID: in.CategoryID, Name: in.Name, Price: in.Price,
		Limited: in.Limited, Available: in.Available == nil || *in.Available, Sort: in.Sort}
	if _, err := s.db.W.ExecContext(ctx, `INSERT INTO menu_items (sku_id, store_id, category_id, name, price, limited, available, sort)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
		ON CONFLICT (sku_id) DO UPDATE SET category_id = excluded.category_id, name = excluded.name, price = excluded.price,
			limited = excluded.limited, available = excluded.available, sort = excluded.sort
		WHERE menu_items.store_id = excluded.store_id`,
		sku, storeID, it.CategoryID, it.Name, it.Price, b2i(it.Limited), b2i(it.Available), it.Sort); err != nil {
		return Item{}, fmt.Errorf("put item: %w", err)
	}
	if in.Stock != nil {
		if err := s.stock.Set(ctx, sku, *in.Stock); err != nil {
			return Item{}, err
		}
	}
	s.bump(ctx, storeID)
	return it, nil
}

// StoreOfItem returns the store an item belongs to, uncached.
func (s *Service) StoreOfItem(ctx context.Context, sku int64) (int64, error) {
	var st int64
	err := s.db.W.QueryRowContext(ctx, `SELECT store_id FROM menu_items WHERE sku_id = $1`, sku).Scan(&st)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, ErrNoItem.With("no item %d", sku)
	}
	return st, err
}

// SetStock sets the level of a limited item. Errors: ErrNoItem,
// ErrNotLimited, and the stock's own (a level out of bounds).
func (s *Service) SetStock(ctx context.Context, sku, qty int64) error {
	var st int64
	var limited int
	err := s.db.W.QueryRowContext(ctx, `SELECT store_id, limited FROM menu_items WHERE sku_id = $1`, sku).Scan(&st, &limited)
	if errors.Is(err, sql.ErrNoRows) {
		return ErrNoItem.With("no item %d", sku)
	}
	if err != nil {
		return fmt.Errorf("read item %d: %w", sku, err)
	}
	if limited != 1 {
		return ErrNotLimited.With("item %d is not stock-limited: make it limited (PUT the item with \"limited\":true and a \"stock\") to give it stock", sku)
	}
	if err := s.stock.Set(ctx, sku, qty); err != nil {
		return err
	}
	s.changed(st, 0) // stock is not versioned: menus showing it live 1 s in every cache
	return nil
}

// bump raises the store's version (its menu changed) and invalidates caches.
func (s *Service) bump(ctx context.Context, storeID int64) {
	var version int64 // 0 when the update failed: the caches are dropped all the same
	s.db.W.QueryRowContext(ctx, `UPDATE stores SET version = version + 1, updated_at = $1 WHERE id = $2 RETURNING version`,
		s.now().UnixMilli(), storeID).Scan(&version)
	s.changed(storeID, version)
}

// RotatePOSKey gives a store a new POS key; the old one stops working at once.
func (s *Service) RotatePOSKey(ctx context.Context, storeID int64) (Store, error) {
	res, err := s.db.W.ExecContext(ctx, `UPDATE stores SET pos_key = $1 WHERE id = $2`, NewPOSKey(), storeID)
	if err != nil {
		return Store{}, fmt.Errorf("rotate pos key %d: %w", storeID, err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return Store{}, ErrNoStore.With("no store %d", storeID)
	}
	return s.AdminStore(ctx, storeID)
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}
