package order_test

import (
	"fmt"
	"testing"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/surge-platform/surge/internal/order"
	"github.com/surge-platform/surge/internal/order/ordertest"
	"github.com/surge-platform/surge/internal/platform/id"
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

// TestSubject: every logical shard's events fall in one of Partitions
// subjects per type, and the consumers' filters of a type match its
// events, in the new form and in the old (the shard in the partition's
// place), and no other type's.
func TestSubject(t *testing.T) {
	paid, accepted := order.Types(order.EvPaid)[0], order.Types(order.EvAccepted)[0]
	seen := map[string]bool{}
	for gene := range id.Genes {
		s := order.Subject(gene, order.EvPaid)
		if want := fmt.Sprintf("orders.events.%d.%s", gene%order.Partitions, order.EvPaid); s != want {
			t.Fatalf("Subject(%d) = %q, want %q", gene, s, want)
		}
		old := fmt.Sprintf("orders.events.%d.%s", gene, order.EvPaid)
		for _, subj := range []string{s, old} {
			if !server.SubjectMatchesFilter(subj, paid) || server.SubjectMatchesFilter(subj, accepted) {
				t.Fatalf("%q: matches %q %v, %q %v; want only the first", subj,
					paid, server.SubjectMatchesFilter(subj, paid), accepted, server.SubjectMatchesFilter(subj, accepted))
			}
		}
		seen[s] = true
	}
	if len(seen) != order.Partitions {
		t.Fatalf("%d subjects for one type over %d shards, want %d", len(seen), id.Genes, order.Partitions)
	}
}
