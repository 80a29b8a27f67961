package order

import (
	"context"
	"fmt"

	"github.com/surge-platform/surge/internal/platform/sqldb"
)

// ForgetKeys deletes, on every database, the idempotency keys written more
// than KeyTTL ago, at most batch rows per statement (0 = 1000, so no
// statement holds the writer long), and returns how many it deleted. A
// retry that comes after its key was forgotten places a new order, as at
// any payment API that keeps keys for a day. Orders are untouched. The
// node runs it once per cluster, every minute (the idempotency-purge job).
func (s *Service) ForgetKeys(ctx context.Context, batch int) (int64, error) {
	if batch <= 0 {
		batch = 1000
	}
	before := s.now().Add(-s.cfg.KeyTTL).UnixMilli()
	var total int64
	for _, d := range s.db.Shards() {
		// Through the index on created_at; a DELETE has no LIMIT in either engine.
		q := `DELETE FROM idempotency WHERE ctid = ANY(ARRAY(SELECT ctid FROM idempotency WHERE created_at < $1 LIMIT $2))`
		if d.Engine == sqldb.SQLite {
			q = `DELETE FROM idempotency WHERE rowid IN (SELECT rowid FROM idempotency WHERE created_at < $1 LIMIT $2)`
		}
		for {
			n, err := sqldb.Exec(ctx, d, q, before, batch)
			total += n
			if err != nil {
				return total, fmt.Errorf("forget idempotency keys on %s: %w", d.Name, err)
			}
			if n < int64(batch) {
				break
			}
		}
	}
	return total, nil
}
