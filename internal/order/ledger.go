package order

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/surge-platform/surge/internal/platform/bus"
	"github.com/surge-platform/surge/internal/platform/sqldb"
)

// Stream is the JetStream stream of order events.
var Stream = bus.StreamConfig{Name: "ORDERS", Subjects: []string{"orders.events.>"}, Duplicates: 10 * time.Minute}

// ledgerDeliveries is how many times the ledger takes an event before it
// gives up on it (a dead letter). With the default backoff (100 ms doubling
// to 30 s, jittered) 20 deliveries span 3 to 6 minutes: a store's step that
// arrives before the step it follows waits that long for it — far longer
// than relays and consumers take to catch up after a hiccup of the bus or
// a database — and an order shard that is down for that long only parks
// its events (replayable), it loses none.
const ledgerDeliveries = 20

// Consume runs the worker's consumer of order events until ctx is done: it
// records every event it sees in events_seen (idempotently: a redelivery
// only counts up deliveries) and releases the stock of cancelled orders
// (idempotent too), and gives back the limited stock of lines refunded
// before the store accepted their order (once per refund and sku). Tests
// and operators count events with Seen.
//
// Order of events (docs/api.md, Events): the stream holds an order's
// order.paid before its store steps (the store learns of the order from
// that very event) and the steps in the order the store took them (one
// outbox, on the store's shard), except that a relay retries a failed
// publish after later rows went out. A consumer with several workers (16
// here) handles what it holds in any order, and a redelivered message or a
// replayed dead letter comes after later ones. So this consumer applies an
// event only when it moves the order forward: Fulfilled is a
// compare-and-set from the status the step follows (read from the order,
// not from the order.paid event), a step already applied or passed is a
// no-op, and a step whose predecessor is not applied yet is handed back
// (an error) until it is, for ledgerDeliveries deliveries.
func (s *Service) Consume(ctx context.Context, b *bus.Bus) error {
	if err := b.EnsureStream(ctx, Stream); err != nil {
		return err
	}
	// 16 workers: with 4, at 1,000 orders/s the ledger fell behind by
	// seconds (each event waits for a write commit), and with it the
	// pickup codes on order reads.
	return b.Consume(ctx, bus.ConsumerConfig{Stream: Stream.Name, Durable: "order-ledger", MaxAckPending: 2048, Workers: 16,
		MaxDeliver: ledgerDeliveries},
		func(ctx context.Context, m bus.Msg) error {
			var ev Event
			if err := json.Unmarshal(m.Data, &ev); err != nil || ev.EventID == 0 {
				s.log.Error("order event: undecodable, dropped", "subject", m.Subject, "seq", m.Seq, "err", err)
				return nil
			}
			switch ev.Type {
			case EvCancelled:
				if _, err := s.stock.Release(ctx, ev.OrderID); err != nil {
					return err
				}
			case EvAccepted, EvReady, EvCompleted:
				if err := s.Fulfilled(ctx, ev.OrderID, ev.Type, ev.PickupCode); err != nil {
					return err
				}
			case EvRefunding:
				if err := s.restock(ctx, ev.RefundID, ev.OrderID, ev.Restock); err != nil {
					return err
				}
			}
			if err := s.record(ctx, ev); err != nil {
				return err
			}
			s.counted.WithLabelValues(eventLabel(ev)).Inc()
			return nil
		})
}

// countedEvents are surge_orders_total's event labels (and "other").
var countedEvents = []string{"created", "paid", "cancelled", "expired", "accepted", "ready", "completed", "refunding",
	"refunded", "withdrawn"}

// eventLabel is ev's label in surge_orders_total: its type without
// "order.", "expired" for a cancellation by the clock, "other" for a type
// this build does not know (the label stays bounded).
func eventLabel(ev Event) string {
	t := strings.TrimPrefix(ev.Type, "order.")
	if t == "cancelled" && ev.Reason == ByExpiry {
		return "expired"
	}
	if slices.Contains(countedEvents, t) {
		return t
	}
	return "other"
}

func (s *Service) record(ctx context.Context, ev Event) error {
	// On the order's shard (an event id carries its order's gene), not all
	// on the main database's one writer; with the other handlers' records
	// of the moment, in one statement.
	if err := s.seen[s.db.ForID(ev.OrderID)].Do(ctx, seenRow{ev.EventID, ev.Type, ev.OrderID, s.now().UnixMilli()}); err != nil {
		return fmt.Errorf("record event %d: %w", ev.EventID, err)
	}
	return nil
}

