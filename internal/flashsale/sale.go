// Package flashsale sells a few units of one sku to many buyers at once.
//
// The request path touches no database: a purchase is checked against the
// sale as this node holds it in memory (its window, a sold-out flag,
// limits per user, per IP and on the sale's hot key), admitted by one
// atomic step in kv (the user's limit, then the stock: kv.Admit), and
// answered 202 with a ticket once the ticket is on the bus (acknowledged
// by JetStream). Workers turn tickets into orders: each ticket is counted
// in the main database under the sale's row lock (the durable guard),
// then its order is placed on the buyer's shard with the ticket's id as
// the order's, so a redelivered ticket makes no second order. A ticket
// whose order cannot be made, and an order cancelled or expired unpaid,
// give their unit back to the sale while it runs.
//
// kv holds only the live counters (what is left, each buyer's count).
// When kv loses them the sale pauses (503) until one node has counted
// them again from the durable tickets.
package flashsale

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/surge-platform/surge/internal/guard"
	"github.com/surge-platform/surge/internal/order"
	"github.com/surge-platform/surge/internal/platform/bus"
	"github.com/surge-platform/surge/internal/platform/errkind"
	"github.com/surge-platform/surge/internal/platform/id"
	"github.com/surge-platform/surge/internal/platform/kv"
	"github.com/surge-platform/surge/internal/platform/limit"
	"github.com/surge-platform/surge/internal/platform/sqldb"
	"golang.org/x/sync/singleflight"
)

var (
	ErrNoSale      = errkind.New(errkind.NotFound, "flash_sale_not_found", "no such flash sale")
	ErrBadSale     = errkind.New(errkind.Invalid, "invalid_flash_sale", "the flash sale is invalid")
	ErrNotStarted  = errkind.New(errkind.TooEarly, "sale_not_started", "the flash sale has not started")
	ErrEnded       = errkind.New(errkind.Conflict, "sale_ended", "the flash sale has ended")
	ErrSoldOut     = errkind.New(errkind.Conflict, "sold_out", "the flash sale is sold out")
	ErrLimit       = errkind.New(errkind.Conflict, "purchase_limit", "you have bought as many as one person may in this sale")
	ErrRate        = errkind.New(errkind.Throttled, "rate_limited", "too many attempts, slow down")
	ErrBusy        = errkind.New(errkind.Throttled, "sale_busy", "too many buyers at this moment, try again")
	ErrBlacklisted = errkind.New(errkind.Forbidden, "blacklisted", "too many attempts: you are blocked for a while")
	ErrChallenge   = errkind.New(errkind.Challenge, "challenge_required", "solve the challenge and send the answer in X-Challenge")
	ErrPaused      = errkind.New(errkind.Unavailable, "unavailable", "the sale is paused while its stock is counted again, try again in a moment")
	ErrNoTicket    = errkind.New(errkind.NotFound, "ticket_not_found", "no such ticket")
)

// Limits on sales.
const (
	MaxStock   = 10_000_000
	MaxPerUser = 100
	MaxPayTTL  = time.Hour
	MaxLength  = 7 * 24 * time.Hour // the longest sale
	DefaultPay = 5 * time.Minute    // a sale's time to pay unless it says otherwise
)

// Sale is a flash sale as operators create it and buyers see it.
type Sale struct {
	ID       int64     `json:"sale_id,string"`
	StoreID  int64     `json:"store_id,string"`
	SKU      int64     `json:"sku_id,string"`
	Price    int64     `json:"price"`
	Stock    int64     `json:"stock"`
	PerUser  int64     `json:"per_user_limit"`
	StartsAt time.Time `json:"starts_at"`
	EndsAt   time.Time `json:"ends_at"`
	// PaySeconds is the time its orders have to be paid (0 = 300).
	PaySeconds int64 `json:"pay_seconds,omitempty"`
}

func (s *Sale) payTTL() time.Duration {
	if s.PaySeconds == 0 {
		return DefaultPay
	}
	return time.Duration(s.PaySeconds) * time.Second
}

