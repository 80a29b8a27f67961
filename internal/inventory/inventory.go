// Package inventory owns limited stock: levels per SKU and reservations of
// stock against orders, in the main database.
//
// A reservation is keyed by the order id: it is taken with a conditional
// update (never below zero) plus a reservation row, in one transaction,
// before the order's own transaction; it is released by order id on cancel
// or expiry, or by the sweeper when its order never appeared. Every call is
// idempotent, so any step can be re-run after a crash.
package inventory

import (
	"cmp"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
	"time"

	"github.com/surge-platform/surge/internal/platform/errkind"
	"github.com/surge-platform/surge/internal/platform/sqldb"
)

var ErrSoldOut = errkind.New(errkind.Conflict, "sold_out", "not enough stock left")

// errHeld stops a Reserve that finds the order's reservation already made.
var errHeld = errors.New("inventory: reservation already held")

// Line is a quantity of one SKU.
type Line struct {
	SKU int64
	Qty int64
}

// Service manages stock in the cluster's main database.
type Service struct {
	db  *sqldb.DB
	now func() time.Time
}

// New returns a service on the main database of c.
func New(c *sqldb.Cluster) *Service { return &Service{db: c.Main(), now: time.Now} }

// MaxStock bounds the level an operator sets. Far below int64: whatever
// reservations give back on top of it never overflows (on SQLite an
// overflowing integer silently becomes a float).
const MaxStock = 1_000_000_000

// CheckLevel refuses a stock level outside 0..MaxStock.
func (s *Service) CheckLevel(qty int64) error {
	if qty < 0 || qty > MaxStock {
		return errkind.ErrInvalid.With("stock must be 0 to %d, got %d", MaxStock, qty)
	}
	return nil
}

// Set sets the stock level of sku (creating it); a level outside
// 0..MaxStock is invalid.
func (s *Service) Set(ctx context.Context, sku, qty int64) error {
	if err := s.CheckLevel(qty); err != nil {
		return err
	}
	_, err := s.db.W.ExecContext(ctx, `INSERT INTO stock (sku_id, qty) VALUES ($1, $2)
		ON CONFLICT (sku_id) DO UPDATE SET qty = excluded.qty`, sku, qty)
	if err != nil {
		return fmt.Errorf("set stock sku %d: %w", sku, err)
	}
	return nil
}

