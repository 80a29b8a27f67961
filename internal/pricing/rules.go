package pricing

import (
	"slices"
	"time"
)

// pricer holds a cart being priced: each step reads the lines' current
// amounts and takes its discount off them.
type pricer struct {
	cart      Cart
	at        time.Time
	lines     []LineResult // Payable is the current amount
	discounts []Discount
	skipped   []Skip
}

// plan is what one promotion or coupon would do to the cart as it stands.
type plan struct {
	off    int64   // total taken off
	shares []int64 // per line (indexed like pricer.lines), summing to off
	gift   *LineResult
	value  int64 // what it is worth to the customer: off, or the gift's list value
}

func newPricer(cart Cart, at time.Time) *pricer {
	p := &pricer{cart: cart, at: at}
	for _, l := range cart.Lines {
		list := l.Price * l.Qty
		p.lines = append(p.lines, LineResult{SKU: l.SKU, Price: l.Price, Qty: l.Qty, List: list, Payable: list})
	}
	return p
}

func (p *pricer) skip(kind Kind, id int64, reason string) {
	p.skipped = append(p.skipped, Skip{Kind: kind, ID: id, Reason: reason})
}

// bestOf applies the best promotion of kind (the largest value, ties to the
// smaller id; promos are sorted by id) and reports the others as skipped.
func (p *pricer) bestOf(kind Kind, promos []Promotion) {
	best, bestID := plan{}, int64(0)
	var outdone []int64
	for _, pr := range promos {
		if pr.Kind != kind {
			continue
		}
		pl, reason := p.promotion(pr)
		if reason != "" {
			p.skip(kind, pr.ID, reason)
			continue
		}
		if bestID == 0 || pl.value > best.value {
			if bestID != 0 {
				outdone = append(outdone, bestID)
			}
			best, bestID = pl, pr.ID
			continue
		}
		outdone = append(outdone, pr.ID)
	}
	slices.Sort(outdone)
	for _, id := range outdone {
		p.skip(kind, id, Outdone)
	}
	if bestID != 0 {
		i := slices.IndexFunc(promos, func(pr Promotion) bool { return pr.ID == bestID })
		p.apply(kind, bestID, promos[i].Name, best)
	}
}

// apply takes pl's shares off the lines and records the discount.
func (p *pricer) apply(kind Kind, id int64, name string, pl plan) {
	for i, s := range pl.shares {
		if s == 0 {
			continue
		}
		p.lines[i].Payable -= s
		p.lines[i].Discounts = append(p.lines[i].Discounts, Discount{Kind: kind, ID: id, Name: name, Amount: s})
	}
	if pl.gift != nil {
		p.lines = append(p.lines, *pl.gift)
	}
	p.discounts = append(p.discounts, Discount{Kind: kind, ID: id, Name: name, Amount: pl.off})
}

// available returns why a rule with this store and window does not apply
// here and now, or "".
func (p *pricer) available(storeID int64, w Window) string {
	if r := w.check(p.at); r != "" {
		return r
	}
	if storeID != 0 && storeID != p.cart.StoreID {
		return OtherStore
	}
	return ""
}

// spread plans taking off min(d, their amount) from the lines where in is
// true (gift lines never), apportioned by their current amounts.
func (p *pricer) spread(d int64, in func(LineResult) bool) plan {
	idx, amounts := p.eligible(in)
	var base int64
	keys := make([]int64, len(idx))
	for k, a := range amounts {
		base += a
		keys[k] = p.lines[idx[k]].SKU
	}
	d = min(d, base)
	pl := plan{off: d, value: d, shares: make([]int64, len(p.lines))}
	for k, s := range apportion(d, amounts, keys) {
		pl.shares[idx[k]] = s
	}
	return pl
}

// eligible lists the non-gift lines where in is true and their amounts.
func (p *pricer) eligible(in func(LineResult) bool) (idx []int, amounts []int64) {
	for i, l := range p.lines {
		if l.GiftOf == 0 && in(l) {
			idx = append(idx, i)
			amounts = append(amounts, l.Payable)
		}
	}
	return idx, amounts
}

func all(LineResult) bool { return true }

func skuIn(skus []int64) func(LineResult) bool {
	return func(l LineResult) bool { return slices.Contains(skus, l.SKU) }
}

// base is the current amount of the lines where in is true.
func (p *pricer) base(in func(LineResult) bool) (sum int64, n int) {
	idx, amounts := p.eligible(in)
	for _, a := range amounts {
		sum += a
	}
	return sum, len(idx)
}

