// Package pricing prices a cart: cart lines, the promotions in force and the
// coupons the customer chose go in; per-line and order totals come out, with
// every discount named (kind, id, amount) on the order and on each line it
// touched, and the reason why each promotion or coupon that did not apply
// did not. It does no I/O and reads no clock (the time is an argument): the
// same input always gives the same result, whatever the order of the
// promotions, coupons and cart lines. Money is int64 fen throughout; no floats.
//
// # Stacking order
//
// Promotions of the same kind exclude each other: each candidate is
// evaluated on the cart as it stands at its step and the one that takes the
// most off applies (ties: the smaller id); the others are reported as
// "outdone". Exclusion is per order for every kind, item-level ones too: two
// percentage promotions on different skus do not both apply, so an operator
// who wants several skus discounted lists them in one promotion. Different
// kinds stack, in this order:
//
//  1. special price (item level): the allowed quantity of a sku is priced
//     at the special price, the rest at the list price;
//  2. percentage discount (item level) on chosen skus, on their amount after
//     step 1, capped;
//  3. buy-X-get-Y gift: adds a line at price 0 (it takes nothing off the
//     payable; the best is the one whose gifts have the most list value);
//  4. threshold reduction (order level, 满X减Y): the tier with the largest
//     reduction whose minimum the cart reaches, measured after steps 1-2;
//  5. first-order reduction (order level);
//  6. the store coupon, then the platform coupon (at most one of each).
//
// Each step works on the amounts left by the steps before it: a threshold
// or a coupon minimum is compared with what the lines cost at that point,
// not with their list price.
//
// # Rounding
//
//   - A percentage discount is floor(base × percent / 100) over the whole
//     base it applies to (the matching lines together), then capped; it is
//     never rounded per line. The customer loses less than one fen.
//   - Every discount that covers several lines (percentage, threshold,
//     first order, coupons) is apportioned over those lines in proportion to
//     their current amounts: each line gets floor(d × amount / base), and
//     the remainder goes to the line with the largest amount (ties: the
//     smaller sku, so that the order of the lines changes nothing); if that line cannot take it all without going
//     below zero, the rest goes to the next largest, and so on.
//   - A discount is at most the amount it applies to, so no line and no
//     order is ever negative, and the lines always add up exactly to the
//     order's payable.
//
// A line's Payable is what a refund of that line gives back (Result.Refund).
//
// The seeds' example (002, 2.1.3 价格分摊): 30.00 + 40.00 + 50.00 with
// 满99减9 is 120.00 minus 9.00 = 111.00, the lines 27.75 + 37.00 + 46.25
// (9.00 in proportion: 2.25 + 3.00 + 3.75, no remainder). The seed's own per-line
// figures (27.27 + 36.36 + 47.37) multiply every line by (99-9)/99 cut to
// four decimals, the threshold instead of the cart's 120.00, and put the
// 1.92 this loses on the largest line; they are not proportional and would
// refund 27.27 for a 30.00 line that cost the customer 27.75. This package
// keeps the seed's rule for the remainder (the largest line) but computes
// the shares from the cart's own amounts, so the remainder is always less
// than one fen per line.
//
// # Applicability
//
// A promotion or coupon applies only if the time is inside its window
// [Starts, Ends) (a zero Starts means "always was", a zero Ends "never
// ends"), the store is one it covers, the cart has a sku it covers, and its
// minimum (if any) is reached; otherwise it is reported in Result.Skipped
// with a reason. Choosing two platform coupons or two store coupons is an
// error (ErrTooManyCoupons), not a skip: the customer must choose.
package pricing

import (
	"fmt"
	"slices"
	"time"

	"github.com/surge-platform/surge/internal/platform/errkind"
)

// Limits on the input; they keep every sum and product inside int64.
const (
	MaxLines = 1000
	MaxQty   = 10_000
	MaxPrice = 10_000_000_000 // fen: 100 million yuan per unit
)