// Levels returns the stock of each sku that has a level.
func (s *Service) Levels(ctx context.Context, skus []int64) (map[int64]int64, error) {
	out := make(map[int64]int64, len(skus))
	if len(skus) == 0 {
		return out, nil
	}
	args := make([]any, len(skus))
	marks := make([]string, len(skus))
	for i, k := range skus {
		args[i], marks[i] = k, fmt.Sprintf("$%d", i+1)
	}
	rows, err := s.db.R.QueryContext(ctx, `SELECT sku_id, qty FROM stock WHERE sku_id IN (`+strings.Join(marks, ",")+`)`, args...)
	if err != nil {
		return nil, fmt.Errorf("stock levels: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var k, q int64
		if err := rows.Scan(&k, &q); err != nil {
			return nil, err
		}
		out[k] = q
	}
	return out, rows.Err()
}

// Reserve takes lines for orderID, all or nothing. It returns ErrSoldOut
// (naming the sku) when a line cannot be covered. Reserving again for an
// order that already holds a reservation is a no-op.
func (s *Service) Reserve(ctx context.Context, orderID int64, lines []Line) error {
	if len(lines) == 0 {
		return nil
	}
	lines = merge(lines)
	now := s.now().UnixMilli()
	err := sqldb.Tx(ctx, s.db, func(tx *sql.Tx) error {
		var held int
		if err := tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM stock_reservations WHERE order_id = $1`, orderID).Scan(&held); err != nil {
			return err
		}
		if held > 0 {
			// Already reserved (a retry that took over the order id): mark it
			// fresh so the sweeper does not take it back from under the retry.
			_, err := tx.ExecContext(ctx, `UPDATE stock_reservations SET created_at = $1 WHERE order_id = $2`, now, orderID)
			return err
		}
		// Reservation rows first: a concurrent Reserve of the same order
		// waits here for the first one and then finds its rows, so the same
		// reservation is never taken twice.
		for _, l := range lines {
			res, err := tx.ExecContext(ctx, `INSERT INTO stock_reservations (order_id, sku_id, qty, created_at)
				VALUES ($1, $2, $3, $4) ON CONFLICT (order_id, sku_id) DO NOTHING`, orderID, l.SKU, l.Qty, now)
			if err != nil {
				return err
			}
			if n, err := res.RowsAffected(); err != nil {
				return err
			} else if n == 0 {
				return errHeld
			}
		}
		for _, l := range lines { // sorted by sku: no lock-order deadlocks between orders
			res, err := tx.ExecContext(ctx, `UPDATE stock SET qty = qty - $1 WHERE sku_id = $2 AND qty >= $1`, l.Qty, l.SKU)
			if err != nil {
				return err
			}
			if n, err := res.RowsAffected(); err != nil {
				return err
			} else if n == 0 {
				return ErrSoldOut.With("sku %d: not enough stock left for %d", l.SKU, l.Qty)
			}
		}
		return nil
	})
	if errors.Is(err, errHeld) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("reserve order %d: %w", orderID, err)
	}
	return nil
}

// Release gives back everything reserved for orderID. Releasing twice, or
// an order without a reservation, is a no-op; it reports how many units
// came back.
func (s *Service) Release(ctx context.Context, orderID int64) (int64, error) {
	return s.release(ctx, orderID, math.MaxInt64)
}

// release gives back the reservation rows of orderID made before cutoff
// (unix ms).
func (s *Service) release(ctx context.Context, orderID, cutoff int64) (int64, error) {
	var back int64
	err := sqldb.Tx(ctx, s.db, func(tx *sql.Tx) error {
		back = 0
		rows, err := tx.QueryContext(ctx, `DELETE FROM stock_reservations WHERE order_id = $1 AND created_at < $2 RETURNING sku_id, qty`,
			orderID, cutoff)
		if err != nil {
			return err
		}
		var lines []Line
		for rows.Next() {
			var l Line
			if err := rows.Scan(&l.SKU, &l.Qty); err != nil {
				rows.Close()
				return err
			}
			lines = append(lines, l)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		slices.SortFunc(lines, func(a, b Line) int { return cmp.Compare(a.SKU, b.SKU) })
		for _, l := range lines {
			if _, err := tx.ExecContext(ctx, `UPDATE stock SET qty = qty + $1 WHERE sku_id = $2`, l.Qty, l.SKU); err != nil {
				return err
			}
			back += l.Qty
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("release order %d: %w", orderID, err)
	}
	return back, nil
}

// Fate is what became of the order behind a reservation.
type Fate int

const (
	Pending Fate = iota // the order waits for payment: keep the reservation
	Gone                // no such order, or cancelled: give the stock back
	Sold                // paid (or further): the stock stays taken
)

// Sweep settles reservations older than grace by the fate of their order
// (fate must answer from the order's shard): orphans of a crash between
// reserving and writing the order, and of cancelled orders whose release
// was lost, give their stock back; those of paid orders whose commit was
// lost are committed. It walks every old reservation, page by page, and
// returns the number of orders it released or committed.
func (s *Service) Sweep(ctx context.Context, grace time.Duration, fate func(context.Context, int64) (Fate, error)) (int, error) {
	cutoff := s.now().Add(-grace).UnixMilli()
	n := 0
	after := int64(0)
	for {
		ids, err := sqldb.IDs(ctx, s.db.R, `SELECT DISTINCT order_id FROM stock_reservations
			WHERE created_at < $1 AND order_id > $2 ORDER BY order_id LIMIT 500`, cutoff, after)
		if err != nil {
			return n, fmt.Errorf("sweep reservations: %w", err)
		}
		if len(ids) == 0 {
			return n, nil
		}
		after = ids[len(ids)-1]
		for _, x := range ids {
			f, err := fate(ctx, x)
			if err != nil {
				return n, err
			}
			switch f {
			case Gone:
				// Only rows still older than the cutoff: a retry that took the
				// order id over meanwhile has refreshed them.
				if _, err := s.release(ctx, x, cutoff); err != nil {
					return n, err
				}
				n++
			case Sold:
				if err := s.Commit(ctx, x); err != nil {
					return n, err
				}
				n++
			}
		}
	}
}

func merge(lines []Line) []Line {
	m := make(map[int64]int64, len(lines))
	for _, l := range lines {
		m[l.SKU] += l.Qty
	}
	out := make([]Line, 0, len(m))
	for k, q := range m {
		out = append(out, Line{k, q})
	}
	slices.SortFunc(out, func(a, b Line) int { return cmp.Compare(a.SKU, b.SKU) })
	return out
}

// Return gives back the limited stock of lines refunded before the store
// made them (refund refundID of orderID): each sku comes back once per
// refund, however often it is asked (a retry, a redelivered event), in one
// transaction. Skus without a stock level (not limited) are skipped. It
// reports how many units came back.
func (s *Service) Return(ctx context.Context, refundID, orderID int64, lines []Line) (int64, error) {
	if len(lines) == 0 {
		return 0, nil
	}
	lines = merge(lines)
	var back int64
	err := sqldb.Tx(ctx, s.db, func(tx *sql.Tx) error {
		back = 0
		for _, l := range lines { // sorted by sku: no lock-order deadlocks
			res, err := tx.ExecContext(ctx, `INSERT INTO stock_returns (refund_id, sku_id, order_id, qty, created_at)
				SELECT $1, $2, $3, $4, $5 WHERE EXISTS (SELECT 1 FROM stock WHERE sku_id = $2)
				ON CONFLICT (refund_id, sku_id) DO NOTHING`, refundID, l.SKU, orderID, l.Qty, s.now().UnixMilli())
			if err != nil {
				return err
			}
			if n, err := res.RowsAffected(); err != nil || n == 0 {
				continue // returned before, or not limited
			}
			if _, err := tx.ExecContext(ctx, `UPDATE stock SET qty = qty + $1 WHERE sku_id = $2`, l.Qty, l.SKU); err != nil {
				return err
			}
			back += l.Qty
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("return stock of refund %d of order %d: %w", refundID, orderID, err)
	}
	return back, nil
}

// Commit turns the reservation of orderID into a sale: the rows go, the
// stock stays taken (a paid order). Idempotent.
func (s *Service) Commit(ctx context.Context, orderID int64) error {
	// Most orders hold no limited stock: a read spares them a write.
	var one int
	err := s.db.R.QueryRowContext(ctx, `SELECT 1 FROM stock_reservations WHERE order_id = $1 LIMIT 1`, orderID).Scan(&one)
	if errors.Is(err, sql.ErrNoRows) {
		return nil
	}
	if _, err := sqldb.Exec(ctx, s.db, `DELETE FROM stock_reservations WHERE order_id = $1`, orderID); err != nil {
		return fmt.Errorf("commit reservation of order %d: %w", orderID, err)
	}
	return nil
}
