package promo

import (
	"cmp"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/surge-platform/surge/internal/platform/errkind"
	"github.com/surge-platform/surge/internal/platform/id"
	"github.com/surge-platform/surge/internal/platform/sqldb"
	"github.com/surge-platform/surge/internal/pricing"
)

var (
	ErrCouponUnavailable = errkind.New(errkind.Conflict, "coupon_unavailable", "a chosen coupon is not in your wallet, or is in use or used")
	ErrQuotaTaken        = errkind.New(errkind.Conflict, "price_changed", "a limited offer was taken by another of your orders meanwhile; preview again")
	ErrTooManyChosen     = errkind.New(errkind.Invalid, "too_many_coupons", "at most one platform coupon and one store coupon per order")
)

// Coupon states in a wallet. "expired" is shown for an available coupon
// past its validity; a coupon voided by the durable guard is "void".
const (
	Available = "available"
	Locked    = "locked" // held by an unpaid order
	Used      = "used"
	Expired   = "expired"
	Void      = "void"
)

// Coupon is one coupon in a customer's wallet.
type Coupon struct {
	ID         int64 `json:"coupon_id,string"`
	TemplateID int64 `json:"template_id,string"`
	Terms
	State     string    `json:"state"`
	OrderID   int64     `json:"order_id,string,omitempty"`
	ClaimedAt time.Time `json:"claimed_at"`
}

// MaxWallet bounds a wallet page.
const MaxWallet = 200

type queryer interface {
	QueryRowContext(ctx context.Context, q string, args ...any) *sql.Row
	QueryContext(ctx context.Context, q string, args ...any) (*sql.Rows, error)
}

const couponCols = `id, template_id, rule, state, order_id, claimed_at`

func scanCoupon(sc interface{ Scan(...any) error }, at time.Time) (Coupon, pricing.Coupon, error) {
	var c Coupon
	var rule string
	var claimed int64
	if err := sc.Scan(&c.ID, &c.TemplateID, &rule, &c.State, &c.OrderID, &claimed); err != nil {
		return Coupon{}, pricing.Coupon{}, err
	}
	r, err := decodeRule(rule)
	if err != nil {
		return Coupon{}, pricing.Coupon{}, fmt.Errorf("stored coupon %d: %w", c.ID, err)
	}
	r.ID = c.ID
	c.Terms = termsOf(r)
	c.ClaimedAt = time.UnixMilli(claimed).UTC()
	if c.State == Available && !r.Ends.IsZero() && !at.Before(r.Ends) {
		c.State = Expired
	}
	return c, r, nil
}

// rules caches decoded coupon rules by their stored text: every coupon of
// a template has the same, and an order reads its coupons on every
// placement. The slices in a cached rule are shared: read only.
var (
	rules     sync.Map // string -> pricing.Coupon
	rulesSize atomic.Int64
)

const maxRules = 10_000

func decodeRule(rule string) (pricing.Coupon, error) {
	if r, ok := rules.Load(rule); ok {
		return r.(pricing.Coupon), nil
	}
	var r pricing.Coupon
	if err := json.Unmarshal([]byte(rule), &r); err != nil {
		return pricing.Coupon{}, err
	}
	if rulesSize.Add(1) <= maxRules {
		rules.Store(rule, r)
	}
	return r, nil
}