var (
	ErrInvalidCart      = errkind.New(errkind.Invalid, "invalid_cart", "the cart is invalid")
	ErrInvalidPromotion = errkind.New(errkind.Invalid, "invalid_promotion", "a promotion is invalid")
	ErrInvalidCoupon    = errkind.New(errkind.Invalid, "invalid_coupon", "a coupon is invalid")
	ErrTooManyCoupons   = errkind.New(errkind.Invalid, "too_many_coupons", "at most one platform coupon and one store coupon per order")
)

// Kind names a kind of discount in results. Coupons are StoreCoupon or
// PlatformCoupon whatever their CouponKind (amount, percent, threshold).
type Kind string

const (
	SpecialPrice   Kind = "special_price"
	Percent        Kind = "percent"
	Gift           Kind = "gift"
	Threshold      Kind = "threshold"
	FirstOrder     Kind = "first_order"
	StoreCoupon    Kind = "store_coupon"
	PlatformCoupon Kind = "platform_coupon"
)

// Reasons a promotion or coupon did not apply.
const (
	NotStarted     = "not_started"
	Ended          = "ended"
	OtherStore     = "other_store"
	NoSKU          = "no_eligible_sku" // no line of the cart is one it covers
	BelowThreshold = "below_threshold" // the cart does not reach its minimum
	LimitReached   = "limit_reached"   // the user already bought the allowed quantity
	NotFirstOrder  = "not_first_order" // the customer has paid orders already
	NothingOff     = "nothing_off"     // it would take 0 fen off (price not lower, amount already 0)
	Outdone        = "outdone"         // a better one of the same kind applies
)

// Line is one cart line: Qty units of SKU at the list unit Price.
type Line struct {
	SKU   int64 `json:"sku"`
	Price int64 `json:"price"`
	Qty   int64 `json:"qty"`
	// Bought is how many units of this sku the user already bought at a
	// special price; it counts against a special price's per-user limit.
	Bought int64 `json:"bought,omitempty"`
}

// Cart is what the customer is about to order, in one store.
type Cart struct {
	StoreID int64  `json:"store_id"`
	Lines   []Line `json:"lines"`
	// FirstInStore: the customer has no paid order in this store yet.
	FirstInStore bool `json:"first_in_store,omitempty"`
	// FirstOnPlatform: the customer has no paid order anywhere yet.
	FirstOnPlatform bool `json:"first_on_platform,omitempty"`
}

// Window is a validity window [Starts, Ends); a zero end is open.
type Window struct {
	Starts time.Time `json:"starts,omitzero"`
	Ends   time.Time `json:"ends,omitzero"`
}

// check returns "" when at is inside the window, or the reason it is not.
func (w Window) check(at time.Time) string {
	if !w.Starts.IsZero() && at.Before(w.Starts) {
		return NotStarted
	}
	if !w.Ends.IsZero() && !at.Before(w.Ends) {
		return Ended
	}
	return ""
}

// Tier is one step of a threshold reduction: Off fen off from Min fen.
type Tier struct {
	Min int64 `json:"min"`
	Off int64 `json:"off"`
}

// Special is one sku's special unit price.
type Special struct {
	SKU   int64 `json:"sku"`
	Price int64 `json:"price"`
}

