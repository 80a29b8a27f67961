// Package sqldbtest gives every test a fresh, migrated cluster: SQLite files
// in a temp dir, or new databases on the PostgreSQL server named by
// SURGE_TEST_PG (default postgres://postgres@127.0.0.1:5432/postgres), dropped
// when the test ends.
package sqldbtest

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"fmt"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib"

	"github.com/surge-platform/surge/internal/platform/faultnet"
	"github.com/surge-platform/surge/internal/platform/sqldb"
)

// PostgresServer returns the admin URL of the test PostgreSQL server.
func PostgresServer() string {
	if u := os.Getenv("SURGE_TEST_PG"); u != "" {
		return u
	}
	return "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"
}

// SQLiteURL returns a sqlite: URL for n shard files in a fresh temp dir.
func SQLiteURL(tb testing.TB, n int) string {
	tb.Helper()
	return fmt.Sprintf("sqlite:%s?shards=%d", tb.TempDir(), n)
}

// PostgresURLs creates n fresh databases and returns their URLs; they are
// dropped at the end of the test.
func PostgresURLs(tb testing.TB, n int) []string {
	tb.Helper()
	admin := PostgresServer()
	db, err := sql.Open("pgx", admin)
	if err != nil {
		tb.Fatalf("postgres: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := db.PingContext(ctx); err != nil {
		db.Close()
		tb.Fatalf("postgres at %s is not reachable (run scripts/deps.sh): %v", sqldb.Mask(admin), err)
	}
	b := make([]byte, 6)
	rand.Read(b)
	prefix := "surge_t_" + hex.EncodeToString(b)
	base, _ := url.Parse(admin)
	var urls, names []string
	for i := range n {
		name := fmt.Sprintf("%s_%d", prefix, i)
		if _, err := db.ExecContext(ctx, "CREATE DATABASE "+name); err != nil {
			tb.Fatalf("create database %s: %v", name, err)
		}
		names = append(names, name)
		u := *base
		u.Path = "/" + name
		urls = append(urls, u.String())
	}
	tb.Cleanup(func() {
		defer db.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		for _, name := range names {
			db.ExecContext(ctx, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)")
		}
	})
	return urls
}

// PostgresViaProxy creates a fresh database (dropped at the end of the
// test) and returns its URL through a fault-injecting proxy to the server,
// for tests of what a database that is down or hung does to its callers.
func PostgresViaProxy(tb testing.TB) (string, *faultnet.Proxy) {
	tb.Helper()
	u, err := url.Parse(PostgresURLs(tb, 1)[0])
	if err != nil {
		tb.Fatal(err)
	}
	p := faultnet.Start(tb, u.Host)
	u.Host = p.Addr()
	return u.String(), p
}

// Open opens and migrates a cluster on urls, closed at the end of the test.
func Open(tb testing.TB, urls ...string) *sqldb.Cluster {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c, err := sqldb.Open(ctx, urls, sqldb.Options{MaxConns: 8})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { c.Close() })
	if err := c.Migrate(ctx); err != nil {
		tb.Fatal(err)
	}
	return c
}

// Engines lists the cluster makers a conformance test runs against: SQLite
// and PostgreSQL with 1, 2 and 4 physical shards.
func Engines() []struct {
	Name string
	Open func(testing.TB) *sqldb.Cluster
} {
	type eng = struct {
		Name string
		Open func(testing.TB) *sqldb.Cluster
	}
	var out []eng
	for _, n := range []int{1, 2, 4} {
		out = append(out,
			eng{fmt.Sprintf("sqlite/%d", n), func(tb testing.TB) *sqldb.Cluster { return Open(tb, SQLiteURL(tb, n)) }},
			eng{fmt.Sprintf("postgres/%d", n), func(tb testing.TB) *sqldb.Cluster { return Open(tb, PostgresURLs(tb, n)...) }},
		)
	}
	return out
}

// UsesIndex fails the test unless the engine's plan for query (with args)
// reads index. PostgreSQL is told to avoid a sequential scan, which it
// prefers on a small table: the question is whether the index can serve
// the query (a partial index serves only a query that names its
// condition), not whether it is the cheapest way today.
func UsesIndex(tb testing.TB, d *sqldb.DB, index, query string, args ...any) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := d.W.Conn(ctx)
	if err != nil {
		tb.Fatal(err)
	}
	defer conn.Close()
	explain, want := "EXPLAIN QUERY PLAN ", []string{"USING INDEX " + index + " ", "USING COVERING INDEX " + index + " "}
	if d.Engine == sqldb.Postgres {
		explain, want = "EXPLAIN ", []string{" using " + index + " on ", "Bitmap Index Scan on " + index + " "}
		if _, err := conn.ExecContext(ctx, "SET enable_seqscan = off"); err != nil {
			tb.Fatal(err)
		}
		defer conn.ExecContext(context.Background(), "RESET enable_seqscan")
	}
	rows, err := conn.QueryContext(ctx, explain+query, args...)
	if err != nil {
		tb.Fatalf("%s%s: %v", explain, query, err)
	}
	defer rows.Close()
	cols, _ := rows.Columns()
	var plan []string
	for rows.Next() {
		vals := make([]any, len(cols))
		ptrs := make([]any, len(cols))
		for i := range vals {
			ptrs[i] = &vals[i]
		}
		if err := rows.Scan(ptrs...); err != nil {
			tb.Fatal(err)
		}
		plan = append(plan, fmt.Sprint(vals[len(vals)-1])) // SQLite: detail; PostgreSQL: the line
	}
	if err := rows.Err(); err != nil {
		tb.Fatal(err)
	}
	for _, line := range plan {
		for _, w := range want {
			if strings.Contains(line+" ", w) {
				return
			}
		}
	}
	tb.Errorf("%s: the plan does not read %s:\n%s\n%s", d.Engine, index, query, strings.Join(plan, "\n"))
}
