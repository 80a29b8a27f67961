package sqldb

import (
	"context"
	"database/sql/driver"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/stdlib"

	"github.com/surge-platform/surge/internal/platform/breaker"
)

// Every PostgreSQL database (a DB) has a circuit breaker (package breaker)
// at the driver level, under *sql.DB: a new connection and every
// statement, transaction start, prepare and ping asks it first and reports
// how the server answered. Only a server that is down or did not answer
// in time counts against it (errors of kind Unavailable), not the
// caller's errors (a unique violation, a bad query), retry-later errors (a
// serialization failure, a deadlock, a lock not available: the server
// answered) or a caller's cancelled ctx. While it is open those calls fail
// at once with an error of kind Unavailable wrapping ErrOpen, never with
// driver.ErrBadConn (database/sql would retry it on another connection).
// Rows, and the Commit and Rollback of a transaction, are not guarded:
// they finish what a guarded call began. SQLite is in-process: it has no
// breaker.

// ErrOpen is in the error of a call a database's breaker refused.
var ErrOpen = breaker.ErrOpen

// Breaker returns d's circuit breaker, or nil (SQLite).
func (d *DB) Breaker() *breaker.Breaker { return d.breaker }

// serverFailed reports whether err says the PostgreSQL server is down or
// did not answer in time.
func serverFailed(err error) bool {
	var pg *pgconn.PgError
	if errors.As(err, &pg) {
		return pgKind(pg.Code) != nil && !retryLater(pg.Code)
	}
	return breaker.Unavailable(err)
}

// guardedConnector is pgx's connector behind a breaker.
//
// database/sql opens connections for the callers queued for one on a
// single goroutine, with a ctx that has no deadline, and holds a pool
// slot for each it has yet to open: one connect hanging on the server
// holds up every caller of the pool until the connect timeout, and the
// callers that wait out their deadline in that queue never reach the
// breaker, so it may never open. So a connect is abandoned as soon as the
// breaker opens; one without a deadline gets openerTimeout, and is not
// tried at all while the server is failing right now (breaker.Failing: 3
// failures within a second) or the breaker is not closed, so that the
// queued callers get the breaker's error at once instead of waiting
// behind it, and the slots it would hold go to callers with deadlines,
// whose attempts count. One failure alone does not do that: a healthy
// pool must not refuse its queue for one slow query. Above all the opener
// never takes a half-open breaker's probe: the probe would hang on the
// server for openerTimeout, with every slot queued behind it on the one
// opener goroutine held, and every caller waiting for a connection would
// wait out its deadline instead of being refused. Half-open probes come
// from callers with deadlines (database/sql connects for a caller itself
// while the pool has a free slot), and from probeSoon, which each such
// refusal starts on a goroutine of its own.
// openerTimeout bounds a connect that has no deadline of its own.
const openerTimeout = 2 * time.Second

type guardedConnector struct {
	driver.Connector
	b       *breaker.Breaker
	probing *atomic.Bool // a probe of probeSoon is on its way
}

func (c guardedConnector) Connect(ctx context.Context) (driver.Conn, error) {
	opened := c.b.Opened()
	if _, bounded := ctx.Deadline(); !bounded {
		if c.b.Failing() || !c.b.Closed() {
			c.probeSoon()
			return nil, c.b.Err()
		}
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, openerTimeout)
		defer cancel()
	}
	if err := c.b.Allow(); err != nil {
		return nil, err
	}
	actx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	go func() {
		select {
		case <-opened:
			cancel(c.b.Err())
		case <-actx.Done():
		}
	}()
	conn, err := c.Connector.Connect(actx)
	if err != nil && errors.Is(context.Cause(actx), breaker.ErrOpen) {
		err = c.b.Err() // abandoned: say why, with the kind a caller needs
	}
	done(ctx, c.b, err)
	if err != nil {
		return nil, err
	}
	pc, ok := conn.(*stdlib.Conn)
	if !ok {
		conn.Close()
		return nil, fmt.Errorf("sqldb: pgx made a %T, not a *stdlib.Conn", conn)
	}
	return &guardedConn{Conn: pc, b: c.b}, nil
}