// Promotion is a rule an operator put in force for one store (StoreID) or
// for all stores (StoreID 0). Which fields matter depends on Kind:
//   - SpecialPrice: Specials, and Limit units per user per sku (0: no limit);
//   - Percent: SKUs, Percent (1-100) off, Cap fen at most (0: no cap);
//   - Gift: for every BuyQty units of SKUs[0], GiftQty units of GiftSKU free;
//     GiftPrice is the gift's list unit price, used to pick the best gift;
//   - Threshold: Tiers;
//   - FirstOrder: Off fen off, for a first order in the store (StoreID set)
//     or on the platform (StoreID 0).
type Promotion struct {
	ID      int64  `json:"id"`
	Name    string `json:"name,omitempty"`
	Kind    Kind   `json:"kind"`
	StoreID int64  `json:"store_id,omitempty"`
	Window

	SKUs      []int64   `json:"skus,omitempty"`
	Specials  []Special `json:"specials,omitempty"`
	Limit     int64     `json:"limit,omitempty"`
	Percent   int64     `json:"percent,omitempty"`
	Cap       int64     `json:"cap,omitempty"`
	BuyQty    int64     `json:"buy_qty,omitempty"`
	GiftSKU   int64     `json:"gift_sku,omitempty"`
	GiftQty   int64     `json:"gift_qty,omitempty"`
	GiftPrice int64     `json:"gift_price,omitempty"`
	Tiers     []Tier    `json:"tiers,omitempty"`
	Off       int64     `json:"off,omitempty"`
}

// CouponKind tells coupons apart.
type CouponKind string

const (
	AmountOff    CouponKind = "amount"    // Off fen off
	PercentOff   CouponKind = "percent"   // Percent off, at most Cap fen (0: no cap)
	ThresholdOff CouponKind = "threshold" // Off fen off from Min fen (满 Min 减 Off)
)

const maxPercentage = 100

// Coupon is one coupon the customer holds and chose for this order. A store
// coupon (StoreID set) is valid only in that store; a platform coupon
// (StoreID 0) in every store, or only in Stores when that is not empty.
// SKUs, when not empty, limits it to those skus: its base is the amount of
// those lines only, and only they share its discount.
type Coupon struct {
	ID      int64      `json:"id"`
	Name    string     `json:"name,omitempty"`
	Kind    CouponKind `json:"kind"`
	StoreID int64      `json:"store_id,omitempty"`
	Stores  []int64    `json:"stores,omitempty"`
	SKUs    []int64    `json:"skus,omitempty"`
	Window
	Off     int64 `json:"off,omitempty"`
	Min     int64 `json:"min,omitempty"`
	Percent int64 `json:"percent,omitempty"`
	Cap     int64 `json:"cap,omitempty"`
}

func (c Coupon) kind() Kind {
	if c.StoreID != 0 {
		return StoreCoupon
	}
	return PlatformCoupon
}

// Discount is one discount: on the order (Amount is its total) or on a line
// (Amount is that line's share).
type Discount struct {
	Kind   Kind   `json:"kind"`
	ID     int64  `json:"id"`
	Name   string `json:"name,omitempty"`
	Amount int64  `json:"amount"`
}

// LineResult is a priced line. Gift lines (GiftOf set) have Price 0.
type LineResult struct {
	SKU    int64 `json:"sku"`
	Price  int64 `json:"price"` // list unit price
	Qty    int64 `json:"qty"`
	List   int64 `json:"list"` // Price × Qty
	GiftOf int64 `json:"gift_of,omitempty"`
	// Discounts are this line's shares, in the stacking order.
	Discounts []Discount `json:"discounts,omitempty"`
	// Payable is List minus the discounts: what a refund of this line
	// gives back.
	Payable int64 `json:"payable"`
}

// Skip is a promotion or coupon that did not apply, and why.
type Skip struct {
	Kind   Kind   `json:"kind"`
	ID     int64  `json:"id"`
	Reason string `json:"reason"`
}

// Result is a priced cart: Total - Discount = Payable = sum of the lines'
// Payable.
type Result struct {
	Total     int64        `json:"total"`
	Discount  int64        `json:"discount"`
	Payable   int64        `json:"payable"`
	Lines     []LineResult `json:"lines"`
	Discounts []Discount   `json:"discounts,omitempty"`
	Skipped   []Skip       `json:"skipped,omitempty"`
}

