package order

import (
	"context"
	"encoding/json"
	"slices"
	"time"

	"github.com/surge-platform/surge/internal/catalog"
	"github.com/surge-platform/surge/internal/platform/errkind"
	"github.com/surge-platform/surge/internal/platform/id"
	"github.com/surge-platform/surge/internal/pricing"
	"github.com/surge-platform/surge/internal/promo"
)

var (
	ErrPriceChanged        = errkind.New(errkind.Conflict, "price_changed", "the order's price is not the one expected; see the new breakdown")
	ErrCouponNotApplicable = errkind.New(errkind.Conflict, "coupon_not_applicable", "a chosen coupon does not apply to this order")
	ErrNothingToPay        = errkind.New(errkind.Conflict, "nothing_to_pay", "the order would cost nothing after its discounts; free orders are not supported")
)

// Promotions gives the promotions in force at a store (promo.Service).
type Promotions interface {
	InForce(ctx context.Context, storeID int64, at time.Time) ([]pricing.Promotion, error)
}

// Discount is one discount on an order (Amount: its total) or on a line
// (Amount: that line's share).
type Discount struct {
	Kind   pricing.Kind `json:"kind"`
	ID     int64        `json:"id,string"`
	Name   string       `json:"name,omitempty"`
	Amount int64        `json:"amount"`
}

// Skip is a promotion or coupon that does not apply, and why.
type Skip struct {
	Kind   pricing.Kind `json:"kind"`
	ID     int64        `json:"id,string"`
	Reason string       `json:"reason"`
}

// CouponOption is a coupon of the customer's wallet as it would apply to
// this cart on its own (with the promotions and without the other coupons).
type CouponOption struct {
	CouponID int64        `json:"coupon_id,string"`
	Name     string       `json:"name"`
	Kind     pricing.Kind `json:"kind"`
	Applies  bool         `json:"applies"`
	Amount   int64        `json:"amount,omitempty"`
	Reason   string       `json:"reason,omitempty"`
}

// Breakdown is a priced cart: what POST /api/v1/orders/preview answers
// and what a price_changed refusal carries.
type Breakdown struct {
	StoreID   int64          `json:"store_id,string"`
	Total     int64          `json:"total"`
	Discount  int64          `json:"discount"`
	Payable   int64          `json:"payable"`
	Discounts []Discount     `json:"discounts"`
	Lines     []Line         `json:"lines"`
	Skipped   []Skip         `json:"skipped,omitempty"`
	Coupons   []CouponOption `json:"coupons,omitempty"`
}

// PriceChangedError refuses an order whose price is not the expected one;
// it carries the new breakdown.
type PriceChangedError struct {
	error
	Breakdown *Breakdown
}

func (e *PriceChangedError) Unwrap() error { return e.error }

// priced is a request priced against the menu, the promotions in force and
// the customer's chosen coupons.
type priced struct {
	cart   pricing.Cart
	res    pricing.Result
	lines  []Line
	promos []pricing.Promotion
	menu   *catalog.Menu
}

// menu is the store's menu to price an order with: never the last good
// copy the catalog shows browsing customers, marked stale, when kv and the
// database are slow (an order is priced from a fresh read or not at all).
func (s *Service) menu(ctx context.Context, storeID int64) (*catalog.Menu, error) {
	m, err := s.catalog.FreshMenu(ctx, storeID)
	if err == nil && m.Stale { // FreshMenu's promise, checked where it matters
		return nil, errkind.ErrUnavailable.With("store %d's menu cannot be read now, try again", storeID)
	}
	return m, err
}

