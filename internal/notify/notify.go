// Package notify sends customer notifications ("order 123 is ready: pickup
// code 1234") when orders are accepted and ready. Sending is best effort and
// asynchronous: a Service consumes order events from the bus, sends each
// through a pluggable Sender under a retry policy and a circuit breaker, and
// acks the event whatever the outcome, so a notification failure never
// blocks, fails or redelivers an order event forever.
package notify

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/failsafe-go/failsafe-go"
	"github.com/failsafe-go/failsafe-go/circuitbreaker"
	"github.com/failsafe-go/failsafe-go/retrypolicy"

	"github.com/surge-platform/surge/internal/order"
	"github.com/surge-platform/surge/internal/platform/bus"
)

// Message kinds: the order event types that are notified.
const (
	KindAccepted = order.EvAccepted
	KindReady    = order.EvReady
)

// Message is one notification to a customer.
type Message struct {
	ID         string    `json:"id"` // dedup id: the order event id, decimal
	UserID     int64     `json:"user_id,string"`
	OrderID    int64     `json:"order_id,string"`
	StoreID    int64     `json:"store_id,string"`
	Kind       string    `json:"kind"` // KindAccepted or KindReady
	PickupCode string    `json:"pickup_code,omitempty"`
	Text       string    `json:"text"`
	At         time.Time `json:"at"`
}

// Sender delivers one message. It returns nil once the receiver accepted
// it, an error wrapping ErrRejected when trying again cannot help, and any
// other error when a retry may succeed. Receivers dedup by Message.ID, so
// sending a message twice is harmless.
type Sender interface {
	Send(ctx context.Context, m Message) error
}

// ErrRejected marks a permanent failure: the receiver refused the message.
var ErrRejected = errors.New("notify: message rejected")

// Config tunes a Service. The zero value works.
type Config struct {
	Attempts   int           // tries per message, the first included; 0 = 3
	Backoff    time.Duration // delay before the first retry, doubling, ±25% jitter; 0 = 100ms
	MaxBackoff time.Duration // longest retry delay; 0 = 1s
	// The breaker opens after BreakerFailures consecutive failed attempts
	// (0 = 5; permanent rejections do not count) and refuses every send for
	// BreakerDelay (0 = 10s). Then it is half-open: one trial attempt is let
	// through; its success closes the breaker, its failure opens it again.
	BreakerFailures int
	BreakerDelay    time.Duration
	// On reports whether notifications are switched on (the cluster's
	// switch notify.send); while it is false Consume sends nothing and
	// counts every message as Suppressed. nil = always on.
	On func() bool
}

func (c Config) withDefaults() Config {
	if c.Attempts <= 0 {
		c.Attempts = 3
	}
	if c.Backoff <= 0 {
		c.Backoff = 100 * time.Millisecond
	}
	if c.MaxBackoff <= 0 {
		c.MaxBackoff = time.Second
	}
	c.MaxBackoff = max(c.MaxBackoff, c.Backoff)
	if c.BreakerFailures <= 0 {
		c.BreakerFailures = 5
	}
	if c.BreakerDelay <= 0 {
		c.BreakerDelay = 10 * time.Second
	}
	if c.On == nil {
		c.On = func() bool { return true }
	}
	return c
}

// Stats counts the outcomes of Send since New.
type Stats struct {
	Sent    int64 `json:"sent"`
	Failed  int64 `json:"failed"`  // rejected, or every attempt failed
	Skipped int64 `json:"skipped"` // refused by the open breaker before any attempt
	// Suppressed counts the messages Consume did not send because the
	// switch was off (they are not sent later either).
	Suppressed int64  `json:"suppressed"`
	Breaker    string `json:"breaker"` // "closed", "open" or "half-open"
}

// Service sends messages with retries and a circuit breaker. It is safe
// for concurrent use.
type Service struct {
	sender  Sender
	on      func() bool
	log     *slog.Logger
	breaker circuitbreaker.CircuitBreaker[any]
	exec    failsafe.Executor[any]

	sent, failed, skipped, suppressed atomic.Int64
}

// New returns a Service that sends through s.
func New(cfg Config, s Sender, log *slog.Logger) *Service {
	cfg = cfg.withDefaults()
	cb := circuitbreaker.NewBuilder[any]().
		HandleIf(func(_ any, err error) bool { return retryable(err) }).
		WithFailureThreshold(uint(cfg.BreakerFailures)).
		WithSuccessThreshold(1).
		WithDelay(cfg.BreakerDelay).
		Build()
	rp := retrypolicy.NewBuilder[any]().
		WithMaxAttempts(cfg.Attempts).
		WithBackoff(cfg.Backoff, cfg.MaxBackoff).
		WithJitterFactor(0.25).
		AbortIf(func(_ any, err error) bool { return !retryable(err) }).
		ReturnLastFailure().
		Build()
	return &Service{sender: s, on: cfg.On, log: log, breaker: cb, exec: failsafe.With[any](rp, cb)}
}

