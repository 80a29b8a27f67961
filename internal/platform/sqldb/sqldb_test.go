package sqldb_test

import (
	"context"
	"testing"

	"github.com/surge-platform/surge/internal/platform/id"
	"github.com/surge-platform/surge/internal/platform/sqldb"
	"github.com/surge-platform/surge/internal/platform/sqldb/sqldbtest"
)

func TestRoutingCoversAllShardsInRanges(t *testing.T) {
	t.Parallel()
	for _, n := range []int{1, 2, 4, 8} {
		dbs := make([]*sqldb.DB, n)
		for i := range dbs {
			dbs[i] = &sqldb.DB{Name: string(rune('a' + i))}
		}
		c := sqldb.NewCluster(dbs)
		if c.ForGene(sqldb.MainGene) != c.Main() {
			t.Fatalf("n=%d: MainGene is not on the main database", n)
		}
		count := make([]int, n)
		prev := 0
		for l := range id.Genes {
			p := c.Physical(l)
			if p < prev {
				t.Fatalf("n=%d: logical %d maps back to %d after %d", n, l, p, prev)
			}
			prev = p
			count[p]++
		}
		for i, k := range count {
			if k != id.Genes/n {
				t.Fatalf("n=%d: physical %d holds %d logical shards, want %d", n, i, k, id.Genes/n)
			}
		}
	}
}

func TestMigrateAndUniqueOnEveryEngine(t *testing.T) {
	t.Parallel()
	for _, e := range sqldbtest.Engines() {
		t.Run(e.Name, func(t *testing.T) {
			t.Parallel()
			c := e.Open(t)
			ctx := context.Background()
			if err := c.Migrate(ctx); err != nil { // twice is a no-op
				t.Fatal(err)
			}
			for _, d := range c.Shards() {
				if _, err := d.W.ExecContext(ctx, `INSERT INTO settings (name, value) VALUES ($1, $2)`, "k", "v"); err != nil {
					t.Fatal(err)
				}
				_, err := d.W.ExecContext(ctx, `INSERT INTO settings (name, value) VALUES ($1, $2)`, "k", "w")
				if !sqldb.IsUnique(err) {
					t.Fatalf("%s: duplicate insert gave %v, want a unique violation", d.Name, err)
				}
				var v string
				if err := d.R.QueryRowContext(ctx, `SELECT value FROM settings WHERE name = $1`, "k").Scan(&v); err != nil || v != "v" {
					t.Fatalf("%s: read %q, %v", d.Name, v, err)
				}
			}
		})
	}
}

func TestMaskHidesPasswords(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ in, want string }{
		{"postgres://u:secret@db:5432/x?sslmode=disable", "postgres://u:xxxxx@db:5432/x?sslmode=disable"},
		{"postgres://u@db/x", "postgres://u@db/x"},
		{"redis://:secret@r:6379/0", "redis://:xxxxx@r:6379/0"},
		{"postgres://u:se%zzcret@db/x", "postgres://xxxxx@db/x"}, // does not parse: no user info at all
		{"sqlite:./data", "sqlite:./data"},
		{"nats://a:p1@h1:4222,nats://b:p2@h2:4222", "nats://a:xxxxx@h1:4222,nats://b:xxxxx@h2:4222"},
		{"postgres://u:secret@h1,h2/x", "postgres://u:xxxxx@h1,h2/x"},
	} {
		if got := sqldb.Mask(tc.in); got != tc.want {
			t.Errorf("Mask(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}
