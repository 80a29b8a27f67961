package order

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/surge-platform/surge/internal/catalog"
	"github.com/surge-platform/surge/internal/inventory"
	"github.com/surge-platform/surge/internal/platform/id"
	"github.com/surge-platform/surge/internal/platform/obs"
	"github.com/surge-platform/surge/internal/platform/outbox"
	"github.com/surge-platform/surge/internal/platform/sqldb"
	"github.com/surge-platform/surge/internal/promo"
)

// Waker is told after a commit that wrote an outbox row (the outbox relay,
// here or in another process).
type Waker = outbox.Waker

// Config tunes the service. The zero value uses the defaults.
type Config struct {
	TTL         time.Duration // time to pay; 0 = 15m
	KeyWait     time.Duration // how long a duplicate request waits for the first; 0 = 10s
	KeyTakeover time.Duration // age after which an unfinished key may be taken over; 0 = 30s
	KeyTTL      time.Duration // how long a key is kept (ForgetKeys); 0 = 24h
	SeenTTL     time.Duration // how long the record of a seen event is kept (ForgetSeen); 0 = 7 days
	Promotions  Promotions    // the promotions in force; nil = none
}

// Service places and changes orders.
type Service struct {
	db      *sqldb.Cluster
	ids     *id.Generator
	catalog Catalog
	stock   Stock
	waker   Waker
	log     *slog.Logger
	cfg     Config
	now     func() time.Time
	counted *prometheus.CounterVec // surge_orders_total{event}
	seen    map[*sqldb.DB]*sqldb.Group[seenRow]
}

// New returns an order service. waker may be nil.
func New(db *sqldb.Cluster, ids *id.Generator, cat Catalog, stock Stock, waker Waker, log *slog.Logger, cfg Config) *Service {
	if cfg.TTL <= 0 {
		cfg.TTL = 15 * time.Minute
	}
	if cfg.KeyWait <= 0 {
		cfg.KeyWait = 10 * time.Second
	}
	if cfg.KeyTakeover <= 0 {
		cfg.KeyTakeover = 30 * time.Second
	}
	if cfg.KeyTTL <= 0 {
		cfg.KeyTTL = 24 * time.Hour
	}
	if cfg.SeenTTL <= 0 {
		cfg.SeenTTL = 7 * 24 * time.Hour
	}
	s := &Service{db: db, ids: ids, catalog: cat, stock: stock, waker: waker, log: log, cfg: cfg, now: time.Now, seen: seenGroups(db)}
	s.Instrument(nil)
	return s
}

// Created is how many order.created events this node's ledger applied.
func (s *Service) Created() float64 {
	var m dto.Metric
	s.counted.WithLabelValues("created").Write(&m)
	return m.GetCounter().GetValue()
}

// Instrument registers the service's metrics in m (before it is used):
// surge_orders_total, the events the ledger applied.
func (s *Service) Instrument(m *obs.Metrics) {
	s.counted = m.CounterVec("surge_orders_total",
		"Order events applied by the order ledger (a worker), by event: created, paid, cancelled, expired, accepted, ready, completed, refunding, refunded, withdrawn.",
		"event")
	for _, ev := range countedEvents {
		s.counted.WithLabelValues(ev)
	}
}

// placeTimeout bounds pricing, reserving and writing one order.
const placeTimeout = 30 * time.Second

// Subject returns the bus subject of an event of type typ of an order of
// logical shard gene: orders.events.<partition>.<type>. The partition
// (gene mod Partitions) splits the stream by order, so that an order's
// events stay in one partition; the type lets a consumer take only the
// types it needs, filtered on the server (Types).
func Subject(gene int, typ string) string {
	return "orders.events." + strconv.Itoa(gene%Partitions) + "." + typ
}

// Partitions is how many partitions the order events' subjects carry. It
// is not the 1,024 logical shards: the server keeps the subjects of each
// block of the stream, and a consumer of several types intersects its
// filters with all of them each time it looks for its next message. With
// a subject per shard and type, that was 8% of the CPU of the pickup
// bench (docs/capacity.md).
const Partitions = 16

// Types returns the subjects of the events of the given types, of every
// partition (and of the shards the subjects carried before): a consumer's
// filters.
func Types(types ...string) []string {
	out := make([]string, len(types))
	for i, t := range types {
		out[i] = "orders.events.*." + t
	}
	return out
}

// CheckKey validates an Idempotency-Key ("" means none).
func CheckKey(key string) error {
	if len(key) > MaxKey {
		return ErrBadKey
	}
	for i := 0; i < len(key); i++ {
		if key[i] < 0x21 || key[i] > 0x7e {
			return ErrBadKey
		}
	}
	return nil
}

