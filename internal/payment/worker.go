package payment

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/surge-platform/surge/internal/platform/obs"
	"github.com/surge-platform/surge/internal/platform/sqldb"
)

// Work is one round of the payments centre's background duties (the node
// runs it every second on one worker of the cluster): actively querying
// payments whose callback has not come, settling paid payments a crash
// left unapplied, and retrying refunds.
func (s *Service) Work(ctx context.Context) error {
	qerr := s.QueryPending(ctx, 200)
	if qerr != nil {
		qerr = fmt.Errorf("payment queries: %w", qerr)
	}
	rerr := s.Repair(ctx)
	if rerr != nil {
		rerr = fmt.Errorf("payment repair: %w", rerr)
	}
	return errors.Join(qerr, rerr)
}

// duePayments reads the payments not settled whose query time is $1 or
// before, the earliest first, at most $2. Its state condition is the
// payments_due index's, written as it is there: a partial index serves
// only a query that names its condition.
const duePayments = `SELECT ` + paymentCols + ` FROM payments WHERE state IN ('` + stCreated + `', '` + stPending + `')
	AND query_at <= $1 ORDER BY query_at LIMIT $2`

// unappliedPayments reads up to 200 payments paid but not applied to their
// order, last changed before $1 (through the payments_unapplied index,
// whose condition it names).
const unappliedPayments = `SELECT id FROM payments WHERE state = '` + stPaid + `' AND updated_at < $1 LIMIT 200`

// QueryPending asks the channels about payments still unpaid QueryAfter
// after they started (then with backoff up to a minute): a paid or
// refunded answer is applied exactly as a callback would be (a refunded
// payment never pays its order), a closed or unknown one closes the
// payment. At most limit per database per call.
func (s *Service) QueryPending(ctx context.Context, limit int) error {
	for _, d := range s.db.Shards() {
		rows, err := d.R.QueryContext(ctx, duePayments, s.now().UnixMilli(), limit)
		if err != nil {
			return fmt.Errorf("pending payments on %s: %w", d.Name, err)
		}
		var ps []*Payment
		for rows.Next() {
			p, err := scanPayment(rows)
			if err != nil {
				rows.Close()
				return err
			}
			ps = append(ps, p)
		}
		rows.Close()
		for _, p := range ps {
			if s.Router.Out(p.Channel) {
				continue // down: asking now would only wait out timeouts; the next pass tries again
			}
			if err := s.query(ctx, p); err != nil {
				s.log.Warn("payment query", "payment_id", p.ID, "err", err)
			}
		}
	}
	return nil
}

// query asks p's channel once and applies the answer.
func (s *Service) query(ctx context.Context, p *Payment) error {
	ctx = obs.WithTraceparent(ctx, p.trace) // the query and what it applies join the pay request's trace
	ch := s.channels[p.Channel]
	if ch == nil {
		return fmt.Errorf("channel %q not configured", p.Channel)
	}
	var st Status
	err := s.call(ctx, p.Channel, func() (err error) { st, err = ch.Query(ctx, p.ID); return err })
	next := s.now().Add(min(time.Duration(1<<min(p.queries, 6))*time.Second, time.Minute)).UnixMilli()
	d := s.db.ForID(p.ID)
	// Move the next query on first, whatever the answer does: a payment the
	// answer cannot settle (an amount mismatch) must not hold the queue.
	if _, uerr := d.W.ExecContext(ctx, `UPDATE payments SET query_at = $1, queries = queries + 1 WHERE id = $2`, next, p.ID); uerr != nil {
		return uerr
	}
	switch {
	case err == nil && (st.State == Paid || st.State == Refunded):
		return s.received(ctx, st)
	case err == nil && st.State == Closed, errors.Is(err, ErrUnknownTxn) && s.now().Sub(p.CreatedAt) > 10*time.Minute:
		return s.setState(ctx, p.ID, p.State, stClosed)
	}
	if errors.Is(err, ErrUnknownTxn) {
		return nil
	}
	return err
}

// Refresh queries the pending payments of an order once, now (the payer is
// looking at the result page and the callback has not come). Payments
// started less than two seconds ago are left to their callback.
func (s *Service) Refresh(ctx context.Context, orderID int64) error {
	ps, err := s.OfOrder(ctx, orderID)
	if err != nil {
		return err
	}
	for _, p := range ps {
		if (p.State == stPending || p.State == stCreated) && s.now().Sub(p.CreatedAt) > 2*time.Second {
			if err := s.query(ctx, p); err != nil {
				return err
			}
		}
	}
	return nil
}

// RefreshSoon is Refresh off the caller's path (a customer's read of
// their order must not wait on a payment channel): at most one per order
// at a time, at most 16 at once on this node (asks beyond that are
// dropped: the worker's scheduled queries catch up), each within 2 s.
func (s *Service) RefreshSoon(orderID int64) {
	if _, busy := s.soon.LoadOrStore(orderID, struct{}{}); busy {
		return
	}
	select {
	case s.soonSlots <- struct{}{}:
	default:
		s.soon.Delete(orderID)
		return
	}
	go func() {
		defer func() { <-s.soonSlots; s.soon.Delete(orderID) }()
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		if err := s.Refresh(ctx, orderID); err != nil {
			s.log.Warn("refresh payments on read", "order_id", orderID, "err", err)
		}
	}()
}

