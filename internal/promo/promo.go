// Package promo owns what makes an order cheaper: the promotions operators
// put in force (per store or for all stores), coupon templates, the claims
// that turn them into coupons in customers' wallets, and the per-user
// quotas (special-price limits, first-order offers) an order holds, uses,
// releases and gives back. Pricing itself is internal/pricing (pure); this
// package feeds it and keeps its effects.
//
// Promotions and templates live in the main database; a customer's coupons
// and quotas live on the customer's shard, next to their orders, so an
// order takes, uses and gives them back in its own transactions (the
// order's state machine makes each step happen once).
package promo

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/surge-platform/surge/internal/platform/bus"
	"github.com/surge-platform/surge/internal/platform/errkind"
	"github.com/surge-platform/surge/internal/platform/id"
	"github.com/surge-platform/surge/internal/platform/kv"
	"github.com/surge-platform/surge/internal/platform/obs"
	"github.com/surge-platform/surge/internal/platform/sqldb"
	"github.com/surge-platform/surge/internal/pricing"
)

var (
	ErrNoPromotion = errkind.New(errkind.NotFound, "promotion_not_found", "no such promotion")
	ErrBadName     = errkind.New(errkind.Invalid, "invalid_name", "a name is 1 to 100 characters")
)

// MaxName bounds names of promotions and templates.
const MaxName = 100

// IDs is a list of ids that JSON carries as decimal strings, as every id.
type IDs []int64

// MarshalJSON writes the ids as strings.
func (x IDs) MarshalJSON() ([]byte, error) {
	b := []byte{'['}
	for i, v := range x {
		if i > 0 {
			b = append(b, ',')
		}
		b = strconv.AppendQuote(b, strconv.FormatInt(v, 10))
	}
	return append(b, ']'), nil
}

// UnmarshalJSON reads ids given as decimal strings (numbers are accepted too).
func (x *IDs) UnmarshalJSON(b []byte) error {
	var raw []json.RawMessage
	if err := json.Unmarshal(b, &raw); err != nil {
		return err
	}
	out := make(IDs, 0, len(raw))
	for _, r := range raw {
		s := strings.Trim(string(r), `"`)
		v, err := strconv.ParseInt(s, 10, 64)
		if err != nil || v <= 0 {
			return errkind.ErrBadID.With("%s is not a valid id: ids are positive decimal strings", string(r))
		}
		out = append(out, v)
	}
	*x = out
	return nil
}

// Special is one sku's special price, as operators give it.
type Special struct {
	SKU   int64 `json:"sku_id,string"`
	Price int64 `json:"price"`
}

// Promotion is a promotion as operators create and see it. StoreID 0 puts
// it in force at every store. Which fields matter depends on Kind (see
// pricing.Promotion and docs/promotions.md).
type Promotion struct {
	ID       int64          `json:"promotion_id,string"`
	StoreID  int64          `json:"store_id,string"`
	Kind     pricing.Kind   `json:"kind"`
	Name     string         `json:"name"`
	StartsAt time.Time      `json:"starts_at,omitzero"`
	EndsAt   time.Time      `json:"ends_at,omitzero"`
	Disabled bool           `json:"disabled,omitempty"`
	SKUs     IDs            `json:"sku_ids,omitempty"`
	Specials []Special      `json:"specials,omitempty"`
	Limit    int64          `json:"limit,omitempty"`
	Percent  int64          `json:"percent,omitempty"`
	Cap      int64          `json:"cap,omitempty"`
	BuyQty   int64          `json:"buy_qty,omitempty"`
	GiftSKU  int64          `json:"gift_sku_id,string,omitempty"`
	GiftQty  int64          `json:"gift_qty,omitempty"`
	Tiers    []pricing.Tier `json:"tiers,omitempty"`
	Off      int64          `json:"off,omitempty"`
}

