package pricing

import (
	"math/rand/v2"
	"reflect"
	"testing"
	"time"
)

var propAt = time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)

// randomInput makes a valid cart, rules and coupons (at most one of each
// coupon kind) from r, with small amounts so that limits, caps, ties and
// remainders happen often.
func randomInput(r *rand.Rand) (Cart, []Promotion, []Coupon) {
	amount := func() int64 {
		switch r.IntN(4) {
		case 0:
			return r.Int64N(3)
		case 1:
			return r.Int64N(100_000)
		}
		return r.Int64N(5000)
	}
	skus := r.Perm(8)
	cart := Cart{StoreID: 1 + r.Int64N(2), FirstInStore: r.IntN(2) == 0, FirstOnPlatform: r.IntN(2) == 0}
	for i := range 1 + r.IntN(6) {
		cart.Lines = append(cart.Lines, Line{SKU: int64(skus[i] + 1), Price: amount(), Qty: 1 + r.Int64N(5), Bought: r.Int64N(3)})
	}
	someSKUs := func() []int64 {
		var s []int64
		for range 1 + r.IntN(3) {
			s = append(s, 1+r.Int64N(8))
		}
		return s
	}
	window := func() Window {
		var w Window
		if r.IntN(4) == 0 {
			w.Starts = propAt.Add(time.Duration(r.IntN(3)-1) * time.Hour)
		}
		if r.IntN(4) == 0 {
			w.Ends = propAt.Add(time.Duration(r.IntN(3)+1) * time.Hour / 2)
		}
		if !w.Ends.IsZero() && !w.Starts.Before(w.Ends) {
			w.Starts = time.Time{}
		}
		return w
	}
	kinds := []Kind{SpecialPrice, Percent, Gift, Threshold, FirstOrder}
	var promos []Promotion
	for i := range r.IntN(8) {
		p := Promotion{ID: int64(i + 1), Kind: kinds[r.IntN(len(kinds))], StoreID: r.Int64N(3), Window: window()}
		switch p.Kind {
		case SpecialPrice:
			for _, s := range someSKUs() {
				p.Specials = append(p.Specials, Special{SKU: s, Price: amount()})
			}
			p.Limit = r.Int64N(3)
		case Percent:
			p.SKUs, p.Percent, p.Cap = someSKUs(), 1+r.Int64N(100), r.Int64N(3)*amount()
		case Gift:
			p.SKUs, p.BuyQty, p.GiftSKU, p.GiftQty, p.GiftPrice = someSKUs()[:1], 1+r.Int64N(3), 1+r.Int64N(9), 1+r.Int64N(2), amount()
		case Threshold:
			for range 1 + r.IntN(3) {
				p.Tiers = append(p.Tiers, Tier{Min: amount(), Off: 1 + amount()})
			}
		case FirstOrder:
			p.Off = 1 + amount()
		}
		promos = append(promos, p)
	}
	var coupons []Coupon
	for i, store := range []int64{0, 1 + r.Int64N(2)} {
		if r.IntN(3) == 0 {
			continue
		}
		c := Coupon{ID: int64(100 + i), StoreID: store, Window: window()}
		if r.IntN(3) == 0 {
			c.SKUs = someSKUs()
		}
		if store == 0 && r.IntN(3) == 0 {
			c.Stores = []int64{1 + r.Int64N(2)}
		}
		switch r.IntN(3) {
		case 0:
			c.Kind, c.Off = AmountOff, 1+amount()
		case 1:
			c.Kind, c.Min, c.Off = ThresholdOff, amount(), 1+amount()
		default:
			c.Kind, c.Percent, c.Cap = PercentOff, 1+r.Int64N(100), r.Int64N(3)*amount()
		}
		coupons = append(coupons, c)
	}
	return cart, promos, coupons
}