// Wallet lists userID's coupons, newest first (at most MaxWallet).
func (s *Service) Wallet(ctx context.Context, userID int64) ([]Coupon, error) {
	rows, err := s.db.ForGene(id.GeneOf(userID)).R.QueryContext(ctx, `SELECT `+couponCols+` FROM coupons
		WHERE user_id = $1 ORDER BY id DESC LIMIT $2`, userID, MaxWallet)
	if err != nil {
		return nil, fmt.Errorf("wallet of user %d: %w", userID, err)
	}
	defer rows.Close()
	out := []Coupon{}
	now := s.now()
	for rows.Next() {
		c, _, err := scanCoupon(rows, now)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	return out, rows.Err()
}

// Usable returns, for pricing, userID's coupons that could go on an order
// now (available, not expired), newest first: what a preview offers.
func Usable(ctx context.Context, q queryer, userID int64, at time.Time) ([]pricing.Coupon, error) {
	rows, err := q.QueryContext(ctx, `SELECT `+couponCols+` FROM coupons WHERE user_id = $1 AND state = $2
		ORDER BY id DESC LIMIT $3`, userID, Available, MaxWallet)
	if err != nil {
		return nil, fmt.Errorf("coupons of user %d: %w", userID, err)
	}
	defer rows.Close()
	var out []pricing.Coupon
	for rows.Next() {
		c, r, err := scanCoupon(rows, at)
		if err != nil {
			return nil, err
		}
		if c.State == Available {
			out = append(out, r)
		}
	}
	return out, rows.Err()
}

// Chosen reads the coupons userID chose for an order. Each must be theirs
// and available (not held by another order, used or void) and at most one
// platform and one store coupon: otherwise ErrCouponUnavailable or
// ErrTooManyChosen naming it. An expired one is returned: pricing says it
// ended.
func Chosen(ctx context.Context, q queryer, userID int64, ids []int64, at time.Time) ([]pricing.Coupon, error) {
	if len(ids) == 0 {
		return nil, nil
	}
	if len(ids) > 2 {
		return nil, ErrTooManyChosen.With("at most 2 coupons per order (one platform, one store), got %d", len(ids))
	}
	var out []pricing.Coupon
	for i, cid := range ids {
		if slices.Contains(ids[:i], cid) {
			return nil, ErrTooManyChosen.With("coupon %d is chosen twice", cid)
		}
		c, r, err := scanCoupon(q.QueryRowContext(ctx, `SELECT `+couponCols+` FROM coupons WHERE id = $1 AND user_id = $2`, cid, userID), at)
		if errors.Is(err, sql.ErrNoRows) {
			return nil, ErrCouponUnavailable.With("coupon %d is not in your wallet (a coupon just claimed appears within a moment)", cid)
		}
		if err != nil {
			return nil, err
		}
		if c.State != Available && c.State != Expired {
			return nil, ErrCouponUnavailable.With("coupon %d is %s", cid, c.State)
		}
		out = append(out, r)
	}
	return out, nil
}

// Facts are what pricing needs to know about the customer: units of each
// sku bought under a limited special price, and whether this would be
// their first order in the store and on the platform.
type Facts struct {
	Bought          map[int64]int64 // sku -> units held or bought under the limited special prices in force
	FirstInStore    bool
	FirstOnPlatform bool
}

// ReadFacts reads the facts that the promotions in force make relevant to
// a cart of skus (nothing when none is a limited special price on one of
// them or a first-order offer).
func ReadFacts(ctx context.Context, q queryer, userID, storeID int64, promos []pricing.Promotion, skus []int64) (Facts, error) {
	var f Facts
	var specials []pricing.Promotion
	first := false
	for _, p := range promos {
		switch {
		case p.Kind == pricing.SpecialPrice && p.Limit > 0 && slices.ContainsFunc(p.Specials, func(s pricing.Special) bool {
			return slices.Contains(skus, s.SKU)
		}):
			specials = append(specials, p)
		case p.Kind == pricing.FirstOrder:
			first = true
		}
	}
	if len(specials) > 0 {
		f.Bought = map[int64]int64{}
		for _, p := range specials {
			rows, err := q.QueryContext(ctx, `SELECT sku_id, used FROM quota_used WHERE user_id = $1 AND promotion_id = $2`, userID, p.ID)
			if err != nil {
				return Facts{}, fmt.Errorf("quotas of user %d: %w", userID, err)
			}
			for rows.Next() {
				var sku, used int64
				if err := rows.Scan(&sku, &used); err != nil {
					rows.Close()
					return Facts{}, err
				}
				// Several limited special prices on one sku: the largest
				// count, so that no promotion's limit is passed.
				f.Bought[sku] = max(f.Bought[sku], used)
			}
			rows.Close()
			if err := rows.Err(); err != nil {
				return Facts{}, err
			}
		}
	}
	if first {
		// First: no paid order in the scope, and no other order holding
		// or having used the offer there.
		paid := `SELECT CASE WHEN EXISTS (SELECT 1 FROM orders WHERE user_id = $1 AND status IN
			('paid', 'accepted', 'ready', 'completed', 'refunding')`
		var inStore, onPlatform int
		if err := q.QueryRowContext(ctx, paid+` AND store_id = $2) THEN 1 ELSE 0 END`, userID, storeID).Scan(&inStore); err != nil {
			return Facts{}, fmt.Errorf("first order of user %d: %w", userID, err)
		}
		if err := q.QueryRowContext(ctx, paid+`) THEN 1 ELSE 0 END`, userID).Scan(&onPlatform); err != nil {
			return Facts{}, fmt.Errorf("first order of user %d: %w", userID, err)
		}
		f.FirstInStore, f.FirstOnPlatform = inStore == 0, onPlatform == 0
		rows, err := q.QueryContext(ctx, `SELECT scope FROM first_orders WHERE user_id = $1 AND (scope = 0 OR scope = $2)`, userID, storeID)
		if err != nil {
			return Facts{}, fmt.Errorf("first orders of user %d: %w", userID, err)
		}
		for rows.Next() {
			var scope int64
			if err := rows.Scan(&scope); err != nil {
				rows.Close()
				return Facts{}, err
			}
			if scope == 0 {
				f.FirstOnPlatform = false
			} else {
				f.FirstInStore = false
			}
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return Facts{}, err
		}
	}
	return f, nil
}

type execer interface {
	ExecContext(ctx context.Context, q string, args ...any) (sql.Result, error)
}

// Unheld reports whether Hold has nothing to write for res: every discount
// is of a kind no wallet or quota tracks (percent, gift, threshold). An
// order of such a price may be written without Hold's transaction.
func Unheld(res pricing.Result) bool {
	for _, d := range res.Discounts {
		switch d.Kind {
		case pricing.Percent, pricing.Gift, pricing.Threshold:
		default:
			return false
		}
	}
	return true
}

// Hold takes, in the order's transaction, what its pricing used: the
// coupons that applied (available -> locked by the order), the special
// price units against each limited promotion's per-user quota, and the
// first-order scope. Something taken meanwhile by another order gives
// ErrCouponUnavailable or ErrQuotaTaken: the transaction must roll back.
func Hold(ctx context.Context, tx execer, userID, storeID, orderID int64, res pricing.Result, promos []pricing.Promotion, at time.Time) error {
	for _, d := range res.Discounts {
		switch d.Kind {
		case pricing.StoreCoupon, pricing.PlatformCoupon:
			r, err := tx.ExecContext(ctx, `UPDATE coupons SET state = $1, order_id = $2, updated_at = $3
				WHERE id = $4 AND user_id = $5 AND state = $6`, Locked, orderID, at.UnixMilli(), d.ID, userID, Available)
			if err != nil {
				return err
			}
			if n, _ := r.RowsAffected(); n != 1 {
				return ErrCouponUnavailable.With("coupon %d was taken by another order meanwhile", d.ID)
			}
		case pricing.FirstOrder:
			scope := int64(0)
			if i := slices.IndexFunc(promos, func(p pricing.Promotion) bool { return p.ID == d.ID }); i >= 0 {
				scope = promos[i].StoreID
			}
			if _, err := tx.ExecContext(ctx, `INSERT INTO first_orders (user_id, scope, order_id, state) VALUES ($1, $2, $3, 'held')`,
				userID, scope, orderID); err != nil {
				if sqldb.IsUnique(err) {
					return ErrQuotaTaken.With("the first-order offer is held by another of your orders")
				}
				return err
			}
		case pricing.SpecialPrice:
			i := slices.IndexFunc(promos, func(p pricing.Promotion) bool { return p.ID == d.ID })
			if i < 0 || promos[i].Limit == 0 {
				continue
			}
			if err := holdSpecial(ctx, tx, userID, orderID, promos[i], res); err != nil {
				return err
			}
		}
	}
	return nil
}

func holdSpecial(ctx context.Context, tx execer, userID, orderID int64, p pricing.Promotion, res pricing.Result) error {
	for _, l := range res.Lines {
		k := slices.IndexFunc(l.Discounts, func(d pricing.Discount) bool { return d.Kind == pricing.SpecialPrice && d.ID == p.ID })
		s := slices.IndexFunc(p.Specials, func(s pricing.Special) bool { return s.SKU == l.SKU })
		if k < 0 || s < 0 || l.Price <= p.Specials[s].Price {
			continue
		}
		units := l.Discounts[k].Amount / (l.Price - p.Specials[s].Price)
		if _, err := tx.ExecContext(ctx, `INSERT INTO quota_used (user_id, promotion_id, sku_id, used) VALUES ($1, $2, $3, 0)
			ON CONFLICT (user_id, promotion_id, sku_id) DO NOTHING`, userID, p.ID, l.SKU); err != nil {
			return err
		}
		r, err := tx.ExecContext(ctx, `UPDATE quota_used SET used = used + $1
			WHERE user_id = $2 AND promotion_id = $3 AND sku_id = $4 AND used + $1 <= $5`, units, userID, p.ID, l.SKU, p.Limit)
		if err != nil {
			return err
		}
		if n, _ := r.RowsAffected(); n != 1 {
			return ErrQuotaTaken.With("the special price of sku %d (limit %d) was used by another of your orders meanwhile", l.SKU, p.Limit)
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO quota_holds (order_id, promotion_id, sku_id, user_id, qty) VALUES ($1, $2, $3, $4, $5)`,
			orderID, p.ID, l.SKU, userID, units); err != nil {
			return err
		}
	}
	return nil
}

// Use turns what an order holds into used, in the transaction that marks
// it paid.
func Use(ctx context.Context, tx execer, orderID int64, at time.Time) error {
	if _, err := tx.ExecContext(ctx, `UPDATE coupons SET state = $1, updated_at = $2 WHERE order_id = $3 AND state = $4`,
		Used, at.UnixMilli(), orderID, Locked); err != nil {
		return err
	}
	_, err := tx.ExecContext(ctx, `UPDATE first_orders SET state = 'paid' WHERE order_id = $1`, orderID)
	return err
}

// Release gives back what an unpaid order held, in the transaction that
// cancels it: its coupons return to the wallet, its special-price units
// to the quota, its first-order scope is free again.
func Release(ctx context.Context, tx execer, q queryer, orderID int64, at time.Time) error {
	if _, err := tx.ExecContext(ctx, `UPDATE coupons SET state = $1, order_id = 0, updated_at = $2 WHERE order_id = $3 AND state = $4`,
		Available, at.UnixMilli(), orderID, Locked); err != nil {
		return err
	}
	if err := giveBackQuota(ctx, tx, q, orderID); err != nil {
		return err
	}
	_, err := tx.ExecContext(ctx, `DELETE FROM first_orders WHERE order_id = $1`, orderID)
	return err
}

// Restore gives back what a refunded order used, in the transaction that
// records the full refund: coupons still valid return to the wallet (an
// expired one stays used), special-price units return to the quota, and
// the first-order offer applies again unless the customer has another
// paid order in its scope.
func Restore(ctx context.Context, tx execer, q queryer, orderID int64, at time.Time) error {
	if _, err := tx.ExecContext(ctx, `UPDATE coupons SET state = $1, order_id = 0, updated_at = $2
		WHERE order_id = $3 AND state = $4 AND (valid_until = 0 OR valid_until > $2)`, Available, at.UnixMilli(), orderID, Used); err != nil {
		return err
	}
	if err := giveBackQuota(ctx, tx, q, orderID); err != nil {
		return err
	}
	_, err := tx.ExecContext(ctx, `DELETE FROM first_orders WHERE order_id = $1`, orderID)
	return err
}

// GiveBack gives back, in the transaction that records a refund of some
// of an order's lines, the special-price units of those lines (skus) to
// the customer's quota. The order's coupons and first-order offer stay
// used: the rest of the order still has them (Restore gives them back when
// all of it is refunded). A hold is given back once: it goes with it.
func GiveBack(ctx context.Context, tx execer, q queryer, orderID int64, skus []int64) error {
	if len(skus) == 0 {
		return nil
	}
	return giveBackQuota(ctx, tx, q, orderID, skus...)
}

// giveBackQuota gives back the quota holds of orderID: of the given skus
// only, or all of them.
func giveBackQuota(ctx context.Context, tx execer, q queryer, orderID int64, skus ...int64) error {
	rows, err := q.QueryContext(ctx, `SELECT promotion_id, sku_id, user_id, qty FROM quota_holds WHERE order_id = $1`, orderID)
	if err != nil {
		return err
	}
	type hold struct{ promo, sku, user, qty int64 }
	var holds []hold
	for rows.Next() {
		var h hold
		if err := rows.Scan(&h.promo, &h.sku, &h.user, &h.qty); err != nil {
			rows.Close()
			return err
		}
		if len(skus) == 0 || slices.Contains(skus, h.sku) {
			holds = append(holds, h)
		}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return err
	}
	for _, h := range holds {
		// The hold goes first: only the caller that deletes it gives it
		// back (the order's transition makes that one caller anyway).
		r, err := tx.ExecContext(ctx, `DELETE FROM quota_holds WHERE order_id = $1 AND promotion_id = $2 AND sku_id = $3`,
			orderID, h.promo, h.sku)
		if err != nil {
			return err
		}
		if n, err := r.RowsAffected(); err != nil || n != 1 {
			if err != nil {
				return err
			}
			continue
		}
		if _, err := tx.ExecContext(ctx, `UPDATE quota_used SET used = used - $1 WHERE user_id = $2 AND promotion_id = $3 AND sku_id = $4`,
			h.qty, h.user, h.promo, h.sku); err != nil {
			return err
		}
	}
	return nil
}

func sortTemplates(ts []Template) {
	slices.SortFunc(ts, func(a, b Template) int { return cmp.Compare(a.ID, b.ID) })
}