// Rule is the promotion as pricing takes it.
func (p Promotion) Rule() pricing.Promotion {
	r := pricing.Promotion{ID: p.ID, Name: p.Name, Kind: p.Kind, StoreID: p.StoreID,
		Window: pricing.Window{Starts: p.StartsAt, Ends: p.EndsAt},
		SKUs:   p.SKUs, Limit: p.Limit, Percent: p.Percent, Cap: p.Cap, BuyQty: p.BuyQty,
		GiftSKU: p.GiftSKU, GiftQty: p.GiftQty, Tiers: p.Tiers, Off: p.Off}
	for _, s := range p.Specials {
		r.Specials = append(r.Specials, pricing.Special{SKU: s.SKU, Price: s.Price})
	}
	return r
}

func checkName(name string) error {
	if strings.TrimSpace(name) == "" || len([]rune(name)) > MaxName {
		return ErrBadName.With("name must be 1 to %d characters", MaxName)
	}
	return nil
}

// Invalidator tells the other nodes that promotions changed.
type Invalidator interface {
	PublishCore(subject string, data []byte) error
}

// InvalidateSubject carries "promotions" or "templates" when operators
// changed them: every node drops its cached copy.
const InvalidateSubject = "promo.invalidate"

// refresh is how long a node serves its cached promotions and templates
// before reading them again (operators' changes on this node and announced
// ones drop the cache at once).
const refresh = 5 * time.Second

// Service is the promotions and coupons context.
type Service struct {
	db  *sqldb.Cluster
	kv  kv.Store
	bus *bus.Bus
	ids *id.Generator
	log *slog.Logger
	inv Invalidator
	now func() time.Time

	mu        sync.Mutex
	promos    []pricing.Promotion // in force or still to come, by id; guarded by mu
	promosAt  time.Time           // when read; guarded by mu
	templates map[int64]*Template
	tmplAt    time.Time
	loading   sync.Map // template id -> struct{}: a reload runs here

	claimed *prometheus.CounterVec // surge_coupon_claims_total{result}

	startBatching sync.Once
	claims        *bus.Batcher[claimMsg] // claims on their way to the bus
}

// New returns the service. bus carries claims (nil: claims are refused as
// unavailable, for nodes that only price orders).
func New(db *sqldb.Cluster, store kv.Store, b *bus.Bus, ids *id.Generator, inv Invalidator, log *slog.Logger) *Service {
	s := &Service{db: db, kv: store, bus: b, ids: ids, inv: inv, log: log, now: time.Now}
	s.Instrument(nil)
	return s
}

// Instrument registers the service's metrics in m (before it is used):
// surge_coupon_claims_total, by result ("claimed" or the error's code).
func (s *Service) Instrument(m *obs.Metrics) {
	s.claimed = m.CounterVec("surge_coupon_claims_total", "Coupon claims on this node, by result: claimed, or the refusal's error code.", "result")
	s.claimed.WithLabelValues("claimed")
}

// Invalidate drops the cached promotions and templates (another node changed them).
func (s *Service) Invalidate() {
	s.mu.Lock()
	s.promosAt, s.tmplAt = time.Time{}, time.Time{}
	s.mu.Unlock()
}

func (s *Service) changed() {
	s.Invalidate()
	if s.inv != nil {
		s.inv.PublishCore(InvalidateSubject, []byte("all"))
	}
}

// CreatePromotion checks p and puts it in force (from its start). The id
// is given here.
func (s *Service) CreatePromotion(ctx context.Context, p Promotion) (Promotion, error) {
	if err := checkName(p.Name); err != nil {
		return Promotion{}, err
	}
	if p.StoreID < 0 {
		return Promotion{}, errkind.ErrBadID.With("store_id must be a positive id, or 0 for every store")
	}
	pid, err := s.ids.Next(0)
	if err != nil {
		return Promotion{}, err
	}
	p.ID, p.Disabled = pid, false
	r := p.Rule()
	if p.Kind == pricing.Gift {
		r.GiftPrice = 0 // set from the menu when pricing
	}
	if err := r.Validate(); err != nil {
		return Promotion{}, err
	}
	now := s.now().UnixMilli()
	_, err = s.db.Main().W.ExecContext(ctx, `INSERT INTO promotions (id, store_id, kind, name, rule, starts_at, ends_at,
		disabled, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, 0, $8, $8)`,
		p.ID, p.StoreID, string(p.Kind), p.Name, string(mustJSON(p)), millis(p.StartsAt), millis(p.EndsAt), now)
	if err != nil {
		return Promotion{}, fmt.Errorf("create promotion: %w", err)
	}
	s.changed()
	return p, nil
}