// Repair settles payments left paid but unapplied, older than a few
// seconds (so it does not race the request that is doing it right now),
// and resends pending refunds that are due (see sendRefund).
func (s *Service) Repair(ctx context.Context) error {
	now := s.now()
	for _, d := range s.db.Shards() {
		paid, err := sqldb.IDs(ctx, d.R, unappliedPayments, now.Add(-repairAfter).UnixMilli())
		if err != nil {
			return err
		}
		refunds, err := sqldb.IDs(ctx, d.R, `SELECT id FROM refunds WHERE state = 'pending' AND retry_at <= $1 LIMIT 200`, now.UnixMilli())
		if err != nil {
			return err
		}
		// One bad item must not stop the others: log and go on.
		for _, x := range paid {
			if err := s.settle(ctx, x); err != nil {
				s.log.Warn("settle paid payment", "payment_id", x, "err", err)
			}
		}
		for _, x := range refunds {
			if err := s.sendRefund(ctx, x); err != nil {
				s.log.Warn("resend refund", "refund_id", x, "err", err)
			}
		}
	}
	return nil
}

// BillsOut is how long after a UTC day ends its providers' bills are all
// out (see ReconcileDue).
const BillsOut = 27 * time.Hour

// reconciledKey names the settings row holding the last UTC day whose
// statements were all reconciled (YYYY-MM-DD).
const reconciledKey = "reconciled_through"

// ReconcileDue reconciles every channel's statement of UTC day D once
// its providers' bills of it are out, at 03:00 UTC on D+2 (a UTC day
// spans two China days; WeChat Pay and Alipay publish a China day's bill
// at about 10:00 China time the next day, 02:00 UTC; asked earlier, they
// have no bill, which reads as a day without payments), and that day has
// not been reconciled yet, with every day due since the last one done
// (a worker down for days misses none), and logs each report (warn when
// it has findings). The node calls it every minute on one worker of the cluster;
// the day done is recorded in the main database, so a leader that dies
// mid-way is followed by one that does the day again (every fix is
// idempotent), and a day is never skipped because no node was leader at
// 03:00. A channel that fails leaves the day to be tried again at the
// next call.
func (s *Service) ReconcileDue(ctx context.Context) error {
	now := s.now().UTC().Add(-BillsOut)
	day := time.Date(now.Year(), now.Month(), now.Day(), 0, 0, 0, 0, time.UTC).Add(-24 * time.Hour)
	m := s.db.Main()
	var done string
	err := m.R.QueryRowContext(ctx, `SELECT value FROM settings WHERE name = $1`, reconciledKey).Scan(&done)
	if err != nil && !errors.Is(err, sql.ErrNoRows) {
		return fmt.Errorf("read %s: %w", reconciledKey, err)
	}
	// The days due since the last one done, oldest first (at most a
	// month back: older ones are the operator's, by hand).
	from := day
	if last, err := time.Parse(time.DateOnly, done); err == nil {
		from = last.AddDate(0, 0, 1)
		if oldest := day.AddDate(0, 0, -30); from.Before(oldest) {
			from = oldest
		}
	}
	for d := from; !d.After(day); d = d.AddDate(0, 0, 1) {
		if err := s.reconcileDay(ctx, d); err != nil {
			return err
		}
	}
	return nil
}

// reconcileDay reconciles every channel's statement of day and, when all
// of them were, records the day done (never moving the record back: a
// slower leader may finish an older day after a newer one).
func (s *Service) reconcileDay(ctx context.Context, day time.Time) error {
	var failed error
	for name := range s.channels {
		rep, err := s.Reconcile(ctx, name, day)
		if err != nil {
			failed = errors.Join(failed, fmt.Errorf("daily reconciliation of %s for %s: %w", name, day.Format(time.DateOnly), err))
			continue
		}
		lvl := slog.LevelInfo
		if len(rep.Findings) > 0 {
			lvl = slog.LevelWarn
		}
		s.log.Log(ctx, lvl, "daily reconciliation", "channel", name, "date", rep.Date, "statement_lines", rep.StatementLines,
			"ledger_payments", rep.LedgerPayments, "findings", rep.Findings)
	}
	if failed != nil {
		return failed
	}
	if _, err := sqldb.Exec(ctx, s.db.Main(), `INSERT INTO settings (name, value) VALUES ($1, $2)
		ON CONFLICT (name) DO UPDATE SET value = excluded.value WHERE settings.value < excluded.value`, reconciledKey, day.Format(time.DateOnly)); err != nil {
		return fmt.Errorf("record %s: %w", reconciledKey, err)
	}
	return nil
}
