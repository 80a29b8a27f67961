package main

import (
	"context"
	"database/sql"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/surge-platform/surge/internal/platform/sqldb"
)

// embedded measures order placement in embedded mode (SQLite, the default
// four shard files) against a plain Go loop that writes the same rows
// through the same driver and pragmas (sqldb.Open of the same kind of
// directory): per order, one transaction of the key, the order, its two
// lines and its two outbox rows, on the shard file the order's user maps
// to. The loop runs one goroutine per file, as each file has one writer.
func embedded(ctx context.Context) error {
	// The shedder off: it refuses some of a closed loop of 32 connections
	// at this rate, and the benchmark is of the order path (overload is
	// --only overload).
	p, err := startPair("--log-level", "warn", "--shed", "off", "--admin-token", benchAdmin)
	if err != nil {
		return err
	}
	defer p.stop()
	base := "http://" + p.surgeAddr
	tokens, err := logins(base, *workers, 0)
	if err != nil {
		return err
	}
	body := `{"store_id":"1001","items":[{"sku_id":"1001006","qty":1},{"sku_id":"1001007","qty":2}]}`
	if _, err := runWrk(ctx, base+"/api/v1/orders", *workers, time.Second, orderScript(tokens, body, "warm")); err != nil {
		return err
	}

	dir, _ := os.MkdirTemp("", "surge-bench-sqlite-")
	defer os.RemoveAll(dir)
	c, err := sqldb.Open(ctx, []string{"sqlite:" + filepath.Join(dir, "db")}, sqldb.Options{})
	if err != nil {
		return err
	}
	defer c.Close()
	if err := c.Migrate(ctx); err != nil {
		return err
	}
	var bs, ss, cpo []float64
	var next atomic.Int64
	for r := range *rounds {
		n, err := plainLoop(ctx, c.Shards(), &next, *dur)
		if err != nil {
			return err
		}
		if r == 0 && *profile != "" {
			go saveProfile(base, *dur, *profile)
		}
		cpu0 := cpuTicks(p.surge.Process.Pid)
		s, err := runWrk(ctx, base+"/api/v1/orders", *workers, *dur, orderScript(tokens, body, fmt.Sprintf("r%d", r)))
		if err != nil {
			return err
		}
		cpu := time.Duration(cpuTicks(p.surge.Process.Pid)-cpu0) * 10 * time.Millisecond
		perOrder := cpu / time.Duration(max(1, s.RPS*s.Elapsed.Seconds()))
		if s.Bad > 0 {
			return fmt.Errorf("embedded orders: %d failed requests", s.Bad)
		}
		bs, ss = append(bs, float64(n)/dur.Seconds()), append(ss, s.RPS)
		cpo = append(cpo, float64(perOrder.Microseconds()))
		fmt.Printf("  embedded orders round: surge p50 %v p99 %v, CPU per order %v (the bus's included); wrk used %.0f%% of the cores\n",
			s.P50, s.P99, perOrder.Round(time.Microsecond), 100*s.CPUShare(runtime.NumCPU()))
	}
	fmt.Printf("  embedded orders: surge CPU per order, median %.0f µs\n", median(cpo))
	report(fmt.Sprintf("order placement on embedded SQLite (wrk, 1 thread, %d connections, a unique Idempotency-Key each, %v per round; the baseline writes the same rows, one transaction per order, from one plain Go loop per shard file)", *workers, *dur),
		"plain Go loop, same rows", "surge POST /orders", bs, ss, 0.7)
	return nil
}

// plainLoop writes orders into dbs for d, one goroutine per database, and
// returns how many it wrote.
func plainLoop(ctx context.Context, dbs []*sqldb.DB, next *atomic.Int64, d time.Duration) (int64, error) {
	end := time.Now().Add(d)
	var wrote atomic.Int64
	var first error
	var once sync.Once
	var wg sync.WaitGroup
	for _, db := range dbs {
		wg.Go(func() {
			for time.Now().Before(end) {
				if err := plainOrder(ctx, db.W, next.Add(1)); err != nil {
					once.Do(func() { first = err })
					return
				}
				wrote.Add(1)
			}
		})
	}
	wg.Wait()
	return wrote.Load(), first
}

// plainOrder writes one order's rows as surge's order transaction does.
func plainOrder(ctx context.Context, w *sql.DB, oid int64) error {
	tx, err := w.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	now := time.Now().UnixMilli()
	uid := 388000000000000000 + oid%1024
	created := fmt.Sprintf(`{"order_id":"%d","status":"pending_payment","total":3200,"discount":0,"payable":3200,"expires_at":"2026-11-23T15:00:00Z"}`, oid)
	event := fmt.Sprintf(`{"event_id":"%d","type":"order.created","order_id":"%d","user_id":"%d","store_id":"1001","status":"pending_payment","version":1,"payable":3200,"at":"2026-11-23T14:41:50.783Z"}`,
		oid+1<<60, oid, uid)
	stmts := []struct {
		q    string
		args []any
	}{
		{`INSERT INTO idempotency (user_id, idem_key, order_id, state, req_hash, body, created_at) VALUES ($1, $2, $3, 'done', $4, $5, $6)`,
			[]any{uid, fmt.Sprintf("plain-%d", oid), oid, "4f1c2a7d9e8b6c5a4f1c2a7d9e8b6c5a", created, now}},
		{`INSERT INTO orders (id, user_id, store_id, status, version, total, payable, created_at, updated_at, expires_at, discounts, sale_id, stock_held) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)`,
			[]any{oid, uid, 1001, "pending_payment", 1, 3200, 3200, now, now, now + 15*60*1000, "", 0, 0}},
		{`INSERT INTO order_items (order_id, line, sku_id, name, price, qty, payable, gift_of, discounts) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)`,
			[]any{oid, 0, 1001006, "Jasmine Tea", 1000, 1, 1000, 0, ""}},
		{`INSERT INTO order_items (order_id, line, sku_id, name, price, qty, payable, gift_of, discounts) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)`,
			[]any{oid, 1, 1001007, "Oolong", 1100, 2, 2200, 0, ""}},
		{`INSERT INTO outbox (id, subject, type, payload, headers, created_at) VALUES ($1, $2, $3, $4, $5, $6)`,
			[]any{oid + 1<<60, "orders.events.1.order.created", "order.created", event, "", now}},
		{`INSERT INTO outbox (id, subject, type, payload, headers, created_at) VALUES ($1, $2, $3, $4, $5, $6)`,
			[]any{oid + 2<<60, fmt.Sprintf("timers.order.%d", oid), "order.timer", fmt.Sprint(oid),
				`{"Nats-Schedule":"@at 2026-11-23T15:00:00Z","Nats-Schedule-Target":"timers.expire.1"}`, now}},
	}
	for _, s := range stmts {
		if _, err := tx.ExecContext(ctx, s.q, s.args...); err != nil {
			return fmt.Errorf("plain order: %w", err)
		}
	}
	return tx.Commit()
}
