package order

import (
	"context"
	"fmt"

	"github.com/surge-platform/surge/internal/platform/id"
	"github.com/surge-platform/surge/internal/platform/sqldb"
)

// maxForgetBatches bounds one ForgetKeys or ForgetSeen per database: 100
// batches of 1,000 rows a minute is far above the 5 million keyed orders
// (15 million events) of a busy day.
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
	return s.forget(ctx, "idempotency keys", batch, s.now().Add(-s.cfg.KeyTTL).UnixMilli(), func(e sqldb.Engine) string {
		// Through the index on created_at; a DELETE has no LIMIT in either engine.
		if e == sqldb.SQLite {
			return `DELETE FROM idempotency WHERE rowid IN (SELECT rowid FROM idempotency WHERE created_at < $1 LIMIT $2)`
		}
		return `DELETE FROM idempotency WHERE ctid = ANY(ARRAY(SELECT ctid FROM idempotency WHERE created_at < $1 LIMIT $2))`
	})
}

// ForgetSeen deletes, on every database, the records of events made more
// than SeenTTL ago (events_seen: what the ledger took, and how often), as
// ForgetKeys does keys, and returns how many it deleted. An event id tells
// when it was made, so the primary key finds them. An old event delivered
// again (a replayed dead letter) is recorded again, until the next run. The
// node runs it once per cluster, every minute (the events-seen-purge job).
func (s *Service) ForgetSeen(ctx context.Context, batch int) (int64, error) {
	return s.forget(ctx, "seen events", batch, id.Floor(s.now().Add(-s.cfg.SeenTTL)), func(e sqldb.Engine) string {
		if e == sqldb.SQLite {
			return `DELETE FROM events_seen WHERE event_id IN (SELECT event_id FROM events_seen WHERE event_id < $1 ORDER BY event_id LIMIT $2)`
		}
		// An array, not IN: PostgreSQL's planner may hash-join a small
		// table's IN list against a scan of all of it.
		return `DELETE FROM events_seen WHERE event_id = ANY(ARRAY(SELECT event_id FROM events_seen WHERE event_id < $1 ORDER BY event_id LIMIT $2))`
	})
}

// forget runs the statement of each database's engine, which deletes at
// most $2 rows older than $1 (before), until a run deletes fewer than batch
// rows or maxForgetBatches have run on that database.
func (s *Service) forget(ctx context.Context, what string, batch int, before int64, stmt func(sqldb.Engine) string) (int64, error) {
	if batch <= 0 {
		batch = 1000
	}
	var total int64
	for _, d := range s.db.Shards() {
		q := stmt(d.Engine)
		for range maxForgetBatches {
			n, err := sqldb.Exec(ctx, d, q, before, batch)
			total += n
			if err != nil {
				return total, fmt.Errorf("forget %s on %s: %w", what, d.Name, err)
			}
			if n < int64(batch) {
				break
			}
		}
	}
	return total, nil
}