// Price prices cart at time at with the promotions in force and the coupons
// the customer chose. Errors: ErrInvalidCart, ErrInvalidPromotion,
// ErrInvalidCoupon (kind Invalid: bad input, with the line or id named) and
// ErrTooManyCoupons (naming the coupons). A promotion or coupon that does
// not apply is not an error: it is listed in Result.Skipped.
func Price(cart Cart, promos []Promotion, coupons []Coupon, at time.Time) (Result, error) {
	if err := cart.Validate(); err != nil {
		return Result{}, err
	}
	seen := map[int64]bool{}
	for _, p := range promos {
		if err := p.Validate(); err != nil {
			return Result{}, err
		}
		if seen[p.ID] {
			return Result{}, ErrInvalidPromotion.With("promotion %d is given twice", p.ID)
		}
		seen[p.ID] = true
	}
	clear(seen)
	var store, plat []int64
	for _, c := range coupons {
		if err := c.Validate(); err != nil {
			return Result{}, err
		}
		if seen[c.ID] {
			return Result{}, ErrInvalidCoupon.With("coupon %d is given twice", c.ID)
		}
		seen[c.ID] = true
		if c.StoreID != 0 {
			store = append(store, c.ID)
		} else {
			plat = append(plat, c.ID)
		}
	}
	slices.Sort(store)
	slices.Sort(plat)
	if len(plat) > 1 {
		return Result{}, ErrTooManyCoupons.With("at most one platform coupon per order; chosen: %v", plat)
	}
	if len(store) > 1 {
		return Result{}, ErrTooManyCoupons.With("at most one store coupon per order; chosen: %v", store)
	}

	// Sorted copies: the result does not depend on the order of the rules.
	promos = slices.Clone(promos)
	slices.SortFunc(promos, func(a, b Promotion) int { return cmpInt(a.ID, b.ID) })
	coupons = slices.Clone(coupons)
	slices.SortFunc(coupons, func(a, b Coupon) int {
		if a.StoreID != 0 && b.StoreID == 0 { // store coupon first
			return -1
		}
		if a.StoreID == 0 && b.StoreID != 0 {
			return 1
		}
		return cmpInt(a.ID, b.ID)
	})

	p := newPricer(cart, at)
	for _, kind := range []Kind{SpecialPrice, Percent, Gift, Threshold, FirstOrder} {
		p.bestOf(kind, promos)
	}
	for _, c := range coupons {
		p.coupon(c)
	}
	return p.result(), nil
}

