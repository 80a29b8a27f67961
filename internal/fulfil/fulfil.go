// Package fulfil is the order management side of a store (OMS): it takes
// paid orders off the bus, queues them per store for the store's POS
// terminal, and records what the store does with them — accept (with a
// pickup code), ready, complete — announcing each step as an order event.
package fulfil

import (
	"context"
	"crypto/subtle"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strconv"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/surge-platform/surge/internal/order"
	"github.com/surge-platform/surge/internal/platform/bus"
	"github.com/surge-platform/surge/internal/platform/errkind"
	"github.com/surge-platform/surge/internal/platform/id"
	"github.com/surge-platform/surge/internal/platform/kv"
	"github.com/surge-platform/surge/internal/platform/outbox"
	"github.com/surge-platform/surge/internal/platform/sqldb"
)

var (
	ErrBadKey     = errkind.New(errkind.Unauthorized, "invalid_pos_key", "missing or invalid store POS key")
	ErrNotFound   = errkind.New(errkind.NotFound, "order_not_found", "no such order for this store")
	ErrStep       = errkind.New(errkind.Conflict, "wrong_step", "the order is not at the step this action follows")
	ErrPickupCode = errkind.New(errkind.Invalid, "invalid_pickup_code", "a pickup code is 1 to 8 letters or digits")
	ErrCodeInUse  = errkind.New(errkind.Conflict, "pickup_code_in_use", "this pickup code is already used today in this store")
	ErrWithdrawn  = errkind.New(errkind.Conflict, "order_cancelled", "the order was cancelled before the store accepted it; it is refunded")
)

// Statuses of a fulfilment.
const (
	Received  = "new" // paid, waiting for the store
	Accepted  = "accepted"
	Ready     = "ready"
	Completed = "completed"
	Withdrawn = "withdrawn" // taken back before the store accepted it (cancelled by the customer, or refunded in full)
)

// Announcer is told of each order queued for a store (the push centre): seq
// is its place in the store's queue, ctx the trace that queued it. It must
// not block.
type Announcer interface {
	Announce(ctx context.Context, storeID, seq, orderID int64)
}

// Service runs fulfilment on a kv store and the databases: a store's
// fulfilment records and pickup codes live on the shard of the store's id,
// so the stores' writes spread over every database instead of queueing on
// the main one's (measured: the main SQLite writer was the limit of the
// whole flow at 1,000 orders/s).
type Service struct {
	c      *sqldb.Cluster
	kv     kv.Store
	ids    *id.Generator
	orders *order.Service
	wake   outbox.Waker
	news   Announcer
	log    *slog.Logger
	now    func() time.Time
}

// New returns the fulfilment service. wake tells the outbox relay about
// new events (nil: nobody); news may be nil.
func New(c *sqldb.Cluster, store kv.Store, ids *id.Generator, orders *order.Service, wake outbox.Waker, news Announcer, log *slog.Logger) *Service {
	return &Service{c: c, kv: store, ids: ids, orders: orders, wake: wake, news: news, log: log, now: time.Now}
}

// storeGene is the logical shard of a store's fulfilment records: a hash
// of its id (Fibonacci hashing), because store ids come in runs and the
// logical shards map onto databases in ranges. Never change it: records
// are where it says.
func storeGene(storeID int64) int { return int(uint64(storeID) * 0x9E3779B97F4A7C15 >> 54 % id.Genes) }

// forStore is the database holding a store's fulfilment records.
func (s *Service) forStore(storeID int64) *sqldb.DB { return s.c.ForGene(storeGene(storeID)) }

// freshGap is how far ahead a store's lost seq counter starts again: the
// clocks of fulfil nodes must agree better than that.
const freshGap = time.Minute

func queueKey(storeID int64) string { return "fulfil:new:" + strconv.FormatInt(storeID, 10) }
func seqKey(storeID int64) string   { return "fulfil:seq:" + strconv.FormatInt(storeID, 10) }

