package bus

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/trace"

	"github.com/surge-platform/surge/internal/platform/obs"
)

// Headers of JetStream message schedules (server 2.12+). A message published
// with them to a subject of a stream with StreamConfig.Schedules is a
// schedule: at the time given, the server publishes its body to the target
// subject (of the same stream). The schedule's subject is its identity: a
// new schedule on the same subject replaces the old one.
const (
	Schedule       = "Nats-Schedule"        // "@at <RFC3339>"
	ScheduleTarget = "Nats-Schedule-Target" // un-prefixed subject
)

// ScheduleAt returns the Nats-Schedule value for a one-shot at t. The server
// keeps one-second precision and truncates, which would fire up to a second
// early, so t is rounded up to the next whole second.
func ScheduleAt(t time.Time) string {
	if r := t.Truncate(time.Second); !r.Equal(t) {
		t = r.Add(time.Second)
	}
	return "@at " + t.UTC().Format(time.RFC3339)
}

// natsMsg builds the wire message for m: namespaced subject, m.Header, and
// Nats-Msg-Id = m.ID when set.
func (b *Bus) natsMsg(m Msg) (*nats.Msg, error) {
	if m.Subject == "" {
		return nil, errors.New("bus: publish: empty subject")
	}
	nm := &nats.Msg{Subject: b.Subject(m.Subject), Data: m.Data}
	if len(m.Header) > 0 || m.ID != "" {
		nm.Header = make(nats.Header, len(m.Header)+1)
		for k, v := range m.Header {
			nm.Header.Set(k, v)
		}
		if m.ID != "" {
			nm.Header.Set(jetstream.MsgIDHeader, m.ID)
		}
		if t := nm.Header.Get(ScheduleTarget); t != "" {
			nm.Header.Set(ScheduleTarget, b.Subject(t)) // callers name targets un-prefixed too
		}
	}
	return nm, nil
}

// Publish stores m in the stream that captures its subject and waits for the
// server's ack. A message whose ID the stream has already seen within its
// Duplicates window is not stored again and is not an error: seq is then the
// original message's sequence. An error means the message may or may not be
// stored; publishing again with the same ID is safe.
func (b *Bus) Publish(ctx context.Context, m Msg) (seq uint64, err error) {
	ack, err := b.publishAck(ctx, m)
	return ack.Seq, err
}

// ErrNotNext is returned (wrapped) by PublishAfter when the subject's last
// message is not the one expected.
var ErrNotNext = errors.New("bus: the subject's last message is not the expected one")

// Ack is the server's answer to a publish.
type Ack struct {
	Seq       uint64
	Duplicate bool // m.ID was seen within the Duplicates window: Seq is the first message's, nothing was stored
}

// PublishAck is Publish with the whole ack.
func (b *Bus) PublishAck(ctx context.Context, m Msg) (Ack, error) {
	return b.publishAck(ctx, m)
}

// PublishAfter is PublishAck on a condition: the message last stored on
// m's subject has sequence prev (0: the subject has none). When it has
// another, nothing is stored and the error wraps ErrNotNext. A writer that
// knows where a subject ends can so tell its readers, with each message,
// which one came before it. (The condition is checked before duplicates
// are: a duplicate's Ack says nothing about its predecessor.)
func (b *Bus) PublishAfter(ctx context.Context, m Msg, prev uint64) (Ack, error) {
	return b.publishAck(ctx, m, jetstream.WithExpectLastSequencePerSubject(prev))
}

func (b *Bus) publishAck(ctx context.Context, m Msg, opts ...jetstream.PublishOpt) (Ack, error) {
	if b.closed.Load() {
		return Ack{}, ErrClosed
	}
	nm, err := b.natsMsg(withTrace(ctx, m))
	if err != nil {
		return Ack{}, err
	}
	ack, err := guarded(b, func() (*jetstream.PubAck, error) { return b.js.PublishMsg(ctx, nm, opts...) })
	var api *jetstream.APIError
	if errors.As(err, &api) && (api.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence ||
		api.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant) {
		return Ack{}, fmt.Errorf("bus: publish %s: %w", m.Subject, ErrNotNext)
	}
	if err != nil {
		return Ack{}, fmt.Errorf("bus: publish %s: %w", m.Subject, b.connErr(err))
	}
	return Ack{Seq: ack.Sequence, Duplicate: ack.Duplicate}, nil
}

// withTrace is m carrying ctx's trace context (traceparent, lower-case),
// unless it carries one already (an outbox row's).
func withTrace(ctx context.Context, m Msg) Msg {
	if !trace.SpanContextFromContext(ctx).IsValid() || obs.Carrier(m.Header).Get(obs.TraceHeader) != "" {
		return m
	}
	h := make(map[string]string, len(m.Header)+1)
	maps.Copy(h, m.Header)
	obs.Inject(ctx, h)
	m.Header = h
	return m
}

// PublishBatch publishes all msgs without waiting between them and then
// waits for every ack, or for ctx. errs[i] is nil once msgs[i] is stored
// (duplicates included), so an outbox relay may delete exactly the rows
// whose error is nil; the others may or may not be stored and are safe to
// publish again with the same ID. The batch is one call to the breaker.
func (b *Bus) PublishBatch(ctx context.Context, msgs []Msg) []error {
	errs := make([]error, len(msgs))
	fail := func(err error) []error {
		for i := range errs {
			errs[i] = err
		}
		return errs
	}
	if b.closed.Load() {
		return fail(ErrClosed)
	}
	if err := b.br.Allow(); err != nil {
		return fail(err)
	}
	defer func() { b.br.Done(errors.Join(errs...)) }()
	// When too many acks are outstanding on this connection the client
	// stalls a publish; wait that out for as long as ctx allows (bounded).
	stall := 5 * time.Second
	if d, ok := ctx.Deadline(); ok {
		stall = min(stall, max(time.Until(d), time.Millisecond))
	}
	futures := make([]jetstream.PubAckFuture, len(msgs))
	for i, m := range msgs {
		if err := ctx.Err(); err != nil {
			errs[i] = err
			continue
		}
		nm, err := b.natsMsg(withTrace(ctx, m))
		if err != nil {
			errs[i] = err
			continue
		}
		f, err := b.js.PublishMsgAsync(nm, jetstream.WithStallWait(stall))
		if err != nil {
			errs[i] = fmt.Errorf("bus: publish %s: %w", m.Subject, b.connErr(err))
			continue
		}
		futures[i] = f
	}
	for i, f := range futures {
		if f == nil {
			continue
		}
		if err := waitAck(ctx, f); err != nil {
			errs[i] = fmt.Errorf("bus: publish %s: %w", msgs[i].Subject, b.connErr(err))
		}
	}
	return errs
}

// waitAck waits for f's outcome, preferring an outcome already in over a
// done ctx.
func waitAck(ctx context.Context, f jetstream.PubAckFuture) error {
	select {
	case <-f.Ok():
		return nil
	case err := <-f.Err():
		return err
	default:
	}
	select {
	case <-f.Ok():
		return nil
	case err := <-f.Err():
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}