func (s *Sale) check(now time.Time) error {
	switch {
	case s.StoreID <= 0:
		return errkind.ErrBadID.With("store_id must be a positive id")
	case s.SKU <= 0:
		return errkind.ErrBadID.With("sku_id must be a positive id")
	case s.Price <= 0:
		return ErrBadSale.With("price must be > 0 fen")
	case s.Stock < 1 || s.Stock > MaxStock:
		return ErrBadSale.With("stock must be 1 to %d", MaxStock)
	case s.PerUser < 1 || s.PerUser > MaxPerUser:
		return ErrBadSale.With("per_user_limit must be 1 to %d", MaxPerUser)
	case s.StartsAt.IsZero() || s.EndsAt.IsZero():
		return ErrBadSale.With("starts_at and ends_at are required (RFC 3339)")
	case !s.StartsAt.Before(s.EndsAt):
		return ErrBadSale.With("starts_at must be before ends_at")
	case s.EndsAt.Sub(s.StartsAt) > MaxLength:
		return ErrBadSale.With("a sale lasts at most %v", MaxLength)
	case !s.EndsAt.After(now):
		return ErrBadSale.With("ends_at is in the past")
	case s.PaySeconds < 0 || s.PaySeconds > int64(MaxPayTTL/time.Second):
		return ErrBadSale.With("pay_seconds must be 0 (the default, %v) to %d", DefaultPay, int(MaxPayTTL/time.Second))
	}
	return nil
}

// Keys of a sale's live counters in kv; the hash tag keeps them in one
// Redis Cluster slot, as Admit needs.
func leftKey(sale int64) string { return "flash:{s" + strconv.FormatInt(sale, 10) + "}:left" }
func userKey(sale, user int64) string {
	return "flash:{s" + strconv.FormatInt(sale, 10) + "}:u:" + strconv.FormatInt(user, 10)
}
func loadKey(sale int64) string { return "flash:{s" + strconv.FormatInt(sale, 10) + "}:loading" }

// keyTTL keeps a sale's counters a day past its end.
func (s *Sale) keyTTL(now time.Time) time.Duration {
	return max(time.Minute, s.EndsAt.Sub(now)+24*time.Hour)
}

// Orders places the orders of tickets (order.Service).
type Orders interface {
	PlaceSale(ctx context.Context, so order.SaleOrder) (*order.Order, error)
	Get(ctx context.Context, userID, orderID int64) (*order.Order, error)
	Cancel(ctx context.Context, userID, orderID int64) (*order.Order, error)
}

// Config tunes the request path's limits; the zero value gets the
// defaults. Rates are per second, per node.
type Config struct {
	UserRate float64 // purchases per user; 0 = 5 (burst 2×)
	IPRate   float64 // purchases per client IP; 0 = 200 (burst 2×)
	HotRate  float64 // admissions of one sale (its hot key) per node; 0 = 20,000 (burst 1 s)
	// A user or IP refused by its rate this many times within 10 s must
	// answer a challenge (Risky), and is blacklisted for Blacklist at Ban.
	Risky     int           // 0 = 5
	Ban       int           // 0 = 50
	Blacklist time.Duration // 0 = 10m
}

func (c Config) withDefaults() Config {
	if c.UserRate == 0 {
		c.UserRate = 5
	}
	if c.IPRate == 0 {
		c.IPRate = 200
	}
	if c.HotRate == 0 {
		c.HotRate = 20_000
	}
	if c.Risky == 0 {
		c.Risky = 5
	}
	if c.Ban == 0 {
		c.Ban = 50
	}
	if c.Blacklist == 0 {
		c.Blacklist = 10 * time.Minute
	}
	return c
}

