package sqldb_test

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"reflect"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/stdlib"

	"github.com/surge-platform/surge/internal/platform/breaker/breakertest"
	"github.com/surge-platform/surge/internal/platform/errkind"
	"github.com/surge-platform/surge/internal/platform/faultnet"
	"github.com/surge-platform/surge/internal/platform/sqldb"
	"github.com/surge-platform/surge/internal/platform/sqldb/sqldbtest"
)

// read is one query with a deadline of its own.
func read(db *sqldb.DB, wait time.Duration) breakertest.Call {
	return breakertest.Within(wait, func(ctx context.Context) error {
		_, err := count(ctx, db)
		return err
	})
}

// openViaProxy opens a fresh PostgreSQL database through a fault-injecting
// proxy.
func openViaProxy(t *testing.T) (*sqldb.Cluster, *faultnet.Proxy) {
	t.Helper()
	u, proxy := sqldbtest.PostgresViaProxy(t)
	return sqldbtest.Open(t, u), proxy
}

// raise makes the server answer with an error of SQLSTATE code.
func raise(ctx context.Context, db *sqldb.DB, code string) error {
	_, err := db.W.ExecContext(ctx, `DO $$ BEGIN RAISE EXCEPTION 'test' USING ERRCODE = '`+code+`'; END $$`)
	return err
}

// TestBreakerOpensOnStall: with the PostgreSQL server hung, calls wait out
// their deadline until the database's breaker opens; then reads,
// transactions and pings fail at once as Unavailable; after Resume and the
// breaker's delay, calls go through and close it again. The server's
// answers to the caller's mistakes, to contention and to a cancelled ctx
// do not count against it.
func TestBreakerOpensOnStall(t *testing.T) {
	t.Parallel()
	c, proxy := openViaProxy(t)
	db := c.Main()
	b := db.Breaker()
	if b == nil {
		t.Fatal("a PostgreSQL database without a breaker")
	}
	ctx := t.Context()
	if _, err := db.W.ExecContext(ctx, `INSERT INTO settings (name, value) VALUES ('k', 'v')`); err != nil {
		t.Fatal(err)
	}
	for i := range 30 {
		_, err := db.W.ExecContext(ctx, `INSERT INTO settings (name, value) VALUES ('k', 'w')`)
		if !sqldb.IsUnique(err) {
			t.Fatalf("duplicate insert: %v", err)
		}
		if _, err := db.R.ExecContext(ctx, `SELECT * FROM no_such_table`); err == nil {
			t.Fatal("a query of a table that does not exist worked")
		}
		for _, code := range []string{"40001", "40P01", "55P03"} { // Unavailable to a client (retry), not the server failing
			if err := raise(ctx, db, code); errkind.Of(err) == nil || errkind.Of(err).Kind != errkind.Unavailable {
				t.Fatalf("raise %s: %v", code, err)
			}
		}
		cctx, cancel := context.WithCancel(ctx)
		go func() { time.Sleep(time.Duration(i%3) * time.Millisecond); cancel() }()
		db.R.ExecContext(cctx, `SELECT pg_sleep(0.05)`)
		cancel()
	}
	if b.State() != "closed" {
		t.Fatalf("the caller's errors opened it: %s", b.State())
	}

	// A healthy connection kept out of the stalled calls' way, idle in
	// the pool over a second when the breaker is open: pgx would ping the
	// server before handing it out again.
	held, err := db.W.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	idleFrom := time.Now()

	proxy.Stall()
	const deadline = 300 * time.Millisecond
	opened := breakertest.Trip(t, b, read(db, deadline))
	held.Close()
	time.Sleep(time.Until(idleFrom.Add(1100 * time.Millisecond)))
	slowest := breakertest.Refuses(t, b, 1000, deadline/3, read(db, deadline))
	breakertest.Refuses(t, b, 100, deadline/3, breakertest.Within(deadline, func(ctx context.Context) error {
		_, err := write(ctx, db)
		return err
	}))
	breakertest.Refuses(t, b, 100, deadline/3, breakertest.Within(deadline, c.Ping))
	t.Logf("opened after %v; 1,000 refused reads, the slowest %v", opened.Round(time.Millisecond), slowest)

	proxy.Resume()
	closed := breakertest.Closes(t, b, read(db, 5*time.Second))
	if _, err := write(ctx, db); err != nil {
		t.Fatalf("a write after it closed: %v", err)
	}
	t.Logf("closed %v after the server came back", closed.Round(time.Millisecond))
}

