// Package lease hands out named, time-limited leases kept in the main
// database, where every process that shares surge's data sees them: node
// ids (so that no two live nodes issue the same ids) and the leaders of
// jobs that must run once per cluster.
//
// Expiry is measured on the database's clock, never a node's, so nodes
// with skewed clocks agree on who holds what. A holder additionally keeps
// a local deadline on its monotonic clock (Held.Valid), started before each
// renewal was sent and shortened by a margin: a holder that was paused
// (SIGSTOP, a long GC) past its deadline knows it may have lost the lease
// before it asks the database, and stops acting on it. (The monotonic
// clock does not advance while the whole machine or VM is suspended: a
// suspended holder is not covered.) A node id's holder also leaves a mark,
// the bound of the ids it may issue on its own clock, and its successor
// issues ids only above it: a handover never repeats a millisecond, however
// far apart the two clocks are.
package lease

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/surge-platform/surge/internal/platform/sqldb"
)

// Table is the lease table of the main database.
type Table struct {
	db *sqldb.DB
}

// New returns the lease table of db (the main database).
func New(db *sqldb.DB) *Table { return &Table{db: db} }

// nowMS is the database's clock in unix milliseconds, per engine.
func (t *Table) nowMS() string {
	if t.db.Engine == sqldb.Postgres {
		return `CAST(extract(epoch FROM clock_timestamp()) * 1000 AS BIGINT)`
	}
	return `CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)`
}

// Owner returns a name for this process that no other process has:
// host, pid and a random part (pids are reused, hosts are cloned).
func Owner() string {
	host, _ := os.Hostname()
	b := make([]byte, 4)
	rand.Read(b)
	return fmt.Sprintf("%s:%d:%s", host, os.Getpid(), hex.EncodeToString(b))
}

// Acquire takes the lease name for owner until ttl from now (database
// clock) if it is free, expired, or already owner's (then it is renewed).
// It reports whether owner holds the lease afterwards. Errors are the
// database's.
func (t *Table) Acquire(ctx context.Context, name, owner string, ttl time.Duration) (bool, error) {
	ok, _, err := t.AcquireMarked(ctx, name, owner, ttl, 0)
	return ok, err
}

// AcquireMarked is Acquire for a lease whose holder leaves a mark (a node
// id's: the bound, in unix ms of the holder's clock, of the ids it may
// issue): it stores mark and returns the previous holder's, 0 if none or
// if owner held the lease already.
func (t *Table) AcquireMarked(ctx context.Context, name, owner string, ttl time.Duration, mark int64) (ok bool, prev int64, err error) {
	now := t.nowMS()
	err = sqldb.Tx(ctx, t.db, func(tx *sql.Tx) error {
		err := tx.QueryRowContext(ctx, `INSERT INTO leases (name, owner, expires_at, taken_at, mark, prev_mark)
			VALUES ($1, $2, `+now+` + $3, `+now+`, CAST($4 AS BIGINT), 0)
			ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, expires_at = excluded.expires_at,
				taken_at = CASE WHEN leases.owner = excluded.owner THEN leases.taken_at ELSE excluded.taken_at END,
				prev_mark = CASE WHEN leases.owner = excluded.owner THEN leases.prev_mark ELSE leases.mark END,
				mark = excluded.mark
			WHERE leases.owner = excluded.owner OR leases.expires_at < `+now+`
			RETURNING prev_mark`, name, owner, ttl.Milliseconds(), mark).Scan(&prev)
		if errors.Is(err, sql.ErrNoRows) {
			return nil // held by another
		}
		ok = err == nil
		return err
	})
	if err != nil {
		return false, 0, fmt.Errorf("lease %s: %w", name, err)
	}
	return ok, prev, nil
}

