// Package sqldb opens surge's relational stores — SQLite files (embedded
// mode) or PostgreSQL primaries (distributed mode) — routes the 1024 logical
// shards onto them, and migrates every one of them.
//
// Both engines speak the same SQL: $N placeholders, BIGINT, TEXT, INTEGER,
// ON CONFLICT, RETURNING. The first physical database is the main one: it
// holds everything that is not an order (stores, menus, users, stock ...);
// with one database it is also the only shard.
package sqldb

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/pressly/goose/v3"
	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"

	"github.com/surge-platform/surge/internal/platform/breaker"
	"github.com/surge-platform/surge/internal/platform/id"
)

// Engine names a database engine.
type Engine string

const (
	SQLite   Engine = "sqlite"
	Postgres Engine = "postgres"
)

//go:embed migrations/*.sql
var migrations embed.FS

// DB is one physical database. W is for writes and transactions, R for
// reads; on PostgreSQL they are the same pool, on SQLite W holds a single
// connection (SQLite has one writer per file; queuing in the pool beats
// busy-waiting on locks) and R several.
type DB struct {
	Engine Engine
	Name   string // for logs: file path or DSN with the password masked
	W      *sql.DB
	R      *sql.DB

	batch   *batcher         // SQLite: group commit of Tx, Exec and Lazy
	breaker *breaker.Breaker // PostgreSQL: see breaker.go
}

// Close closes both pools.
func (d *DB) Close() error {
	if d.batch != nil {
		d.batch.close()
	}
	err := d.W.Close()
	if d.R != d.W {
		err = errors.Join(err, d.R.Close())
	}
	return err
}

// Options tune Open. The zero value works.
type Options struct {
	MaxConns int // per PostgreSQL database; 0 = 8 x GOMAXPROCS
}

// Cluster is the set of physical databases and the logical shard table.
type Cluster struct {
	shards []*DB
	table  [id.Genes]uint16 // logical shard -> index into shards
}

// Open opens the databases named by urls:
//
//	sqlite:DIR[?shards=N&sync=full]  N SQLite files DIR/shard-<i>.db (default N=4,
//	                                 synchronous=NORMAL; sync=full survives power loss)
//	postgres://...                   one PostgreSQL database; give several URLs for
//	                                 several physical shards (the first is the main one)
//
// Engines cannot be mixed. Open does not migrate; call Migrate.
func Open(ctx context.Context, urls []string, opt Options) (*Cluster, error) {
	if len(urls) == 0 {
		return nil, errors.New("sqldb: no database url")
	}
	var dbs []*DB
	fail := func(err error) (*Cluster, error) {
		for _, d := range dbs {
			d.Close()
		}
		return nil, err
	}
	for _, u := range urls {
		switch {
		case strings.HasPrefix(u, "sqlite:"):
			if len(urls) > 1 {
				return fail(errors.New("sqldb: give one sqlite: url (use ?shards=N for several files)"))
			}
			got, err := openSQLite(strings.TrimPrefix(u, "sqlite:"))
			if err != nil {
				return fail(err)
			}
			dbs = append(dbs, got...)
		case strings.HasPrefix(u, "postgres://"), strings.HasPrefix(u, "postgresql://"):
			d, err := openPostgres(u, opt)
			if err != nil {
				return fail(err)
			}
			dbs = append(dbs, d)
		default:
			return fail(fmt.Errorf("sqldb: unsupported database url %q (want sqlite:DIR or postgres://...)", Mask(u)))
		}
	}
	c := NewCluster(dbs)
	if err := c.Ping(ctx); err != nil {
		return fail(classify(err))
	}
	return c, nil
}

// Errors of Open, besides the network's own (connection refused, timeouts).
var (
	ErrNoDatabase = errors.New("sqldb: the database does not exist")
	ErrAuth       = errors.New("sqldb: authentication failed")
)

// classify marks a PostgreSQL server's refusal to connect with ErrNoDatabase
// or ErrAuth, keeping the server's message.
func classify(err error) error {
	var pg *pgconn.PgError
	if !errors.As(err, &pg) {
		return err
	}
	switch pg.Code {
	case "3D000": // invalid_catalog_name
		return fmt.Errorf("%w: %w", ErrNoDatabase, err)
	case "28P01", "28000": // invalid_password, invalid_authorization_specification
		return fmt.Errorf("%w: %w", ErrAuth, err)
	}
	return err
}

// NewCluster routes the logical shards onto dbs in contiguous ranges:
// logical l lives on dbs[l*len(dbs)/1024].
func NewCluster(dbs []*DB) *Cluster {
	c := &Cluster{shards: dbs}
	for l := range c.table {
		c.table[l] = uint16(l * len(dbs) / id.Genes)
	}
	return c
}

