package flashsale

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/surge-platform/surge/internal/platform/bus"
	"github.com/surge-platform/surge/internal/platform/kv"
	"github.com/surge-platform/surge/internal/platform/sqldb"
)

// reloadTimeout bounds a recount; the lock outlives it.
const reloadTimeout = 2 * time.Minute

// Prepare makes the streams and the consumers, so that tickets and order
// events published after it returns are kept for the workers (call it
// before the node takes traffic).
func (s *Service) Prepare(ctx context.Context) error {
	for _, st := range []bus.StreamConfig{Tickets, Results} {
		if err := s.bus.EnsureStream(ctx, st); err != nil {
			return fmt.Errorf("flash sales: %w", err)
		}
	}
	for _, c := range []bus.ConsumerConfig{ticketsCfg, ordersCfg} {
		if err := s.bus.EnsureConsumer(ctx, c); err != nil {
			return fmt.Errorf("flash sales: %w", err)
		}
	}
	return nil
}

func (s *Service) reloadAsync(l *live) {
	if _, busy := s.loading.LoadOrStore(l.ID, struct{}{}); busy {
		return
	}
	defer s.loading.Delete(l.ID)
	ctx, cancel := context.WithTimeout(context.Background(), reloadTimeout)
	defer cancel()
	if err := s.reload(ctx, &l.Sale); err != nil {
		s.log.Warn("recount flash sale", "sale_id", l.ID, "err", err)
		return
	}
	s.refreshOne(ctx, l)
}

// reload puts a sale's live counters back into kv from the durable
// tickets: what is left, and each buyer's count. One process does it at a
// time (a lock in kv). It first waits for the tickets admitted before the
// loss to reach the database: settle for those still being published,
// then until the ticket consumer has applied every ticket on the stream.
// Purchases meanwhile find the sale paused (503).
func (s *Service) reload(ctx context.Context, sale *Sale) error {
	if ok, err := s.kv.SetNX(ctx, loadKey(sale.ID), []byte(s.node), reloadTimeout+time.Minute); err != nil || !ok {
		return err // another process recounts it
	}
	defer s.kv.Del(context.WithoutCancel(ctx), loadKey(sale.ID))
	if _, err := s.kv.Get(ctx, leftKey(sale.ID)); err == nil {
		return nil // loaded meanwhile
	} else if !errors.Is(err, kv.ErrNotFound) {
		return err
	}
	start := s.now()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(settle):
	}
	if err := s.bus.Drained(ctx, Tickets.Name, ticketsConsumer); err != nil {
		return err
	}
	rows, err := s.db.Main().W.QueryContext(ctx, `SELECT user_id, COUNT(*) FROM flash_tickets
		WHERE sale_id = $1 AND state IN ('held', 'ordered', 'paid') GROUP BY user_id`, sale.ID)
	if err != nil {
		return fmt.Errorf("count tickets of flash sale %d: %w", sale.ID, err)
	}
	type held struct{ user, n int64 }
	var buyers []held
	var sold int64
	for rows.Next() {
		var h held
		if err := rows.Scan(&h.user, &h.n); err != nil {
			rows.Close()
			return err
		}
		buyers = append(buyers, h)
		sold += h.n
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return err
	}
	ttl := sale.keyTTL(s.now())
	for _, h := range buyers {
		if err := s.kv.Set(ctx, userKey(sale.ID, h.user), []byte(strconv.FormatInt(h.n, 10)), ttl); err != nil {
			return err
		}
	}
	// What is left comes from the durable count as it is now, not as it
	// was when the buyers were counted: a unit given back meanwhile (an
	// order cancelled while the key was missing, so kv could not take
	// it) is counted back in.
	if err := s.db.Main().W.QueryRowContext(ctx, `SELECT sold FROM flash_sales WHERE id = $1`, sale.ID).Scan(&sold); err != nil {
		return fmt.Errorf("count tickets of flash sale %d: %w", sale.ID, err)
	}
	left := max(0, sale.Stock-sold)
	if _, err := s.kv.SetNX(ctx, leftKey(sale.ID), []byte(strconv.FormatInt(left, 10)), ttl); err != nil {
		return err
	}
	s.log.Info("flash sale counted again", "sale_id", sale.ID, "sold", sold, "left", left, "buyers", len(buyers),
		"took", s.now().Sub(start).Round(time.Millisecond))
	return nil
}

// Forget drops the live counters of every sale not yet over, so that they
// are counted again from the durable tickets. The kv loss watch calls it:
// after a failover to a replica that was behind, the counters that
// survived may be stale (an oversell waiting to happen).
func (s *Service) Forget(ctx context.Context) error {
	ids, err := sqldb.IDs(ctx, s.db.Main().R, `SELECT id FROM flash_sales WHERE ends_at > $1`, s.now().UnixMilli())
	if err != nil {
		return fmt.Errorf("forget flash-sale counters: %w", err)
	}
	for _, x := range ids {
		if err := s.kv.Del(ctx, leftKey(x)); err != nil {
			return err
		}
	}
	return nil
}

// Recount makes a sale's live counters be counted again from the durable
// tickets (operators: after the bus failed to confirm tickets kv had
// admitted, whose units stay taken until then). The sale pauses while it
// runs.
func (s *Service) Recount(ctx context.Context, saleID int64) error {
	l, err := s.live(ctx, saleID)
	if err != nil {
		return err
	}
	if err := s.kv.Del(ctx, leftKey(saleID)); err != nil {
		return err
	}
	l.paused.Store(true)
	err = s.reload(ctx, &l.Sale)
	s.refreshOne(ctx, l)
	return err
}

// PreWarm loads the counters of every sale that starts within the next
// ten minutes or runs now and has none in kv (a job, once per cluster):
// a sale is ready before its first buyer, even after kv lost its data.
func (s *Service) PreWarm(ctx context.Context) error {
	now := s.now()
	rows, err := s.db.Main().R.QueryContext(ctx, `SELECT `+saleCols+` FROM flash_sales WHERE ends_at > $1 AND starts_at < $2`,
		now.UnixMilli(), now.Add(10*time.Minute).UnixMilli())
	if err != nil {
		return fmt.Errorf("pre-warm flash sales: %w", err)
	}
	var sales []Sale
	for rows.Next() {
		sale, err := scanSale(rows)
		if err != nil {
			rows.Close()
			return err
		}
		sales = append(sales, sale)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return err
	}
	for i := range sales {
		if _, err := s.kv.Get(ctx, leftKey(sales[i].ID)); errors.Is(err, kv.ErrNotFound) {
			if err := s.reload(ctx, &sales[i]); err != nil {
				return err
			}
		} else if err != nil {
			return err
		}
	}
	return nil
}
