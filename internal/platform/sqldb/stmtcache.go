package sqldb

import (
	"context"
	"database/sql/driver"
	"errors"

	"modernc.org/sqlite"
)

// The SQLite driver parses every statement it is given anew; in the order
// flow that was a fifth of the CPU. stmtConnector hands out connections
// that keep their prepared statements, per connection (a SQLite statement
// belongs to one).

// maxCachedStmts bounds the statements one connection keeps. A new one
// beyond it evicts one at random, so queries that are each used once (ids
// written into the SQL) cannot crowd out the ones used all the time.
const maxCachedStmts = 256

type stmtConnector struct {
	dsn string
	drv *sqlite.Driver
}

func (c stmtConnector) Connect(context.Context) (driver.Conn, error) {
	conn, err := c.drv.Open(c.dsn)
	if err != nil {
		return nil, err
	}
	return &stmtConn{Conn: conn, stmts: map[string]*cachedStmt{}}, nil
}

func (c stmtConnector) Driver() driver.Driver { return c.drv }

// stmtConn is used by one goroutine at a time (database/sql's rule), so
// its cache needs no lock.
type stmtConn struct {
	driver.Conn
	stmts map[string]*cachedStmt
}

type cachedStmt struct {
	s    driver.Stmt
	busy bool // its rows are open
}

var errNoContext = errors.New("sqldb: driver statement lacks context methods")

// stmt returns a prepared statement for query and the function to call
// when done with it. A statement already in use (its rows still open) is
// not shared: the query gets one of its own.
func (c *stmtConn) stmt(ctx context.Context, query string) (driver.Stmt, func(), error) {
	if cs := c.stmts[query]; cs != nil && !cs.busy {
		cs.busy = true
		return cs.s, func() { cs.busy = false }, nil
	}
	s, err := c.Conn.(driver.ConnPrepareContext).PrepareContext(ctx, query)
	if err != nil {
		return nil, nil, err
	}
	if _, ok := c.stmts[query]; ok {
		return s, func() { s.Close() }, nil
	}
	if len(c.stmts) >= maxCachedStmts {
		for q, cs := range c.stmts { // map order is random
			if !cs.busy {
				cs.s.Close()
				delete(c.stmts, q)
				break
			}
		}
	}
	cs := &cachedStmt{s: s, busy: true}
	c.stmts[query] = cs
	return s, func() { cs.busy = false }, nil
}

func (c *stmtConn) ExecContext(ctx context.Context, query string, args []driver.NamedValue) (driver.Result, error) {
	s, done, err := c.stmt(ctx, query)
	if err != nil {
		return nil, err
	}
	defer done()
	x, ok := s.(driver.StmtExecContext)
	if !ok {
		return nil, errNoContext
	}
	return x.ExecContext(ctx, args)
}

func (c *stmtConn) QueryContext(ctx context.Context, query string, args []driver.NamedValue) (driver.Rows, error) {
	s, done, err := c.stmt(ctx, query)
	if err != nil {
		return nil, err
	}
	q, ok := s.(driver.StmtQueryContext)
	if !ok {
		done()
		return nil, errNoContext
	}
	rows, err := q.QueryContext(ctx, args)
	if err != nil {
		done()
		return nil, err
	}
	return &stmtRows{Rows: rows, done: done}, nil
}

func (c *stmtConn) PrepareContext(ctx context.Context, query string) (driver.Stmt, error) {
	return c.Conn.(driver.ConnPrepareContext).PrepareContext(ctx, query)
}

func (c *stmtConn) BeginTx(ctx context.Context, opts driver.TxOptions) (driver.Tx, error) {
	return c.Conn.(driver.ConnBeginTx).BeginTx(ctx, opts)
}

func (c *stmtConn) ResetSession(ctx context.Context) error {
	if r, ok := c.Conn.(driver.SessionResetter); ok {
		return r.ResetSession(ctx)
	}
	return nil
}

func (c *stmtConn) IsValid() bool {
	if v, ok := c.Conn.(driver.Validator); ok {
		return v.IsValid()
	}
	return true
}

func (c *stmtConn) Ping(ctx context.Context) error {
	if p, ok := c.Conn.(driver.Pinger); ok {
		return p.Ping(ctx)
	}
	return nil
}

func (c *stmtConn) Close() error {
	for _, cs := range c.stmts {
		cs.s.Close()
	}
	c.stmts = nil
	return c.Conn.Close()
}

// stmtRows gives the statement back when the rows close.
type stmtRows struct {
	driver.Rows
	done func()
}

func (r *stmtRows) Close() error {
	err := r.Rows.Close()
	if r.done != nil {
		r.done()
		r.done = nil
	}
	return err
}
