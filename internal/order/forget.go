package order

import (
	"context"
	"fmt"

	"github.com/surge-platform/surge/internal/platform/sqldb"
)

// maxForgetBatches bounds one ForgetKeys per database: 100 batches of
// 1,000 rows a minute is far above the 5 million keyed orders of a busy day.
const maxForgetBatches = 100

// ForgetKeys deletes, on every database, the idempotency keys written more
// than KeyTTL ago, at most batch rows per statement (0 = 1000, so no
// statement holds the writer long), and returns how many it deleted. A
// retry that comes after its key was forgotten places a new order, as at
// any payment API that keeps keys for a day. Orders are untouched. The
// node runs it once per cluster, every minute (the idempotency-purge job).
// One call deletes at most maxForgetBatches batches per database, so that
// the backlog of a table that was never purged is worked off a little each
// minute, not in one long run that holds SQLite's one writer.
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
		for range maxForgetBatches {
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