// Consume takes paid orders off the bus until ctx is done: each is recorded
// (idempotently) and appended to its store's queue.
func (s *Service) Consume(ctx context.Context, b *bus.Bus) error {
	return b.Consume(ctx, bus.ConsumerConfig{Stream: order.Stream.Name, Durable: "fulfil", MaxAckPending: 2048, Workers: 16,
		FilterSubjects: order.Types(order.EvPaid)},
		func(ctx context.Context, m bus.Msg) error {
			if m.Header["Surge-Type"] != order.EvPaid {
				return nil
			}
			var ev order.Event
			if err := json.Unmarshal(m.Data, &ev); err != nil || ev.OrderID == 0 {
				s.log.Error("fulfil: undecodable order.paid, dropped", "seq", m.Seq, "err", err)
				return nil
			}
			return s.Take(ctx, ev.OrderID, ev.StoreID, ev.UserID)
		})
}

// Take records a paid order for its store and queues it for the POS.
// Taking an order again queues it again only while the store has not
// accepted it; an order withdrawn before it was taken is not queued.
func (s *Service) Take(ctx context.Context, orderID, storeID, userID int64) error {
	now := s.now().UnixMilli()
	d := s.forStore(storeID)
	n, err := sqldb.Exec(ctx, d, `INSERT INTO fulfilments (order_id, store_id, user_id, status, created_at, updated_at)
		VALUES ($1, $2, $3, $4, $5, $5) ON CONFLICT (order_id) DO NOTHING`, orderID, storeID, userID, Received, now)
	if err != nil {
		return fmt.Errorf("record fulfilment of order %d: %w", orderID, err)
	}
	if n == 0 { // taken before: queue it again only if still new
		var status string
		if err := d.R.QueryRowContext(ctx, `SELECT status FROM fulfilments WHERE order_id = $1`, orderID).Scan(&status); err != nil {
			return err
		}
		if status != Received {
			return nil
		}
	}
	return s.queue(ctx, storeID, orderID)
}

// queue appends an order to its store's queue, or finds it there. Seqs
// are handed out and made visible as one step (a POS paging behind the
// appends never skips one), and never below the time in microseconds: a
// queue lost with its counter (an in-memory store restarted, Redis
// flushed or failed over to a replica that was behind) starts again above
// every seq handed out before, so a POS still holding a cursor from
// before cannot acknowledge new orders with it.
func (s *Service) queue(ctx context.Context, storeID, orderID int64) error {
	// A counter lost with the kv store starts a minute ahead: seqs after a
	// loss then lie above every seq handed out before it, even by a node
	// whose clock ran ahead (by less than that), so a POS's old cursor
	// never acknowledges an entry it was not shown. (A loss within a minute
	// of a store's first order is not covered: its counter began ahead
	// too. ZAck's guard still covers a cursor above the counter.)
	now := s.now()
	seq, err := s.kv.ZAppend(ctx, queueKey(storeID), seqKey(storeID), strconv.FormatInt(orderID, 10),
		now.UnixMicro(), now.Add(freshGap).UnixMicro())
	if err != nil {
		return fmt.Errorf("queue order %d: %w", orderID, err)
	}
	if s.news != nil {
		s.news.Announce(ctx, storeID, seq, orderID)
	}
	return nil
}

