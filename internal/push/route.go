package push

import (
	"context"
	"encoding/json"
	"errors"
	"maps"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/surge-platform/surge/internal/flashsale"
	"github.com/surge-platform/surge/internal/order"
	"github.com/surge-platform/surge/internal/platform/bus"
	"github.com/surge-platform/surge/internal/platform/obs"
	"github.com/surge-platform/surge/internal/promo"
)

// Stream keeps each customer's recent push events so a client that
// reconnects can get what it missed: at most Window per customer, for an
// hour. Its sequence numbers are the ids customers see.
var Stream = bus.StreamConfig{Name: "PUSH", Subjects: []string{"push.log.>"}, MaxAge: time.Hour,
	PerSubject: Window, Duplicates: 2 * time.Minute}

// Window is how many of a customer's latest events a reconnecting client
// can get back.
const Window = 64

func logSubject(userID int64) string    { return "push.log.u." + strconv.FormatInt(userID, 10) }
func userSubject(userID int64) string   { return "push.live.u." + strconv.FormatInt(userID, 10) }
func storeSubject(storeID int64) string { return "push.live.s." + strconv.FormatInt(storeID, 10) }

// Event is what a customer's socket receives about one of their orders.
type Event struct {
	Type       string       `json:"type"`
	ID         uint64       `json:"id,string,omitempty"` // its seq in the window; resume with ?last_event_id=
	EventID    int64        `json:"event_id,string"`     // the order event's id
	OrderID    int64        `json:"order_id,string"`
	StoreID    int64        `json:"store_id,string"`
	Status     order.Status `json:"status"`
	PickupCode string       `json:"pickup_code,omitempty"`
	// Refunds: the refund, its amount, the order's refunded after it, and
	// the skus of its lines.
	RefundID int64     `json:"refund_id,string,omitempty"`
	Amount   int64     `json:"amount,omitempty"`
	Refunded int64     `json:"refunded,omitempty"`
	SKUs     promo.IDs `json:"sku_ids,omitempty"`
	// A flash-sale ticket's outcome (type flash.ticket): the ticket, its
	// sale, ordered or failed, and why it failed. OrderID is its order.
	Ticket int64     `json:"ticket,string,omitempty"`
	SaleID int64     `json:"sale_id,string,omitempty"`
	Result string    `json:"result,omitempty"`
	Reason string    `json:"reason,omitempty"`
	At     time.Time `json:"at"`
	// Trace is the trace of the request that caused the event (W3C
	// traceparent), for a client that reports what it saw.
	Trace string `json:"traceparent,omitempty"`
}

// customerStatus is the order status each pushed event type announces
// ("" for the refund events: the status their event carries, since a
// refund of some lines leaves the order's status as it is).
var customerStatus = map[string]order.Status{
	order.EvPaid: order.Paid, order.EvAccepted: order.Accepted, order.EvReady: order.Ready,
	order.EvCompleted: order.Completed, order.EvCancelled: order.Cancelled,
	order.EvRefunding: "", order.EvRefunded: "",
}

// storeTypes are the pushed event types a store's POS is told of too: a
// refund of one of its orders (the customer's cancel of an order it has
// not accepted among them), sent to its sockets as it is routed.
var storeTypes = map[string]bool{order.EvRefunding: true, order.EvRefunded: true}

// routing is the push nodes' shared consumer of order events. Events from
// before the first push node started mean nothing to sockets. Each handler
// waits for a publish ack, so it takes many workers to keep up: with 16,
// the router's own backlog made the customer's leg of the pickup bench
// three times slower than the POS's at 1,000 orders/s.
var routing = bus.ConsumerConfig{Stream: order.Stream.Name, Durable: "push", MaxAckPending: 2048, Workers: 64, FromNow: true,
	FilterSubjects: order.Types(slices.Sorted(maps.Keys(customerStatus))...)}

