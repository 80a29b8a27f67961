package order_test

import (
	"testing"

	"github.com/surge-platform/surge/internal/order/ordertest"
	"github.com/surge-platform/surge/internal/platform/sqldb"
	"github.com/surge-platform/surge/internal/platform/sqldb/sqldbtest"
)

// pgConns caps each PostgreSQL pool of a test cluster: the suite runs
// several clusters at once against one shared server (max_connections 100),
// and a handful of connections per database is plenty to make the races
// real.
const pgConns = 6

// openCapped wraps a cluster maker so that PostgreSQL pools stay small.
func openCapped(open func(testing.TB) *sqldb.Cluster) func(testing.TB) *sqldb.Cluster {
	return func(tb testing.TB) *sqldb.Cluster {
		c := open(tb)
		for _, d := range c.Shards() {
			if d.Engine == sqldb.Postgres {
				d.W.SetMaxOpenConns(pgConns)
				d.W.SetMaxIdleConns(pgConns)
			}
		}
		return c
	}
}

func TestStore(t *testing.T) {
	t.Parallel()
	for _, e := range sqldbtest.Engines() {
		t.Run(e.Name, func(t *testing.T) {
			t.Parallel()
			ordertest.Run(t, openCapped(e.Open))
		})
	}
}