// Rebuild queues again every order still new, in each store in the order
// of the orders' ids (as paid), for a kv store that lost the queues (the
// in-memory one after a restart, Redis restarted without persistence,
// flushed, or failed over to a replica that was behind; kv.Watch finds
// out). Orders still queued keep their place and seq, so several nodes
// may rebuild at once and orders keep flowing meanwhile; orders a POS had
// acknowledged but not accepted are queued again (shown twice at worst).
// It reads each store's new orders through the (store_id, status) index,
// eight stores at a time.
func (s *Service) Rebuild(ctx context.Context) error {
	stores, err := sqldb.IDs(ctx, s.c.Main().R, `SELECT id FROM stores ORDER BY id`)
	if err != nil {
		return fmt.Errorf("rebuild store queues: %w", err)
	}
	var queued atomic.Int64
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(8)
	for _, st := range stores {
		g.Go(func() error {
			n, err := s.rebuildStore(gctx, st)
			queued.Add(int64(n))
			return err
		})
	}
	if err := g.Wait(); err != nil {
		return err
	}
	s.log.Info("store queues rebuilt", "stores", len(stores), "orders", queued.Load())
	return nil
}

// rebuildStore queues again the orders of one store that are still new.
func (s *Service) rebuildStore(ctx context.Context, storeID int64) (int, error) {
	// The writer's pool: a reader that lags could miss orders recorded
	// just before the loss.
	orders, err := sqldb.IDs(ctx, s.forStore(storeID).W,
		`SELECT order_id FROM fulfilments WHERE store_id = $1 AND status = $2 ORDER BY order_id`, storeID, Received)
	if err != nil {
		return 0, fmt.Errorf("rebuild store %d queue: %w", storeID, err)
	}
	for i, o := range orders {
		if err := s.queue(ctx, storeID, o); err != nil {
			return i, fmt.Errorf("rebuild store %d queue: %w", storeID, err)
		}
	}
	return len(orders), nil
}

// Store returns the store a POS key belongs to, or ErrBadKey.
func (s *Service) Store(ctx context.Context, key string) (int64, error) {
	if len(key) < 8 || len(key) > 128 {
		return 0, ErrBadKey
	}
	var storeID int64
	var stored string
	err := s.c.Main().R.QueryRowContext(ctx, `SELECT id, pos_key FROM stores WHERE pos_key = $1`, key).Scan(&storeID, &stored)
	if errors.Is(err, sql.ErrNoRows) || err == nil && subtle.ConstantTimeCompare([]byte(stored), []byte(key)) != 1 {
		return 0, ErrBadKey
	}
	if err != nil {
		return 0, fmt.Errorf("pos key: %w", err)
	}
	return storeID, nil
}

// NewOrder is one entry of a store's queue, as its POS sees it.
type NewOrder struct {
	Seq   int64        `json:"seq"`
	Order *order.Order `json:"order"`
}

// Pull acknowledges every entry up to cursor and returns up to limit
// entries after it. A POS that restarts with cursor 0 gets every entry it
// has not acknowledged again. A cursor the queue never handed out (one from
// before the queue was lost) acknowledges nothing and reads from the start.
func (s *Service) Pull(ctx context.Context, storeID, cursor int64, limit int) ([]NewOrder, error) {
	from, err := s.Ack(ctx, storeID, cursor)
	if err != nil {
		return nil, err
	}
	return s.Queued(ctx, storeID, from, limit)
}

// Ack removes the entries of a store's queue up to cursor, and returns the
// cursor to read after: cursor itself, or 0 when the queue has not handed
// it out (it comes from before the queue was lost, and the seqs since may
// lie below it if the clocks of the nodes disagree: they are read, not
// removed).
func (s *Service) Ack(ctx context.Context, storeID, cursor int64) (int64, error) {
	if cursor <= 0 {
		return 0, nil
	}
	_, known, err := s.kv.ZAck(ctx, queueKey(storeID), seqKey(storeID), cursor)
	if err != nil {
		return 0, fmt.Errorf("ack store %d queue: %w", storeID, err)
	}
	if !known {
		return 0, nil
	}
	return cursor, nil
}