func openSQLite(spec string) ([]*DB, error) {
	dir, query, _ := strings.Cut(spec, "?")
	q, err := url.ParseQuery(query)
	if err != nil {
		return nil, fmt.Errorf("sqldb: sqlite options %q: %w", query, err)
	}
	n := 4
	if s := q.Get("shards"); s != "" {
		if n, err = strconv.Atoi(s); err != nil || n < 1 || n > id.Genes {
			return nil, fmt.Errorf("sqldb: sqlite shards=%q: want 1..%d", s, id.Genes)
		}
	}
	sync := "NORMAL"
	switch q.Get("sync") {
	case "", "normal":
	case "full":
		sync = "FULL"
	default:
		return nil, fmt.Errorf("sqldb: sqlite sync=%q: want normal or full", q.Get("sync"))
	}
	if dir == "" {
		dir = "."
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("sqldb: %w", err)
	}
	var dbs []*DB
	for i := range n {
		path := filepath.Join(dir, fmt.Sprintf("shard-%d.db", i))
		dsn := "file:" + path + "?_pragma=journal_mode(WAL)&_pragma=busy_timeout(10000)" +
			"&_pragma=synchronous(" + sync + ")&_txlock=immediate"
		// The writer keeps its temporary files in memory: a group commit's
		// savepoints copy each page they touch to a sub-journal, which past
		// 64 KiB spilled to a temporary file, a pwrite per page
		// (docs/capacity.md). A crash needs nothing in it. The cost: the
		// writer's own sorts (a migration's CREATE INDEX) are held in memory
		// too. The readers use no savepoints and keep the default.
		w := sql.OpenDB(stmtConnector{dsn: dsn + "&_pragma=temp_store(memory)", drv: &sqlite.Driver{}})
		w.SetMaxOpenConns(1)
		w.SetMaxIdleConns(1)
		w.SetConnMaxLifetime(0)
		r := sql.OpenDB(stmtConnector{dsn: dsn + "&_pragma=query_only(1)", drv: &sqlite.Driver{}})
		r.SetMaxOpenConns(2 * runtime.GOMAXPROCS(0))
		r.SetMaxIdleConns(2 * runtime.GOMAXPROCS(0))
		dbs = append(dbs, &DB{Engine: SQLite, Name: path, W: w, R: r, batch: newBatcher(w)})
	}
	return dbs, nil
}

// ConnectTimeout bounds every new PostgreSQL connection whose URL does not
// set connect_timeout itself.
const ConnectTimeout = 5 * time.Second

func openPostgres(dsn string, opt Options) (*DB, error) {
	name := Mask(dsn)
	if u, err := url.Parse(dsn); err == nil && !u.Query().Has("connect_timeout") {
		q := u.Query()
		q.Set("connect_timeout", strconv.Itoa(int(ConnectTimeout/time.Second)))
		u.RawQuery = q.Encode()
		dsn = u.String()
	}
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		return nil, fmt.Errorf("sqldb: %s: %w", name, err)
	}
	cfg.DialFunc = markDial(cfg.DialFunc) // a broken connection's errors say they came from here (unavailable.go)
	br := breaker.New("sqldb "+name, serverFailed)
	db := sql.OpenDB(guardedConnector{Connector: stdlib.GetConnector(*cfg), b: br, probing: new(atomic.Bool)})
	n := opt.MaxConns
	if n <= 0 {
		n = 8 * runtime.GOMAXPROCS(0)
	}
	db.SetMaxOpenConns(n)
	db.SetMaxIdleConns(n)
	return &DB{Engine: Postgres, Name: name, W: db, R: db, breaker: br}, nil
}

// Mask hides the password of a URL, or of each URL in a comma-separated
// list (nats://a:p@h1,nats://b:q@h2), for printing. A URL that does not
// parse loses all of its user information.
func Mask(raw string) string {
	if strings.Contains(raw, ",") {
		parts := strings.Split(raw, ",")
		for i, p := range parts {
			parts[i] = Mask(p)
		}
		return strings.Join(parts, ",")
	}
	u, err := url.Parse(raw)
	if err != nil {
		scheme, rest, ok := strings.Cut(raw, "://")
		if at := strings.LastIndex(rest, "@"); ok && at >= 0 {
			return scheme + "://xxxxx@" + rest[at+1:]
		}
		return raw
	}
	if u.User == nil {
		return raw
	}
	if _, ok := u.User.Password(); ok {
		u.User = url.UserPassword(u.User.Username(), "xxxxx")
	}
	return u.String()
}

// Main returns the main database.
func (c *Cluster) Main() *DB { return c.shards[0] }

// MainGene is a logical shard the main database always holds (the first
// range): waking the outbox relay for it wakes the main database's.
const MainGene = 0

// Shards returns the physical databases, main first.
func (c *Cluster) Shards() []*DB { return c.shards }

// Physical returns the index of the physical database that holds logical shard l.
func (c *Cluster) Physical(l int) int { return int(c.table[l%id.Genes]) }

