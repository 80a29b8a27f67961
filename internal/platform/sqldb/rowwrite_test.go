package sqldb_test

import (
	"context"
	"database/sql"
	"fmt"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/surge-platform/surge/internal/platform/sqldb"
	"github.com/surge-platform/surge/internal/platform/sqldb/sqldbtest"
)

// BenchmarkRowWrite is what one row write costs on SQLite's writer, as
// surge runs it (its pragmas, its cached statements), in CPU per row
// (cpu-ns/op): the order's paid compare-and-set, in transactions of 100,
// on a table of 60,000 orders. "update" writes only; "returning" reads
// the row back with RETURNING, as the notice's transaction does;
// "returning id" reads one column back; "update+select" reads the row
// with a second statement; "insert" writes a new order's row instead,
// "insert in a savepoint" as a group commit's member does, and "group
// commit" through the group commit itself (docs/capacity.md, "What a
// write costs on SQLite").
func BenchmarkRowWrite(b *testing.B) {
	const rows = 60000
	const cols = `id, user_id, store_id, status, version, total, payable, pickup_code, payment_id, cancel_reason,
		created_at, updated_at, expires_at, discounts, refunded, sale_id, stock_held`
	ctx := context.Background()
	// A fresh database of the migrations with orders 0..rows-1 in it.
	open := func(b *testing.B) *sqldb.DB {
		d := sqldbtest.Open(b, sqldbtest.SQLiteURL(b, 1)).Main()
		if _, err := d.W.ExecContext(ctx, `WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < $1)
			INSERT INTO orders (id, user_id, store_id, status, version, total, payable, created_at, updated_at, expires_at)
			SELECT i, i % 200, 3, 'pending_payment', 1, 100, 100, 1, 1, i FROM n`, rows-1); err != nil {
			b.Fatal(err)
		}
		return d
	}
	insert := func(tx *sql.Tx, id int64) error {
		_, err := tx.ExecContext(ctx, `INSERT INTO orders (id, user_id, store_id, status, version, total, payable,
			created_at, updated_at, expires_at) VALUES ($1, $2, 3, 'pending_payment', 1, 100, 100, 1, 1, $1)`, id, id%200)
		return err
	}
	for _, way := range []string{"update", "returning", "returning id", "update+select", "insert", "insert in a savepoint"} {
		b.Run(way, func(b *testing.B) {
			w := open(b).W
			var tx *sql.Tx
			var err error
			var v [17]any
			ptr := make([]any, len(v))
			for j := range v {
				ptr[j] = &v[j]
			}
			update := func(tx *sql.Tx, i int) error {
				switch way {
				case "insert":
					return insert(tx, int64(rows+i))
				case "insert in a savepoint": // as a member of a group commit
					if _, err := tx.ExecContext(ctx, `SAVEPOINT m`); err != nil {
						return err
					}
					if err := insert(tx, int64(rows+i)); err != nil {
						return err
					}
					_, err := tx.ExecContext(ctx, `RELEASE m`)
					return err
				}
				i %= rows
				const set = `UPDATE orders SET status = 'paid', version = version + 1, updated_at = $1, payment_id = $2
					WHERE id = $3 AND status = 'pending_payment'`
				if way == "returning id" {
					return tx.QueryRowContext(ctx, set+` RETURNING id`, 5, 7, i).Scan(ptr[0])
				}
				if way == "returning" {
					return tx.QueryRowContext(ctx, set+` RETURNING `+cols, 5, 7, i).Scan(ptr...)
				}
				r, err := tx.ExecContext(ctx, set, 5, 7, i)
				if err != nil {
					return err
				}
				if n, err := r.RowsAffected(); err != nil || n != 1 {
					return fmt.Errorf("order %d: %d rows paid (%v)", i, n, err)
				}
				if way == "update" {
					return nil
				}
				return tx.QueryRowContext(ctx, `SELECT `+cols+` FROM orders WHERE id = $1`, i).Scan(ptr...)
			}
			i := 0
			cpu := cpuTime()
			for b.Loop() {
				if i > 0 && i%rows == 0 && !strings.HasPrefix(way, "insert") {
					// Every order paid: all of them pending again, off the clock.
					b.StopTimer()
					off := cpuTime()
					if _, err := w.ExecContext(ctx, `UPDATE orders SET status = 'pending_payment'`); err != nil {
						b.Fatal(err)
					}
					cpu += cpuTime() - off
					b.StartTimer()
				}
				if i%100 == 0 {
					if tx, err = w.BeginTx(ctx, nil); err != nil {
						b.Fatal(err)
					}
				}
				if err := update(tx, i); err != nil { // every one writes a row
					b.Fatal(err)
				}
				if i++; i%100 == 0 {
					if err := tx.Commit(); err != nil {
						b.Fatal(err)
					}
				}
			}
			if i%100 != 0 {
				if err := tx.Commit(); err != nil {
					b.Fatal(err)
				}
			}
			reportCPU(b, cpu)
		})
	}
	// The insert, each in a transaction of its own through the group
	// commit (sqldb.Tx: a savepoint per member, a commit per batch), from
	// 16 goroutines per core, on the same 60,000 orders: what the flow's
	// transactions pay on top of their statements.
	b.Run("group commit", func(b *testing.B) {
		d := open(b)
		var next atomic.Int64
		next.Store(rows - 1)
		b.SetParallelism(16)
		cpu := cpuTime()
		b.ResetTimer()
		defer reportCPU(b, cpu)
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				i := next.Add(1)
				err := sqldb.Tx(ctx, d, func(tx *sql.Tx) error { return insert(tx, i) })
				if err != nil {
					b.Error(err)
					return
				}
			}
		})
	})
}

// cpuTime is the CPU this process has used so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// reportCPU reports the process's CPU since from, per operation: with
// goroutines waiting on the writer, the clock's ns/op is not the cost.
func reportCPU(b *testing.B, from time.Duration) {
	b.ReportMetric(float64(cpuTime()-from)/float64(b.N), "cpu-ns/op")
}