// DisablePromotion takes a promotion out of force (orders already priced
// with it keep their discount).
func (s *Service) DisablePromotion(ctx context.Context, promotionID int64) error {
	res, err := s.db.Main().W.ExecContext(ctx, `UPDATE promotions SET disabled = 1, updated_at = $1 WHERE id = $2`,
		s.now().UnixMilli(), promotionID)
	if err != nil {
		return fmt.Errorf("disable promotion %d: %w", promotionID, err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return ErrNoPromotion.With("no promotion %d", promotionID)
	}
	s.changed()
	return nil
}

// Promotions lists every promotion of storeID (0: all of them), from the
// database, disabled and ended ones included.
func (s *Service) Promotions(ctx context.Context, storeID int64) ([]Promotion, error) {
	q, args := `SELECT rule, disabled FROM promotions ORDER BY id`, []any(nil)
	if storeID != 0 {
		q, args = `SELECT rule, disabled FROM promotions WHERE store_id = $1 OR store_id = 0 ORDER BY id`, []any{storeID}
	}
	return s.readPromotions(ctx, s.db.Main().R, q, args...)
}

func (s *Service) readPromotions(ctx context.Context, db *sql.DB, q string, args ...any) ([]Promotion, error) {
	rows, err := db.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("read promotions: %w", err)
	}
	defer rows.Close()
	out := []Promotion{}
	for rows.Next() {
		var rule string
		var disabled int
		if err := rows.Scan(&rule, &disabled); err != nil {
			return nil, err
		}
		var p Promotion
		if err := json.Unmarshal([]byte(rule), &p); err != nil {
			return nil, fmt.Errorf("stored promotion: %w", err)
		}
		p.Disabled = disabled != 0
		out = append(out, p)
	}
	return out, rows.Err()
}

// InForce returns the promotions of storeID (its own and those for every
// store) that are not disabled and not ended at `at`, from this node's
// cache (read again every few seconds, and at once after a change). Those
// not started yet are included: pricing reports them as not started.
func (s *Service) InForce(ctx context.Context, storeID int64, at time.Time) ([]pricing.Promotion, error) {
	all, err := s.cached(ctx)
	if err != nil {
		return nil, err
	}
	var out []pricing.Promotion
	for _, r := range all {
		if (r.StoreID == 0 || r.StoreID == storeID) && (r.Ends.IsZero() || at.Before(r.Ends)) {
			out = append(out, r) // a copy: the caller may set its fields (slices are shared: read only)
		}
	}
	return out, nil
}

// cached returns the promotions not disabled nor ended, as pricing takes
// them, read again every refresh.
func (s *Service) cached(ctx context.Context) ([]pricing.Promotion, error) {
	s.mu.Lock()
	if s.now().Sub(s.promosAt) < refresh {
		p := s.promos
		s.mu.Unlock()
		return p, nil
	}
	s.mu.Unlock()
	ps, err := s.readPromotions(ctx, s.db.Main().R, `SELECT rule, disabled FROM promotions
		WHERE disabled = 0 AND (ends_at = 0 OR ends_at > $1) ORDER BY id`, s.now().UnixMilli())
	if err != nil {
		s.mu.Lock()
		defer s.mu.Unlock()
		if s.promos != nil { // serve the last good copy while the database is away
			return s.promos, nil
		}
		return nil, err
	}
	rules := make([]pricing.Promotion, len(ps))
	for i, p := range ps {
		rules[i] = p.Rule()
	}
	s.mu.Lock()
	s.promos, s.promosAt = rules, s.now()
	s.mu.Unlock()
	return rules, nil
}

func millis(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixMilli()
}

func fromMillis(ms int64) time.Time {
	if ms == 0 {
		return time.Time{}
	}
	return time.UnixMilli(ms).UTC()
}

func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err) // only our own plain structs
	}
	return b
}