// ForGene returns the database of logical shard gene.
func (c *Cluster) ForGene(gene int) *DB { return c.shards[c.Physical(gene)] }

// ForID returns the database that holds the row with id (by its gene).
func (c *Cluster) ForID(x int64) *DB { return c.ForGene(id.Gene(x)) }

// Ping checks every database.
func (c *Cluster) Ping(ctx context.Context) error {
	for _, d := range c.shards {
		if err := d.W.PingContext(ctx); err != nil {
			return fmt.Errorf("sqldb: ping %s: %w", d.Name, err)
		}
	}
	return nil
}

// Migrate applies the embedded migrations to every database.
func (c *Cluster) Migrate(ctx context.Context) error {
	sub, err := fs.Sub(migrations, "migrations")
	if err != nil {
		return err
	}
	for _, d := range c.shards {
		dialect := goose.DialectSQLite3
		if d.Engine == Postgres {
			dialect = goose.DialectPostgres
		}
		p, err := goose.NewProvider(dialect, d.W, sub)
		if err != nil {
			return fmt.Errorf("sqldb: migrate %s: %w", d.Name, err)
		}
		if _, err := p.Up(ctx); err != nil {
			return fmt.Errorf("sqldb: migrate %s: %w", d.Name, err)
		}
	}
	return nil
}

// Close closes every database.
func (c *Cluster) Close() error {
	var err error
	for _, d := range c.shards {
		err = errors.Join(err, d.Close())
	}
	return err
}

// IsUnique reports whether err is a unique or primary key violation.
func IsUnique(err error) bool {
	var pg *pgconn.PgError
	if errors.As(err, &pg) {
		return pg.Code == "23505"
	}
	var se *sqlite.Error
	if errors.As(err, &se) {
		return se.Code() == sqlite3.SQLITE_CONSTRAINT_UNIQUE || se.Code() == sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY
	}
	return false
}

// IsUniqueOn reports whether err is a PostgreSQL unique or primary key
// violation on table (for a statement that writes several tables).
func IsUniqueOn(err error, table string) bool {
	var pg *pgconn.PgError
	return errors.As(err, &pg) && pg.Code == "23505" && pg.TableName == table
}

// Tx runs fn in a transaction on db's writer, committing when fn returns
// nil. A connection found broken before the commit (driver.ErrBadConn: the
// server or a cancelled request closed it while it sat in the pool) is
// replaced and fn runs again, at most twice; fn must not have effects
// outside the transaction. A failed commit is never retried.
//
// On SQLite, transactions waiting for the writer commit together (see
// batch.go): fn may run inside a transaction shared with others, in a
// savepoint of its own, and Tx returns after the shared commit.
func Tx(ctx context.Context, db *DB, fn func(*sql.Tx) error) error {
	if db.batch != nil {
		return db.batch.do(ctx, fn)
	}
	for attempt := 0; ; attempt++ {
		tx, err := db.W.BeginTx(ctx, nil)
		if err != nil {
			return err
		}
		if err := fn(tx); err != nil {
			tx.Rollback()
			if errors.Is(err, driver.ErrBadConn) && attempt < 2 && ctx.Err() == nil {
				continue
			}
			return err
		}
		return tx.Commit()
	}
}

// Lazy runs one statement whose loss in a database crash is harmless (it
// is redone: deleting relayed outbox rows, recording seen events) without
// waiting for its commit to reach the disk: on PostgreSQL with
// synchronous_commit off for that transaction, on SQLite as a plain
// statement (its commits do not wait for an fsync in WAL mode with
// synchronous=NORMAL anyway).
func Lazy(ctx context.Context, db *DB, query string, args ...any) error {
	if db.Engine != Postgres {
		_, err := Exec(ctx, db, query, args...)
		return err
	}
	return Tx(ctx, db, func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, `SET LOCAL synchronous_commit TO OFF`); err != nil {
			return err
		}
		_, err := tx.ExecContext(ctx, query, args...)
		return err
	})
}

// Exec runs one writing statement and returns the rows it affected; on
// SQLite it commits with the transactions waiting for the writer (Tx).
func Exec(ctx context.Context, db *DB, query string, args ...any) (int64, error) {
	if db.batch == nil {
		res, err := db.W.ExecContext(ctx, query, args...)
		if err != nil {
			return 0, err
		}
		return res.RowsAffected()
	}
	var n int64
	err := db.batch.do(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, query, args...)
		if err != nil {
			return err
		}
		n, err = res.RowsAffected()
		return err
	})
	return n, err
}

// IDs runs a query on pool that selects one integer column and returns the
// values (ids to work through).
func IDs(ctx context.Context, pool *sql.DB, query string, args ...any) ([]int64, error) {
	rows, err := pool.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []int64
	for rows.Next() {
		var x int64
		if err := rows.Scan(&x); err != nil {
			return nil, err
		}
		out = append(out, x)
	}
	return out, rows.Err()
}