// seenRow is one event recorded in events_seen.
type seenRow struct {
	eventID int64
	typ     string
	orderID int64
	at      int64
}

// seenGroups groups the records of each database of c.
func seenGroups(c *sqldb.Cluster) map[*sqldb.DB]*sqldb.Group[seenRow] {
	m := map[*sqldb.DB]*sqldb.Group[seenRow]{}
	for _, d := range c.Shards() {
		m[d] = sqldb.NewGroup(64, 10*time.Second, func(ctx context.Context, rows []seenRow) error { return writeSeen(ctx, d, rows) })
	}
	return m
}

// writeSeen records rows in one statement: a row already there (a
// redelivery) counts up its deliveries. A record lost in a database crash
// is at worst missing from the count: it does not wait for the disk.
func writeSeen(ctx context.Context, d *sqldb.DB, rows []seenRow) error {
	// In id order: two writers of overlapping records (a redelivery on
	// another node) then lock them in the same order, never a deadlock.
	slices.SortFunc(rows, func(a, b seenRow) int { return cmp.Compare(a.eventID, b.eventID) })
	var q strings.Builder
	q.WriteString(`INSERT INTO events_seen (event_id, type, order_id, deliveries, seen_at) VALUES `)
	args := make([]any, 0, 5*len(rows))
	n := map[int64]int{} // deliveries by event: one statement may not touch a row twice
	for _, r := range rows {
		n[r.eventID]++
		if n[r.eventID] > 1 {
			continue
		}
		if len(args) > 0 {
			q.WriteString(", ")
		}
		k := len(args)
		fmt.Fprintf(&q, "($%d, $%d, $%d, $%d, $%d)", k+1, k+2, k+3, k+4, k+5)
		args = append(args, r.eventID, r.typ, r.orderID, 0, r.at)
	}
	for i := 0; i < len(args); i += 5 {
		args[i+3] = n[args[i].(int64)]
	}
	q.WriteString(` ON CONFLICT (event_id) DO UPDATE SET deliveries = events_seen.deliveries + excluded.deliveries`)
	return sqldb.Lazy(ctx, d, q.String(), args...)
}

// Seen is one event the worker's consumer recorded.
type Seen struct {
	EventID    int64  `json:"event_id,string"`
	Type       string `json:"type"`
	OrderID    int64  `json:"order_id,string"`
	Deliveries int    `json:"deliveries"`
}

// SeenEvents returns the recorded events of an order (0 = the latest 1000 of all).
func (s *Service) SeenEvents(ctx context.Context, orderID int64) ([]Seen, error) {
	if orderID != 0 {
		return seen(ctx, s.db.ForID(orderID), `SELECT event_id, type, order_id, deliveries FROM events_seen WHERE order_id = $1 ORDER BY event_id`, orderID)
	}
	out := []Seen{}
	for _, d := range s.db.Shards() {
		some, err := seen(ctx, d, `SELECT event_id, type, order_id, deliveries FROM events_seen ORDER BY event_id DESC LIMIT 1000`)
		if err != nil {
			return nil, err
		}
		out = append(out, some...)
	}
	slices.SortFunc(out, func(a, b Seen) int { return cmp.Compare(b.EventID, a.EventID) })
	return out[:min(len(out), 1000)], nil
}

func seen(ctx context.Context, d *sqldb.DB, q string, args ...any) ([]Seen, error) {
	rows, err := d.R.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("seen events: %w", err)
	}
	defer rows.Close()
	out := []Seen{}
	for rows.Next() {
		var e Seen
		if err := rows.Scan(&e.EventID, &e.Type, &e.OrderID, &e.Deliveries); err != nil {
			return nil, err
		}
		out = append(out, e)
	}
	return out, rows.Err()
}

// SeenCount returns how many distinct events the consumer recorded.
func (s *Service) SeenCount(ctx context.Context) (int64, error) {
	var total int64
	for _, d := range s.db.Shards() {
		var n int64
		if err := d.R.QueryRowContext(ctx, `SELECT COUNT(*) FROM events_seen`).Scan(&n); err != nil {
			return 0, err
		}
		total += n
	}
	return total, nil
}