// Release gives up owner's lease name at once (another process may take it
// without waiting for it to expire), leaving mark (see AcquireMarked; 0
// keeps the one stored) for the next holder. Releasing a lease owner does
// not hold does nothing.
func (t *Table) Release(ctx context.Context, name, owner string, mark int64) error {
	if _, err := sqldb.Exec(ctx, t.db, `UPDATE leases SET expires_at = 0, mark = CASE WHEN CAST($3 AS BIGINT) > 0 THEN CAST($3 AS BIGINT) ELSE mark END
		WHERE name = $1 AND owner = $2`, name, owner, mark); err != nil {
		return fmt.Errorf("release lease %s: %w", name, err)
	}
	return nil
}

// Holding is one lease as the table shows it.
type Holding struct {
	Name    string    `json:"name"`
	Owner   string    `json:"owner"`
	Since   time.Time `json:"since"`
	Expires time.Time `json:"expires"`
	Live    bool      `json:"live"` // not expired by the database's clock
}

// List returns the leases whose names start with prefix, live or not.
func (t *Table) List(ctx context.Context, prefix string) ([]Holding, error) {
	rows, err := t.db.R.QueryContext(ctx, `SELECT name, owner, taken_at, expires_at, `+t.nowMS()+`
		FROM leases WHERE substr(name, 1, $1) = $2 ORDER BY name`, len(prefix), prefix)
	if err != nil {
		return nil, fmt.Errorf("list leases: %w", err)
	}
	defer rows.Close()
	var out []Holding
	for rows.Next() {
		var h Holding
		var since, exp, now int64
		if err := rows.Scan(&h.Name, &h.Owner, &since, &exp, &now); err != nil {
			return nil, fmt.Errorf("list leases: %w", err)
		}
		h.Since, h.Expires, h.Live = time.UnixMilli(since).UTC(), time.UnixMilli(exp).UTC(), exp >= now
		out = append(out, h)
	}
	return out, rows.Err()
}

// Held is a lease this process holds (or held), with its local deadline.
type Held struct {
	t     *Table
	name  string
	owner string
	ttl   time.Duration

	mu    sync.Mutex
	until time.Time // local monotonic deadline; zero = not held
}

// margin is taken off the local deadline for clock-rate differences and
// the time between the database's reading of its clock and ours.
func margin(ttl time.Duration) time.Duration { return max(ttl/10, 100*time.Millisecond) }

// Hold returns a handle on the lease name for owner, not yet acquired.
func (t *Table) Hold(name, owner string, ttl time.Duration) *Held {
	return &Held{t: t, name: name, owner: owner, ttl: ttl}
}

// Name is the lease's name.
func (h *Held) Name() string { return h.name }

// Acquire takes or renews the lease. On success the local deadline moves
// to ttl (less a margin) after the moment the request was sent; on a
// refusal it is cleared (another process holds the lease); on an error it
// is left as it was (the lease may still be ours until then).
func (h *Held) Acquire(ctx context.Context) (bool, error) {
	ok, _, err := h.AcquireMarked(ctx, 0)
	return ok, err
}

// AcquireMarked is Acquire with a mark (Table.AcquireMarked).
func (h *Held) AcquireMarked(ctx context.Context, mark int64) (bool, int64, error) {
	sent := time.Now()
	ok, prev, err := h.t.AcquireMarked(ctx, h.name, h.owner, h.ttl, mark)
	if err != nil {
		return false, 0, err
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if ok {
		h.until = sent.Add(h.ttl - margin(h.ttl))
	} else {
		h.until = time.Time{}
	}
	return ok, prev, nil
}

// Until returns the local deadline (zero when not held).
func (h *Held) Until() time.Time {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.until
}

// Valid reports whether the lease is surely still ours now.
func (h *Held) Valid() bool {
	u := h.Until()
	return !u.IsZero() && time.Now().Before(u)
}

// Release gives the lease up, leaving mark (0: the one stored), and
// clears the local deadline.
func (h *Held) Release(ctx context.Context, mark int64) error {
	h.mu.Lock()
	h.until = time.Time{}
	h.mu.Unlock()
	return h.t.Release(ctx, h.name, h.owner, mark)
}
