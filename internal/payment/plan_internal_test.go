package payment

import (
	"testing"

	"github.com/surge-platform/surge/internal/platform/sqldb/sqldbtest"
)

// The payment query job, the repair of payments left unapplied and
// reconciliation read their partial indexes (a query that did not name an
// index's condition would read the whole table).
func TestSweepsUseTheirIndexes(t *testing.T) {
	for _, e := range sqldbtest.Engines()[:2] {
		t.Run(e.Name, func(t *testing.T) {
			d := e.Open(t).Main()
			sqldbtest.UsesIndex(t, d, "payments_due", duePayments, int64(0), 10)
			sqldbtest.UsesIndex(t, d, "payments_unapplied", unappliedPayments, int64(0))
			sqldbtest.UsesIndex(t, d, "payments_settled", settledPayments, "wechat", int64(0), int64(1))
		})
	}
}