// Create places an order for userID. With a key, the same request from the
// same user is carried out once: concurrent and later duplicates get the
// same Created (after waiting for the first to finish); the same key with a
// different request is ErrKeyReused. Errors: the request's check errors,
// catalog.ErrNoStore, ErrUnknownSKU, ErrUnavailable, ErrStoreClosed,
// inventory.ErrSoldOut, ErrKeyBusy.
//
// The key costs no commit of its own: the order's transaction writes it
// first, so a concurrent duplicate waits on it in the database and then
// reads the answer. Only an order that takes limited stock claims its key
// in a transaction of its own before reserving (claim), so that duplicates
// never hold the stock others are racing for.
func (s *Service) Create(ctx context.Context, userID int64, key string, req Request) (Created, error) {
	if err := req.Check(); err != nil {
		return Created{}, err
	}
	if err := CheckKey(key); err != nil {
		return Created{}, err
	}
	gene := id.GeneOf(userID)
	oid, err := s.ids.Next(gene)
	if err != nil {
		return Created{}, err
	}
	cl := claim{userID: userID, key: key, orderID: oid}
	if key != "" {
		h := sha256.Sum256(mustJSON(req))
		cl.hash = hex.EncodeToString(h[:16])
	}
	c, err := s.try(ctx, &cl, req)
	if errors.Is(err, errKeyPending) {
		// A claim made apart holds the key: a request of limited stock, or
		// one an older node left. Wait for it, or take it over when stale,
		// and place the order under the claim.
		done, cerr := s.claim(ctx, &cl)
		if done != nil || cerr != nil {
			if done != nil {
				return *done, nil
			}
			return Created{}, cerr
		}
		if c, err = s.try(ctx, &cl, req); errors.Is(err, errKeyPending) {
			err = ErrKeyBusy
		}
	}
	return c, err
}

// try places the order once; on failure it gives back what it took and
// looks up the key's answer.
func (s *Service) try(ctx context.Context, cl *claim, req Request) (Created, error) {
	userID, key, gene := cl.userID, cl.key, id.GeneOf(cl.userID)
	// Bounded well under the sweeper's grace, so a reservation it finds
	// without an order is never one a live request is about to use.
	pctx, cancel := context.WithTimeout(ctx, placeTimeout)
	c, reserved, err := s.place(pctx, cl, req)
	cancel()
	if err == nil {
		return c, nil
	}
	// The order was not written by this request. Give its stock back only if
	// no other request can be using the reservation: without a key nobody
	// else knows the order id; with a key claimed apart, only while this
	// request still owns the claim (a takeover reuses the order id and the
	// reservation), and never when an order with this id exists.
	bg := context.WithoutCancel(ctx)
	owned := true
	if cl.at != 0 {
		// Let a retry with the same key try again.
		res, derr := s.db.ForGene(gene).W.ExecContext(bg, `DELETE FROM idempotency
			WHERE user_id = $1 AND idem_key = $2 AND state = 'pending' AND created_at = $3`, userID, key, cl.at)
		n, _ := rowsAffected(res, derr)
		if owned = n == 1; !owned {
			// Not ours any more: released only if no other request holds a
			// claim on this order id either (the row may simply be gone).
			var others int
			if err := s.db.ForGene(gene).W.QueryRowContext(bg, `SELECT COUNT(*) FROM idempotency
				WHERE user_id = $1 AND idem_key = $2 AND order_id = $3`, userID, key, cl.orderID).Scan(&others); err == nil {
				owned = others == 0
			}
		}
	}
	if reserved && owned {
		// Only when the order is known not to exist: an unanswered check
		// (the commit may have reached the server) is left to the sweeper.
		if exists, xerr := s.Exists(bg, cl.orderID); xerr == nil && !exists {
			if _, rerr := s.stock.Release(bg, cl.orderID); rerr != nil {
				s.log.Warn("release after failed order (the sweeper will retry)", "order_id", cl.orderID, "err", rerr)
			}
		}
	}
	if key != "" && cl.at == 0 {
		// Not claimed apart: the key's row, if any, is another request's.
		// A duplicate of a request carried out gets its answer even when
		// this one failed (the price changed since, the store closed, a
		// dependency of pricing is down). Asked briefly: when the database
		// is what failed, the answer is the request's own error.
		lctx, cancel := context.WithTimeout(bg, time.Second)
		done, serr := s.stored(lctx, *cl)
		cancel()
		switch {
		case done != nil:
			return *done, nil
		case errors.Is(serr, ErrKeyReused):
			return Created{}, serr
		case errors.Is(err, errKeyTaken) && errors.Is(serr, ErrKeyBusy):
			return Created{}, errKeyPending
		case errors.Is(err, errKeyTaken) && serr != nil:
			return Created{}, serr
		case errors.Is(err, errKeyTaken):
			return Created{}, ErrKeyBusy // gone again: the request that held it failed; a retry goes on
		}
	}
	if !owned {
		return Created{}, ErrKeyBusy // the request that holds the key now answers; a retry gets its answer
	}
	return Created{}, err
}