// Queued returns up to limit (at most 100) entries of a store's queue
// after cursor, without acknowledging anything.
func (s *Service) Queued(ctx context.Context, storeID, cursor int64, limit int) ([]NewOrder, error) {
	entries, err := s.kv.ZAfter(ctx, queueKey(storeID), cursor, min(max(limit, 1), 100))
	if err != nil {
		return nil, err
	}
	out := []NewOrder{}
	for _, e := range entries {
		oid, _ := strconv.ParseInt(e.Member, 10, 64)
		o, err := s.orders.Peek(ctx, oid)
		if err != nil {
			return nil, err
		}
		out = append(out, NewOrder{Seq: e.Score, Order: o})
	}
	return out, nil
}

// Step moves a store's order to the next status: accept (with the POS's
// pickup code, or one made here), ready, complete. Repeating the step the
// order is already at answers the same (a POS retry); anything else is
// ErrStep. Each step writes its order event in the same transaction.
func (s *Service) Step(ctx context.Context, storeID, orderID int64, to, code string) (string, error) {
	from := map[string]string{Accepted: Received, Ready: Accepted, Completed: Ready}[to]
	ev := map[string]string{Accepted: order.EvAccepted, Ready: order.EvReady, Completed: order.EvCompleted}[to]
	if from == "" {
		return "", fmt.Errorf("unknown step %q", to)
	}
	if code != "" && !validCode(code) {
		return "", ErrPickupCode
	}
	// One transaction, with no read before it: the compare-and-set on the
	// status comes first, so a step the record is not ready for (taken
	// already, withdrawn, another store's order) writes nothing and is told
	// apart by the read after it.
	d := s.forStore(storeID)
	day := s.now().UTC().Format(time.DateOnly)
	for attempt := 0; ; attempt++ {
		var give, pick string // the code accept gives; the order's code after the step
		var written outbox.Event
		if to == Accepted {
			give = code
			if give == "" {
				give = makeCode()
			}
		}
		err := sqldb.Tx(ctx, d, func(tx *sql.Tx) error {
			var userID int64
			// A step after accept keeps the code accept gave.
			err := tx.QueryRowContext(ctx, `UPDATE fulfilments SET status = $1, updated_at = $2,
				pickup_code = CASE WHEN $3 = '' THEN pickup_code ELSE $3 END
				WHERE order_id = $4 AND store_id = $5 AND status = $6 RETURNING user_id, pickup_code`,
				to, s.now().UnixMilli(), give, orderID, storeID, from).Scan(&userID, &pick)
			if errors.Is(err, sql.ErrNoRows) {
				return errMoved
			}
			if err != nil {
				return err
			}
			if to == Accepted {
				if _, err := tx.ExecContext(ctx, `INSERT INTO pickup_codes (store_id, day, code, order_id) VALUES ($1, $2, $3, $4)`,
					storeID, day, pick, orderID); err != nil {
					return err
				}
			}
			gene := id.Gene(orderID)
			evID, err := s.ids.Next(gene)
			if err != nil {
				return err
			}
			e := order.Event{EventID: evID, Type: ev, OrderID: orderID, UserID: userID, StoreID: storeID,
				PickupCode: pick, At: s.now().UTC()}
			payload, _ := json.Marshal(e)
			written = outbox.Event{ID: e.EventID, Subject: order.Subject(gene, ev), Type: ev, Payload: payload}
			return outbox.Insert(ctx, tx, written, s.now())
		})
		if sqldb.IsUnique(err) && to == Accepted {
			if code != "" {
				return "", ErrCodeInUse.With("pickup code %s is already used today in store %d", code, storeID)
			}
			if attempt < 20 {
				continue // a made-up code collided: make another
			}
		}
		if errors.Is(err, errMoved) { // not there, at another step, withdrawn, or this step already (a retry): say which
			var status, have string
			// The reader pool sees the commit the update missed against (a POS's
			// retries come here; they need not queue for SQLite's writer).
			err := d.R.QueryRowContext(ctx, `SELECT status, pickup_code FROM fulfilments WHERE order_id = $1 AND store_id = $2`,
				orderID, storeID).Scan(&status, &have)
			if errors.Is(err, sql.ErrNoRows) {
				return "", ErrNotFound.With("no order %d for store %d", orderID, storeID)
			}
			if err != nil {
				return "", err
			}
			if status == to {
				return have, nil // the same step again, or by another terminal: its answer
			}
			if status == from && attempt < 20 {
				continue // taken just after the update looked for it: step it now
			}
			return "", stepError(orderID, status, to, from)
		}
		if err != nil {
			return "", fmt.Errorf("%s order %d: %w", to, orderID, err)
		}
		outbox.Committed(ctx, s.wake, storeGene(storeID), written) // in the outbox of the store's database
		return pick, nil
	}
}