func cmpInt(a, b int64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// Validate reports whether the cart is one Price accepts (ErrInvalidCart).
func (c Cart) Validate() error {
	if len(c.Lines) == 0 || len(c.Lines) > MaxLines {
		return ErrInvalidCart.With("a cart has 1 to %d lines, this one %d", MaxLines, len(c.Lines))
	}
	skus := map[int64]bool{}
	for i, l := range c.Lines {
		switch {
		case l.SKU <= 0:
			return ErrInvalidCart.With("line %d: sku must be positive", i)
		case skus[l.SKU]:
			return ErrInvalidCart.With("line %d: sku %d is on two lines; merge them", i, l.SKU)
		case l.Qty < 1 || l.Qty > MaxQty:
			return ErrInvalidCart.With("line %d (sku %d): qty must be 1 to %d", i, l.SKU, MaxQty)
		case l.Price < 0 || l.Price > MaxPrice:
			return ErrInvalidCart.With("line %d (sku %d): price must be 0 to %d fen", i, l.SKU, MaxPrice)
		case l.Bought < 0:
			return ErrInvalidCart.With("line %d (sku %d): bought must not be negative", i, l.SKU)
		}
		skus[l.SKU] = true
	}
	return nil
}

// money reports whether v is a sane amount of fen (0 to MaxPrice × MaxQty).
func money(v int64) bool { return v >= 0 && v <= MaxPrice*MaxQty }

// checkHead checks what promotions and coupons have in common; it returns
// what is wrong, or "".
func checkHead(id, storeID int64, w Window) string {
	switch {
	case id <= 0:
		return "id must be positive"
	case storeID < 0:
		return "store_id must not be negative"
	case !w.Ends.IsZero() && !w.Starts.Before(w.Ends):
		return "starts must be before ends"
	}
	return ""
}

// Validate reports whether an operator's promotion is well formed
// (ErrInvalidPromotion, naming it and the field).
func (p Promotion) Validate() error {
	bad := func(format string, args ...any) error {
		return ErrInvalidPromotion.With("promotion %d (%s): %s", p.ID, p.Kind, fmt.Sprintf(format, args...))
	}
	if msg := checkHead(p.ID, p.StoreID, p.Window); msg != "" {
		return bad("%s", msg)
	}
	switch p.Kind {
	case SpecialPrice:
		if len(p.Specials) == 0 {
			return bad("needs at least one special price")
		}
		for _, s := range p.Specials {
			if s.SKU <= 0 || s.Price < 0 || s.Price > MaxPrice {
				return bad("special price for sku %d must be 0 to %d fen", s.SKU, MaxPrice)
			}
		}
		if p.Limit < 0 {
			return bad("limit must not be negative")
		}
	case Percent:
		if len(p.SKUs) == 0 {
			return bad("needs at least one sku")
		}
		if p.Percent < 1 || p.Percent > maxPercentage {
			return bad("percent must be 1 to 100")
		}
		if !money(p.Cap) {
			return bad("cap out of range")
		}
	case Gift:
		if len(p.SKUs) != 1 || p.SKUs[0] <= 0 || p.GiftSKU <= 0 {
			return bad("needs one sku to buy and a gift sku")
		}
		if p.BuyQty < 1 || p.BuyQty > MaxQty || p.GiftQty < 1 || p.GiftQty > MaxQty {
			return bad("buy_qty and gift_qty must be 1 to %d", MaxQty)
		}
		if p.GiftPrice < 0 || p.GiftPrice > MaxPrice {
			return bad("gift_price must be 0 to %d fen", MaxPrice)
		}
	case Threshold:
		if len(p.Tiers) == 0 {
			return bad("needs at least one tier")
		}
		for _, t := range p.Tiers {
			if !money(t.Min) || !money(t.Off) || t.Off == 0 {
				return bad("tier %d/%d out of range", t.Min, t.Off)
			}
		}
	case FirstOrder:
		if !money(p.Off) || p.Off == 0 {
			return bad("off out of range")
		}
	default:
		return bad("unknown kind")
	}
	return nil
}

// Validate reports whether a coupon is well formed (ErrInvalidCoupon).
func (c Coupon) Validate() error {
	bad := func(format string, args ...any) error {
		return ErrInvalidCoupon.With("coupon %d (%s): %s", c.ID, c.Kind, fmt.Sprintf(format, args...))
	}
	if msg := checkHead(c.ID, c.StoreID, c.Window); msg != "" {
		return bad("%s", msg)
	}
	switch c.Kind {
	case AmountOff:
		if !money(c.Off) || c.Off == 0 {
			return bad("off out of range")
		}
	case ThresholdOff:
		if !money(c.Off) || c.Off == 0 || !money(c.Min) {
			return bad("min/off out of range")
		}
	case PercentOff:
		if c.Percent < 1 || c.Percent > maxPercentage {
			return bad("percent must be 1 to 100")
		}
		if !money(c.Cap) {
			return bad("cap out of range")
		}
	default:
		return bad("unknown kind")
	}
	return nil
}

// Refund returns what refunding the given lines (indexes into r.Lines) gives
// back: the sum of their Payable, each line's apportioned share of every
// discount already deducted (a gift line gives back 0). An index out of
// range counts for nothing.
func (r Result) Refund(lines ...int) int64 {
	var sum int64
	for _, i := range lines {
		if i >= 0 && i < len(r.Lines) {
			sum += r.Lines[i].Payable
		}
	}
	return sum
}