// probeSoon connects once, on a goroutine of its own and within
// openerTimeout, when the breaker lets it (half-open: the probe; closed:
// a connect that counts), and closes the connection at once. A connect
// without a deadline is refused while the breaker is not closed (see
// above); a node whose only callers have no deadline (a worker's jobs)
// would otherwise never probe the server again, and its breaker would
// stay open. At most one such probe runs at a time.
func (c guardedConnector) probeSoon() {
	if c.probing == nil || !c.probing.CompareAndSwap(false, true) {
		return
	}
	go func() {
		defer c.probing.Store(false)
		if c.b.Allow() != nil {
			return // open still: the next refusal tries again
		}
		ctx, cancel := context.WithTimeout(context.Background(), openerTimeout)
		defer cancel()
		conn, err := c.Connector.Connect(ctx)
		done(ctx, c.b, err)
		if conn != nil {
			conn.Close()
		}
	}()
}

// done records the outcome of a call b let through. A call whose ctx the
// caller cancelled tells nothing about the server (pgx's ping then says
// driver.ErrBadConn all the same).
func done(ctx context.Context, b *breaker.Breaker, err error) {
	if err != nil && errors.Is(ctx.Err(), context.Canceled) {
		err = context.Canceled // b.Done: a success while closed, a failure while probing
	}
	b.Done(err)
}

// guardedConn is one of pgx's connections behind its database's breaker.
// Embedding *stdlib.Conn keeps every optional interface pgx's connection
// implements (driver.NamedValueChecker above all, which lets pgx's own
// types through as arguments); the methods that reach the server are
// overridden to ask the breaker. database/sql uses a connection from one
// goroutine at a time.
type guardedConn struct {
	*stdlib.Conn
	b *breaker.Breaker
}

// guarded runs call, one request to the server on c, behind the breaker.
// A connection pgx knows is gone returns driver.ErrBadConn without
// reaching the server: that neither asks the breaker nor counts.
func guarded[T any](ctx context.Context, c *guardedConn, call func() (T, error)) (T, error) {
	if c.Conn.Conn().IsClosed() {
		var zero T
		return zero, driver.ErrBadConn
	}
	if err := c.b.Allow(); err != nil {
		var zero T
		return zero, err
	}
	v, err := call()
	done(ctx, c.b, err)
	return v, err
}

func (c *guardedConn) ExecContext(ctx context.Context, query string, args []driver.NamedValue) (driver.Result, error) {
	return guarded(ctx, c, func() (driver.Result, error) { return c.Conn.ExecContext(ctx, query, args) })
}

func (c *guardedConn) QueryContext(ctx context.Context, query string, args []driver.NamedValue) (driver.Rows, error) {
	return guarded(ctx, c, func() (driver.Rows, error) { return c.Conn.QueryContext(ctx, query, args) })
}

func (c *guardedConn) BeginTx(ctx context.Context, opts driver.TxOptions) (driver.Tx, error) {
	return guarded(ctx, c, func() (driver.Tx, error) { return c.Conn.BeginTx(ctx, opts) })
}

func (c *guardedConn) PrepareContext(ctx context.Context, query string) (driver.Stmt, error) {
	return guarded(ctx, c, func() (driver.Stmt, error) { return c.Conn.PrepareContext(ctx, query) })
}

func (c *guardedConn) Ping(ctx context.Context) error {
	_, err := guarded(ctx, c, func() (struct{}, error) { return struct{}{}, c.Conn.Ping(ctx) })
	return err
}

// ResetSession runs before database/sql hands out a pooled connection;
// pgx pings the server there when the connection sat idle over a second.
// While the breaker is not closed that ping is skipped (it would wait on a
// server the breaker is there to spare callers from), and the call that
// follows asks the breaker. A failed ping counts against the breaker: the
// caller waited it out and database/sql may give up without another call.
func (c *guardedConn) ResetSession(ctx context.Context) error {
	pc := c.Conn.Conn()
	if pc.IsClosed() || pc.PgConn().TxStatus() != 'I' { // pgx's own checks, before its ping
		return driver.ErrBadConn
	}
	if !c.b.Closed() {
		return nil
	}
	err := c.Conn.ResetSession(ctx)
	if err != nil && !errors.Is(ctx.Err(), context.Canceled) {
		c.b.Failure()
	}
	return err
}