// errMoved: the fulfilment is not at the status the step follows.
var errMoved = errors.New("fulfilment moved meanwhile")

// stepError refuses step to of an order at status, which does not follow.
func stepError(orderID int64, status, to, from string) error {
	if status == Withdrawn {
		return ErrWithdrawn.With("order %d was cancelled before the store accepted it (it is refunded): do not make it", orderID)
	}
	return ErrStep.With("order %d is %s; %s follows %s", orderID, status, to, from)
}

// Withdraw takes a paid order its store has not accepted away from the
// store for good, and reports true; it reports false when the store
// accepted it first (the customer may no longer cancel it). The
// fulfilment record is the arbiter between the two: accepting moves it
// from new by compare-and-set, and so does withdrawing (or it writes the
// record as withdrawn when order.paid has not reached fulfilment yet; the
// late order.paid then queues nothing). A withdrawal writes order.withdrawn
// in the same transaction: the payments centre refunds the order from it
// if the request that withdrew it does not get that far. The order leaves
// its store's queue (a queue that keeps it, the kv store being away, shows
// it with its status, and accepting it is refused with ErrWithdrawn).
// Idempotent: withdrawing again reports true. by says who asked
// (order.ByCustomer ...).
func (s *Service) Withdraw(ctx context.Context, orderID, storeID, userID int64, by string) (bool, error) {
	d := s.forStore(storeID)
	changed := false
	var written outbox.Event
	err := sqldb.Tx(ctx, d, func(tx *sql.Tx) error {
		changed = false
		now := s.now()
		res, err := tx.ExecContext(ctx, `INSERT INTO fulfilments (order_id, store_id, user_id, status, created_at, updated_at)
			VALUES ($1, $2, $3, $4, $5, $5) ON CONFLICT (order_id) DO NOTHING`, orderID, storeID, userID, Withdrawn, now.UnixMilli())
		if err != nil {
			return err
		}
		if n, err := res.RowsAffected(); err != nil {
			return err
		} else if n == 0 {
			res, err := tx.ExecContext(ctx, `UPDATE fulfilments SET status = $1, updated_at = $2 WHERE order_id = $3 AND status = $4`,
				Withdrawn, now.UnixMilli(), orderID, Received)
			if err != nil {
				return err
			}
			if n, err := res.RowsAffected(); err != nil || n == 0 {
				return err // accepted (or withdrawn) before: read below
			}
		}
		changed = true
		gene := id.Gene(orderID)
		evID, err := s.ids.Next(gene)
		if err != nil {
			return err
		}
		e := order.Event{EventID: evID, Type: order.EvWithdrawn, OrderID: orderID, UserID: userID, StoreID: storeID, By: by, At: now.UTC()}
		payload, _ := json.Marshal(e)
		written = outbox.Event{ID: e.EventID, Subject: order.Subject(gene, e.Type), Type: e.Type, Payload: payload}
		return outbox.Insert(ctx, tx, written, now)
	})
	if err != nil {
		return false, fmt.Errorf("withdraw order %d: %w", orderID, err)
	}
	if changed {
		outbox.Committed(ctx, s.wake, storeGene(storeID), written)
	} else {
		var status string
		if err := d.W.QueryRowContext(ctx, `SELECT status FROM fulfilments WHERE order_id = $1`, orderID).Scan(&status); err != nil {
			return false, fmt.Errorf("withdraw order %d: %w", orderID, err)
		}
		if status != Withdrawn {
			return false, nil
		}
	}
	if _, err := s.kv.ZRem(ctx, queueKey(storeID), strconv.FormatInt(orderID, 10)); err != nil {
		s.log.Warn("take a withdrawn order out of its store's queue", "order_id", orderID, "store_id", storeID, "err", err)
	}
	return true, nil
}