// Service runs flash sales.
type Service struct {
	attempts  prometheus.Counter     // surge_flash_purchase_attempts_total
	purchases *prometheus.CounterVec // surge_flash_purchases_total{result}
	db        *sqldb.Cluster
	kv        kv.Store
	bus       *bus.Bus
	ids       *id.Generator
	orders    Orders
	blacklist *guard.Blacklist
	challenge guard.Challenger
	log       *slog.Logger
	node      string // this process, as its figures are kept
	cfg       Config
	now       func() time.Time

	users, ips, hot *limit.Keyed
	polls           *limit.Keyed // ticket polls per user

	mu      sync.RWMutex
	sales   map[int64]*live     // sales this node has served
	missing map[int64]time.Time // ids found not to exist, until when (against floods at made-up ids)
	load    singleflight.Group  // one database read of an unknown sale at a time

	tickets bus.Batcher[ticketMsg]
	loading sync.Map // sale id -> reloading here
}

// New returns the service. orders may be nil on a node without the
// worker role; blacklist and challenge may be nil (no blacklist, no
// challenge).
func New(db *sqldb.Cluster, store kv.Store, b *bus.Bus, ids *id.Generator, orders Orders, bl *guard.Blacklist,
	ch guard.Challenger, node string, cfg Config, log *slog.Logger) *Service {
	cfg = cfg.withDefaults()
	s := &Service{db: db, kv: store, bus: b, ids: ids, orders: orders, blacklist: bl, challenge: ch, node: node, cfg: cfg,
		log: log, now: time.Now, sales: map[int64]*live{}, missing: map[int64]time.Time{},
		// Each bucket costs about 128 bytes: 256k buyers (34 MB) and 64k
		// IPs active within a few seconds on one node; older ones are
		// forgotten first.
		users: limit.NewKeyed(cfg.UserRate, int(2*cfg.UserRate), 1<<18),
		ips:   limit.NewKeyed(cfg.IPRate, int(2*cfg.IPRate), 1<<16),
		hot:   limit.NewKeyed(cfg.HotRate, int(cfg.HotRate), 1024),
		polls: limit.NewKeyed(2, 5, 1<<18)}
	// 8 batches in flight: the in-stock purchase rate was 0.37, 0.48 and
	// 0.32 of hello-world with 4, 8 and 16 (fewer, larger batches against
	// less waiting for a free publisher).
	s.tickets = bus.Batcher[ticketMsg]{Bus: b, Publishers: 8,
		Partition: func(t ticketMsg) int { return int(uint64(t.UserID) % Partitions) },
		Message: func(ts []ticketMsg) bus.Msg {
			return bus.Msg{Subject: ticketSubject(ts[0].UserID), ID: strconv.FormatInt(ts[0].Ticket, 10), Data: mustJSON(ticketBatch{Tickets: ts})}
		}}
	s.Instrument(nil)
	return s
}

// live is a sale as this node serves it: its definition (it never
// changes) and what the node knows of its stock, refreshed from kv every
// RefreshEvery and told at once of a sell-out or a unit back by the other
// nodes.
type live struct {
	Sale
	soldOut atomic.Bool  // answer sold out without asking kv
	paused  atomic.Bool  // kv lost its counters: being counted again
	left    atomic.Int64 // what kv said is left, at the last refresh
	c       counters
	page    atomic.Pointer[page]
}

// RefreshEvery is how often each node reads what is left of the sales it
// serves.
const RefreshEvery = 500 * time.Millisecond