var (
	// errKeyTaken: the order's transaction found its key written by
	// another request.
	errKeyTaken = errors.New("idempotency key taken")
	// errKeyPending: the key is held by a claim made apart (claim).
	errKeyPending = errors.New("idempotency key claimed")
)

// stored returns the answer stored under cl's key (nil: none yet), or
// ErrKeyReused for another request's key, or ErrKeyBusy while the request
// that claimed it runs.
func (s *Service) stored(ctx context.Context, cl claim) (*Created, error) {
	var state, hash, body string
	err := s.db.ForGene(id.GeneOf(cl.userID)).W.QueryRowContext(ctx, `SELECT state, req_hash, body FROM idempotency
		WHERE user_id = $1 AND idem_key = $2`, cl.userID, cl.key).Scan(&state, &hash, &body)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return nil, nil
	case err != nil:
		return nil, fmt.Errorf("read key: %w", err)
	case hash != cl.hash:
		return nil, ErrKeyReused
	case state != "done":
		return nil, ErrKeyBusy
	}
	var c Created
	if err := json.Unmarshal([]byte(body), &c); err != nil {
		return nil, fmt.Errorf("stored answer: %w", err)
	}
	return &c, nil
}

func rowsAffected(res sql.Result, err error) (int64, error) {
	if err != nil {
		return 0, err
	}
	return res.RowsAffected()
}

// claim is an Idempotency-Key held by one request. at (the claim's
// created_at, 0 = not claimed apart) is its ownership token: a takeover
// changes it.
type claim struct {
	userID  int64
	key     string
	hash    string // of the request
	orderID int64
	at      int64
}

// claim takes the idempotency key for a new order in a transaction of its
// own, or returns the stored answer of the request that took it first
// (waiting while it runs). On success cl holds the order id to use: a
// taken-over stale claim keeps its order id, so a stock reservation
// already made under it is reused, not repeated.
func (s *Service) claim(ctx context.Context, cl *claim) (*Created, error) {
	d := s.db.ForGene(id.GeneOf(cl.userID))
	deadline := s.now().Add(s.cfg.KeyWait)
	wait := 2 * time.Millisecond
	for {
		cl.at = s.now().UnixMilli()
		_, err := d.W.ExecContext(ctx, `INSERT INTO idempotency (user_id, idem_key, order_id, state, req_hash, created_at)
			VALUES ($1, $2, $3, 'pending', $4, $5)`, cl.userID, cl.key, cl.orderID, cl.hash, cl.at)
		if err == nil {
			return nil, nil
		}
		if !sqldb.IsUnique(err) {
			return nil, fmt.Errorf("claim key: %w", err)
		}
		var (
			prevID                int64
			state, prevHash, body string
			created               int64
		)
		err = d.W.QueryRowContext(ctx, `SELECT order_id, state, req_hash, body, created_at FROM idempotency
			WHERE user_id = $1 AND idem_key = $2`, cl.userID, cl.key).Scan(&prevID, &state, &prevHash, &body, &created)
		switch {
		case errors.Is(err, sql.ErrNoRows):
			continue // the first one failed and let go: try to claim again
		case err != nil:
			return nil, fmt.Errorf("read key: %w", err)
		case prevHash != cl.hash:
			return nil, ErrKeyReused
		case state == "done":
			var c Created
			if err := json.Unmarshal([]byte(body), &c); err != nil {
				return nil, fmt.Errorf("stored answer: %w", err)
			}
			return &c, nil
		case s.now().Sub(time.UnixMilli(created)) > s.cfg.KeyTakeover:
			// The first request died mid-way: take its claim over (CAS on created_at).
			at := max(s.now().UnixMilli(), created+1)
			res, err := d.W.ExecContext(ctx, `UPDATE idempotency SET created_at = $1
				WHERE user_id = $2 AND idem_key = $3 AND state = 'pending' AND created_at = $4`,
				at, cl.userID, cl.key, created)
			if err != nil {
				return nil, fmt.Errorf("take over key: %w", err)
			}
			if n, _ := res.RowsAffected(); n == 1 {
				cl.orderID, cl.at = prevID, at
				return nil, nil
			}
			continue
		}
		if s.now().After(deadline) {
			return nil, ErrKeyBusy
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(wait):
		}
		wait = min(wait*2, 50*time.Millisecond)
	}
}