// promotion plans pr on the cart as it stands, or says why it does not apply.
func (p *pricer) promotion(pr Promotion) (plan, string) {
	if r := p.available(pr.StoreID, pr.Window); r != "" {
		return plan{}, r
	}
	var pl plan
	switch pr.Kind {
	case SpecialPrice:
		return p.special(pr)
	case Percent:
		base, n := p.base(skuIn(pr.SKUs))
		if n == 0 {
			return plan{}, NoSKU
		}
		d := mulDiv(base, pr.Percent, 100)
		if pr.Cap > 0 {
			d = min(d, pr.Cap)
		}
		pl = p.spread(d, skuIn(pr.SKUs))
	case Gift:
		return p.gift(pr)
	case Threshold:
		base, _ := p.base(all)
		var off int64
		for _, t := range pr.Tiers {
			if base >= t.Min {
				off = max(off, t.Off)
			}
		}
		if off == 0 {
			return plan{}, BelowThreshold
		}
		pl = p.spread(off, all)
	case FirstOrder:
		first := p.cart.FirstOnPlatform
		if pr.StoreID != 0 {
			first = p.cart.FirstInStore
		}
		if !first {
			return plan{}, NotFirstOrder
		}
		pl = p.spread(pr.Off, all)
	}
	if pl.off == 0 {
		return plan{}, NothingOff
	}
	return pl, ""
}

// special plans a special-price promotion: on each line it covers, the
// units still allowed to the user (Limit - Bought; all with no limit) cost
// the special price instead of the list price.
func (p *pricer) special(pr Promotion) (plan, string) {
	pl := plan{shares: make([]int64, len(p.lines))}
	matched, allowedAny := false, false
	for i, l := range p.lines {
		k := slices.IndexFunc(pr.Specials, func(s Special) bool { return s.SKU == l.SKU })
		if l.GiftOf != 0 || k < 0 {
			continue
		}
		matched = true
		units := l.Qty
		if pr.Limit > 0 {
			units = min(units, max(0, pr.Limit-p.cart.Lines[i].Bought))
		}
		if units == 0 {
			continue
		}
		allowedAny = true
		if sp := pr.Specials[k].Price; sp < l.Price {
			s := min((l.Price-sp)*units, l.Payable)
			pl.shares[i] = s
			pl.off += s
		}
	}
	switch {
	case !matched:
		return plan{}, NoSKU
	case !allowedAny:
		return plan{}, LimitReached
	case pl.off == 0:
		return plan{}, NothingOff
	}
	pl.value = pl.off
	return pl, ""
}

// gift plans a buy-X-get-Y promotion: every BuyQty units of its sku bring
// GiftQty units of the gift, as a line of its own at price 0.
func (p *pricer) gift(pr Promotion) (plan, string) {
	i := slices.IndexFunc(p.lines, func(l LineResult) bool { return l.GiftOf == 0 && l.SKU == pr.SKUs[0] })
	if i < 0 {
		return plan{}, NoSKU
	}
	n := p.lines[i].Qty / pr.BuyQty * pr.GiftQty
	if n == 0 {
		return plan{}, BelowThreshold
	}
	return plan{
		shares: make([]int64, len(p.lines)),
		gift:   &LineResult{SKU: pr.GiftSKU, Qty: n, GiftOf: pr.ID},
		value:  n * pr.GiftPrice,
	}, ""
}

// coupon applies c if it can, or records why not.
func (p *pricer) coupon(c Coupon) {
	kind := c.kind()
	if r := p.available(c.StoreID, c.Window); r != "" {
		p.skip(kind, c.ID, r)
		return
	}
	if len(c.Stores) > 0 && !slices.Contains(c.Stores, p.cart.StoreID) {
		p.skip(kind, c.ID, OtherStore)
		return
	}
	in := all
	if len(c.SKUs) > 0 {
		in = skuIn(c.SKUs)
	}
	base, n := p.base(in)
	if n == 0 {
		p.skip(kind, c.ID, NoSKU)
		return
	}
	var d int64
	switch c.Kind {
	case AmountOff:
		d = c.Off
	case ThresholdOff:
		if base < c.Min {
			p.skip(kind, c.ID, BelowThreshold)
			return
		}
		d = c.Off
	case PercentOff:
		d = mulDiv(base, c.Percent, 100)
		if c.Cap > 0 {
			d = min(d, c.Cap)
		}
	}
	pl := p.spread(d, in)
	if pl.off == 0 {
		p.skip(kind, c.ID, NothingOff)
		return
	}
	p.apply(kind, c.ID, c.Name, pl)
}

func (p *pricer) result() Result {
	r := Result{Lines: p.lines, Discounts: p.discounts, Skipped: p.skipped}
	for _, l := range p.lines {
		r.Total += l.List
		r.Payable += l.Payable
	}
	r.Discount = r.Total - r.Payable
	return r
}