// Create checks sale and stores it; its stock is loaded into kv at once
// (pre-warm: a sale is ready before it starts).
func (s *Service) Create(ctx context.Context, sale Sale) (Sale, error) {
	now := s.now()
	if err := sale.check(now); err != nil {
		return Sale{}, err
	}
	sid, err := s.ids.Next(0)
	if err != nil {
		return Sale{}, err
	}
	sale.ID = sid
	sale.StartsAt, sale.EndsAt = sale.StartsAt.UTC().Truncate(time.Millisecond), sale.EndsAt.UTC().Truncate(time.Millisecond)
	_, err = s.db.Main().W.ExecContext(ctx, `INSERT INTO flash_sales (id, store_id, sku_id, price, stock, per_user,
		starts_at, ends_at, pay_ttl_ms, sold, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 0, $10)`,
		sale.ID, sale.StoreID, sale.SKU, sale.Price, sale.Stock, sale.PerUser, sale.StartsAt.UnixMilli(), sale.EndsAt.UnixMilli(),
		sale.payTTL().Milliseconds(), now.UnixMilli())
	if err != nil {
		return Sale{}, fmt.Errorf("create flash sale: %w", err)
	}
	if _, err := s.kv.SetNX(ctx, leftKey(sale.ID), []byte(strconv.FormatInt(sale.Stock, 10)), sale.keyTTL(now)); err != nil {
		s.log.Warn("pre-warm new flash sale (the pre-warm job retries)", "sale_id", sale.ID, "err", err)
	}
	return sale, nil
}

const saleCols = `id, store_id, sku_id, price, stock, per_user, starts_at, ends_at, pay_ttl_ms`

func scanSale(sc interface{ Scan(...any) error }) (Sale, error) {
	var s Sale
	var starts, ends, pay int64
	if err := sc.Scan(&s.ID, &s.StoreID, &s.SKU, &s.Price, &s.Stock, &s.PerUser, &starts, &ends, &pay); err != nil {
		return Sale{}, err
	}
	s.StartsAt, s.EndsAt, s.PaySeconds = time.UnixMilli(starts).UTC(), time.UnixMilli(ends).UTC(), pay/1000
	return s, nil
}

