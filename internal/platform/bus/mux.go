package bus

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Mux delivers the plain NATS messages of many subjects to one handler
// through one goroutine. Following a subject costs one subscription (a few
// hundred bytes), not a goroutine, so a node can follow one subject per
// connected client. Subjects are reference counted: Add and Remove pair up.
type Mux struct {
	b  *Bus
	ch chan *nats.Msg

	mu   sync.Mutex
	subs map[string]*muxSub // un-prefixed subject -> subscription
}

type muxSub struct {
	sub  *nats.Subscription
	refs int
}

// NewMux returns a Mux whose delivery buffer holds buffer messages; when
// the handler falls that far behind, further messages are dropped (plain
// NATS is at most once).
func (b *Bus) NewMux(buffer int) *Mux {
	return &Mux{b: b, ch: make(chan *nats.Msg, max(buffer, 16)), subs: map[string]*muxSub{}}
}

// Add follows subject. The first Add of a subject returns once the server
// has registered the subscription, so a message published after it returns
// is delivered.
func (m *Mux) Add(subject string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if s := m.subs[subject]; s != nil {
		s.refs++
		return nil
	}
	if m.b.closed.Load() {
		return ErrClosed
	}
	sub, err := m.b.nc.ChanSubscribe(m.b.Subject(subject), m.ch)
	if err != nil {
		return fmt.Errorf("bus: follow %s: %w", subject, m.b.connErr(err))
	}
	// Holding mu across the flush keeps a concurrent Remove of the same
	// subject from unsubscribing half-registered state; flushes are short.
	if err := m.b.nc.FlushTimeout(flushTimeout); err != nil {
		_ = sub.Unsubscribe()
		return fmt.Errorf("bus: follow %s: %w", subject, m.b.connErr(err))
	}
	m.subs[subject] = &muxSub{sub: sub, refs: 1}
	return nil
}

// Remove stops following subject once every Add of it is matched.
func (m *Mux) Remove(subject string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	s := m.subs[subject]
	if s == nil {
		return
	}
	if s.refs--; s.refs == 0 {
		delete(m.subs, subject)
		_ = s.sub.Unsubscribe()
	}
}

// Len returns the number of subjects followed.
func (m *Mux) Len() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.subs)
}

// Run calls fn for each message of the followed subjects, one at a time,
// with the un-prefixed subject, until ctx is done.
func (m *Mux) Run(ctx context.Context, fn func(subject string, data []byte)) error {
	for {
		select {
		case <-ctx.Done():
			return nil
		case msg := <-m.ch:
			fn(m.b.unprefix(msg.Subject), msg.Data)
		}
	}
}

// Replay returns the messages of stream on subject with a sequence after
// after, oldest first, at most limit of them. complete is false when some
// may be missing: the stream no longer holds messages that old (what it
// holds is returned), after is beyond its end (nothing is returned), or
// limit messages were found (a per-subject cap may have dropped older ones;
// pass the stream's PerSubject as limit). end is the stream's last
// sequence.
func (b *Bus) Replay(ctx context.Context, stream, subject string, after uint64, limit int) (msgs []Msg, complete bool, end uint64, err error) {
	if b.closed.Load() {
		return nil, false, 0, ErrClosed
	}
	s, err := guarded(b, func() (jetstream.Stream, error) { return b.js.Stream(ctx, b.Name(stream)) }) // fresh state
	if err != nil {
		return nil, false, 0, fmt.Errorf("bus: replay %s: %w", stream, b.connErr(err))
	}
	st := s.CachedInfo().State
	if after > st.LastSeq {
		return nil, false, st.LastSeq, nil
	}
	from := after
	if st.FirstSeq > 0 {
		from = max(after, st.FirstSeq-1)
	}
	msgs, err = b.after(ctx, s, subject, from, 0, limit)
	return msgs, err == nil && after+1 >= st.FirstSeq && len(msgs) < limit, st.LastSeq, err
}

// After returns up to limit messages of stream on subject (wildcards
// allowed) with a sequence after after, oldest first, and nothing about
// what the stream may have dropped (see Replay). With upto > 0 it stops at the first message at or
// past upto instead of asking for one more (a reader that knows where the
// subject ends saves a request per read).
func (b *Bus) After(ctx context.Context, stream, subject string, after, upto uint64, limit int) ([]Msg, error) {
	if b.closed.Load() {
		return nil, ErrClosed
	}
	s, err := b.stream(ctx, stream)
	if err != nil {
		return nil, err
	}
	return b.after(ctx, s, subject, after, upto, limit)
}

// after reads with one call to the breaker.
func (b *Bus) after(ctx context.Context, s jetstream.Stream, subject string, after, upto uint64, limit int) ([]Msg, error) {
	msgs, err := guarded(b, func() ([]Msg, error) {
		var msgs []Msg
		for seq := after + 1; len(msgs) < limit && (upto == 0 || seq <= upto); {
			raw, err := s.GetMsg(ctx, seq, jetstream.WithGetMsgSubject(b.Subject(subject)))
			if errors.Is(err, jetstream.ErrMsgNotFound) {
				break
			}
			if err != nil {
				return nil, err
			}
			msgs = append(msgs, Msg{Subject: b.unprefix(raw.Subject), Data: raw.Data, Seq: raw.Sequence, Header: flatHeader(raw.Header)})
			seq = raw.Sequence + 1
		}
		return msgs, nil
	})
	if err != nil {
		return nil, fmt.Errorf("bus: read %s: %w", subject, b.connErr(err))
	}
	return msgs, nil
}

func flatHeader(h nats.Header) map[string]string {
	if len(h) == 0 {
		return nil
	}
	out := make(map[string]string, len(h))
	for k, v := range h {
		if len(v) > 0 {
			out[k] = v[0]
		}
	}
	return out
}
