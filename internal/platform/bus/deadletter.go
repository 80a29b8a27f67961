package bus

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Dead letters are the messages a consumer gave up on (MaxDeliver). They
// are kept in the stream DeadLetterStream, shared by every process of the
// bus, until an operator replays or discards them: a waiting dead letter
// is a message on deadletters.waiting.<stream>.<durable>; replaying or
// discarding one writes a record of it on deadletters.resolved.<stream>.<durable>
// and then deletes the waiting message. The stream is made when the first
// dead letter is stored.
const (
	DeadLetterStream = "DEADLETTERS"

	// ReplayFor is the header of a replayed dead letter: the durable name
	// of the consumer it is for. Consume acks it unseen for every other
	// consumer of the stream, which handled the message when it was first
	// published.
	ReplayFor = "Surge-Replay-For"

	dlWaiting  = "deadletters.waiting."
	dlResolved = "deadletters.resolved."
	// unstoredMax bounds the errors kept for dead letters not yet stored.
	unstoredMax = 1024
)

// Resolutions of a dead letter.
const (
	Replayed  = "replayed"
	Discarded = "discarded"
)

// deadLetters is the stream's config. The dedup window covers a dead letter
// stored twice (its message's term was lost and it came back) and a replay
// or discard retried after a failure half-way.
var deadLetters = StreamConfig{Name: DeadLetterStream, Subjects: []string{"deadletters.>"}, Duplicates: time.Hour}

// DeadLetter is a message a consumer gave up on, as stored.
type DeadLetter struct {
	// ID names a waiting dead letter (its sequence in DeadLetterStream); a
	// resolved record keeps the ID it had.
	ID         uint64            `json:"id,omitzero"`
	Stream     string            `json:"stream"`   // the consumer's stream
	Consumer   string            `json:"consumer"` // the consumer's durable name
	Subject    string            `json:"subject"`  // the message's, un-prefixed
	Seq        uint64            `json:"seq"`      // the message's sequence in Stream
	MsgID      string            `json:"msg_id,omitempty"`
	Header     map[string]string `json:"header,omitempty"`
	Data       []byte            `json:"data"`
	Error      string            `json:"error"` // why the consumer gave up: its handler's last error
	Deliveries int               `json:"deliveries"`
	At         time.Time         `json:"at"` // when the consumer gave up

	// Set on resolved records only:
	Resolution string    `json:"resolution,omitempty"` // Replayed or Discarded
	Reason     string    `json:"reason,omitempty"`     // the operator's, for Discarded
	ResolvedAt time.Time `json:"resolved_at,omitzero"`
}

// DeadLetterQuery selects a page of dead letters, oldest first.
type DeadLetterQuery struct {
	Consumer string // durable name; "" = every consumer
	After    uint64 // the cursor: the page starts after it (0 = at the start)
	Limit    int    // 0 = 20, at most 100
	Resolved bool   // the records of replayed and discarded ones instead of the waiting
}

// deadLetterID is the dead letter's dedup id, and the key of its error in
// Bus.unstored.
func deadLetterID(cfg ConsumerConfig, m Msg) string {
	return "dl." + cfg.Stream + "." + cfg.Durable + "." + strconv.FormatUint(m.Seq, 10)
}

// storeDeadLetter stores m as a dead letter of the consumer cfg, making the
// stream when it does not exist yet. Storing one twice is not an error.
func (b *Bus) storeDeadLetter(ctx context.Context, cfg ConsumerConfig, m Msg, reason string) error {
	dl := DeadLetter{Stream: cfg.Stream, Consumer: cfg.Durable, Subject: m.Subject, Seq: m.Seq, MsgID: m.ID,
		Header: m.Header, Data: m.Data, Error: reason, Deliveries: m.Deliveries, At: time.Now().UTC()}
	data, err := json.Marshal(dl)
	if err != nil {
		return fmt.Errorf("bus: dead letter: %w", err)
	}
	msg := Msg{Subject: dlWaiting + cfg.Stream + "." + cfg.Durable, ID: deadLetterID(cfg, m), Data: data}
	for attempt := 0; ; attempt++ {
		if !b.dlStream.Load() {
			if err := b.EnsureStream(ctx, deadLetters); err != nil {
				return err
			}
			b.dlStream.Store(true)
		}
		_, err = b.publishAck(ctx, msg)
		if attempt > 0 || !errors.Is(err, jetstream.ErrNoStreamResponse) {
			return err
		}
		b.dlStream.Store(false) // deleted since: make it again
	}
}

// keepUnstored remembers reason for m until a later delivery stores its
// dead letter.
func (b *Bus) keepUnstored(cfg ConsumerConfig, m Msg, reason string) {
	if b.unstoredN.Load() >= unstoredMax {
		return
	}
	if _, had := b.unstored.Swap(deadLetterID(cfg, m), reason); !had {
		b.unstoredN.Add(1)
	}
}