type rowQueryer interface {
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

// read reads a sale from the database.
func (s *Service) read(ctx context.Context, q rowQueryer, saleID int64) (Sale, error) {
	sale, err := scanSale(q.QueryRowContext(ctx, `SELECT `+saleCols+` FROM flash_sales WHERE id = $1`, saleID))
	if errors.Is(err, sql.ErrNoRows) {
		return Sale{}, ErrNoSale.With("no flash sale %d", saleID)
	}
	if err != nil {
		return Sale{}, fmt.Errorf("read flash sale %d: %w", saleID, err)
	}
	return sale, nil
}

// live returns the sale as this node serves it, reading it from the
// database the first time. Ids found missing are remembered for a few
// seconds, so a flood at a made-up id costs the database one read per node
// per few seconds, not one per request.
func (s *Service) live(ctx context.Context, saleID int64) (*live, error) {
	s.mu.RLock()
	l, ok := s.sales[saleID]
	until, gone := s.missing[saleID]
	s.mu.RUnlock()
	if ok {
		return l, nil
	}
	now := s.now()
	if gone && now.Before(until) {
		return nil, ErrNoSale.With("no flash sale %d", saleID)
	}
	// One read per sale at a time, whoever asks; each waiter waits no
	// longer than its own request allows.
	ch := s.load.DoChan(strconv.FormatInt(saleID, 10), func() (any, error) {
		rctx, cancel := context.WithTimeout(context.Background(), readTimeout)
		defer cancel()
		sale, err := s.read(rctx, s.db.Main().R, saleID)
		if errors.Is(err, ErrNoSale) {
			s.mu.Lock()
			if len(s.missing) > 10_000 {
				clear(s.missing)
			}
			s.missing[saleID] = now.Add(5 * time.Second)
			s.mu.Unlock()
			return nil, err
		}
		if err != nil {
			return nil, unavailable(err)
		}
		l := &live{Sale: sale}
		s.refreshOne(rctx, l)
		s.mu.Lock()
		if old, ok := s.sales[saleID]; ok {
			l = old
		} else {
			s.sales[saleID] = l
		}
		delete(s.missing, saleID)
		s.mu.Unlock()
		return l, nil
	})
	select {
	case r := <-ch:
		if r.Err != nil {
			return nil, r.Err
		}
		return r.Val.(*live), nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// readTimeout bounds a database read on the request path (a sale the node
// has not served yet, a ticket's poll).
const readTimeout = time.Second

// unavailable classifies a failed database read on the request path: the
// database is slow or down (503), not a bug.
func unavailable(err error) error {
	if errkind.Of(err) != nil {
		return err
	}
	return errkind.ErrUnavailable.With("the database did not answer in time, try again: %v", err)
}

// refreshOne reads what is left of l from kv. A missing counter means kv
// lost it (or it was never loaded): the sale pauses and is counted again.
func (s *Service) refreshOne(ctx context.Context, l *live) {
	if !s.now().Before(l.EndsAt) {
		return // over: nothing to admit, nothing to count again
	}
	b, err := s.kv.Get(ctx, leftKey(l.ID))
	switch {
	case errors.Is(err, kv.ErrNotFound):
		l.paused.Store(true)
		go s.reloadAsync(l)
		return
	case err != nil:
		return // kv away: keep what we knew; purchases will say unavailable
	}
	left, err := strconv.ParseInt(string(b), 10, 64)
	if err != nil {
		return
	}
	l.paused.Store(false)
	l.left.Store(left)
	l.soldOut.Store(left <= 0)
}

// Run keeps this node's sales fresh (what is left, every RefreshEvery),
// listens for other nodes' sell-outs and units back, and flushes this
// node's figures every few seconds, until ctx is done.
func (s *Service) Run(ctx context.Context) error {
	unsub := s.listen()
	defer func() {
		if unsub != nil {
			unsub()
		}
	}()
	tick := time.NewTicker(RefreshEvery)
	defer tick.Stop()
	lastFlush := s.now()
	for {
		select {
		case <-ctx.Done():
			fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
			s.flush(fctx)
			cancel()
			return nil
		case <-tick.C:
		}
		if unsub == nil {
			unsub = s.listen()
		}
		now := s.now()
		s.mu.RLock()
		ls := make([]*live, 0, len(s.sales))
		for _, l := range s.sales {
			ls = append(ls, l)
		}
		s.mu.RUnlock()
		for _, l := range ls {
			switch {
			case now.Before(l.EndsAt):
				rctx, cancel := context.WithTimeout(ctx, time.Second)
				s.refreshOne(rctx, l)
				cancel()
			case now.After(l.EndsAt.Add(time.Hour)) && l.c.attempts.Load() == 0:
				// Over an hour ago, its figures flushed: forgotten (read
				// again if anyone asks).
				s.mu.Lock()
				delete(s.sales, l.ID)
				s.mu.Unlock()
			}
		}
		if now.Sub(lastFlush) >= FlushEvery {
			lastFlush = now
			fctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			s.flush(fctx)
			cancel()
		}
	}
}

// listen subscribes to other nodes' news; nil while the bus is away (Run
// tries again every tick: a node outlives a bus outage, and until the
// bus is back its sales are kept fresh by the refresh alone).
func (s *Service) listen() (unsubscribe func()) {
	unsub, err := s.bus.Subscribe(NewsSubject, s.onNews)
	if err != nil {
		s.log.Warn("flash sales: listen for news, trying again", "err", err)
		return nil
	}
	return unsub
}

// NewsSubject carries, over plain NATS, "sold out" and "a unit is back"
// for a sale to every node: "<sale id> 0" or "<sale id> 1". A node that
// misses one learns the same at its next refresh.
const NewsSubject = "flash.news"

func (s *Service) tell(saleID int64, back bool) {
	msg := strconv.FormatInt(saleID, 10) + " 0"
	if back {
		msg = msg[:len(msg)-1] + "1"
	}
	_ = s.bus.PublishCore(NewsSubject, []byte(msg))
}

func (s *Service) onNews(_ string, data []byte) {
	var saleID int64
	var back int
	if _, err := fmt.Sscan(string(data), &saleID, &back); err != nil {
		return
	}
	s.mu.RLock()
	l := s.sales[saleID]
	s.mu.RUnlock()
	if l != nil {
		l.soldOut.Store(back == 0)
	}
}

func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err) // only our own plain structs
	}
	return b
}
