package bustest

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/surge-platform/surge/internal/eventually"
	"github.com/surge-platform/surge/internal/platform/bus"
)

// counter counts handled messages by subject.
type counter struct {
	mu sync.Mutex
	n  map[string]int
}

func (c *counter) add(subject string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.n == nil {
		c.n = map[string]int{}
	}
	c.n[subject]++
}

func (c *counter) get(subject string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n[subject]
}

// waitingOf returns the waiting dead letters of consumer (all of them:
// the suite's streams hold few).
func waitingOf(t *testing.T, b *bus.Bus, consumer string) []bus.DeadLetter {
	t.Helper()
	list, next, err := b.DeadLetters(testContext(t), bus.DeadLetterQuery{Consumer: consumer, Limit: 100})
	if err != nil || next != 0 {
		t.Fatalf("DeadLetters of %q: next %d, %v", consumer, next, err)
	}
	return list
}

// testDeadLetter: a message its consumer gives up on is kept with what an
// operator needs; a replay reaches that consumer once (even within the
// stream's dedup window of the original id), and not the other consumer
// of the stream that had handled it.
func testDeadLetter(t *testing.T, open func(t *testing.T) *bus.Bus) {
	b := open(t)
	ctx := testContext(t)
	mustEnsure(t, b, bus.StreamConfig{Name: "DL", Subjects: []string{"dl.>"}})
	if list := waitingOf(t, b, ""); len(list) != 0 { // before the dead-letter stream exists
		t.Fatalf("dead letters of a fresh bus: %+v", list)
	}
	hdr := map[string]string{"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "Surge-Type": "thing.made"}
	start := time.Now()
	seq := mustPublish(t, b, bus.Msg{Subject: "dl.a.1", ID: "a-1", Data: []byte(`{"n":1}`), Header: hdr})

	var (
		broken         atomic.Bool
		healthy, fails counter
		replayed       = make(chan bus.Msg, 4)
		marker         = make(chan struct{})
	)
	broken.Store(true)
	startConsume(t, b, bus.ConsumerConfig{Stream: "DL", Durable: "dl-ok"}, func(_ context.Context, m bus.Msg) error {
		healthy.add(m.Subject)
		if m.Subject == "dl.marker" {
			close(marker)
		}
		return nil
	})
	startConsume(t, b, bus.ConsumerConfig{Stream: "DL", Durable: "dl-bad", MaxDeliver: 3, FilterSubjects: []string{"dl.a.>"}},
		func(_ context.Context, m bus.Msg) error {
			if broken.Load() {
				fails.add(m.Subject)
				return errors.New("the database is broken")
			}
			replayed <- m
			return nil
		})
	eventually.True(t, waitFor, "a dead letter of dl-bad", func() bool { return len(waitingOf(t, b, "dl-bad")) == 1 })
	dl := waitingOf(t, b, "dl-bad")[0]
	if dl.ID == 0 || dl.Stream != "DL" || dl.Consumer != "dl-bad" || dl.Subject != "dl.a.1" || dl.Seq != seq ||
		dl.MsgID != "a-1" || string(dl.Data) != `{"n":1}` || !maps.Equal(dl.Header, hdr) ||
		dl.Error != "the database is broken" || dl.Deliveries != 3 || dl.At.Before(start.Add(-time.Second)) || dl.At.After(time.Now()) {
		t.Fatalf("dead letter = %+v; want the message of seq %d as published, its error, 3 deliveries, the time", dl, seq)
	}
	if n := fails.get("dl.a.1"); n != 3 {
		t.Errorf("the failing handler ran %d times; want MaxDeliver = 3", n)
	}
	if n, err := b.DeadLetterCounts(ctx); err != nil || !maps.Equal(n, map[string]int64{"dl-bad": 1}) {
		t.Errorf("DeadLetterCounts = %v, %v; want dl-bad: 1", n, err)
	}
	if list := waitingOf(t, b, ""); len(list) != 1 || list[0].ID != dl.ID {
		t.Errorf("dead letters of every consumer = %+v; want the one", list)
	}
	if list := waitingOf(t, b, "dl-ok"); len(list) != 0 {
		t.Errorf("dead letters of the healthy consumer = %+v; want none", list)
	}
	if _, _, err := b.DeadLetters(ctx, bus.DeadLetterQuery{Consumer: "dl.*"}); err == nil {
		t.Errorf("DeadLetters of consumer %q: no error", "dl.*")
	}
	eventually.True(t, waitFor, "dl-bad with nothing pending", func() bool {
		c, err := b.JetStream().Consumer(ctx, b.Name("DL"), b.Name("dl-bad"))
		if err != nil {
			t.Fatalf("consumer info: %v", err)
		}
		return c.CachedInfo().NumAckPending == 0 && c.CachedInfo().NumPending == 0
	})

	// The fault is cleared; the replay reaches dl-bad once, as published.
	broken.Store(false)
	rec, err := b.ReplayDeadLetter(ctx, dl.ID)
	if err != nil || rec.ID != dl.ID || rec.Resolution != bus.Replayed || rec.ResolvedAt.IsZero() {
		t.Fatalf("ReplayDeadLetter = %+v, %v", rec, err)
	}
	m := receive(t, replayed, "the replayed message")
	if m.Subject != "dl.a.1" || string(m.Data) != `{"n":1}` || m.Deliveries != 1 || m.ID == "a-1" ||
		m.Header["traceparent"] != hdr["traceparent"] || m.Header[bus.ReplayFor] != "dl-bad" {
		t.Errorf("replayed delivery = %+v; want dl.a.1 as published, 1st delivery, an id of its own, ReplayFor dl-bad", m)
	}
	mustPublish(t, b, bus.Msg{Subject: "dl.marker"}) // the healthy consumer handles in order: past the replay
	receive(t, marker, "the marker on the healthy consumer")
	if n := healthy.get("dl.a.1"); n != 1 {
		t.Errorf("the healthy consumer handled dl.a.1 %d times; want once (the replay is not for it)", n)
	}
	select {
	case m := <-replayed:
		t.Errorf("replay delivered twice: %+v", m)
	case <-time.After(100 * time.Millisecond):
	}
	if _, err := b.ReplayDeadLetter(ctx, dl.ID); !errors.Is(err, bus.ErrNotFound) {
		t.Errorf("replaying a replayed dead letter: %v; want ErrNotFound", err)
	}
	if list := waitingOf(t, b, "dl-bad"); len(list) != 0 {
		t.Errorf("waiting after the replay: %+v", list)
	}
	done, _, err := b.DeadLetters(ctx, bus.DeadLetterQuery{Consumer: "dl-bad", Resolved: true})
	if err != nil || len(done) != 1 || done[0].ID != dl.ID || done[0].Resolution != bus.Replayed || done[0].Subject != "dl.a.1" {
		t.Errorf("resolved dead letters = %+v, %v; want the replayed one", done, err)
	}
	if n, err := b.DeadLetterCounts(ctx); err != nil || n["dl-bad"] != 0 {
		t.Errorf("DeadLetterCounts after the replay = %v, %v", n, err)
	}
}

// testDeadLetterPages: paging, discarding with a reason, and replaying all
// the dead letters of one consumer and then of every consumer.
func testDeadLetterPages(t *testing.T, open func(t *testing.T) *bus.Bus) {
	b := open(t)
	ctx := testContext(t)
	mustEnsure(t, b, bus.StreamConfig{Name: "DLP", Subjects: []string{"dlp.>"}})
	var (
		broken atomic.Bool
		got    counter
	)
	broken.Store(true)
	h := func(_ context.Context, m bus.Msg) error {
		if broken.Load() {
			return fmt.Errorf("broken for %s", m.Subject)
		}
		got.add(m.Subject)
		return nil
	}
	startConsume(t, b, bus.ConsumerConfig{Stream: "DLP", Durable: "x", MaxDeliver: 1, FilterSubjects: []string{"dlp.x.>"}}, h)
	startConsume(t, b, bus.ConsumerConfig{Stream: "DLP", Durable: "y", MaxDeliver: 1, FilterSubjects: []string{"dlp.y.>"}}, h)
	for i := range 5 {
		mustPublish(t, b, bus.Msg{Subject: fmt.Sprintf("dlp.x.%d", i), ID: fmt.Sprintf("x-%d", i)})
	}
	mustPublish(t, b, bus.Msg{Subject: "dlp.y.0", ID: "y-0"})
	eventually.True(t, waitFor, "6 dead letters", func() bool { return len(waitingOf(t, b, "")) == 6 })

	var pages [][]string
	for after := uint64(0); ; {
		list, next, err := b.DeadLetters(ctx, bus.DeadLetterQuery{Consumer: "x", After: after, Limit: 2})
		if err != nil {
			t.Fatal(err)
		}
		var page []string
		for _, dl := range list {
			page = append(page, dl.Subject)
		}
		pages = append(pages, page)
		if next == 0 {
			break
		}
		after = next
	}
	if got := fmt.Sprint(pages); got != "[[dlp.x.0 dlp.x.1] [dlp.x.2 dlp.x.3] [dlp.x.4]]" {
		t.Errorf("pages of 2 = %s", got)
	}

	x := waitingOf(t, b, "x")
	if _, err := b.DiscardDeadLetter(ctx, x[0].ID, " "); err == nil || errors.Is(err, bus.ErrNotFound) {
		t.Errorf("discard without a reason: %v; want an error", err)
	}
	if _, err := b.DiscardDeadLetter(ctx, 1<<40, "gone"); !errors.Is(err, bus.ErrNotFound) {
		t.Errorf("discard of an unknown id: %v; want ErrNotFound", err)
	}
	rec, err := b.DiscardDeadLetter(ctx, x[0].ID, "a test order, nothing to do")
	if err != nil || rec.Resolution != bus.Discarded || rec.Reason != "a test order, nothing to do" || rec.Subject != "dlp.x.0" {
		t.Fatalf("DiscardDeadLetter = %+v, %v", rec, err)
	}
	if _, err := b.DiscardDeadLetter(ctx, x[0].ID, "again"); !errors.Is(err, bus.ErrNotFound) {
		t.Errorf("discarding twice: %v; want ErrNotFound", err)
	}
	done, _, err := b.DeadLetters(ctx, bus.DeadLetterQuery{Resolved: true})
	if err != nil || len(done) != 1 || done[0].ID != x[0].ID || done[0].Reason != "a test order, nothing to do" {
		t.Errorf("resolved = %+v, %v; want the discarded one with its reason", done, err)
	}
	if _, err := b.ReplayDeadLetter(ctx, done[0].ID); !errors.Is(err, bus.ErrNotFound) {
		t.Errorf("replaying a discarded dead letter: %v; want ErrNotFound", err)
	}

	broken.Store(false)
	if n, err := b.ReplayDeadLetters(ctx, "x"); err != nil || n != 4 {
		t.Fatalf("ReplayDeadLetters(x) = %d, %v; want 4", n, err)
	}
	eventually.True(t, waitFor, "x's four replays handled", func() bool {
		for i := 1; i < 5; i++ {
			if got.get(fmt.Sprintf("dlp.x.%d", i)) != 1 {
				return false
			}
		}
		return true
	})
	if n, err := b.DeadLetterCounts(ctx); err != nil || !maps.Equal(n, map[string]int64{"y": 1}) {
		t.Errorf("DeadLetterCounts after replaying x's = %v, %v; want y: 1", n, err)
	}
	if n, err := b.ReplayDeadLetters(ctx, ""); err != nil || n != 1 {
		t.Fatalf("ReplayDeadLetters() = %d, %v; want 1", n, err)
	}
	eventually.True(t, waitFor, "y's replay handled", func() bool { return got.get("dlp.y.0") == 1 })
	if got.get("dlp.x.0") != 0 {
		t.Errorf("the discarded message was handled")
	}
	if list := waitingOf(t, b, ""); len(list) != 0 {
		t.Errorf("waiting after replaying all: %+v", list)
	}
}

// testDeadLetterUnstored: when the dead letter cannot be stored the message
// is not terminated: it comes back (without running the handler again) until
// it can be, and its dead letter still says why the handler failed.
func testDeadLetterUnstored(t *testing.T, open func(t *testing.T) *bus.Bus) {
	b := open(t)
	ctx := testContext(t)
	mustEnsure(t, b, bus.StreamConfig{Name: "UN", Subjects: []string{"un.>"}})
	// Another stream holds the dead letters' subjects: the dead-letter
	// stream cannot be made.
	mustEnsure(t, b, bus.StreamConfig{Name: "BLOCK", Subjects: []string{"deadletters.>"}})
	mustPublish(t, b, bus.Msg{Subject: "un.1", ID: "un-1"})
	var runs atomic.Int32
	startConsume(t, b, bus.ConsumerConfig{Stream: "UN", Durable: "un", MaxDeliver: 2}, func(context.Context, bus.Msg) error {
		runs.Add(1)
		return errors.New("cannot handle un.1")
	})
	eventually.True(t, waitFor, "deliveries past MaxDeliver while the dead letter cannot be stored", func() bool {
		c, err := b.JetStream().Consumer(ctx, b.Name("UN"), b.Name("un"))
		return err == nil && c.CachedInfo().Delivered.Consumer >= 3 // not found: not made yet
	})
	if n := runs.Load(); n != 2 {
		t.Errorf("the handler ran %d times; want MaxDeliver = 2", n)
	}
	if err := b.JetStream().DeleteStream(ctx, b.Name("BLOCK")); err != nil {
		t.Fatal(err)
	}
	var dl bus.DeadLetter
	eventually.True(t, waitFor, "the dead letter stored once it can be", func() bool {
		list := waitingOf(t, b, "un")
		if len(list) > 0 {
			dl = list[0]
		}
		return len(list) > 0
	})
	if dl.Subject != "un.1" || dl.Error != "cannot handle un.1" || dl.Deliveries < 3 || runs.Load() != 2 {
		t.Errorf("dead letter %+v after %d runs; want un.1 with the handler's error, past 2 deliveries, 2 runs", dl, runs.Load())
	}
}