// place prices the request, reserves limited stock and writes the order. It
// reports whether it holds a stock reservation it did not turn into an order.
func (s *Service) place(ctx context.Context, cl *claim, req Request) (Created, bool, error) {
	userID := cl.userID
	// In milliseconds, as stored: the expiry timer is scheduled from the
	// same expires_at the order keeps (from a finer one it was a second
	// late when the millisecond fell on a whole second: a CI run caught it).
	now := s.now().Truncate(time.Millisecond)
	p, err := s.price(ctx, s.db.ForGene(id.GeneOf(userID)).W, userID, req, now)
	if err != nil {
		return Created{}, false, err
	}
	if err := p.notApplied(); err != nil {
		return Created{}, false, err
	}
	if p.res.Payable == 0 {
		// No channel takes a payment of 0 fen: such an order could never
		// be paid. Refused until orders that cost nothing skip payment.
		return Created{}, false, ErrNothingToPay.With("the order comes to 0 fen after %d fen of discounts; choose fewer coupons or add items", p.res.Discount)
	}
	if req.ExpectedPayable != nil && *req.ExpectedPayable != p.res.Payable {
		return Created{}, false, &PriceChangedError{
			error:     ErrPriceChanged.With("the order comes to %d fen, not the %d expected; see the breakdown", p.res.Payable, *req.ExpectedPayable),
			Breakdown: p.breakdown(req.StoreID)}
	}
	var limited []inventory.Line
	for _, l := range p.lines {
		if it, ok := p.menu.Items[l.SKU]; ok && it.Limited {
			if k := slices.IndexFunc(limited, func(x inventory.Line) bool { return x.SKU == l.SKU }); k >= 0 {
				limited[k].Qty += int64(l.Qty) // a gift of a sku also bought
			} else {
				limited = append(limited, inventory.Line{SKU: l.SKU, Qty: int64(l.Qty)})
			}
		}
	}
	if cl.key != "" && cl.at == 0 && len(limited) > 0 {
		done, err := s.claim(ctx, cl)
		if err != nil || done != nil {
			cl.at = 0 // nothing claimed
			if done != nil {
				return *done, false, nil
			}
			return Created{}, false, err
		}
	}
	o := Order{ID: cl.orderID, UserID: userID, StoreID: req.StoreID, Status: PendingPayment, Version: 1,
		CreatedAt: now, UpdatedAt: now, ExpiresAt: now.Add(s.cfg.TTL),
		Total: p.res.Total, Discount: p.res.Discount, Payable: p.res.Payable, Discounts: discounts(p.res.Discounts), Items: p.lines,
		StockHeld: len(limited) > 0 || cl.at != 0} // a claim taken over may hold what an earlier menu limited
	if err := s.stock.Reserve(ctx, o.ID, limited); err != nil {
		return Created{}, false, err
	}
	c := Created{OrderID: o.ID, Status: o.Status, Total: o.Total, Discount: o.Discount, Payable: o.Payable,
		ExpiresAt: o.ExpiresAt.UTC().Truncate(time.Millisecond)}
	if err := s.insert(ctx, &o, *cl, c, p); err != nil {
		return Created{}, len(limited) > 0, err
	}
	return c, false, nil
}

// insert writes the order, its lines, its event and (with a key) the stored
// answer in one transaction on the order's shard.
func (s *Service) insert(ctx context.Context, o *Order, cl claim, c Created, p *priced) error {
	gene := id.Gene(o.ID)
	ev, err := s.event(o, EvCreated)
	if err != nil {
		return err
	}
	timer, err := s.timer(o)
	if err != nil {
		return err
	}
	d := s.db.ForGene(gene)
	if d.Engine == sqldb.Postgres && cl.at == 0 && (p == nil || promo.Unheld(p.res)) {
		err = s.insertOne(ctx, d, o, cl, c, ev, timer)
	} else {
		err = s.insertTx(ctx, d, o, cl, c, p, ev, timer)
	}
	if err != nil {
		return fmt.Errorf("insert order %d: %w", o.ID, err)
	}
	outbox.Committed(ctx, s.waker, gene, ev, timer)
	return nil
}

