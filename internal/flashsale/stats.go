package flashsale

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/surge-platform/surge/internal/platform/obs"
)

// counters are this node's request-path figures of one sale since the
// last flush.
type counters struct {
	attempts, admitted, soldOut, overLimit, rate, blacklist, challenge, early, paused, ended atomic.Int64
}

// FlushEvery is how often each node adds its figures to the database.
const FlushEvery = 2 * time.Second

// flush adds each sale's figures since the last flush to this node's row;
// figures that could not be written are kept for the next flush.
func (s *Service) flush(ctx context.Context) {
	s.mu.RLock()
	ls := make([]*live, 0, len(s.sales))
	for _, l := range s.sales {
		ls = append(ls, l)
	}
	s.mu.RUnlock()
	for _, l := range ls {
		c := &l.c
		fs := []*atomic.Int64{&c.attempts, &c.admitted, &c.soldOut, &c.overLimit, &c.rate, &c.blacklist, &c.challenge, &c.early, &c.paused, &c.ended}
		v := make([]int64, len(fs))
		some := false
		for i, f := range fs {
			v[i] = f.Swap(0)
			some = some || v[i] != 0
		}
		if !some {
			continue
		}
		_, err := s.db.Main().W.ExecContext(ctx, `INSERT INTO flash_sale_stats (sale_id, node, attempts, admitted, sold_out,
			over_limit, rate, blacklist, challenge, early, paused, ended, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
			ON CONFLICT (sale_id, node) DO UPDATE SET attempts = flash_sale_stats.attempts + excluded.attempts,
			admitted = flash_sale_stats.admitted + excluded.admitted, sold_out = flash_sale_stats.sold_out + excluded.sold_out,
			over_limit = flash_sale_stats.over_limit + excluded.over_limit, rate = flash_sale_stats.rate + excluded.rate,
			blacklist = flash_sale_stats.blacklist + excluded.blacklist, challenge = flash_sale_stats.challenge + excluded.challenge,
			early = flash_sale_stats.early + excluded.early, paused = flash_sale_stats.paused + excluded.paused,
			ended = flash_sale_stats.ended + excluded.ended,
			updated_at = excluded.updated_at`,
			l.ID, s.node, v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7], v[8], v[9], s.now().UnixMilli())
		if err != nil {
			for i, f := range fs {
				f.Add(v[i])
			}
			s.log.Warn("flush flash-sale figures (kept for the next flush)", "sale_id", l.ID, "err", err)
			continue
		}
		s.attempts.Add(float64(v[0]))
		for i, r := range purchaseResults {
			s.purchases.WithLabelValues(r).Add(float64(v[i+1]))
		}
	}
}

// purchaseResults are surge_flash_purchases_total's results, in the order
// of counters' fields after attempts.
var purchaseResults = []string{"admitted", "sold_out", "over_limit", "rate", "blacklist", "challenge", "not_started", "paused", "ended"}

// Instrument registers the service's metrics in m (before it is used):
// the purchases this node took, counted when its figures are flushed.
func (s *Service) Instrument(m *obs.Metrics) {
	s.attempts = m.Counter("surge_flash_purchase_attempts_total", "Flash-sale purchases asked of this node (counted every FlushEvery).")
	s.purchases = m.CounterVec("surge_flash_purchases_total",
		"Flash-sale purchases on this node by result: admitted, or why not (counted every FlushEvery; answers lost to an outage are in attempts only).", "result")
	for _, r := range purchaseResults {
		s.purchases.WithLabelValues(r)
	}
}

// Figures are a sale's live figures for operators: the request path's
// (summed over the nodes, up to FlushEvery old), the tickets' (durable)
// and what kv says is left.
type Figures struct {
	Sale
	Now      time.Time `json:"now"`
	Attempts int64     `json:"attempts"`
	Admitted int64     `json:"admitted"`
	Refused  struct {
		SoldOut   int64 `json:"sold_out"`
		Limit     int64 `json:"limit"`
		Rate      int64 `json:"rate"`
		Blacklist int64 `json:"blacklist"`
		Challenge int64 `json:"challenge"`
		Early     int64 `json:"not_started"`
		Paused    int64 `json:"paused"`
		Ended     int64 `json:"ended"`
	} `json:"refused"`
	Tickets  int64  `json:"tickets"`        // recorded by the workers
	Pending  int64  `json:"pending"`        // recorded, order being made
	Orders   int64  `json:"orders"`         // orders created
	Paid     int64  `json:"paid"`           // of which paid
	Returned int64  `json:"returned"`       // of which cancelled or expired unpaid: the unit went back
	Failed   int64  `json:"failed"`         // tickets whose order could not be made: the unit went back
	Beyond   int64  `json:"beyond"`         // tickets kv admitted beyond the stock or a limit (after a loss): no order
	Sold     int64  `json:"sold"`           // units held now (pending, ordered and not returned, paid)
	Left     *int64 `json:"left,omitempty"` // what kv says is left (absent while it is counted again)
}