// checkProperties prices the input, checks the invariants, and checks that
// pricing again, or with the lines, promotions and coupons shuffled, gives
// the same result (lines compared by sku and gift).
func checkProperties(t *testing.T, r *rand.Rand, cart Cart, promos []Promotion, coupons []Coupon) {
	t.Helper()
	got, err := Price(cart, promos, coupons, propAt)
	if err != nil {
		t.Fatalf("Price: %v\ncart %+v\npromotions %+v\ncoupons %+v", err, cart, promos, coupons)
	}
	checkInvariants(t, cart, got)
	again, _ := Price(cart, promos, coupons, propAt)
	if !reflect.DeepEqual(got, again) {
		t.Fatalf("not deterministic:\n%+v\n%+v", got, again)
	}
	shuffled := cart
	shuffled.Lines = append([]Line(nil), cart.Lines...)
	r.Shuffle(len(shuffled.Lines), func(i, j int) { shuffled.Lines[i], shuffled.Lines[j] = shuffled.Lines[j], shuffled.Lines[i] })
	sp := append([]Promotion(nil), promos...)
	r.Shuffle(len(sp), func(i, j int) { sp[i], sp[j] = sp[j], sp[i] })
	sc := append([]Coupon(nil), coupons...)
	r.Shuffle(len(sc), func(i, j int) { sc[i], sc[j] = sc[j], sc[i] })
	other, err := Price(shuffled, sp, sc, propAt)
	if err != nil {
		t.Fatalf("Price shuffled: %v", err)
	}
	type key struct{ sku, gift int64 }
	byKey := map[key]LineResult{}
	for _, l := range got.Lines {
		byKey[key{l.SKU, l.GiftOf}] = l
	}
	for _, l := range other.Lines {
		if !reflect.DeepEqual(byKey[key{l.SKU, l.GiftOf}], l) {
			t.Fatalf("shuffling changed line %d: %+v vs %+v", l.SKU, byKey[key{l.SKU, l.GiftOf}], l)
		}
	}
	if len(got.Lines) != len(other.Lines) || got.Total != other.Total || got.Payable != other.Payable ||
		!reflect.DeepEqual(got.Discounts, other.Discounts) || !reflect.DeepEqual(got.Skipped, other.Skipped) {
		t.Fatalf("shuffling changed the result:\n%+v\n%+v", got, other)
	}
}

func TestPriceProperties(t *testing.T) {
	t.Parallel()
	applied := map[Kind]int{}
	for seed := range uint64(3000) {
		r := rand.New(rand.NewPCG(seed, 42))
		cart, promos, coupons := randomInput(r)
		checkProperties(t, r, cart, promos, coupons)
		if t.Failed() {
			t.Fatalf("seed %d", seed)
		}
		res, _ := Price(cart, promos, coupons, propAt)
		for _, d := range res.Discounts {
			applied[d.Kind]++
		}
	}
	// The generator must reach every kind, or the properties prove little.
	for _, k := range []Kind{SpecialPrice, Percent, Gift, Threshold, FirstOrder, StoreCoupon, PlatformCoupon} {
		if applied[k] < 50 {
			t.Errorf("kind %s applied only %d times in 3000 random carts", k, applied[k])
		}
	}
	t.Logf("applied: %v", applied)
}

func TestTooManyCouponsRandom(t *testing.T) {
	t.Parallel()
	r := rand.New(rand.NewPCG(7, 7))
	for range 200 {
		cart, promos, _ := randomInput(r)
		store := 1 + r.Int64N(3)
		coupons := []Coupon{
			{ID: 1, Kind: AmountOff, Off: 1, StoreID: store},
			{ID: 2, Kind: AmountOff, Off: 1, StoreID: store * int64(r.IntN(2))},
			{ID: 3, Kind: AmountOff, Off: 1, StoreID: store * int64(r.IntN(2))},
		}
		if _, err := Price(cart, promos, coupons, propAt); err == nil {
			t.Fatalf("three coupons accepted: %+v", coupons)
		}
	}
}

func FuzzPrice(f *testing.F) {
	for _, s := range []uint64{0, 1, 2, 99, 1 << 40} {
		f.Add(s, s+1)
	}
	f.Fuzz(func(t *testing.T, a, b uint64) {
		r := rand.New(rand.NewPCG(a, b))
		cart, promos, coupons := randomInput(r)
		checkProperties(t, r, cart, promos, coupons)
	})
}
