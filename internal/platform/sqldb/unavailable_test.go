package sqldb_test

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"modernc.org/sqlite"

	"github.com/surge-platform/surge/internal/eventually"
	"github.com/surge-platform/surge/internal/platform/errkind"
	"github.com/surge-platform/surge/internal/platform/sqldb"
	"github.com/surge-platform/surge/internal/platform/sqldb/sqldbtest"
)

// What errkind.Of makes of errors a database driver returns: a database
// that is down, overloaded or in the way of a retry is Unavailable; a
// constraint or a bad query stays a bug unless its caller maps it; the
// network errors of anything but a database are not sqldb's to judge.
func TestKindOfDriverErrors(t *testing.T) {
	t.Parallel()
	pg := func(code string) error { return fmt.Errorf("get order 7: %w", &pgconn.PgError{Code: code}) }
	reset := &net.OpError{Op: "read", Net: "tcp", Err: syscall.ECONNRESET}
	tests := []struct {
		name string
		err  error
		want string // errkind code; "" = no kind
	}{
		{"admin shutdown", pg("57P01"), "unavailable"},
		{"cannot connect now", pg("57P03"), "unavailable"},
		{"connection failure", pg("08006"), "unavailable"},
		{"too many connections", pg("53300"), "unavailable"},
		{"disk full", pg("53100"), "unavailable"},
		{"serialization failure", pg("40001"), "unavailable"},
		{"deadlock", pg("40P01"), "unavailable"},
		{"lock not available", pg("55P03"), "unavailable"},
		{"statement timeout", pg("57014"), "timeout"},
		{"unique violation", pg("23505"), ""},
		{"undefined table", pg("42P01"), ""},
		{"bad password", pg("28P01"), ""},
		{"connect", &pgconn.ConnectError{}, "unavailable"},
		{"conn done", fmt.Errorf("commit: %w", sql.ErrConnDone), "unavailable"},
		{"bad conn", driver.ErrBadConn, "unavailable"},
		{"sqlite ok", &sqlite.Error{}, ""},
		{"no rows", sql.ErrNoRows, ""},
		{"someone else's reset", fmt.Errorf("paysim: %w", reset), ""},
		{"someone else's EOF", io.ErrUnexpectedEOF, ""},
		{"bare deadline", context.DeadlineExceeded, "timeout"}, // errkind's own rule
		{"cancelled", fmt.Errorf("query: %w", context.Canceled), ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e := errkind.Of(tt.err)
			switch {
			case tt.want == "" && e != nil:
				t.Fatalf("Of(%v) = %+v, want no kind", tt.err, e)
			case tt.want != "" && (e == nil || e.Code != tt.want || e.Kind != errkind.Unavailable):
				t.Fatalf("Of(%v) = %+v, want Unavailable %q", tt.err, e, tt.want)
			}
		})
	}
}

// mustUnavailable fails t unless err is of kind Unavailable (a 503 at the
// edge) and came within limit.
func mustUnavailable(t *testing.T, what string, err error, took, limit time.Duration) {
	t.Helper()
	if e := errkind.Of(err); err == nil || e == nil || e.Kind != errkind.Unavailable {
		t.Errorf("%s: err %v kind %+v; want Unavailable", what, err, e)
	}
	if took > limit {
		t.Errorf("%s took %v, want under %v", what, took, limit)
	}
}

// count runs a query on db (every statement a caller makes goes the same
// way) and returns how long it took.
func count(ctx context.Context, db *sqldb.DB) (time.Duration, error) {
	t0 := time.Now()
	var n int
	err := db.R.QueryRowContext(ctx, `SELECT count(*) FROM stores`).Scan(&n)
	return time.Since(t0), err
}

func write(ctx context.Context, db *sqldb.DB) (time.Duration, error) {
	t0 := time.Now()
	err := sqldb.Tx(ctx, db, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, `DELETE FROM stores WHERE id = -1`)
		return err
	})
	return time.Since(t0), err
}

// A PostgreSQL server that goes away (every connection reset, new ones
// refused) makes reads and transactions fail at once as Unavailable; one
// that hangs makes them fail as Unavailable when the caller's deadline
// passes, not later; both work again when the server is back.
func TestPostgresDownIsUnavailable(t *testing.T) {
	t.Parallel()
	u, proxy := sqldbtest.PostgresViaProxy(t)
	c := sqldbtest.Open(t, u)
	db := c.Main()
	ctx := t.Context()
	if _, err := count(ctx, db); err != nil {
		t.Fatal(err)
	}
	if _, err := write(ctx, db); err != nil {
		t.Fatal(err)
	}

	proxy.Cut()
	for _, op := range []struct {
		name string
		do   func(context.Context, *sqldb.DB) (time.Duration, error)
	}{{"read", count}, {"transaction", write}, {"read again", count}} {
		took, err := op.do(ctx, db)
		mustUnavailable(t, op.name+" with the server cut off", err, took, 3*time.Second)
	}
	proxy.Resume()
	eventually.True(t, 10*time.Second, "reads work after the server is back", func() bool {
		_, err := count(ctx, db)
		return err == nil
	})

	proxy.Stall()
	for _, op := range []struct {
		name string
		do   func(context.Context, *sqldb.DB) (time.Duration, error)
	}{{"read", count}, {"transaction", write}} {
		ctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
		took, err := op.do(ctx, db)
		cancel()
		mustUnavailable(t, op.name+" with the server hung", err, took, 3*time.Second)
	}
	proxy.Resume()
	eventually.True(t, 10*time.Second, "reads and writes work after the server is back", func() bool {
		_, err := count(ctx, db)
		_, err2 := write(ctx, db)
		return err == nil && err2 == nil
	})
}

// A SQLite file locked by another writer past the busy timeout is
// Unavailable (busy), not a bug.
func TestSQLiteLockedIsUnavailable(t *testing.T) {
	t.Parallel()
	dsn := "file:" + filepath.Join(t.TempDir(), "x.db") + "?_pragma=journal_mode(WAL)&_pragma=busy_timeout(0)&_txlock=immediate"
	open := func() *sql.DB {
		db, err := sql.Open("sqlite", dsn)
		if err != nil {
			t.Fatal(err)
		}
		db.SetMaxOpenConns(1)
		t.Cleanup(func() { db.Close() })
		return db
	}
	a, b := open(), open()
	ctx := t.Context()
	if _, err := a.ExecContext(ctx, `CREATE TABLE t (x INTEGER)`); err != nil {
		t.Fatal(err)
	}
	tx, err := a.BeginTx(ctx, nil) // immediate: holds the write lock
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback()
	if _, err := tx.ExecContext(ctx, `INSERT INTO t VALUES (1)`); err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	_, err = b.ExecContext(ctx, `INSERT INTO t VALUES (2)`)
	mustUnavailable(t, "write while another holds the lock", err, time.Since(t0), 3*time.Second)
	var se *sqlite.Error
	if !errors.As(err, &se) {
		t.Fatalf("err %v is not the driver's", err)
	}
}
