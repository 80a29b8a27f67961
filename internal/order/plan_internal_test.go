package order

import (
	"testing"

	"github.com/surge-platform/surge/internal/platform/sqldb/sqldbtest"
)

// The expiry backstop reads the partial index of unpaid orders (a query
// that did not name its condition would read the whole table).
func TestDueOrdersUseTheirIndex(t *testing.T) {
	for _, e := range sqldbtest.Engines()[:2] {
		t.Run(e.Name, func(t *testing.T) {
			d := e.Open(t).Main()
			sqldbtest.UsesIndex(t, d, "orders_pending_expires", dueOrders, int64(0), 10)
		})
	}
}