// insertOne writes an order whose price holds nothing (insert) in one
// statement on PostgreSQL: one round trip and one commit where a
// transaction of its statements took eight round trips. Each data-modifying
// part of a WITH runs to completion, and the statement is one transaction:
// a duplicate key fails all of it, after waiting for the request that
// writes it, as in insertTx.
func (s *Service) insertOne(ctx context.Context, d *sqldb.DB, o *Order, cl claim, c Created, ev, timer outbox.Event) error {
	evHdr, err := outbox.Headers(ctx, ev)
	if err != nil {
		return err
	}
	timerHdr, err := outbox.Headers(ctx, timer)
	if err != nil {
		return err
	}
	n := len(o.Items)
	var (
		skus, prices, qtys, payables, gifts = make([]int64, n), make([]int64, n), make([]int64, n), make([]int64, n), make([]int64, n)
		lines                               = make([]int64, n)
		names, discs                        = make([]string, n), make([]string, n)
	)
	for i, l := range o.Items {
		lines[i], skus[i], names[i], prices[i], qtys[i], payables[i], gifts[i], discs[i] =
			int64(i), l.SKU, l.Name, l.Price, int64(l.Qty), l.Payable, l.GiftOf, encodeDiscounts(l.Discounts)
	}
	at := o.CreatedAt.UnixMilli()
	_, err = d.W.ExecContext(ctx, `WITH
		k AS (INSERT INTO idempotency (user_id, idem_key, order_id, state, req_hash, body, created_at)
			SELECT $2, $13, $1, 'done', $14, $15, $8 WHERE $13 <> ''),
		o AS (INSERT INTO orders (id, user_id, store_id, status, version, total, payable, created_at, updated_at, expires_at, discounts, sale_id, stock_held)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $34)),
		l AS (INSERT INTO order_items (order_id, line, sku_id, name, price, qty, payable, gift_of, discounts)
			SELECT $1, * FROM unnest($16::bigint[], $17::bigint[], $18::text[], $19::bigint[], $20::bigint[], $21::bigint[], $22::bigint[], $23::text[]))
		INSERT INTO outbox (id, subject, type, payload, headers, created_at)
			VALUES ($24, $25, $26, $27, $28, $8), ($29, $30, $31, $32, $33, $8)`,
		o.ID, o.UserID, o.StoreID, string(o.Status), o.Version, o.Total, o.Payable,
		at, o.UpdatedAt.UnixMilli(), o.ExpiresAt.UnixMilli(), encodeDiscounts(o.Discounts), o.SaleID,
		cl.key, cl.hash, string(mustJSON(c)),
		lines, skus, names, prices, qtys, payables, gifts, discs,
		ev.ID, ev.Subject, ev.Type, string(ev.Payload), evHdr,
		timer.ID, timer.Subject, timer.Type, string(timer.Payload), timerHdr, flag(o.StockHeld))
	if err != nil && cl.key != "" && sqldb.IsUniqueOn(err, "idempotency") {
		return errKeyTaken
	}
	return err
}