// Order returns one of the store's orders as it is now (ErrNotFound for
// another store's).
func (s *Service) Order(ctx context.Context, storeID, orderID int64) (*order.Order, error) {
	o, err := s.orders.Peek(ctx, orderID)
	if err != nil {
		return nil, err
	}
	if o.StoreID != storeID {
		return nil, ErrNotFound.With("no order %d for store %d", orderID, storeID)
	}
	return o, nil
}

// Accepted reports whether the store has accepted the order (accepted,
// ready or completed): from the fulfilment record, which knows before the
// order does (the order learns from order.accepted on the bus).
func (s *Service) Accepted(ctx context.Context, orderID, storeID int64) (bool, error) {
	var status string
	err := s.forStore(storeID).W.QueryRowContext(ctx, `SELECT status FROM fulfilments WHERE order_id = $1`, orderID).Scan(&status)
	if errors.Is(err, sql.ErrNoRows) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("fulfilment of order %d: %w", orderID, err)
	}
	return status == Accepted || status == Ready || status == Completed, nil
}

// makeCode makes a pickup code that is easy to read aloud and type: four
// digits, never starting with 0 (1000..9999, at random; Step retries on a
// collision with a code the store already gave out today).
func makeCode() string {
	return strconv.Itoa(1000 + rand.IntN(9000))
}

func validCode(c string) bool {
	if len(c) < 1 || len(c) > 8 {
		return false
	}
	for _, r := range c {
		if !('0' <= r && r <= '9' || 'A' <= r && r <= 'Z' || 'a' <= r && r <= 'z') {
			return false
		}
	}
	return true
}

// Figures are a store's orders paid since a time, by where they are now:
// the per-store business figures (not metrics labels: thousands of stores
// on every node would be a series explosion).
type Figures struct {
	StoreID   int64     `json:"store_id,string"`
	Since     time.Time `json:"since"`
	Paid      int64     `json:"paid"`      // all of them
	New       int64     `json:"new"`       // waiting for the store
	Accepted  int64     `json:"accepted"`  // accepted, not ready yet
	Ready     int64     `json:"ready"`     // ready for pickup
	Completed int64     `json:"completed"` // picked up
	Withdrawn int64     `json:"withdrawn"` // cancelled or refunded before the store accepted them
}

// Figures counts a store's fulfilment records created since. It reads the
// store's rows through the (store_id, status) index, all of them, not
// only those since: a store's history, not the table's.
func (s *Service) Figures(ctx context.Context, storeID int64, since time.Time) (Figures, error) {
	f := Figures{StoreID: storeID, Since: since}
	rows, err := s.forStore(storeID).R.QueryContext(ctx, `SELECT status, COUNT(*) FROM fulfilments
		WHERE store_id = $1 AND created_at >= $2 GROUP BY status`, storeID, since.UnixMilli())
	if err != nil {
		return f, fmt.Errorf("store %d figures: %w", storeID, err)
	}
	defer rows.Close()
	for rows.Next() {
		var st string
		var n int64
		if err := rows.Scan(&st, &n); err != nil {
			return f, err
		}
		f.Paid += n
		switch st {
		case Received:
			f.New = n
		case Accepted:
			f.Accepted = n
		case Ready:
			f.Ready = n
		case Completed:
			f.Completed = n
		case Withdrawn:
			f.Withdrawn = n
		}
	}
	return f, rows.Err()
}