// Figures returns a sale's figures.
func (s *Service) Figures(ctx context.Context, saleID int64) (Figures, error) {
	sale, err := s.read(ctx, s.db.Main().R, saleID)
	if err != nil {
		return Figures{}, unavailable(err)
	}
	f := Figures{Sale: sale, Now: s.now().UTC()}
	err = s.db.Main().R.QueryRowContext(ctx, `SELECT COALESCE(SUM(attempts), 0), COALESCE(SUM(admitted), 0),
		COALESCE(SUM(sold_out), 0), COALESCE(SUM(over_limit), 0), COALESCE(SUM(rate), 0), COALESCE(SUM(blacklist), 0),
		COALESCE(SUM(challenge), 0), COALESCE(SUM(early), 0), COALESCE(SUM(paused), 0), COALESCE(SUM(ended), 0) FROM flash_sale_stats WHERE sale_id = $1`, saleID).
		Scan(&f.Attempts, &f.Admitted, &f.Refused.SoldOut, &f.Refused.Limit, &f.Refused.Rate, &f.Refused.Blacklist,
			&f.Refused.Challenge, &f.Refused.Early, &f.Refused.Paused, &f.Refused.Ended)
	if err != nil {
		return Figures{}, unavailable(fmt.Errorf("flash-sale figures: %w", err))
	}
	rows, err := s.db.Main().R.QueryContext(ctx, `SELECT state, COUNT(*) FROM flash_tickets WHERE sale_id = $1 GROUP BY state`, saleID)
	if err != nil {
		return Figures{}, unavailable(fmt.Errorf("flash-sale figures: %w", err))
	}
	defer rows.Close()
	for rows.Next() {
		var state string
		var n int64
		if err := rows.Scan(&state, &n); err != nil {
			return Figures{}, err
		}
		f.Tickets += n
		switch state {
		case stHeld:
			f.Pending = n
		case stOrdered:
			f.Orders += n
		case stPaid:
			f.Orders += n
			f.Paid = n
		case stReturned:
			f.Orders += n
			f.Returned = n
		case stFailed:
			f.Failed = n
		case stRefused:
			f.Beyond = n
		}
	}
	if err := rows.Err(); err != nil {
		return Figures{}, err
	}
	f.Sold = f.Pending + f.Orders - f.Returned
	if b, err := s.kv.Get(ctx, leftKey(saleID)); err == nil {
		if v, err := strconv.ParseInt(string(b), 10, 64); err == nil {
			f.Left = &v
		}
	}
	return f, nil
}

// Page is a sale as buyers see it: cacheable for a second (a CDN in
// front serves most of a crowd), with the server's clock for the
// countdown (the buy button lights up from it, so nobody needs to
// refresh) and whether stock remains.
type Page struct {
	Sale
	Now     time.Time `json:"now"`
	State   string    `json:"state"` // upcoming, on, sold_out, paused, ended
	InStock bool      `json:"in_stock"`
}

// page is a rendered Page, reused for the second it was made in.
type page struct {
	sec  int64
	body []byte
	etag string
}

// Page returns the sale's page as JSON and its ETag, from this node's
// memory: rendered at most once a second per sale.
func (s *Service) Page(ctx context.Context, saleID int64) (body []byte, etag string, err error) {
	l, err := s.live(ctx, saleID)
	if err != nil {
		return nil, "", err
	}
	now := s.now()
	sec := now.Unix()
	if p := l.page.Load(); p != nil && p.sec == sec {
		return p.body, p.etag, nil
	}
	pg := Page{Sale: l.Sale, Now: now.UTC().Truncate(time.Second)}
	switch {
	case now.Before(l.StartsAt):
		pg.State, pg.InStock = "upcoming", true
	case !now.Before(l.EndsAt):
		pg.State = "ended"
	case l.paused.Load():
		pg.State, pg.InStock = "paused", true
	case l.soldOut.Load():
		pg.State = "sold_out"
	default:
		pg.State, pg.InStock = "on", true
	}
	b := mustJSON(pg)
	h := sha256.Sum256(b)
	p := &page{sec: sec, body: b, etag: `"` + hex.EncodeToString(h[:8]) + `"`}
	l.page.Store(p)
	return p.body, p.etag, nil
}
