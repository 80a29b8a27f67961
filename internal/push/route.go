package push

import (
	"context"
	"encoding/json"
	"strconv"
	"time"

	"github.com/surge-platform/surge/internal/order"
	"github.com/surge-platform/surge/internal/platform/bus"
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
	At         time.Time    `json:"at"`
}

// customerStatus is the order status each pushed event type announces.
var customerStatus = map[string]order.Status{
	order.EvPaid: order.Paid, order.EvAccepted: order.Accepted, order.EvReady: order.Ready,
	order.EvCompleted: order.Completed, order.EvCancelled: order.Cancelled,
}

// routing is the push nodes' shared consumer of order events. Events from
// before the first push node started mean nothing to sockets.
var routing = bus.ConsumerConfig{Stream: order.Stream.Name, Durable: "push", MaxAckPending: 2048, Workers: 16, FromNow: true}

// Prepare makes the PUSH stream and the routing consumer, so that events
// published after it returns are routed (call it before the node takes
// traffic).
func Prepare(ctx context.Context, b *bus.Bus) error {
	if err := b.EnsureStream(ctx, Stream); err != nil {
		return err
	}
	return b.EnsureConsumer(ctx, routing)
}

// Route runs the push centre's share of the order events until ctx is
// done: every event a customer is told about is written to the customer's
// window in Stream and then announced on the customer's live subject, which
// reaches whichever push node holds the customer's sockets; those read it
// from the window. Push nodes share the durable consumer, so each event is
// routed by one of them.
func Route(ctx context.Context, b *bus.Bus) error {
	if err := Prepare(ctx, b); err != nil {
		return err
	}
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
			ev := Event{Type: oe.Type, EventID: oe.EventID, OrderID: oe.OrderID, StoreID: oe.StoreID, Status: st,
				PickupCode: oe.PickupCode, At: oe.At}
			data, _ := json.Marshal(ev)
			seq, err := b.Publish(ctx, bus.Msg{Subject: logSubject(oe.UserID), ID: strconv.FormatInt(oe.EventID, 10), Data: data})
			if err != nil {
				return err
			}
			announce(b, userSubject(oe.UserID), int64(seq), oe.OrderID)
			return nil
		})
}

// news is the live message that tells push nodes a customer's window or a
// store's queue has reached seq (the order is for the curious).
type news struct {
	Seq     int64 `json:"seq"`
	OrderID int64 `json:"order_id"`
}

// announce sends news at most once: a socket that misses it catches up at
// the next one, its heartbeat or its reconnect.
func announce(b *bus.Bus, subject string, seq, orderID int64) {
	data, _ := json.Marshal(news{Seq: seq, OrderID: orderID})
	_ = b.PublishCore(subject, data)
}

// StoreNotifier tells push nodes of each order queued for a store (it is
// the fulfilment context's Notifier). It sends on plain NATS: a message
// lost here is caught up from the store's queue by the next one, by a
// reconnect, or by the POS's poll.
type StoreNotifier struct{ Bus *bus.Bus }

// StoreNews implements fulfil.Notifier.
func (n StoreNotifier) StoreNews(storeID, seq, orderID int64) {
	announce(n.Bus, storeSubject(storeID), seq, orderID)
}