// price prices req for userID at `at`. q reads the user's shard (their
// coupons and quotas). Errors: the menu's (unknown sku, unavailable,
// closed) and the coupons' (not in the wallet, in use, too many).
func (s *Service) price(ctx context.Context, q queryer, userID int64, req Request, at time.Time) (*priced, error) {
	menu, err := s.menu(ctx, req.StoreID)
	if err != nil {
		return nil, err
	}
	if !menu.Store.Open {
		return nil, ErrStoreClosed.With("store %d is closed", req.StoreID)
	}
	cart := pricing.Cart{StoreID: req.StoreID}
	for i, rl := range req.Items {
		it, ok := menu.Items[rl.SKU]
		if !ok {
			return nil, ErrUnknownSKU.With("items[%d]: sku %d is not on the menu of store %d", i, rl.SKU, req.StoreID)
		}
		if !it.Available {
			return nil, ErrUnavailable.With("items[%d]: %s is not available now", i, it.Name)
		}
		if k := slices.IndexFunc(cart.Lines, func(l pricing.Line) bool { return l.SKU == rl.SKU }); k >= 0 {
			cart.Lines[k].Qty += int64(rl.Qty) // lines of one sku are one line
			continue
		}
		cart.Lines = append(cart.Lines, pricing.Line{SKU: it.SKU, Price: it.Price, Qty: int64(rl.Qty)})
	}
	p := &priced{menu: menu}
	if s.cfg.Promotions != nil {
		if p.promos, err = s.cfg.Promotions.InForce(ctx, req.StoreID, at); err != nil {
			return nil, err
		}
	}
	var coupons []pricing.Coupon
	if len(req.CouponIDs) > 0 {
		if coupons, err = promo.Chosen(ctx, q, userID, req.CouponIDs, at); err != nil {
			return nil, err
		}
	}
	if len(p.promos) > 0 {
		skus := make([]int64, len(cart.Lines))
		for i, l := range cart.Lines {
			skus[i] = l.SKU
		}
		facts, err := promo.ReadFacts(ctx, q, userID, req.StoreID, p.promos, skus)
		if err != nil {
			return nil, err
		}
		for i := range cart.Lines {
			cart.Lines[i].Bought = facts.Bought[cart.Lines[i].SKU]
		}
		cart.FirstInStore, cart.FirstOnPlatform = facts.FirstInStore, facts.FirstOnPlatform
		for i, pr := range p.promos {
			if pr.Kind == pricing.Gift {
				if it, ok := menu.Items[pr.GiftSKU]; ok {
					p.promos[i].GiftPrice = it.Price
				}
			}
		}
	}
	p.cart = cart
	if p.res, err = pricing.Price(cart, p.promos, coupons, at); err != nil {
		return nil, err
	}
	for _, l := range p.res.Lines {
		line := Line{SKU: l.SKU, Price: l.Price, Qty: int(l.Qty), List: l.List, Payable: l.Payable, GiftOf: l.GiftOf,
			Discounts: discounts(l.Discounts)}
		if it, ok := menu.Items[l.SKU]; ok {
			line.Name = it.Name
		} else {
			line.Name = "gift"
		}
		if l.GiftOf != 0 {
			line.Price = 0
		}
		p.lines = append(p.lines, line)
	}
	return p, nil
}

func discounts(ds []pricing.Discount) []Discount {
	if len(ds) == 0 {
		return nil
	}
	out := make([]Discount, len(ds))
	for i, d := range ds {
		out[i] = Discount{Kind: d.Kind, ID: d.ID, Name: d.Name, Amount: d.Amount}
	}
	return out
}

func (p *priced) breakdown(storeID int64) *Breakdown {
	b := &Breakdown{StoreID: storeID, Total: p.res.Total, Discount: p.res.Discount, Payable: p.res.Payable,
		Discounts: discounts(p.res.Discounts), Lines: p.lines}
	if b.Discounts == nil {
		b.Discounts = []Discount{}
	}
	for _, sk := range p.res.Skipped {
		b.Skipped = append(b.Skipped, Skip{Kind: sk.Kind, ID: sk.ID, Reason: sk.Reason})
	}
	return b
}

// notApplied returns an error naming a chosen coupon that pricing skipped.
func (p *priced) notApplied() error {
	for _, sk := range p.res.Skipped {
		if sk.Kind == pricing.StoreCoupon || sk.Kind == pricing.PlatformCoupon {
			return ErrCouponNotApplicable.With("coupon %d does not apply to this order: %s", sk.ID, sk.Reason)
		}
	}
	return nil
}

// MaxOptions bounds the wallet coupons a preview prices one by one.
const MaxOptions = 50

// Preview prices req for userID as an order would be priced now, without
// placing it: the breakdown, what does not apply and why, and every
// coupon of the wallet with what it would take off.
func (s *Service) Preview(ctx context.Context, userID int64, req Request) (*Breakdown, error) {
	if err := req.Check(); err != nil {
		return nil, err
	}
	q := s.db.ForGene(id.GeneOf(userID)).R
	now := s.now()
	p, err := s.price(ctx, q, userID, req, now)
	if err != nil {
		return nil, err
	}
	b := p.breakdown(req.StoreID)
	wallet, err := promo.Usable(ctx, q, userID, now)
	if err != nil {
		return nil, err
	}
	for i, c := range wallet {
		if i == MaxOptions {
			break
		}
		r, err := pricing.Price(p.cart, p.promos, []pricing.Coupon{c}, now)
		if err != nil {
			continue
		}
		o := CouponOption{CouponID: c.ID, Name: c.Name, Kind: pricing.PlatformCoupon}
		if c.StoreID != 0 {
			o.Kind = pricing.StoreCoupon
		}
		for _, d := range r.Discounts {
			if d.ID == c.ID {
				o.Applies, o.Amount = true, d.Amount
			}
		}
		for _, sk := range r.Skipped {
			if sk.ID == c.ID {
				o.Reason = sk.Reason
			}
		}
		b.Coupons = append(b.Coupons, o)
	}
	return b, nil
}

func encodeDiscounts(ds []Discount) string {
	if len(ds) == 0 {
		return ""
	}
	return string(mustJSON(ds))
}

func decodeDiscounts(s string) []Discount {
	if s == "" {
		return nil
	}
	var ds []Discount
	if json.Unmarshal([]byte(s), &ds) != nil {
		return nil
	}
	return ds
}
