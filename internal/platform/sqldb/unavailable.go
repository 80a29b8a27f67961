package sqldb

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"net"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"
	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"

	"github.com/surge-platform/surge/internal/platform/errkind"
)

// Callers use *sql.DB and *sql.Tx directly, so the errors of both engines
// are classified where errkind.Of looks (web's status table, the flash-sale
// worker's retries, breakers), not by wrapping every call:
//
//   - the database is down, restarting, refusing connections or out of
//     resources, or a connection to it broke: errkind.ErrUnavailable (503);
//   - a driver gave up waiting on the server (pgx's own timeout, from the
//     caller's deadline): errkind.ErrTimeout (503);
//   - everything else keeps no kind (a bug: 500), constraint violations
//     included (callers map those to their own sentinels).
//
// The caller's own cancellation (context.Canceled) is never classified.
// A query whose deadline passed comes back from database/sql as a bare
// context.DeadlineExceeded, whatever the driver saw (so does a wait for a
// pooled connection): errkind.Of makes that ErrTimeout itself.
func init() { errkind.Classify(kindOf) }

func kindOf(err error) *errkind.Error {
	if errors.Is(err, context.Canceled) {
		return nil
	}
	var pg *pgconn.PgError
	if errors.As(err, &pg) {
		return pgKind(pg.Code)
	}
	var se *sqlite.Error
	if errors.As(err, &se) {
		switch se.Code() & 0xff { // primary result code
		case sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED, // another writer holds the file past busy_timeout
			sqlite3.SQLITE_FULL, sqlite3.SQLITE_IOERR, sqlite3.SQLITE_NOMEM:
			return errkind.ErrUnavailable
		}
		return nil
	}
	var ne *netErr
	var ce *pgconn.ConnectError
	switch {
	case pgconn.Timeout(err):
		return errkind.ErrTimeout
	case errors.As(err, &ne), errors.As(err, &ce),
		errors.Is(err, sql.ErrConnDone), errors.Is(err, driver.ErrBadConn):
		return errkind.ErrUnavailable
	}
	return nil
}

// pgKind classifies a PostgreSQL SQLSTATE.
func pgKind(code string) *errkind.Error {
	switch {
	case strings.HasPrefix(code, "08"), // connection_exception
		strings.HasPrefix(code, "53"),                     // insufficient_resources: disk full, out of memory, too_many_connections (53300)
		code == "57P01", code == "57P02", code == "57P03", // admin_shutdown, crash_shutdown, cannot_connect_now
		code == "58030": // io_error
		return errkind.ErrUnavailable
	case retryLater(code):
		// Nothing is wrong with the request and running it again is
		// expected to succeed, so the client is told to retry (503 with
		// Retry-After). Callers that can retry within the request (an
		// UpdateFn repository) should do so before this reaches them.
		return errkind.ErrUnavailable
	case code == "57014": // query_canceled: statement_timeout, or a cancel request for a caller's deadline
		return errkind.ErrTimeout
	}
	return nil
}

// retryLater reports whether code says a statement met others
// (serialization_failure, deadlock_detected, lock_not_available): the
// server is well, it answered.
func retryLater(code string) bool { return code == "40001" || code == "40P01" || code == "55P03" }

// netErr marks an I/O error on a connection to a PostgreSQL server. pgx
// returns a broken connection's error (reset, EOF) as the network's own,
// which would be indistinguishable from any other library's; the mark says
// it came from a database.
type netErr struct{ err error }

func (e *netErr) Error() string { return e.err.Error() }
func (e *netErr) Unwrap() error { return e.err }

// markedConn marks the read and write errors of a connection to a
// database (see netErr).
type markedConn struct{ net.Conn }

func (c markedConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	if err != nil {
		err = &netErr{err}
	}
	return n, err
}

func (c markedConn) Write(b []byte) (int, error) {
	n, err := c.Conn.Write(b)
	if err != nil {
		err = &netErr{err}
	}
	return n, err
}

// markDial wraps dial so that the connections it makes mark their errors.
func markDial(dial pgconn.DialFunc) pgconn.DialFunc {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := dial(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return markedConn{c}, nil
	}
}