// Prepare makes the PUSH stream and the routing consumer, so that events
// published after it returns are routed (call it before the node takes
// traffic).
func Prepare(ctx context.Context, b *bus.Bus) error {
	for _, st := range []bus.StreamConfig{Stream, flashsale.Results} {
		if err := b.EnsureStream(ctx, st); err != nil {
			return err
		}
	}
	if err := b.EnsureConsumer(ctx, tickets); err != nil {
		return err
	}
	return b.EnsureConsumer(ctx, routing)
}

// Route runs the push centre's share of the order events until ctx is
// done: every event a customer is told about is written to the customer's
// window in Stream and then announced on the customer's live subject, which
// reaches whichever push node holds the customer's sockets. Push nodes
// share the durable consumer, so each event is routed by one of them.
//
// An announcement carries the event and, when the router knows it, the seq
// of the customer's event before it in the window: a socket that has sent
// exactly up to there sends the event at once; any other reads the window
// from its cursor (a gap, a reordered announcement, a socket still catching
// up), so a wrong guess costs a read, never an event.
//
// Call Prepare first (the node does, at start). Route itself waits out a
// bus that is away: a NATS server lost just after the start must not stop
// the node (an end-to-end test saw Route's own EnsureConsumer time out).
func Route(ctx context.Context, b *bus.Bus) error {
	var w windows
	return b.Consume(ctx, routing,
		func(ctx context.Context, m bus.Msg) error {
			st, ok := customerStatus[m.Header["Surge-Type"]]
			if !ok {
				return nil
			}
			var oe order.Event
			if err := json.Unmarshal(m.Data, &oe); err != nil || oe.UserID == 0 {
				return nil // nothing to route; the ledger consumer reports undecodable events
			}
			if st == "" {
				st = oe.Status
			}
			ev := Event{Type: oe.Type, EventID: oe.EventID, OrderID: oe.OrderID, StoreID: oe.StoreID, Status: st,
				PickupCode: oe.PickupCode, RefundID: oe.RefundID, Amount: oe.Amount, Refunded: oe.Refunded, SKUs: oe.SKUs, At: oe.At,
				Trace: obs.Traceparent(ctx)}
			data, _ := json.Marshal(ev)
			if storeTypes[oe.Type] && oe.StoreID != 0 {
				// At most once, as the store's queue news: a POS that misses
				// it sees the refund when it reads the order.
				announce(b, storeSubject(oe.StoreID), news{OrderID: oe.OrderID, Msg: data})
			}
			return w.tell(ctx, b, oe.UserID, strconv.FormatInt(oe.EventID, 10), ev, data)
		})
}

// tickets is the push nodes' shared consumer of flash-sale ticket outcomes.
var tickets = bus.ConsumerConfig{Stream: flashsale.Results.Name, Durable: "push-tickets", MaxAckPending: 2048, Workers: 16, FromNow: true}

// RouteTickets runs the push centre's share of the flash-sale ticket
// outcomes until ctx is done: each goes to its buyer's window and sockets
// as Route's order events do.
func RouteTickets(ctx context.Context, b *bus.Bus) error {
	var w windows
	return b.Consume(ctx, tickets, func(ctx context.Context, m bus.Msg) error {
		var r flashsale.Result
		if err := json.Unmarshal(m.Data, &r); err != nil || r.UserID == 0 {
			return nil
		}
		ev := Event{Type: flashsale.ResultType, OrderID: r.OrderID, Ticket: r.Ticket, SaleID: r.SaleID, Result: r.State,
			Reason: r.Reason, At: r.At, Trace: obs.Traceparent(ctx)}
		return w.tell(ctx, b, r.UserID, m.ID, ev, mustJSON(ev))
	})
}

// tell puts ev (data: its JSON) in the customer's window under the dedup
// id msgID and announces it on the customer's live subject.
func (w *windows) tell(ctx context.Context, b *bus.Bus, userID int64, msgID string, ev Event, data []byte) error {
	seq, prev, err := w.put(ctx, b, userID, bus.Msg{Subject: logSubject(userID), ID: msgID, Data: data})
	if err != nil {
		return err
	}
	n := news{Seq: int64(seq), OrderID: ev.OrderID}
	if prev > 0 {
		ev.ID = seq
		n.Prev, n.Msg = int64(prev), mustJSON(ev)
	}
	announce(b, userSubject(userID), n)
	return nil
}