// insertTx writes the order in a transaction of its statements, with the
// holds of its price (coupons, quotas) and the claim it holds, if any.
func (s *Service) insertTx(ctx context.Context, d *sqldb.DB, o *Order, cl claim, c Created, p *priced, ev, timer outbox.Event) error {
	return sqldb.Tx(ctx, d, func(tx *sql.Tx) error {
		if cl.key != "" && cl.at == 0 {
			// First: a concurrent duplicate waits here until this commits
			// (or rolls back), then finds the key taken.
			_, err := tx.ExecContext(ctx, `INSERT INTO idempotency (user_id, idem_key, order_id, state, req_hash, body, created_at)
				VALUES ($1, $2, $3, 'done', $4, $5, $6)`, o.UserID, cl.key, o.ID, cl.hash, string(mustJSON(c)), o.CreatedAt.UnixMilli())
			if sqldb.IsUnique(err) {
				return errKeyTaken
			}
			if err != nil {
				return err
			}
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO orders (id, user_id, store_id, status, version, total, payable,
			created_at, updated_at, expires_at, discounts, sale_id, stock_held) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)`,
			o.ID, o.UserID, o.StoreID, string(o.Status), o.Version, o.Total, o.Payable,
			o.CreatedAt.UnixMilli(), o.UpdatedAt.UnixMilli(), o.ExpiresAt.UnixMilli(), encodeDiscounts(o.Discounts), o.SaleID, flag(o.StockHeld)); err != nil {
			return err
		}
		for i, l := range o.Items {
			if _, err := tx.ExecContext(ctx, `INSERT INTO order_items (order_id, line, sku_id, name, price, qty, payable, gift_of, discounts)
				VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)`, o.ID, i, l.SKU, l.Name, l.Price, l.Qty, l.Payable, l.GiftOf,
				encodeDiscounts(l.Discounts)); err != nil {
				return err
			}
		}
		if len(o.Discounts) > 0 {
			if err := promo.Hold(ctx, tx, o.UserID, o.StoreID, o.ID, p.res, p.promos, o.CreatedAt); err != nil {
				return err
			}
		}
		if err := outbox.Insert(ctx, tx, ev, o.CreatedAt); err != nil {
			return err
		}
		if err := outbox.Insert(ctx, tx, timer, o.CreatedAt); err != nil {
			return err
		}
		if cl.at != 0 {
			res, err := tx.ExecContext(ctx, `UPDATE idempotency SET state = 'done', body = $1
				WHERE user_id = $2 AND idem_key = $3 AND order_id = $4 AND state = 'pending' AND created_at = $5`,
				string(mustJSON(c)), o.UserID, cl.key, o.ID, cl.at)
			if err != nil {
				return err
			}
			if n, _ := res.RowsAffected(); n != 1 {
				return ErrKeyBusy // our claim was taken over meanwhile
			}
		}
		return nil
	})
}

func (s *Service) wake(gene int) {
	if s.waker != nil {
		s.waker.Wake(gene)
	}
}

func (s *Service) event(o *Order, typ string) (outbox.Event, error) {
	ev, err := s.newEvent(o, typ)
	return ev.outbox(), err
}

// newEvent is the event typ of o as it is now, with a fresh id.
func (s *Service) newEvent(o *Order, typ string) (Event, error) {
	evID, err := s.ids.Next(id.Gene(o.ID))
	return Event{EventID: evID, Type: typ, OrderID: o.ID, UserID: o.UserID, StoreID: o.StoreID,
		Status: o.Status, Version: o.Version, Payable: o.Payable, PickupCode: o.PickupCode, PaymentID: o.PaymentID,
		Reason: o.Reason, SaleID: o.SaleID, At: o.UpdatedAt.UTC()}, err
}

// outbox is the outbox row of ev, on its order's subject.
func (ev Event) outbox() outbox.Event {
	return outbox.Event{ID: ev.EventID, Subject: Subject(id.Gene(ev.OrderID), ev.Type), Type: ev.Type, Payload: mustJSON(ev)}
}

// Get returns the order if it belongs to userID (0 = any user), with its lines.
func (s *Service) Get(ctx context.Context, userID, orderID int64) (*Order, error) {
	o, err := s.read(ctx, s.db.ForID(orderID).R, orderID)
	if err != nil {
		return nil, err
	}
	if userID != 0 && o.UserID != userID {
		return nil, ErrNotFound.With("no order %d", orderID) // do not tell others' orders exist
	}
	if o.Status == PendingPayment && !s.now().Before(o.ExpiresAt) {
		// Past its time but the timer has not fired yet: never show it as payable.
		if _, err := s.Expire(ctx, orderID); err != nil {
			return nil, err
		}
		return s.read(ctx, s.db.ForID(orderID).W, orderID)
	}
	return o, nil
}

// Peek returns the order as stored, without the expiry check of Get (for
// operators, who must see what the database holds).
func (s *Service) Peek(ctx context.Context, orderID int64) (*Order, error) {
	return s.read(ctx, s.db.ForID(orderID).R, orderID)
}

// Fate tells the inventory sweeper what became of an order.
func (s *Service) Fate(ctx context.Context, orderID int64) (inventory.Fate, error) {
	var status string
	err := s.db.ForID(orderID).W.QueryRowContext(ctx, `SELECT status FROM orders WHERE id = $1`, orderID).Scan(&status)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return inventory.Gone, nil
	case err != nil:
		return 0, err
	case Status(status) == PendingPayment:
		return inventory.Pending, nil
	case Status(status) == Cancelled:
		return inventory.Gone, nil
	}
	return inventory.Sold, nil
}

// Exists reports whether an order was written (any status).
func (s *Service) Exists(ctx context.Context, orderID int64) (bool, error) {
	var one int
	err := s.db.ForID(orderID).W.QueryRowContext(ctx, `SELECT 1 FROM orders WHERE id = $1`, orderID).Scan(&one)
	if errors.Is(err, sql.ErrNoRows) {
		return false, nil
	}
	return err == nil, err
}

type queryer interface {
	QueryRowContext(ctx context.Context, q string, args ...any) *sql.Row
	QueryContext(ctx context.Context, q string, args ...any) (*sql.Rows, error)
}

const orderCols = `id, user_id, store_id, status, version, total, payable, pickup_code, payment_id, cancel_reason,
	created_at, updated_at, expires_at, discounts, refunded, sale_id, stock_held`

// flag is a bool as the databases' INTEGER columns hold it.
func flag(b bool) int {
	if b {
		return 1
	}
	return 0
}

func scanOrder(sc interface{ Scan(...any) error }) (*Order, error) {
	var o Order
	var status string
	var created, updated, expires int64
	var disc string
	if err := sc.Scan(&o.ID, &o.UserID, &o.StoreID, &status, &o.Version, &o.Total, &o.Payable, &o.PickupCode,
		&o.PaymentID, &o.Reason, &created, &updated, &expires, &disc, &o.Refunded, &o.SaleID, &o.StockHeld); err != nil {
		return nil, err
	}
	o.Discount = o.Total - o.Payable
	o.Discounts = decodeDiscounts(disc)
	o.Status = Status(status)
	o.CreatedAt, o.UpdatedAt, o.ExpiresAt = time.UnixMilli(created).UTC(), time.UnixMilli(updated).UTC(), time.UnixMilli(expires).UTC()
	o.Items = []Line{}
	return &o, nil
}

// read returns the order with its lines. It reads both in one statement:
// on SQLite one read transaction instead of two (each starts by dropping
// the connection's page cache when another has written since), on
// PostgreSQL one round trip. When that finds nothing (no such order, or
// one without lines: none is placed so), the order and then its lines are
// read apart, so that an order committed in between comes with its lines.
func (s *Service) read(ctx context.Context, q queryer, orderID int64) (*Order, error) {
	rows, err := q.QueryContext(ctx, readOrder, orderID)
	if err != nil {
		return nil, fmt.Errorf("read order %d: %w", orderID, err)
	}
	defer rows.Close()
	var o *Order
	for rows.Next() {
		var l lineRow
		row, err := scanOrder(withLine{rows, l.dests()})
		if err != nil {
			return nil, fmt.Errorf("read order %d: %w", orderID, err)
		}
		if o == nil {
			o = row
		}
		o.Items = append(o.Items, l.line())
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read order %d: %w", orderID, err)
	}
	if o == nil {
		if o, err = s.head(ctx, q, orderID); err != nil {
			return nil, err
		}
		if err := s.lines(ctx, q, []*Order{o}); err != nil {
			return nil, err
		}
	}
	return o, nil
}

// readOrder is read's statement: orderCols (of o) and lineCols.
var readOrder = `SELECT o.` + strings.Join(strings.Fields(strings.ReplaceAll(orderCols, ",", " ")), ", o.") + `, ` + lineCols +
	` FROM orders o JOIN order_items i ON i.order_id = o.id WHERE o.id = $1 ORDER BY i.line`

// withLine scans a row of an order and one of its lines: the order's
// columns into what scanOrder gives, the line's into line.
type withLine struct {
	rows *sql.Rows
	line []any
}

func (w withLine) Scan(dest ...any) error { return w.rows.Scan(append(dest, w.line...)...) }

// lineCols are the columns of a line, as lineRow scans them (i: order_items).
const lineCols = `i.sku_id, i.name, i.price, i.qty, i.payable, i.gift_of, i.discounts, i.refunded, i.refund_id`

type lineRow struct {
	l    Line
	disc string
}

func (r *lineRow) dests() []any {
	return []any{&r.l.SKU, &r.l.Name, &r.l.Price, &r.l.Qty, &r.l.Payable, &r.l.GiftOf, &r.disc, &r.l.Refunded, &r.l.RefundID}
}

func (r *lineRow) line() Line {
	r.l.List, r.l.Discounts = r.l.Price*int64(r.l.Qty), decodeDiscounts(r.disc)
	return r.l
}

// head reads an order without its lines (enough for a transition).
func (s *Service) head(ctx context.Context, q queryer, orderID int64) (*Order, error) {
	o, err := scanOrder(q.QueryRowContext(ctx, `SELECT `+orderCols+` FROM orders WHERE id = $1`, orderID))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, ErrNotFound.With("no order %d", orderID)
	}
	if err != nil {
		return nil, fmt.Errorf("read order %d: %w", orderID, err)
	}
	return o, nil
}

func (s *Service) lines(ctx context.Context, q queryer, orders []*Order) error {
	if len(orders) == 0 {
		return nil
	}
	byID := make(map[int64]*Order, len(orders))
	ids := ""
	for i, o := range orders {
		byID[o.ID] = o
		if i > 0 {
			ids += ","
		}
		ids += strconv.FormatInt(o.ID, 10)
	}
	query, args := `SELECT i.order_id, `+lineCols+` FROM order_items i WHERE i.order_id IN (`+ids+`) ORDER BY i.order_id, i.line`, []any(nil)
	if len(orders) == 1 { // one cacheable statement
		query, args = `SELECT i.order_id, `+lineCols+` FROM order_items i WHERE i.order_id = $1 ORDER BY i.line`, []any{orders[0].ID}
	}
	rows, err := q.QueryContext(ctx, query, args...)
	if err != nil {
		return fmt.Errorf("read order lines: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var oid int64
		var l lineRow
		if err := rows.Scan(append([]any{&oid}, l.dests()...)...); err != nil {
			return err
		}
		byID[oid].Items = append(byID[oid].Items, l.line())
	}
	return rows.Err()
}

// List returns userID's orders, newest first, with ids below cursor (0 =
// from the newest); limit is clamped to 1..100 (0 = 20). The next page's
// cursor is the id of the last order returned.
func (s *Service) List(ctx context.Context, userID, cursor int64, limit int) ([]*Order, error) {
	limit = PageSize(limit)
	if cursor < 0 {
		return nil, ErrBadCursor
	}
	if cursor == 0 {
		cursor = 1<<63 - 1
	}
	d := s.db.ForGene(id.GeneOf(userID))
	rows, err := d.R.QueryContext(ctx, `SELECT `+orderCols+` FROM orders WHERE user_id = $1 AND id < $2
		ORDER BY id DESC LIMIT $3`, userID, cursor, limit)
	if err != nil {
		return nil, fmt.Errorf("list orders of user %d: %w", userID, err)
	}
	var out []*Order
	for rows.Next() {
		o, err := scanOrder(rows)
		if err != nil {
			rows.Close()
			return nil, err
		}
		out = append(out, o)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, err
	}
	if out == nil {
		out = []*Order{}
	}
	return out, s.lines(ctx, d.R, out)
}

// PageSize clamps a requested page size to 1..100 (0 = 20).
func PageSize(limit int) int {
	if limit <= 0 {
		return 20
	}
	return min(limit, 100)
}

// Cancel cancels userID's unpaid order and releases its stock. Errors:
// ErrNotFound, ErrNotCancellable (paid, cancelled ...), ErrChanged (lost a
// race with another change).
func (s *Service) Cancel(ctx context.Context, userID, orderID int64) (*Order, error) {
	o, err := s.Get(ctx, userID, orderID)
	if err != nil {
		return nil, err
	}
	if o.Status != PendingPayment {
		return nil, ErrNotCancellable.With("order %d is %s; only an unpaid order can be cancelled", orderID, o.Status)
	}
	if err := s.transition(ctx, o, Cancelled, EvCancelled, func(o *Order) { o.Reason = ByUser }); err != nil {
		return nil, err
	}
	if _, err := s.stock.Release(ctx, orderID); err != nil {
		// The order.cancelled consumer releases it again (idempotent).
		s.log.Warn("release on cancel (will be retried from the event)", "order_id", orderID, "err", err)
	}
	return o, nil
}

// transition moves o from its current status and version to `to` by
// compare-and-set, writing event typ (none when "") in the same transaction; set may change
// other fields (the pickup code). On success o holds the new state; when the
// row changed meanwhile it returns ErrChanged and o is untouched.
func (s *Service) transition(ctx context.Context, o *Order, to Status, typ string, set func(*Order)) error {
	next := *o
	next.Status, next.Version, next.UpdatedAt = to, o.Version+1, s.now()
	if set != nil {
		set(&next)
	}
	gene := id.Gene(o.ID)
	err := sqldb.Tx(ctx, s.db.ForGene(gene), func(tx *sql.Tx) error { return s.transitionTx(ctx, tx, o, &next, typ) })
	if err != nil {
		return fmt.Errorf("order %d %s -> %s: %w", o.ID, o.Status, to, err)
	}
	*o = next
	s.wake(gene)
	return nil
}

// transitionTx writes next over o by compare-and-set in tx, with its event
// (typ "" = none).
func (s *Service) transitionTx(ctx context.Context, tx *sql.Tx, o, next *Order, typ string) error {
	res, err := tx.ExecContext(ctx, `UPDATE orders SET status = $1, version = $2, pickup_code = $3, updated_at = $4,
		payment_id = $5, cancel_reason = $6
		WHERE id = $7 AND status = $8 AND version = $9`,
		string(next.Status), next.Version, next.PickupCode, next.UpdatedAt.UnixMilli(), next.PaymentID, next.Reason,
		o.ID, string(o.Status), o.Version)
	if err != nil {
		return err
	}
	if n, err := res.RowsAffected(); err != nil {
		return err
	} else if n != 1 {
		return ErrChanged.With("order %d changed meanwhile", o.ID)
	}
	if err := s.effects(ctx, tx, o, next); err != nil {
		return err
	}
	if typ == "" {
		return nil // the event that caused it is the record (fulfilment steps)
	}
	ev, err := s.event(next, typ)
	if err != nil {
		return err
	}
	return outbox.Insert(ctx, tx, ev, next.UpdatedAt)
}

var _ Catalog = (*catalog.Service)(nil)
var _ Stock = (*inventory.Service)(nil)

// effects carries out, in the transaction of a transition, what the
// order's discounts hold: paying uses its coupons and quotas, cancelling
// releases them, a full refund gives them back (when the channel has made
// the last of its refunds: refunding -> refunded). The compare-and-set of
// the transition makes each happen once, whatever the order of the events.
func (s *Service) effects(ctx context.Context, tx *sql.Tx, o, next *Order) error {
	if len(o.Discounts) == 0 || o.Status == next.Status {
		return nil
	}
	switch next.Status {
	case Paid:
		return promo.Use(ctx, tx, o.ID, next.UpdatedAt)
	case Cancelled:
		return promo.Release(ctx, tx, tx, o.ID, next.UpdatedAt)
	case Refunded:
		return promo.Restore(ctx, tx, tx, o.ID, next.UpdatedAt)
	}
	return nil
}
