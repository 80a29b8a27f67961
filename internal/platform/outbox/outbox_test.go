package outbox

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/surge-platform/surge/internal/platform/bus"
	"github.com/surge-platform/surge/internal/platform/sqldb"
	"github.com/surge-platform/surge/internal/platform/sqldb/sqldbtest"
)

// recorder is a bus that records what it is given; while down is set it
// refuses every message.
type recorder struct {
	mu      sync.Mutex
	msgs    map[string][]bus.Msg // by message id
	down    atomic.Bool
	sent    atomic.Int64 // messages acknowledged, repeats included
	refused atomic.Int64 // messages refused while down
}

func (p *recorder) PublishBatch(_ context.Context, msgs []bus.Msg) []error {
	errs := make([]error, len(msgs))
	p.mu.Lock()
	defer p.mu.Unlock()
	for i, m := range msgs {
		if p.down.Load() {
			errs[i] = errors.New("bus down")
			p.refused.Add(1)
			continue
		}
		p.msgs[m.ID] = append(p.msgs[m.ID], m)
		p.sent.Add(1)
	}
	return errs
}

// published returns each id's publishes so far.
func (p *recorder) published() map[string][]bus.Msg {
	p.mu.Lock()
	defer p.mu.Unlock()
	return maps.Clone(p.msgs)
}

// engines are the databases the relay's tests run on.
func engines() []struct {
	name string
	open func(testing.TB) *sqldb.Cluster
} {
	return []struct {
		name string
		open func(testing.TB) *sqldb.Cluster
	}{
		{"sqlite/2", func(tb testing.TB) *sqldb.Cluster { return sqldbtest.Open(tb, sqldbtest.SQLiteURL(tb, 2)) }},
		{"postgres/2", func(tb testing.TB) *sqldb.Cluster { return sqldbtest.Open(tb, sqldbtest.PostgresURLs(tb, 2)...) }},
	}
}

var nextID atomic.Int64

// write commits one outbox row on the database of gene and returns its
// event, with a header of its own.
func write(t *testing.T, ctx context.Context, c *sqldb.Cluster, gene int) Event {
	t.Helper()
	ev, err := tryWrite(ctx, c, gene)
	if err != nil {
		t.Fatal(err)
	}
	return ev
}

// tryWrite is write for another goroutine than the test's.
func tryWrite(ctx context.Context, c *sqldb.Cluster, gene int) (Event, error) {
	id := 1_000_000 + nextID.Add(1)
	ev := Event{ID: id, Subject: "orders.events." + strconv.Itoa(gene%16) + ".order.paid", Type: "order.paid",
		Payload: []byte(fmt.Sprintf(`{"event_id":"%d"}`, id)), Header: map[string]string{"Surge-Test": "x"}}
	return ev, sqldb.Tx(ctx, c.ForGene(gene), func(tx *sql.Tx) error { return Insert(ctx, tx, ev, time.Now()) })
}

// spread is the i-th of a run of logical shards that falls on every
// physical database (they map logical shards in ranges).
func spread(i int) int { return i * 517 % 1024 }

