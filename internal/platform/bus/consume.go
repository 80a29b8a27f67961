package bus

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/surge-platform/surge/internal/platform/obs"
)

const (
	nakBase    = 100 * time.Millisecond // first retry delay without ConsumerConfig.Backoff
	nakMax     = 30 * time.Second       // longest retry delay without ConsumerConfig.Backoff
	ensureWait = 5 * time.Second        // one attempt to create a consumer
	reasonMax  = 512                    // bytes of handler error kept as the termination reason
	// drainWait bounds how long a stopping Consume waits for the messages
	// already on their way to it (one round trip, normally).
	drainWait = 5 * time.Second
	// deadLetterWait bounds storing a dead letter (also while stopping).
	deadLetterWait = 5 * time.Second
)

// withDefaults fills the zero fields of cfg.
func (cfg ConsumerConfig) withDefaults() ConsumerConfig {
	if cfg.MaxDeliver == 0 {
		cfg.MaxDeliver = defaultMaxDeliver
	} else if cfg.MaxDeliver < 0 {
		cfg.MaxDeliver = -1
	}
	if cfg.AckWait == 0 {
		cfg.AckWait = defaultAckWait
	}
	if cfg.MaxAckPending == 0 {
		cfg.MaxAckPending = defaultMaxAckPending
	}
	if cfg.Workers <= 0 {
		cfg.Workers = 1
	}
	return cfg
}

// capped applies the Bus's ?max_deliver= to cfg (after withDefaults).
func (b *Bus) capped(cfg ConsumerConfig) ConsumerConfig {
	if b.maxDeliver > 0 && (cfg.MaxDeliver < 0 || cfg.MaxDeliver > b.maxDeliver) {
		cfg.MaxDeliver = b.maxDeliver
	}
	return cfg
}

// prefetch is how many messages the client buffers ahead of the workers:
// enough to keep them busy, few enough that a buffered message rarely waits
// out its AckWait.
func (cfg ConsumerConfig) prefetch() int {
	n := min(max(8*cfg.Workers, 16), 256)
	if cfg.MaxAckPending > 0 {
		n = min(n, cfg.MaxAckPending)
	}
	return n
}

// Consume creates or updates the durable pull consumer cfg describes (which
// needs its stream to exist) and runs h for its messages, cfg.Workers at a
// time, until ctx is done. Then it starts no new handler, stops pulling,
// naks the messages it had received but not handled (they are redelivered
// at once, to this or another consumer instance, with Deliveries one
// higher), waits for the running handlers and returns nil. Handlers get
// ctx, so they see it cancelled during shutdown; a handler that still
// returns nil is acked.
//
// Consume returns an error if the consumer cannot be created, if the
// server deletes it, and ErrClosed if the Bus is closed under it.
// Reconnects are handled inside. Several Consume calls with the same durable
// (in one process or many) share the messages between them.
func (b *Bus) Consume(ctx context.Context, cfg ConsumerConfig, h Handler) error {
	if b.closed.Load() {
		return ErrClosed
	}
	if cfg.Stream == "" || cfg.Durable == "" {
		return errors.New("bus: consume: stream and durable are required")
	}
	cfg = b.capped(cfg.withDefaults())
	// The server may be away (restarting, JetStream not up yet): wait for
	// it rather than fail the caller, as a running consumer does. Each
	// attempt is bounded: a request sent while disconnected can go
	// unanswered.
	var cons jetstream.Consumer
	var err error
	for attempt := 0; ; attempt++ {
		actx, cancel := context.WithTimeout(ctx, ensureWait)
		cons, err = b.ensureConsumer(actx, cfg)
		cancel()
		if err == nil || !unavailable(err) || ctx.Err() != nil || b.closed.Load() {
			break
		}
		select {
		case <-ctx.Done():
		case <-time.After(min(nakDelay(nil, attempt+1), 2*time.Second)):
		}
	}
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	it, err := cons.Messages(
		jetstream.PullMaxMessages(cfg.prefetch()),
		jetstream.WithMessagesErrOnMissingHeartbeat(false), // a reconnect, handled inside
	)
	if err != nil {
		return fmt.Errorf("bus: consume %s/%s: %w", cfg.Stream, cfg.Durable, b.connErr(err))
	}

	work := make(chan jetstream.Msg)
	var wg sync.WaitGroup
	for range cfg.Workers {
		wg.Go(func() {
			for jm := range work {
				if ctx.Err() != nil { // stopping: start no new handler
					_ = jm.Nak()
					continue
				}
				b.handle(ctx, cfg, h, jm)
			}
		})
	}
	runErr := b.pull(ctx, it, work)
	if runErr != nil {
		runErr = fmt.Errorf("bus: consume %s/%s: %w", cfg.Stream, cfg.Durable, runErr)
	}
	// Unsubscribe, and hand back what was buffered or still on its way.
	it.Drain()
	for {
		jm, err := it.Next(jetstream.NextMaxWait(drainWait))
		if err != nil {
			break
		}
		_ = jm.Nak()
	}
	close(work)
	wg.Wait()
	return runErr
}