// takeUnstored returns (and forgets) the reason kept for m.
func (b *Bus) takeUnstored(cfg ConsumerConfig, m Msg) (string, bool) {
	v, ok := b.unstored.LoadAndDelete(deadLetterID(cfg, m))
	if !ok {
		return "", false
	}
	b.unstoredN.Add(-1)
	return v.(string), true
}

// stream returns a handle on stream, from a cache; a missing stream gives
// an error wrapping ErrNotFound.
func (b *Bus) stream(ctx context.Context, name string) (jetstream.Stream, error) {
	if s, ok := b.streams.Load(name); ok {
		return s.(jetstream.Stream), nil
	}
	s, err := guarded(b, func() (jetstream.Stream, error) { return b.js.Stream(ctx, b.Name(name)) })
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return nil, fmt.Errorf("bus: stream %s: %w", name, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("bus: stream %s: %w", name, b.connErr(err))
	}
	h, _ := b.streams.LoadOrStore(name, s)
	return h.(jetstream.Stream), nil
}

// DeadLetters returns a page of the dead letters q selects and the cursor
// of the next page (0 when this one is the last).
func (b *Bus) DeadLetters(ctx context.Context, q DeadLetterQuery) (list []DeadLetter, next uint64, err error) {
	if b.closed.Load() {
		return nil, 0, ErrClosed
	}
	if strings.ContainsAny(q.Consumer, ".*> \t\r\n") {
		return nil, 0, fmt.Errorf("bus: dead letters: %q is not a durable name", q.Consumer)
	}
	limit := q.Limit
	if limit <= 0 {
		limit = 20
	}
	limit = min(limit, 100)
	s, err := b.stream(ctx, DeadLetterStream)
	if errors.Is(err, ErrNotFound) {
		return []DeadLetter{}, 0, nil // none ever stored
	}
	if err != nil {
		return nil, 0, err
	}
	subject := dlWaiting
	if q.Resolved {
		subject = dlResolved
	}
	if q.Consumer == "" {
		subject += ">"
	} else {
		subject += "*." + q.Consumer
	}
	msgs, err := b.after(ctx, s, subject, q.After, 0, limit)
	if err != nil {
		return nil, 0, fmt.Errorf("bus: dead letters: %w", err)
	}
	list = make([]DeadLetter, 0, len(msgs))
	for _, m := range msgs {
		dl, err := decodeDeadLetter(m)
		if err != nil {
			return nil, 0, err
		}
		list = append(list, dl)
	}
	if len(msgs) == limit {
		next = msgs[len(msgs)-1].Seq
	}
	return list, next, nil
}

func decodeDeadLetter(m Msg) (DeadLetter, error) {
	var dl DeadLetter
	if err := json.Unmarshal(m.Data, &dl); err != nil {
		return dl, fmt.Errorf("bus: dead letter %d: %w", m.Seq, err)
	}
	if strings.HasPrefix(m.Subject, dlWaiting) {
		dl.ID = m.Seq
	}
	return dl, nil
}

// waiting returns the waiting dead letter id, or an error wrapping
// ErrNotFound.
func (b *Bus) waiting(ctx context.Context, s jetstream.Stream, id uint64) (DeadLetter, error) {
	raw, err := guarded(b, func() (*jetstream.RawStreamMsg, error) { return s.GetMsg(ctx, id) })
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return DeadLetter{}, fmt.Errorf("bus: dead letter %d: %w", id, ErrNotFound)
	}
	if err != nil {
		return DeadLetter{}, fmt.Errorf("bus: dead letter %d: %w", id, b.connErr(err))
	}
	subject := b.unprefix(raw.Subject)
	if !strings.HasPrefix(subject, dlWaiting) {
		return DeadLetter{}, fmt.Errorf("bus: dead letter %d: %w", id, ErrNotFound)
	}
	return decodeDeadLetter(Msg{Subject: subject, Seq: raw.Sequence, Data: raw.Data})
}

// ReplayDeadLetter publishes the waiting dead letter id again on its
// subject, for its consumer only (header ReplayFor; the consumer sees it
// with Deliveries 1), and returns its record. The replay has a
// Nats-Msg-Id of its own: the original's would be dropped as a duplicate
// within the stream's window. An unknown or resolved id gives an error
// wrapping ErrNotFound. Retrying after an error is safe within an hour
// (the replay is de-duplicated); a replay and a discard of the same dead
// letter at the same moment may both take effect (the first record wins).
func (b *Bus) ReplayDeadLetter(ctx context.Context, id uint64) (DeadLetter, error) {
	return b.resolve(ctx, id, Replayed, "")
}

// DiscardDeadLetter drops the waiting dead letter id, recording reason
// (required), and returns its record. An unknown or resolved id gives an
// error wrapping ErrNotFound.
func (b *Bus) DiscardDeadLetter(ctx context.Context, id uint64, reason string) (DeadLetter, error) {
	if strings.TrimSpace(reason) == "" {
		return DeadLetter{}, errors.New("bus: discard dead letter: a reason is required")
	}
	return b.resolve(ctx, id, Discarded, reason)
}