// Many goroutines reading, writing and pinging while the server hangs,
// through the breaker's open, half-open and open again: no panic, every
// error of kind Unavailable; once the server is back no permit is left
// taken (the breaker closes) and the database serves them again.
func TestBreakerRacingCalls(t *testing.T) {
	t.Parallel()
	c, proxy := openViaProxy(t)
	db := c.Main()
	proxy.Stall()
	const wait = 200 * time.Millisecond
	calls, refused := breakertest.Race(t, db.Breaker(), read(db, wait),
		breakertest.Within(wait, func(ctx context.Context) error { _, err := write(ctx, db); return err }),
		breakertest.Within(wait, c.Ping))
	t.Logf("%d calls, %d refused", calls, refused)
	proxy.Resume()
	breakertest.Closes(t, db.Breaker(), read(db, 5*time.Second))
	if _, err := write(t.Context(), db); err != nil {
		t.Fatalf("a write after it closed: %v", err)
	}
}

// The connections database/sql gets implement what pgx's do (its
// NamedValueChecker is what lets a Go slice through as an array), and are
// not pgx's own: the breaker is in front of them.
func TestBreakerKeepsThePgxInterfaces(t *testing.T) {
	t.Parallel()
	c := sqldbtest.Open(t, sqldbtest.PostgresURLs(t, 1)...)
	db := c.Main()
	ctx := t.Context()
	conn, err := db.W.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	var got reflect.Type
	conn.Raw(func(dc any) error { got = reflect.TypeOf(dc); return nil })
	pgx := reflect.TypeOf((*stdlib.Conn)(nil))
	if got == pgx {
		t.Fatalf("database/sql talks to %v directly: no breaker in front", got)
	}
	for _, iface := range []reflect.Type{
		reflect.TypeFor[driver.ConnBeginTx](), reflect.TypeFor[driver.ExecerContext](),
		reflect.TypeFor[driver.QueryerContext](), reflect.TypeFor[driver.ConnPrepareContext](),
		reflect.TypeFor[driver.Pinger](), reflect.TypeFor[driver.NamedValueChecker](),
		reflect.TypeFor[driver.SessionResetter](), reflect.TypeFor[driver.Validator](),
		reflect.TypeFor[driver.Execer](), reflect.TypeFor[driver.Queryer](),
	} {
		if want, have := pgx.Implements(iface), got.Implements(iface); want != have {
			t.Errorf("%v: pgx's connection implements it: %v; the guarded one: %v", iface, want, have)
		}
	}
	var n int
	if err := conn.QueryRowContext(ctx, `SELECT cardinality($1::bigint[])`, []int64{1, 2, 3}).Scan(&n); err != nil || n != 3 {
		t.Fatalf("a []int64 argument: %d, %v", n, err)
	}
}

// A call to a server that answers costs the breaker two uncontended lock
// round trips and no allocation: the ratio of guarded to bare is ~1.
func BenchmarkGuardedQuery(b *testing.B) {
	u := sqldbtest.PostgresURLs(b, 1)[0]
	c := sqldbtest.Open(b, u)
	bare, err := sql.Open("pgx", u)
	if err != nil {
		b.Fatal(err)
	}
	defer bare.Close()
	for _, p := range []struct {
		name string
		db   *sql.DB
	}{{"bare", bare}, {"guarded", c.Main().R}} {
		b.Run(p.name, func(b *testing.B) {
			ctx := context.Background()
			b.ReportAllocs()
			for b.Loop() {
				var n int
				if err := p.db.QueryRowContext(ctx, `SELECT 1`).Scan(&n); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
