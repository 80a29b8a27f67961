package demo

import (
	"context"
	"fmt"
	"time"

	"github.com/surge-platform/surge/internal/catalog"
	"github.com/surge-platform/surge/internal/pricing"
	"github.com/surge-platform/surge/internal/promo"
)

// The seeds' example (002, 2.1.3 价格分摊), at the first demo store: three
// items at 30.00, 40.00 and 50.00 and 满99减9 (120.00 -> 111.00).
const (
	ExampleStore = firstStore
	ExampleSKU   = firstStore*1000 + 30 // and the next two
)

// SeedPromotions loads the demo promotions and the demo coupon template,
// once (nothing happens when promotions exist already):
//   - at the first store, the seeds' example: items at 30.00, 40.00 and
//     50.00 in a category of their own and 满99减9;
//   - at every store, a tiered 满减: 满30减3, 满60减6 (the example store's
//     满99减9 beats it on a cart of 99.00 or more);
//   - at every store, its first item at a special price of 1.00, 1 per user;
//   - a platform coupon template: 满50减10, 100 coupons, 1 per user.
func SeedPromotions(ctx context.Context, cat *catalog.Service, p *promo.Service) error {
	if have, err := p.Promotions(ctx, 0); err != nil || len(have) > 0 {
		return err
	}
	catID := int64(ExampleStore*100 + len(menu))
	if _, err := cat.CreateCategory(ctx, ExampleStore, catID, catalog.CategoryInput{Name: "Seeds Example", Sort: len(menu)}); err != nil {
		return fmt.Errorf("seed example category: %w", err)
	}
	for i, price := range []int64{3000, 4000, 5000} {
		in := catalog.ItemInput{CategoryID: catID, Name: fmt.Sprintf("Set Meal %c", 'A'+i), Price: price, Sort: i}
		if _, err := cat.PutItem(ctx, ExampleStore, ExampleSKU+int64(i), in); err != nil {
			return fmt.Errorf("seed example item: %w", err)
		}
	}
	var specials []promo.Special
	for _, sid := range StoreIDs() {
		specials = append(specials, promo.Special{SKU: sid * 1000, Price: 100})
	}
	for _, pr := range []promo.Promotion{
		{StoreID: ExampleStore, Kind: pricing.Threshold, Name: "满99减9", Tiers: []pricing.Tier{{Min: 9900, Off: 900}}},
		{Kind: pricing.Threshold, Name: "满30减3 / 满60减6", Tiers: []pricing.Tier{{Min: 3000, Off: 300}, {Min: 6000, Off: 600}}},
		{Kind: pricing.SpecialPrice, Name: "1.00 Americano, 1 per customer", Specials: specials, Limit: 1},
	} {
		if _, err := p.CreatePromotion(ctx, pr); err != nil {
			return fmt.Errorf("seed promotion %q: %w", pr.Name, err)
		}
	}
	_, err := p.CreateTemplate(ctx, promo.Template{Terms: promo.Terms{Name: "满50减10", Kind: pricing.ThresholdOff, Min: 5000, Off: 1000,
		ValidUntil: time.Now().AddDate(1, 0, 0).UTC().Truncate(time.Second)}, Quantity: 100, PerUser: 1})
	if err != nil {
		return fmt.Errorf("seed coupon template: %w", err)
	}
	return nil
}
