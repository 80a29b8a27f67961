package sqldb_test

import (
	"context"
	"database/sql"
	"fmt"
	"testing"

	"github.com/surge-platform/surge/internal/platform/sqldb"
)

// Statements are kept per connection; the same query run again while its
// rows are still open (in one transaction) gets a statement of its own, and
// more distinct queries than the cache holds still run.
func TestSQLiteStatementCache(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	c, err := sqldb.Open(ctx, []string{"sqlite:" + t.TempDir() + "?shards=1"}, sqldb.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	d := c.Main()
	if _, err := d.W.ExecContext(ctx, `CREATE TABLE t (x INTEGER)`); err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		if _, err := d.W.ExecContext(ctx, `INSERT INTO t (x) VALUES ($1)`, i); err != nil {
			t.Fatal(err)
		}
	}
	const q = `SELECT x FROM t WHERE x >= $1 ORDER BY x`
	err = sqldb.Tx(ctx, d, func(tx *sql.Tx) error {
		rows, err := tx.QueryContext(ctx, q, 0)
		if err != nil {
			return err
		}
		defer rows.Close()
		sum := 0
		for rows.Next() {
			var x int
			if err := rows.Scan(&x); err != nil {
				return err
			}
			var inner int // the same query, its statement busy with the outer rows
			if err := tx.QueryRowContext(ctx, q, x).Scan(&inner); err != nil {
				return err
			}
			if inner != x {
				return fmt.Errorf("inner query from %d got %d", x, inner)
			}
			sum += x
		}
		if sum != 0+1+2+3+4 {
			return fmt.Errorf("outer rows summed to %d", sum)
		}
		return rows.Err()
	})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 300 { // more distinct statements than one connection keeps
		var got int
		if err := d.W.QueryRowContext(ctx, fmt.Sprintf(`SELECT %d + x FROM t WHERE x = 4`, i)).Scan(&got); err != nil || got != i+4 {
			t.Fatalf("query %d: %d, %v", i, got, err)
		}
	}
}