// left counts the rows still in every outbox of c.
func left(t *testing.T, c *sqldb.Cluster) int {
	t.Helper()
	total := 0
	for _, d := range c.Shards() {
		var n int
		if err := d.W.QueryRow(`SELECT COUNT(*) FROM outbox`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		total += n
	}
	return total
}

// traced is a context of a sampled span, as a request's.
func traced() context.Context {
	return trace.ContextWithSpanContext(context.Background(), trace.NewSpanContext(trace.SpanContextConfig{
		TraceID: trace.TraceID{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16}, SpanID: trace.SpanID{1, 2, 3, 4, 5, 6, 7, 8},
		TraceFlags: trace.FlagsSampled}))
}

// run starts r until the test ends.
func run(t *testing.T, r *Relay) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { r.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
}

// waitFor polls cond for up to 20 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for end := time.Now().Add(20 * time.Second); !cond(); {
		if time.Now().After(end) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// Rows handed over by the process that committed them are published once
// each, as the same messages a read of the outbox makes of them, and
// deleted, without a read of the outbox: a row written meanwhile by a
// process that tells nobody waits for a wake-up (the poll is an hour
// away).
func TestHandedRowsArePublishedOnce(t *testing.T) {
	for _, e := range engines() {
		t.Run(e.name, func(t *testing.T) {
			c := e.open(t)
			pub := &recorder{msgs: map[string][]bus.Msg{}}
			r := NewRelay(c, pub, quiet, time.Hour)
			ctx := traced()
			// Read at the start: a row left by an earlier process on each
			// database.
			old := write(t, ctx, c, 1)
			write(t, ctx, c, 1023)
			run(t, r)
			waitFor(t, "the rows left before the start", func() bool { return pub.sent.Load() == 2 })

			silent := write(t, ctx, c, 1000) // by a node that tells nobody
			const writers, each = 8, 40
			handed := make([]Event, writers*each)
			var wg sync.WaitGroup
			for w := range writers {
				wg.Go(func() {
					for i := range each {
						gene := spread(w*each + i)
						ev, err := tryWrite(ctx, c, gene)
						if err != nil {
							t.Error(err)
							return
						}
						r.Handoff(ctx, gene, ev)
						handed[w*each+i] = ev
					}
				})
			}
			wg.Wait()
			if t.Failed() {
				return
			}
			waitFor(t, "every handed row", func() bool { return pub.sent.Load() == 2+writers*each && left(t, c) == 1 })
			time.Sleep(50 * time.Millisecond) // nothing more comes
			got := pub.published()
			if len(got[strconv.FormatInt(silent.ID, 10)]) != 0 {
				t.Fatal("the relay read its outbox after a hand-off")
			}
			if len(got) != 2+writers*each || pub.sent.Load() != 2+writers*each {
				t.Fatalf("%d messages of %d ids published, want %d once each", pub.sent.Load(), len(got), 2+writers*each)
			}
			read := got[strconv.FormatInt(old.ID, 10)][0]
			for _, ev := range handed {
				m := got[strconv.FormatInt(ev.ID, 10)][0]
				if m.Subject != ev.Subject || string(m.Data) != string(ev.Payload) {
					t.Fatalf("handed row %d published as %q %s", ev.ID, m.Subject, m.Data)
				}
				// The same headers as the read row's: the caller's own, the
				// type, and the trace that wrote it.
				if !maps.Equal(m.Header, read.Header) {
					t.Fatalf("handed row's headers %v, a read row's %v", m.Header, read.Header)
				}
			}
			if read.Header["Surge-Type"] != "order.paid" || read.Header["Surge-Test"] != "x" || read.Header["traceparent"] == "" {
				t.Fatalf("a read row's headers: %v", read.Header)
			}
			r.Wake(1000) // the silent row's writer, late
			waitFor(t, "the silent row", func() bool { return left(t, c) == 0 })
			if n := len(pub.published()[strconv.FormatInt(silent.ID, 10)]); n != 1 {
				t.Fatalf("the silent row published %d times after a wake-up, want 1", n)
			}
		})
	}
}

// Rows handed over while the bus refuses them are not lost: after the
// failure the relay reads its outbox and publishes each of them.
func TestHandedRowsSurviveABusOutage(t *testing.T) {
	for _, e := range engines() {
		t.Run(e.name, func(t *testing.T) {
			c := e.open(t)
			pub := &recorder{msgs: map[string][]bus.Msg{}}
			r := NewRelay(c, pub, quiet, time.Hour)
			run(t, r)
			ctx := context.Background()
			pub.down.Store(true)
			var evs []Event
			for i := range 30 {
				gene := spread(i)
				ev := write(t, ctx, c, gene)
				r.Handoff(ctx, gene, ev)
				evs = append(evs, ev)
			}
			waitFor(t, "the relay to try each row", func() bool { return pub.refused.Load() >= 30 })
			if pub.sent.Load() != 0 {
				t.Fatal("published while the bus was down")
			}
			pub.down.Store(false)
			waitFor(t, "the rows after the outage", func() bool { return left(t, c) == 0 })
			got := pub.published()
			for _, ev := range evs {
				if len(got[strconv.FormatInt(ev.ID, 10)]) == 0 {
					t.Fatalf("row %d lost", ev.ID)
				}
			}
		})
	}
}

// A hand-off the relay cannot hold wakes it instead, and the read that
// follows publishes every row once: the hand-offs it holds are dropped,
// as the read finds their rows.
func TestAFullHandoffQueueFallsBackToARead(t *testing.T) {
	c := sqldbtest.Open(t, sqldbtest.SQLiteURL(t, 1))
	pub := &recorder{msgs: map[string][]bus.Msg{}}
	r := NewRelay(c, pub, quiet, time.Hour)
	ctx := context.Background()
	for range handoffs + 5 {
		r.Handoff(ctx, 0, write(t, ctx, c, 0))
	}
	if len(r.handed[0]) != handoffs || len(r.wake[0]) != 1 {
		t.Fatalf("%d hand-offs held and %d wake-ups, want %d and 1", len(r.handed[0]), len(r.wake[0]), handoffs)
	}
	run(t, r)
	waitFor(t, "every row", func() bool { return left(t, c) == 0 })
	time.Sleep(50 * time.Millisecond)
	if n, ids := pub.sent.Load(), len(pub.published()); n != handoffs+5 || ids != handoffs+5 {
		t.Fatalf("%d messages of %d ids published, want %d once each", n, ids, handoffs+5)
	}
}