// pull feeds work until ctx is done (nil) or the iterator fails.
func (b *Bus) pull(ctx context.Context, it jetstream.MessagesContext, work chan<- jetstream.Msg) error {
	for {
		jm, err := it.Next(jetstream.NextContext(ctx))
		if ctx.Err() != nil {
			if err == nil {
				_ = jm.Nak()
			}
			return nil
		}
		if err != nil {
			if b.closed.Load() || b.nc.IsClosed() {
				return ErrClosed
			}
			return err
		}
		select {
		case work <- jm:
		case <-ctx.Done():
			_ = jm.Nak()
			return nil
		}
	}
}

// handle runs h for jm and acks, naks or dead-letters jm by its outcome.
// Ack errors are ignored: the message is then redelivered, which
// at-least-once handlers tolerate.
func (b *Bus) handle(ctx context.Context, cfg ConsumerConfig, h Handler, jm jetstream.Msg) {
	m := b.fromJetStream(jm)
	if to := m.Header[ReplayFor]; to != "" && to != cfg.Durable {
		_ = jm.Ack() // a dead letter replayed for another consumer of the stream
		return
	}
	if cfg.MaxDeliver > 0 && m.Deliveries > cfg.MaxDeliver {
		reason, ok := b.takeUnstored(cfg, m)
		if !ok {
			reason = fmt.Sprintf("gave up after %d deliveries; the last error is unknown here (a handler ran past its ack wait, "+
				"its process stopped, or another process failed to store the dead letter)", cfg.MaxDeliver)
		}
		b.giveUp(ctx, cfg, jm, m, reason)
		return
	}
	ctx = obs.Extract(ctx, m.Header) // the handler's work joins the trace that published m
	var span trace.Span
	if b.tracer != nil {
		ctx, span = b.tracer.Start(ctx, "consume "+cfg.Durable, trace.WithSpanKind(trace.SpanKindConsumer))
	}
	err := safeCall(ctx, h, m)
	if span != nil {
		if err != nil {
			span.SetStatus(codes.Error, err.Error())
		}
		span.End()
	}
	switch {
	case err == nil:
		_ = jm.Ack()
	case cfg.MaxDeliver > 0 && m.Deliveries >= cfg.MaxDeliver && ctx.Err() == nil:
		reason := err.Error()
		if len(reason) > reasonMax {
			reason = strings.ToValidUTF8(reason[:reasonMax], "")
		}
		b.giveUp(ctx, cfg, jm, m, reason)
	default:
		_ = jm.NakWithDelay(nakDelay(cfg.Backoff, m.Deliveries))
	}
}

// giveUp stores m as a dead letter and then terminates it, or naks it when
// the dead letter cannot be stored (it comes back past MaxDeliver and is
// tried again).
func (b *Bus) giveUp(ctx context.Context, cfg ConsumerConfig, jm jetstream.Msg, m Msg, reason string) {
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), deadLetterWait)
	err := b.storeDeadLetter(sctx, cfg, m, reason)
	cancel()
	if err != nil {
		b.keepUnstored(cfg, m, reason)
		_ = jm.NakWithDelay(nakDelay(cfg.Backoff, m.Deliveries))
		return
	}
	_ = jm.TermWithReason(reason)
}

// safeCall runs h, turning a panic into an error.
func safeCall(ctx context.Context, h Handler, m Msg) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("bus: handler panic: %v", r)
		}
	}()
	return h(ctx, m)
}

// fromJetStream converts a delivered message, removing the namespace.
func (b *Bus) fromJetStream(jm jetstream.Msg) Msg {
	m := Msg{Subject: b.unprefix(jm.Subject()), Data: jm.Data(), Deliveries: 1}
	for k, vs := range jm.Headers() {
		switch {
		case len(vs) == 0:
		case k == jetstream.MsgIDHeader:
			m.ID = vs[0]
		default:
			if m.Header == nil {
				m.Header = make(map[string]string)
			}
			m.Header[k] = vs[0]
		}
	}
	if md, err := jm.Metadata(); err == nil {
		m.Seq = md.Sequence.Stream
		m.Deliveries = int(md.NumDelivered)
	}
	return m
}