// retryable reports whether another attempt may succeed. Breaker-open
// errors are not retried (the retry would only wait out the backoff to be
// refused again), nor are rejections or a cancelled caller.
func retryable(err error) bool {
	return err != nil && !errors.Is(err, ErrRejected) && !errors.Is(err, circuitbreaker.ErrOpen) &&
		!errors.Is(err, context.Canceled)
}

// Send delivers m with the retry policy (outside) and the breaker (inside)
// and counts the outcome in Stats. It returns nil once sent; an error
// wrapping circuitbreaker.ErrOpen when the breaker refused it (counted as
// Skipped if no attempt reached the Sender); ErrRejected or the last
// attempt's error otherwise (counted as Failed). A send given up because
// ctx ended is not counted.
func (s *Service) Send(ctx context.Context, m Message) error {
	var attempts atomic.Int32
	err := s.exec.WithContext(ctx).Run(func() error {
		attempts.Add(1)
		return s.sender.Send(ctx, m)
	})
	switch {
	case err == nil:
		s.sent.Add(1)
		return nil
	case ctx.Err() != nil:
	case attempts.Load() == 0:
		s.skipped.Add(1)
	default:
		s.failed.Add(1)
	}
	return fmt.Errorf("notify message %s: %w", m.ID, err)
}

// Stats returns the counters and the breaker's state.
func (s *Service) Stats() Stats {
	return Stats{Sent: s.sent.Load(), Failed: s.failed.Load(), Skipped: s.skipped.Load(),
		Suppressed: s.suppressed.Load(), Breaker: s.breaker.State().String()}
}

// Durable is the name of the bus consumer of order events.
const Durable = "notify"

// consumer starts at the stream's end when first made: a first start does
// not message customers about old orders.
var consumer = bus.ConsumerConfig{Stream: order.Stream.Name, Durable: Durable, MaxAckPending: 256, Workers: 4, FromNow: true,
	FilterSubjects: order.Types(KindAccepted, KindReady)}

// Prepare makes the consumer, so that events published after it returns
// are notified (call it before the node takes traffic).
func Prepare(ctx context.Context, b *bus.Bus) error {
	if err := b.EnsureStream(ctx, order.Stream); err != nil {
		return err
	}
	return b.EnsureConsumer(ctx, consumer)
}

// Consume runs the durable consumer of order events until ctx is done,
// sending a message for every order.accepted and order.ready event (none
// while Config.On says off: they are counted as suppressed). Every
// event is acked, sent or not: a failed send is counted and logged at warn
// once. Only a send interrupted by shutdown is handed back to the bus. It
// returns the errors of bus.Consume. Prepare must have made the consumer:
// Consume does not make it again, so a bus down at that moment is waited
// out instead of stopping the node.
func (s *Service) Consume(ctx context.Context, b *bus.Bus) error {
	return b.Consume(ctx, consumer,
		func(ctx context.Context, bm bus.Msg) error {
			var ev order.Event
			if err := json.Unmarshal(bm.Data, &ev); err != nil || ev.EventID == 0 {
				s.log.Error("notify: undecodable order event, dropped", "subject", bm.Subject, "seq", bm.Seq, "err", err)
				return nil
			}
			m, ok := MessageOf(ev)
			if !ok {
				return nil
			}
			if !s.on() {
				s.suppressed.Add(1)
				return nil
			}
			err := s.Send(ctx, m)
			if err != nil && ctx.Err() != nil {
				return err // shutting down: let another instance send it
			}
			if err != nil {
				s.log.Warn("notify: not sent", "order_id", m.OrderID, "user_id", m.UserID, "store_id", m.StoreID,
					"kind", m.Kind, "message_id", m.ID, "err", err)
			}
			return nil
		})
}

// MessageOf returns the message for an order event, and false for the
// event types that are not notified.
func MessageOf(ev order.Event) (Message, bool) {
	var text string
	switch ev.Type {
	case order.EvAccepted:
		text = fmt.Sprintf("Order %d accepted, pickup code %s", ev.OrderID, ev.PickupCode)
	case order.EvReady:
		text = fmt.Sprintf("Order %d is ready: pickup code %s", ev.OrderID, ev.PickupCode)
	default:
		return Message{}, false
	}
	return Message{ID: strconv.FormatInt(ev.EventID, 10), UserID: ev.UserID, OrderID: ev.OrderID, StoreID: ev.StoreID,
		Kind: ev.Type, PickupCode: ev.PickupCode, Text: text, At: ev.At}, true
}