func (b *Bus) resolve(ctx context.Context, id uint64, how, reason string) (DeadLetter, error) {
	if b.closed.Load() {
		return DeadLetter{}, ErrClosed
	}
	s, err := b.stream(ctx, DeadLetterStream)
	if errors.Is(err, ErrNotFound) {
		return DeadLetter{}, fmt.Errorf("bus: dead letter %d: %w", id, ErrNotFound)
	}
	if err != nil {
		return DeadLetter{}, err
	}
	dl, err := b.waiting(ctx, s, id)
	if err != nil {
		return DeadLetter{}, err
	}
	return b.resolveLetter(ctx, s, dl, how, reason)
}

// resolveLetter replays or discards dl: each step can be repeated, and the
// waiting message goes last, so a failure half-way leaves it to be tried
// again.
func (b *Bus) resolveLetter(ctx context.Context, s jetstream.Stream, dl DeadLetter, how, reason string) (DeadLetter, error) {
	key := strconv.FormatUint(dl.ID, 10)
	if how == Replayed {
		hdr := map[string]string{ReplayFor: dl.Consumer}
		for k, v := range dl.Header {
			if !strings.HasPrefix(strings.ToLower(k), "nats-") { // the server's: expectations, schedules, TTLs
				hdr[k] = v
			}
		}
		if _, err := b.publishAck(ctx, Msg{Subject: dl.Subject, ID: "replay." + key, Data: dl.Data, Header: hdr}); err != nil {
			return DeadLetter{}, fmt.Errorf("bus: replay dead letter %d: %w", dl.ID, err)
		}
	}
	dl.Resolution, dl.Reason, dl.ResolvedAt = how, reason, time.Now().UTC()
	data, err := json.Marshal(dl)
	if err != nil {
		return DeadLetter{}, fmt.Errorf("bus: dead letter %d: %w", dl.ID, err)
	}
	record := Msg{Subject: dlResolved + dl.Stream + "." + dl.Consumer, ID: "resolved." + key, Data: data}
	if _, err := b.publishAck(ctx, record); err != nil {
		return DeadLetter{}, fmt.Errorf("bus: %s dead letter %d: %w", how, dl.ID, err)
	}
	_, err = guarded(b, func() (struct{}, error) {
		err := s.DeleteMsg(ctx, dl.ID)
		if err == nil {
			return struct{}{}, nil
		}
		// Gone already (a concurrent resolve) is done; anything else is not.
		if _, gerr := s.GetMsg(ctx, dl.ID); errors.Is(gerr, jetstream.ErrMsgNotFound) {
			return struct{}{}, nil
		}
		return struct{}{}, err
	})
	if err != nil {
		return DeadLetter{}, fmt.Errorf("bus: %s dead letter %d: %w", how, dl.ID, b.connErr(err))
	}
	return dl, nil
}

// ReplayDeadLetters replays every dead letter of consumer ("" = of every
// consumer) that is waiting when it starts (one that fails again while it
// runs waits for the next call), and returns how many it replayed.
func (b *Bus) ReplayDeadLetters(ctx context.Context, consumer string) (int, error) {
	if b.closed.Load() {
		return 0, ErrClosed
	}
	s, err := b.stream(ctx, DeadLetterStream)
	if errors.Is(err, ErrNotFound) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	info, err := guarded(b, func() (*jetstream.StreamInfo, error) { return s.Info(ctx) })
	if err != nil {
		return 0, fmt.Errorf("bus: replay dead letters: %w", b.connErr(err))
	}
	end, n := info.State.LastSeq, 0
	for after := uint64(0); ; {
		list, next, err := b.DeadLetters(ctx, DeadLetterQuery{Consumer: consumer, After: after, Limit: 100})
		if err != nil {
			return n, err
		}
		for _, dl := range list {
			if dl.ID > end {
				return n, nil
			}
			if _, err := b.resolveLetter(ctx, s, dl, Replayed, ""); err != nil {
				return n, err
			}
			n++
		}
		if next == 0 {
			return n, nil
		}
		after = next
	}
}

// DeadLetterCounts returns the number of waiting dead letters per consumer
// (durable name), from the stream's subject counts (one request).
func (b *Bus) DeadLetterCounts(ctx context.Context) (map[string]int64, error) {
	if b.closed.Load() {
		return nil, ErrClosed
	}
	out := map[string]int64{}
	s, err := b.stream(ctx, DeadLetterStream)
	if errors.Is(err, ErrNotFound) {
		return out, nil
	}
	if err != nil {
		return nil, err
	}
	info, err := guarded(b, func() (*jetstream.StreamInfo, error) {
		return s.Info(ctx, jetstream.WithSubjectFilter(b.Subject(dlWaiting+">")))
	})
	if err != nil {
		return nil, fmt.Errorf("bus: dead letter counts: %w", b.connErr(err))
	}
	for subject, n := range info.State.Subjects {
		consumer := subject[strings.LastIndexByte(subject, '.')+1:]
		out[consumer] += int64(n)
	}
	return out, nil
}
