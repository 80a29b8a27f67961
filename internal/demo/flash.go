package demo

import (
	"context"
	"time"

	"github.com/surge-platform/surge/internal/flashsale"
)

// Flash-sale demo: ten Americanos of the second store at 1.00 yuan, one
// per customer, starting a few seconds after the demo does.
const (
	FlashStore = firstStore + 1
	FlashSKU   = FlashStore*1000 + 0 // its Americano
	FlashStock = 10
)

// SeedFlashSale creates the demo's flash sale, starting in `in`, and
// returns it.
func SeedFlashSale(ctx context.Context, f *flashsale.Service, in time.Duration) (flashsale.Sale, error) {
	start := time.Now().Add(in)
	return f.Create(ctx, flashsale.Sale{StoreID: FlashStore, SKU: FlashSKU, Price: 100, Stock: FlashStock, PerUser: 1,
		StartsAt: start, EndsAt: start.Add(time.Hour), PaySeconds: 120})
}