// nakDelay is the redelivery delay after the given delivery failed:
// backoff[deliveries-1] (the last entry repeating) when configured, else
// exponential from nakBase to nakMax with the upper half jittered.
func nakDelay(backoff []time.Duration, deliveries int) time.Duration {
	n := max(deliveries, 1) - 1
	if len(backoff) > 0 {
		return backoff[min(n, len(backoff)-1)]
	}
	d := min(nakBase<<min(n, 20), nakMax)
	return d/2 + rand.N(d/2+1)
}

// EnsureConsumer creates the durable consumer cfg describes, or updates it,
// without consuming: a FromNow consumer made before the first message it
// must see is published sees it.
func (b *Bus) EnsureConsumer(ctx context.Context, cfg ConsumerConfig) error {
	if b.closed.Load() {
		return ErrClosed
	}
	if cfg.Stream == "" || cfg.Durable == "" {
		return errors.New("bus: ensure consumer: stream and durable are required")
	}
	_, err := b.ensureConsumer(ctx, cfg.withDefaults())
	return err
}

func (b *Bus) ensureConsumer(ctx context.Context, cfg ConsumerConfig) (jetstream.Consumer, error) {
	jcfg := jetstream.ConsumerConfig{
		Durable:       b.Name(cfg.Durable),
		AckPolicy:     jetstream.AckExplicitPolicy,
		DeliverPolicy: jetstream.DeliverAllPolicy,
		AckWait:       cfg.AckWait,
		MaxDeliver:    -1, // Consume counts deliveries itself: the server would drop the message
		BackOff:       cfg.Backoff,
		MaxAckPending: cfg.MaxAckPending,
	}
	switch len(cfg.FilterSubjects) {
	case 0:
	case 1: // as consumers were made before several were allowed: such a consumer is left as it is
		jcfg.FilterSubject = b.Subject(cfg.FilterSubjects[0])
	default:
		for _, s := range cfg.FilterSubjects {
			jcfg.FilterSubjects = append(jcfg.FilterSubjects, b.Subject(s))
		}
	}
	b.manage.Lock()
	defer b.manage.Unlock()
	if cfg.FromNow {
		// Only at creation: the server refuses to change the deliver policy
		// of an existing consumer, so one is kept as it was made.
		jcfg.DeliverPolicy = jetstream.DeliverNewPolicy
		if old, err := b.js.Consumer(ctx, b.Name(cfg.Stream), jcfg.Durable); err == nil {
			oc := old.CachedInfo().Config
			jcfg.DeliverPolicy, jcfg.OptStartSeq, jcfg.OptStartTime = oc.DeliverPolicy, oc.OptStartSeq, oc.OptStartTime
		}
	}
	cons, err := b.js.CreateOrUpdateConsumer(ctx, b.Name(cfg.Stream), jcfg)
	if err != nil {
		return nil, fmt.Errorf("bus: consume %s/%s: %w", cfg.Stream, cfg.Durable, b.connErr(err))
	}
	return cons, nil
}

// unavailable reports whether err says the server did not answer (a
// timeout, no responders, a connection being re-established), not that it
// refused the request.
func unavailable(err error) bool {
	return errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nats.ErrTimeout) ||
		errors.Is(err, nats.ErrNoResponders) || errors.Is(err, jetstream.ErrNoStreamResponse) ||
		errors.Is(err, nats.ErrConnectionReconnecting) || errors.Is(err, nats.ErrDisconnected)
}

// Drained waits until the durable consumer has acknowledged every message
// the stream holds now: its ack floor reaches the stream's last message.
// (Not "until it is idle": other work on the stream may keep it busy for
// hours.) Counters rebuilt from what a consumer wrote wait for it first.
func (b *Bus) Drained(ctx context.Context, stream, durable string) error {
	st, err := b.js.Stream(ctx, b.Name(stream))
	if err != nil {
		return fmt.Errorf("bus: stream %s: %w", stream, b.connErr(err))
	}
	si, err := st.Info(ctx)
	if err != nil {
		return fmt.Errorf("bus: stream %s: %w", stream, b.connErr(err))
	}
	last := si.State.LastSeq
	if si.State.Msgs == 0 {
		return nil
	}
	for {
		c, err := b.js.Consumer(ctx, b.Name(stream), b.Name(durable))
		if err == nil {
			info, ierr := c.Info(ctx)
			if ierr == nil && (info.AckFloor.Stream >= last || info.NumPending == 0 && info.NumAckPending == 0) {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("bus: %s still has messages of %s to apply: %w", durable, stream, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}