// windows remembers, per customer, the seq of the last event this router
// put in the customer's window, and serialises the customer's events on
// this router, so that each is put right after the one before it
// (bus.PublishAfter) and announced with it. Another router's put in
// between makes the condition fail: the event is then put unconditionally
// and announced without a predecessor. The zero value is ready.
type windows struct {
	stripes [1024]struct {
		sync.Mutex
		last map[int64]uint64 // user id -> seq of the last event put
	}
}

// rememberPerStripe bounds the memory: a full stripe forgets its
// customers (their next event is announced without a predecessor).
const rememberPerStripe = 1024

// put stores msg in the window of userID and returns its seq and, when
// known, the seq of the customer's event just before it (else 0).
func (w *windows) put(ctx context.Context, b *bus.Bus, userID int64, msg bus.Msg) (seq, prev uint64, err error) {
	s := &w.stripes[uint64(userID)%uint64(len(w.stripes))]
	s.Lock()
	defer s.Unlock()
	if last := s.last[userID]; last > 0 {
		ack, err := b.PublishAfter(ctx, msg, last)
		switch {
		case err == nil && ack.Duplicate: // routed before: where it went says nothing of what is last now
			delete(s.last, userID)
			return ack.Seq, 0, nil
		case err == nil:
			s.last[userID] = ack.Seq
			return ack.Seq, last, nil
		case !errors.Is(err, bus.ErrNotNext):
			delete(s.last, userID)
			return 0, 0, err
		}
	}
	ack, err := b.PublishAck(ctx, msg)
	if err != nil || ack.Duplicate {
		delete(s.last, userID)
		return ack.Seq, 0, err
	}
	if s.last == nil || len(s.last) >= rememberPerStripe {
		s.last = make(map[int64]uint64)
	}
	s.last[userID] = ack.Seq
	return ack.Seq, 0, nil
}

// news is the live message that tells push nodes a customer's window or a
// store's queue has reached seq (the order is for the curious). For a
// customer it may carry the socket message itself, and prev, the seq of
// the customer's event before it. For a store, news without a seq carries
// a message to send as it is (a refund of one of its orders).
type news struct {
	Seq     int64           `json:"seq"`
	OrderID int64           `json:"order_id"`
	Prev    int64           `json:"prev,omitempty"`
	Msg     json.RawMessage `json:"msg,omitempty"`
	Trace   string          `json:"traceparent,omitempty"` // the trace that queued a store's order
	Revoked bool            `json:"revoked,omitempty"`     // a store's POS key was rotated: its sockets check theirs
}

// announce sends news at most once: a socket that misses it catches up at
// the next one, its heartbeat or its reconnect.
func announce(b *bus.Bus, subject string, n news) {
	data, _ := json.Marshal(n)
	_ = b.PublishCore(subject, data)
}

// StoreAnnouncer tells push nodes of each order queued for a store (it is
// the fulfilment context's Announcer). It sends on plain NATS: a message
// lost here is caught up from the store's queue by the next one, by a
// reconnect, or by the POS's poll.
type StoreAnnouncer struct{ Bus *bus.Bus }

// Revoke tells push nodes that storeID's POS key was rotated: each
// checks the key of the store's sockets and closes those it no longer
// opens. At most once, like all news: a socket the message misses is
// checked by its next heartbeat.
func (n StoreAnnouncer) Revoke(storeID int64) {
	announce(n.Bus, storeSubject(storeID), news{Revoked: true})
}

// Announce implements fulfil.Announcer.
func (n StoreAnnouncer) Announce(ctx context.Context, storeID, seq, orderID int64) {
	announce(n.Bus, storeSubject(storeID), news{Seq: seq, OrderID: orderID, Trace: obs.Traceparent(ctx)})
}
