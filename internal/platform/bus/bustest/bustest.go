// Package bustest holds the conformance suite every way of running the bus
// must pass (Run), and helpers for tests that need a bus: an external
// nats-server per test binary (ExternalURL), fresh namespaces (Namespaced)
// and MustOpen.
package bustest

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/surge-platform/surge/internal/eventually"
	"github.com/surge-platform/surge/internal/platform/bus"
)

// waitFor bounds every wait of the suite for something to happen.
const waitFor = 10 * time.Second

// Run runs the conformance suite. open must return a ready Bus that is
// closed when its test ends (MustOpen does that). open may be called more
// than once within one test: every Bus it returns within that test must
// reach the same server and have a namespace of its own (at most one may
// have none), or the namespacing test proves nothing. Subtests run in
// parallel and each uses its own stream and subject names.
func Run(t *testing.T, open func(t *testing.T) *bus.Bus) {
	tests := []struct {
		name string
		fn   func(t *testing.T, open func(t *testing.T) *bus.Bus)
	}{
		{"RoundTrip", testRoundTrip},
		{"Dedup", testDedup},
		{"PublishAfter", testPublishAfter},
		{"PublishBatch", testPublishBatch},
		{"Redelivery", testRedelivery},
		{"Restart", testRestart},
		{"MaxDeliver", testMaxDeliver},
		{"DeadLetter", testDeadLetter},
		{"DeadLetterPages", testDeadLetterPages},
		{"DeadLetterUnstored", testDeadLetterUnstored},
		{"Workers", testWorkers},
		{"CorePubSub", testCorePubSub},
		{"Mux", testMux},
		{"EnsureConcurrently", testEnsureConcurrently},
		{"FromNow", testFromNow},
		{"Replay", testReplay},
		{"Namespace", testNamespace},
		{"Close", testClose},
		{"Lags", testLags},
		{"Schedule", func(t *testing.T, open func(t *testing.T) *bus.Bus) { runSchedule(t, open(t)) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			tt.fn(t, open)
		})
	}
}

func testRoundTrip(t *testing.T, open func(t *testing.T) *bus.Bus) {
	b := open(t)
	ctx := testContext(t)
	mustEnsure(t, b, bus.StreamConfig{Name: "RT", Subjects: []string{"rt.>"}})

	seq1 := mustPublish(t, b, bus.Msg{Subject: "rt.plain", Data: []byte("first")})
	hdr := map[string]string{
		"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
		"X-Kind":      "order.paid",
	}
	seq2 := mustPublish(t, b, bus.Msg{Subject: "rt.order.1", ID: "evt-1", Data: []byte(`{"order_id":"1"}`), Header: hdr})
	if seq1 != 1 || seq2 != 2 {
		t.Fatalf("sequences of a fresh stream = %d, %d; want 1, 2", seq1, seq2)
	}

	all := make(chan bus.Msg, 10)
	startConsume(t, b, bus.ConsumerConfig{Stream: "RT", Durable: "rt-all"}, func(_ context.Context, m bus.Msg) error {
		all <- m
		return nil
	})
	m := receive(t, all, "first message")
	if m.Subject != "rt.plain" || string(m.Data) != "first" || m.ID != "" || len(m.Header) != 0 ||
		m.Seq != seq1 || m.Deliveries != 1 {
		t.Errorf("first delivery = %+v; want subject rt.plain, data first, no id/header, seq %d, 1 delivery", m, seq1)
	}
	m = receive(t, all, "second message")
	if m.Subject != "rt.order.1" || string(m.Data) != `{"order_id":"1"}` || m.ID != "evt-1" ||
		m.Seq != seq2 || m.Deliveries != 1 {
		t.Errorf("second delivery = %+v; want subject rt.order.1, id evt-1, seq %d, 1 delivery", m, seq2)
	}
	if !maps.Equal(m.Header, hdr) {
		t.Errorf("second delivery header = %v; want %v", m.Header, hdr)
	}

	// A filtered consumer skips the first message.
	orders := make(chan bus.Msg, 10)
	startConsume(t, b, bus.ConsumerConfig{Stream: "RT", Durable: "rt-orders", FilterSubjects: []string{"rt.order.>"}},
		func(_ context.Context, m bus.Msg) error {
			orders <- m
			return nil
		})
	if m := receive(t, orders, "filtered message"); m.Seq != seq2 || m.Subject != "rt.order.1" {
		t.Errorf("filtered consumer got seq %d subject %q; want seq %d subject rt.order.1", m.Seq, m.Subject, seq2)
	}

	// Several filters: only their subjects, in stream order.
	seq3 := mustPublish(t, b, bus.Msg{Subject: "rt.event.paid", Data: []byte("paid")})
	mustPublish(t, b, bus.Msg{Subject: "rt.event.created", Data: []byte("created")})
	seq5 := mustPublish(t, b, bus.Msg{Subject: "rt.event.accepted", Data: []byte("accepted")})
	some := make(chan bus.Msg, 10)
	startConsume(t, b, bus.ConsumerConfig{Stream: "RT", Durable: "rt-some", FilterSubjects: []string{"rt.event.paid", "rt.event.accepted"}},
		func(_ context.Context, m bus.Msg) error {
			some <- m
			return nil
		})
	for _, want := range []uint64{seq3, seq5} {
		if m := receive(t, some, "message of a filter"); m.Seq != want {
			t.Errorf("consumer of two filters got seq %d (%s); want %d", m.Seq, m.Subject, want)
		}
	}
	select {
	case m := <-some:
		t.Errorf("consumer of two filters got %s too", m.Subject)
	case <-time.After(100 * time.Millisecond):
	}

	if n, last, err := b.StreamInfo(ctx, "RT"); err != nil || n != 5 || last != 5 {
		t.Errorf("StreamInfo = %d, %d, %v; want 5, 5, nil", n, last, err)
	}
	if _, _, err := b.StreamInfo(ctx, "NOSUCH"); !errors.Is(err, bus.ErrNotFound) {
		t.Errorf("StreamInfo of a missing stream: err = %v; want ErrNotFound", err)
	}
}

// testPublishAfter: a conditional publish stores a message only right
// after the expected one on its subject, and of writers racing from one
// predecessor exactly one wins.
func testPublishAfter(t *testing.T, open func(t *testing.T) *bus.Bus) {
	b := open(t)
	ctx := testContext(t)
	mustEnsure(t, b, bus.StreamConfig{Name: "PA", Subjects: []string{"pa.>"}})

	first, err := b.PublishAfter(ctx, bus.Msg{Subject: "pa.a", ID: "a1"}, 0) // none before it
	if err != nil || first.Duplicate {
		t.Fatalf("first on an empty subject: %+v, %v", first, err)
	}
	other := mustPublish(t, b, bus.Msg{Subject: "pa.b"}) // another subject does not count
	second, err := b.PublishAfter(ctx, bus.Msg{Subject: "pa.a", ID: "a2"}, first.Seq)
	if err != nil || second.Seq <= other {
		t.Fatalf("after the first: %+v, %v (pa.b's message is %d)", second, err, other)
	}
	if _, err := b.PublishAfter(ctx, bus.Msg{Subject: "pa.a", ID: "a3"}, first.Seq); !errors.Is(err, bus.ErrNotNext) {
		t.Fatalf("after a message that is no longer last: %v; want ErrNotNext", err)
	}
	if _, err := b.PublishAfter(ctx, bus.Msg{Subject: "pa.a", ID: "a4"}, 0); !errors.Is(err, bus.ErrNotNext) {
		t.Fatalf("'none before' on a subject that has some: %v; want ErrNotNext", err)
	}
	wantStream(t, b, "PA", 3)
	if a, err := b.PublishAck(ctx, bus.Msg{Subject: "pa.a", ID: "a2"}); err != nil || !a.Duplicate || a.Seq != second.Seq {
		t.Fatalf("PublishAck of a duplicate: %+v, %v; want duplicate of %d", a, err, second.Seq)
	}
	if a, err := b.PublishAfter(ctx, bus.Msg{Subject: "pa.a", ID: "a2"}, second.Seq); err != nil || !a.Duplicate {
		t.Fatalf("PublishAfter of a duplicate: %+v, %v; want duplicate", a, err)
	}

	// Racing from the same predecessor: one is stored, the rest refused.
	const n = 16
	var wg sync.WaitGroup
	var won, refused atomic.Int32
	start := make(chan struct{})
	for i := range n {
		wg.Go(func() {
			<-start
			_, err := b.PublishAfter(ctx, bus.Msg{Subject: "pa.a", ID: fmt.Sprintf("race-%d", i)}, second.Seq)
			switch {
			case err == nil:
				won.Add(1)
			case errors.Is(err, bus.ErrNotNext):
				refused.Add(1)
			default:
				t.Error(err)
			}
		})
	}
	close(start)
	wg.Wait()
	if won.Load() != 1 || refused.Load() != n-1 {
		t.Fatalf("%d writers after one message: %d stored, %d refused; want 1 and %d", n, won.Load(), refused.Load(), n-1)
	}
	wantStream(t, b, "PA", 4)
}

func testDedup(t *testing.T, open func(t *testing.T) *bus.Bus) {
	b := open(t)
	ctx := testContext(t)

	t.Run("Sequential", func(t *testing.T) {
		mustEnsure(t, b, bus.StreamConfig{Name: "DDS", Subjects: []string{"dds.>"}})
		s1 := mustPublish(t, b, bus.Msg{Subject: "dds.x", ID: "once", Data: []byte("1")})
		s2 := mustPublish(t, b, bus.Msg{Subject: "dds.x", ID: "once", Data: []byte("2")})
		if s1 != s2 {
			t.Errorf("duplicate publish returned seq %d; want the original %d", s2, s1)
		}
		wantStream(t, b, "DDS", 1)
		mustPublish(t, b, bus.Msg{Subject: "dds.x", ID: "other"})
		wantStream(t, b, "DDS", 2) // another id is stored
	})

	t.Run("Concurrent", func(t *testing.T) {
		mustEnsure(t, b, bus.StreamConfig{Name: "DDC", Subjects: []string{"ddc.>"}})
		const n = 20
		var (
			wg    sync.WaitGroup
			start = make(chan struct{})
			seqs  [n]uint64
			errs  [n]error
		)
		for i := range n {
			wg.Go(func() {
				<-start
				seqs[i], errs[i] = b.Publish(ctx, bus.Msg{Subject: "ddc.x", ID: "race", Data: fmt.Appendf(nil, "%d", i)})
			})
		}
		close(start)
		wg.Wait()
		for i := range n {
			if errs[i] != nil {
				t.Errorf("publisher %d: %v", i, errs[i])
			}
			if seqs[i] != seqs[0] {
				t.Errorf("publisher %d got seq %d, publisher 0 got %d; want all equal", i, seqs[i], seqs[0])
			}
		}
		wantStream(t, b, "DDC", 1)
	})
}

func testPublishBatch(t *testing.T, open func(t *testing.T) *bus.Bus) {
	b := open(t)
	ctx := testContext(t)
	mustEnsure(t, b, bus.StreamConfig{Name: "PB", Subjects: []string{"pb.>"}})

	msgs := make([]bus.Msg, 1000)
	for i := range msgs {
		msgs[i] = bus.Msg{
			Subject: fmt.Sprintf("pb.%d", i%10),
			ID:      fmt.Sprintf("pb-%04d", i),
			Data:    fmt.Appendf(nil, "payload %d", i),
		}
	}
	for round := range 2 { // the second round is all duplicates: still no errors
		errs := b.PublishBatch(ctx, msgs)
		if len(errs) != len(msgs) {
			t.Fatalf("round %d: %d errors for %d messages", round, len(errs), len(msgs))
		}
		for i, err := range errs {
			if err != nil {
				t.Fatalf("round %d: message %d: %v", round, i, err)
			}
		}
		if n, last, err := b.StreamInfo(ctx, "PB"); err != nil || n != 1000 || last != 1000 {
			t.Fatalf("round %d: StreamInfo = %d, %d, %v; want 1000, 1000, nil", round, n, last, err)
		}
	}

	// One error per message: only the stored one is nil.
	errs := b.PublishBatch(ctx, []bus.Msg{
		{Subject: "pb.new", ID: "pb-new"},
		{Subject: ""},
		{Subject: "nostream.x", ID: "nowhere"},
	})
	if len(errs) != 3 || errs[0] != nil || errs[1] == nil || errs[2] == nil {
		t.Errorf("mixed batch errors = %v; want [nil, error, error]", errs)
	}
	wantStream(t, b, "PB", 1001)
}

func testRedelivery(t *testing.T, open func(t *testing.T) *bus.Bus) {
	b := open(t)
	mustEnsure(t, b, bus.StreamConfig{Name: "RD", Subjects: []string{"rd.>"}})
	seq := mustPublish(t, b, bus.Msg{Subject: "rd.1", ID: "rd-1"})

	var (
		mu   sync.Mutex
		seen []int // Deliveries of each call
		done = make(chan struct{})
	)
	startConsume(t, b, bus.ConsumerConfig{Stream: "RD", Durable: "rd"}, func(_ context.Context, m bus.Msg) error {
		mu.Lock()
		seen = append(seen, m.Deliveries)
		mu.Unlock()
		if m.Seq != seq {
			return fmt.Errorf("unexpected seq %d", m.Seq)
		}
		switch m.Deliveries {
		case 1:
			return errors.New("transient failure")
		case 2:
			panic("handler bug") // a panic counts as an error
		default:
			close(done)
			return nil
		}
	})
	receive(t, done, "third delivery")
	mu.Lock()
	defer mu.Unlock()
	if !slices.Equal(seen, []int{1, 2, 3}) {
		t.Errorf("deliveries seen = %v; want [1 2 3]", seen)
	}
}

func testRestart(t *testing.T, open func(t *testing.T) *bus.Bus) {
	b := open(t)
	mustEnsure(t, b, bus.StreamConfig{Name: "RS", Subjects: []string{"rs.>"}})
	const total, firstRun = 20, 8
	for i := range total {
		mustPublish(t, b, bus.Msg{Subject: "rs.x", ID: fmt.Sprintf("rs-%d", i)})
	}
	cfg := bus.ConsumerConfig{Stream: "RS", Durable: "rs"}

	var (
		mu      sync.Mutex
		first   = map[uint64]int{}
		second  = map[uint64]int{}
		reached = make(chan struct{})
	)
	stop := startConsume(t, b, cfg, func(ctx context.Context, m bus.Msg) error {
		mu.Lock()
		first[m.Seq]++
		n := len(first)
		mu.Unlock()
		if n == firstRun {
			close(reached)
			<-ctx.Done() // hold the only worker until the restart
		}
		return nil // acked, even after ctx is done
	})
	receive(t, reached, fmt.Sprintf("%d messages in the first run", firstRun))
	stop()

	mu.Lock()
	for seq := uint64(1); seq <= firstRun; seq++ {
		if first[seq] != 1 {
			t.Errorf("first run handled seq %d %d times; want 1", seq, first[seq])
		}
	}
	if len(first) != firstRun {
		t.Errorf("first run handled %d messages after ctx was done; want none: %v", len(first)-firstRun, first)
	}
	mu.Unlock()

	startConsume(t, b, cfg, func(_ context.Context, m bus.Msg) error {
		mu.Lock()
		second[m.Seq]++
		mu.Unlock()
		return nil
	})
	eventually.True(t, waitFor, "all messages handled across both runs", func() bool {
		mu.Lock()
		defer mu.Unlock()
		for seq := uint64(1); seq <= total; seq++ {
			if first[seq] == 0 && second[seq] == 0 {
				return false
			}
		}
		return true
	})
	mu.Lock()
	defer mu.Unlock()
	for seq, n := range second {
		if first[seq] > 0 {
			t.Errorf("seq %d acked in the first run was delivered again", seq)
		}
		if n != 1 {
			t.Errorf("seq %d handled %d times in the second run; want 1", seq, n)
		}
	}
}

func testMaxDeliver(t *testing.T, open func(t *testing.T) *bus.Bus) {
	b := open(t)
	ctx := testContext(t)
	mustEnsure(t, b, bus.StreamConfig{Name: "MD", Subjects: []string{"md.>"}})
	mustPublish(t, b, bus.Msg{Subject: "md.poison", ID: "poison"})

	var (
		poison atomic.Int32
		marker = make(chan struct{})
	)
	startConsume(t, b, bus.ConsumerConfig{
		Stream:     "MD",
		Durable:    "md",
		MaxDeliver: 3,
		Backoff:    []time.Duration{200 * time.Millisecond, 20 * time.Millisecond},
	}, func(_ context.Context, m bus.Msg) error {
		if m.Subject == "md.poison" {
			poison.Add(1)
			return errors.New("cannot handle")
		}
		close(marker)
		return nil
	})
	eventually.True(t, waitFor, "3 deliveries of the poison message", func() bool { return poison.Load() >= 3 })

	// A later message still flows, and the server holds nothing more to deliver.
	mustPublish(t, b, bus.Msg{Subject: "md.marker", ID: "marker"})
	receive(t, marker, "marker message")
	eventually.True(t, waitFor, "consumer with nothing pending", func() bool {
		c, err := b.JetStream().Consumer(ctx, b.Name("MD"), b.Name("md"))
		if err != nil {
			t.Fatalf("consumer info: %v", err)
		}
		ci := c.CachedInfo()
		return ci.NumPending == 0 && ci.NumAckPending == 0 && ci.NumRedelivered == 0
	})
	if n := poison.Load(); n != 3 {
		t.Errorf("poison message handled %d times; want MaxDeliver = 3", n)
	}
	list, _, err := b.DeadLetters(ctx, bus.DeadLetterQuery{Consumer: "md"})
	if err != nil || len(list) != 1 || list[0].Subject != "md.poison" || list[0].Deliveries != 3 || list[0].Error != "cannot handle" {
		t.Errorf("dead letters of md = %+v, %v; want md.poison after 3 deliveries, error \"cannot handle\"", list, err)
	}
}

func testWorkers(t *testing.T, open func(t *testing.T) *bus.Bus) {
	b := open(t)
	mustEnsure(t, b, bus.StreamConfig{Name: "WK", Subjects: []string{"wk.>"}})
	const workers = 4
	for i := range workers {
		mustPublish(t, b, bus.Msg{Subject: "wk.x", ID: fmt.Sprintf("wk-%d", i)})
	}
	var (
		active, peak atomic.Int32
		allIn        = make(chan struct{})
		once         sync.Once
		handled      = make(chan uint64, workers)
	)
	startConsume(t, b, bus.ConsumerConfig{Stream: "WK", Durable: "wk", Workers: workers},
		func(ctx context.Context, m bus.Msg) error {
			n := active.Add(1)
			defer active.Add(-1)
			for p := peak.Load(); n > p && !peak.CompareAndSwap(p, n); p = peak.Load() {
			}
			if n == workers {
				once.Do(func() { close(allIn) })
			}
			select { // wait for the others to be in too
			case <-allIn:
			case <-ctx.Done():
			case <-time.After(waitFor):
			}
			handled <- m.Seq
			return nil
		})
	for range workers {
		receive(t, handled, "handled message")
	}
	if p := peak.Load(); p != workers {
		t.Errorf("at most %d handlers ran at once; want %d", p, workers)
	}
}

func testCorePubSub(t *testing.T, open func(t *testing.T) *bus.Bus) {
	b := open(t)
	type core struct{ subject, data string }
	got := make(chan core, 10)
	unsub, err := b.Subscribe("inv.>", func(subject string, data []byte) {
		got <- core{subject, string(data)}
	})
	if err != nil {
		t.Fatalf("Subscribe: %v", err)
	}
	if err := b.PublishCore("inv.menu.7", []byte("stale")); err != nil {
		t.Fatalf("PublishCore: %v", err)
	}
	if m := receive(t, got, "core message"); m != (core{"inv.menu.7", "stale"}) {
		t.Errorf("got %+v; want {inv.menu.7 stale}", m)
	}
	unsub()
	unsub() // safe twice
}

// testFromNow: a consumer created with FromNow skips what the stream held
// before it, and once created continues from its acks like any other.
func testFromNow(t *testing.T, open func(t *testing.T) *bus.Bus) {
	b := open(t)
	mustEnsure(t, b, bus.StreamConfig{Name: "NOW", Subjects: []string{"now.>"}})
	mustPublish(t, b, bus.Msg{Subject: "now.a", Data: []byte("old")})
	got := make(chan string, 10)
	cfg := bus.ConsumerConfig{Stream: "NOW", Durable: "fresh", FromNow: true}
	h := func(_ context.Context, m bus.Msg) error { got <- string(m.Data); return nil }
	stop := startConsume(t, b, cfg, h)
	eventually.True(t, waitFor, "consumer created", func() bool {
		_, err := b.JetStream().Consumer(t.Context(), b.Name("NOW"), b.Name("fresh"))
		return err == nil
	})
	mustPublish(t, b, bus.Msg{Subject: "now.a", Data: []byte("new")})
	if m := receive(t, got, "the message published after the start"); m != "new" {
		t.Fatalf("got %q; want new (old must be skipped)", m)
	}
	stop()
	mustPublish(t, b, bus.Msg{Subject: "now.a", Data: []byte("while away")})
	startConsume(t, b, cfg, h)
	if m := receive(t, got, "the message published while stopped"); m != "while away" {
		t.Fatalf("got %q after a restart; want the message published while stopped", m)
	}
	// A durable first made without FromNow keeps working when a later
	// version of its owner asks for FromNow (the server cannot change it).
	old := bus.ConsumerConfig{Stream: "NOW", Durable: "older"}
	got2 := make(chan string, 10)
	h2 := func(_ context.Context, m bus.Msg) error { got2 <- string(m.Data); return nil }
	stop = startConsume(t, b, old, h2)
	for range 3 { // everything so far, from the start
		receive(t, got2, "a message for the older consumer")
	}
	stop()
	old.FromNow = true
	mustPublish(t, b, bus.Msg{Subject: "now.a", Data: []byte("after the upgrade")})
	startConsume(t, b, old, h2)
	if m := receive(t, got2, "the message published after the upgrade"); m != "after the upgrade" {
		t.Fatalf("older consumer after the upgrade got %q", m)
	}
}

// testMux: many subjects, one handler; Add/Remove are reference counted.
func testMux(t *testing.T, open func(t *testing.T) *bus.Bus) {
	b := open(t)
	m := b.NewMux(64)
	type core struct{ subject, data string }
	got := make(chan core, 64)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	go m.Run(ctx, func(subject string, data []byte) { got <- core{subject, string(data)} })
	for _, s := range []string{"live.u.1", "live.u.2", "live.u.1"} {
		if err := m.Add(s); err != nil {
			t.Fatalf("Add %s: %v", s, err)
		}
	}
	if m.Len() != 2 {
		t.Fatalf("Len = %d; want 2", m.Len())
	}
	b.PublishCore("live.u.3", []byte("not followed"))
	b.PublishCore("live.u.2", []byte("two"))
	if c := receive(t, got, "message on live.u.2"); c != (core{"live.u.2", "two"}) {
		t.Fatalf("got %+v; want live.u.2 two", c)
	}
	m.Remove("live.u.1") // still followed once
	m.Remove("live.u.2")
	b.PublishCore("live.u.2", []byte("gone"))
	b.PublishCore("live.u.1", []byte("one"))
	if c := receive(t, got, "message on live.u.1"); c != (core{"live.u.1", "one"}) {
		t.Fatalf("got %+v; want live.u.1 one (nothing from removed or unfollowed subjects)", c)
	}
	m.Remove("live.u.1")
	if m.Len() != 0 {
		t.Fatalf("Len = %d after removing all; want 0", m.Len())
	}
}

// testReplay: the messages of one subject after a sequence, and whether
// the stream can vouch that none is missing.
func testReplay(t *testing.T, open func(t *testing.T) *bus.Bus) {
	b := open(t)
	mustEnsure(t, b, bus.StreamConfig{Name: "WINDOW", Subjects: []string{"win.>"}, PerSubject: 3})
	var mine []uint64
	for i := range 5 {
		mine = append(mine, mustPublish(t, b, bus.Msg{Subject: "win.a", Data: []byte{byte('0' + i)}}))
		mustPublish(t, b, bus.Msg{Subject: "win.b", Data: []byte("other")})
	}
	ctx := testContext(t)
	for _, tc := range []struct {
		name     string
		after    uint64
		want     string
		complete bool
	}{
		{"after the second to last", mine[3], "4", true},
		{"after the last", mine[4], "", true},
		{"within the cap", mine[1], "234", true},
		{"the cap dropped some", mine[0], "234", false},
		{"from the start", 0, "234", false},
		{"beyond the end", mine[4] + 100, "", false},
	} {
		msgs, complete, end, err := b.Replay(ctx, "WINDOW", "win.a", tc.after, 3)
		if end != mine[4]+1 { // win.b's last message follows win.a's
			t.Errorf("%s: end = %d; want %d", tc.name, end, mine[4]+1)
		}
		var got string
		for _, m := range msgs {
			got += string(m.Data)
			if m.Subject != "win.a" || m.Seq <= tc.after {
				t.Errorf("%s: message %+v", tc.name, m)
			}
		}
		// "within the cap": three messages found = the cap, so it cannot vouch.
		wantComplete := tc.complete && len(tc.want) < 3
		if err != nil || got != tc.want || complete != wantComplete {
			t.Errorf("%s: Replay = %q, %v, %v; want %q, %v", tc.name, got, complete, err, tc.want, wantComplete)
		}
	}
	// After reads on, or stops at a bound.
	for _, tc := range []struct {
		name        string
		after, upto uint64
		limit       int
		want        string
	}{
		{"unbounded", mine[2], 0, 10, "34"},
		{"up to the next", mine[2], mine[3], 10, "3"},
		{"up to a seq of another subject: the first past it too", mine[2], mine[3] + 1, 10, "34"},
		{"limit first", mine[2], mine[4], 1, "3"},
		{"bound below after", mine[3], mine[2], 10, ""},
	} {
		msgs, err := b.After(ctx, "WINDOW", "win.a", tc.after, tc.upto, tc.limit)
		var got string
		for _, m := range msgs {
			got += string(m.Data)
		}
		if err != nil || got != tc.want {
			t.Errorf("After %s = %q, %v; want %q", tc.name, got, err, tc.want)
		}
	}
}

func testNamespace(t *testing.T, open func(t *testing.T) *bus.Bus) {
	a, b := open(t), open(t)
	ctx := testContext(t)

	// The same stream name and subjects exist twice, separately.
	for _, x := range []*bus.Bus{a, b} {
		mustEnsure(t, x, bus.StreamConfig{Name: "NS", Subjects: []string{"ns.>"}})
	}
	for i := range 3 {
		mustPublish(t, a, bus.Msg{Subject: "ns.a", ID: fmt.Sprintf("id-%d", i), Data: []byte("from a")})
	}
	mustPublish(t, b, bus.Msg{Subject: "ns.b", ID: "id-0", Data: []byte("from b")}) // same id, other stream
	wantStream(t, a, "NS", 3)
	wantStream(t, b, "NS", 1)

	mustEnsure(t, a, bus.StreamConfig{Name: "ONLYA", Subjects: []string{"onlya.>"}})
	if _, _, err := b.StreamInfo(ctx, "ONLYA"); !errors.Is(err, bus.ErrNotFound) {
		t.Errorf("b sees a's stream ONLYA: err = %v; want ErrNotFound", err)
	}

	// Same durable name on both: each gets its own stream's messages.
	gotA, gotB := make(chan bus.Msg, 10), make(chan bus.Msg, 10)
	startConsume(t, a, bus.ConsumerConfig{Stream: "NS", Durable: "same"}, func(_ context.Context, m bus.Msg) error {
		gotA <- m
		return nil
	})
	startConsume(t, b, bus.ConsumerConfig{Stream: "NS", Durable: "same"}, func(_ context.Context, m bus.Msg) error {
		gotB <- m
		return nil
	})
	for i := range 3 {
		if m := receive(t, gotA, "a's message"); m.Subject != "ns.a" || m.ID != fmt.Sprintf("id-%d", i) {
			t.Errorf("a got %q id %q; want ns.a id-%d", m.Subject, m.ID, i)
		}
	}
	if m := receive(t, gotB, "b's message"); m.Subject != "ns.b" || string(m.Data) != "from b" {
		t.Errorf("b got %q %q; want ns.b \"from b\"", m.Subject, m.Data)
	}

	// Core NATS: a publishes first and waits until the server has routed
	// it; b publishes next. Had a's message reached b, it would arrive first.
	subA, subB := make(chan string, 10), make(chan string, 10)
	for _, s := range []struct {
		x  *bus.Bus
		ch chan string
	}{{a, subA}, {b, subB}} {
		unsub, err := s.x.Subscribe("ping", func(subject string, data []byte) { s.ch <- subject + " " + string(data) })
		if err != nil {
			t.Fatalf("Subscribe: %v", err)
		}
		t.Cleanup(unsub)
	}
	publishRouted := func(x *bus.Bus, data string) {
		t.Helper()
		if err := x.PublishCore("ping", []byte(data)); err != nil {
			t.Fatalf("PublishCore: %v", err)
		}
		if err := x.Conn().FlushWithContext(ctx); err != nil {
			t.Fatalf("flush: %v", err)
		}
	}
	publishRouted(a, "a1")
	publishRouted(b, "b1")
	publishRouted(a, "a2")
	if got := receive(t, subB, "b's core message"); got != "ping b1" {
		t.Errorf("b's subscriber got %q first; want \"ping b1\"", got)
	}
	for _, want := range []string{"ping a1", "ping a2"} {
		if got := receive(t, subA, "a's core message"); got != want {
			t.Errorf("a's subscriber got %q; want %q", got, want)
		}
	}
}

func testClose(t *testing.T, open func(t *testing.T) *bus.Bus) {
	b := open(t)
	ctx := testContext(t)
	if err := b.Ping(ctx); err != nil {
		t.Fatalf("Ping: %v", err)
	}
	mustEnsure(t, b, bus.StreamConfig{Name: "CL", Subjects: []string{"cl.>"}})
	mustPublish(t, b, bus.Msg{Subject: "cl.x", ID: "cl-1"})
	handled := make(chan struct{}, 1)
	consumed := make(chan error, 1)
	go func() {
		consumed <- b.Consume(ctx, bus.ConsumerConfig{Stream: "CL", Durable: "cl"}, func(context.Context, bus.Msg) error {
			handled <- struct{}{}
			return nil
		})
	}()
	receive(t, handled, "message before Close")

	if err := b.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := receive(t, consumed, "Consume to return after Close"); !errors.Is(err, bus.ErrClosed) {
		t.Errorf("Consume after Close returned %v; want ErrClosed", err)
	}
	if err := b.Ping(ctx); !errors.Is(err, bus.ErrClosed) {
		t.Errorf("Ping after Close = %v; want ErrClosed", err)
	}
	if _, err := b.Publish(ctx, bus.Msg{Subject: "cl.x"}); !errors.Is(err, bus.ErrClosed) {
		t.Errorf("Publish after Close = %v; want ErrClosed", err)
	}
	if err := b.PublishCore("cl.x", nil); !errors.Is(err, bus.ErrClosed) {
		t.Errorf("PublishCore after Close = %v; want ErrClosed", err)
	}
	if err := b.Close(); err != nil {
		t.Errorf("second Close = %v; want nil", err)
	}
}

// testEnsureConcurrently has many goroutines ensure one stream and each its
// own consumer on it at once, as the roles of a starting node do (the NATS
// server races when a stream is updated while a consumer is added), then
// checks that a changed setting still reaches the stream.
func testEnsureConcurrently(t *testing.T, open func(t *testing.T) *bus.Bus) {
	b := open(t)
	ctx := testContext(t)
	cfg := bus.StreamConfig{Name: "ENSURE", Subjects: []string{"ensure.>"}, MaxAge: time.Hour}
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for i := range 16 {
		wg.Go(func() {
			if err := b.EnsureStream(ctx, cfg); err != nil {
				errs <- err
			}
			errs <- b.EnsureConsumer(ctx, bus.ConsumerConfig{Stream: "ENSURE", Durable: fmt.Sprintf("c%d", i)})
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatalf("concurrent ensure: %v", err)
		}
	}
	for i := range 16 {
		if _, err := b.JetStream().Consumer(ctx, b.Name("ENSURE"), b.Name(fmt.Sprintf("c%d", i))); err != nil {
			t.Errorf("consumer c%d: %v", i, err)
		}
	}
	cfg.MaxAge, cfg.PerSubject = 2*time.Hour, 8
	mustEnsure(t, b, cfg)
	s, err := b.JetStream().Stream(ctx, b.Name("ENSURE"))
	if err != nil {
		t.Fatalf("stream: %v", err)
	}
	if c := s.CachedInfo().Config; c.MaxAge != 2*time.Hour || c.MaxMsgsPerSubject != 8 {
		t.Errorf("after a changed ensure MaxAge, MaxMsgsPerSubject = %v, %d; want 2h, 8", c.MaxAge, c.MaxMsgsPerSubject)
	}
}

// testContext is a context for one test's calls, cancelled when it ends.
func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), 2*waitFor)
	t.Cleanup(cancel)
	return ctx
}

func mustEnsure(t *testing.T, b *bus.Bus, cfg bus.StreamConfig) {
	t.Helper()
	if err := b.EnsureStream(testContext(t), cfg); err != nil {
		t.Fatalf("EnsureStream %s: %v", cfg.Name, err)
	}
}

func mustPublish(t *testing.T, b *bus.Bus, m bus.Msg) uint64 {
	t.Helper()
	seq, err := b.Publish(testContext(t), m)
	if err != nil {
		t.Fatalf("Publish %s: %v", m.Subject, err)
	}
	return seq
}

// wantStream checks the stream's message count and that its last sequence
// equals it (nothing was stored and then removed).
func wantStream(t *testing.T, b *bus.Bus, name string, want uint64) {
	t.Helper()
	n, last, err := b.StreamInfo(testContext(t), name)
	if err != nil || n != want || last != want {
		t.Errorf("StreamInfo %s = %d msgs, last seq %d, %v; want %d, %d, nil", name, n, last, err, want, want)
	}
}

// startConsume runs Consume until the returned stop (or the test's end),
// reporting an error it returns.
func startConsume(t *testing.T, b *bus.Bus, cfg bus.ConsumerConfig, h bus.Handler) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := b.Consume(ctx, cfg, h); err != nil {
			t.Errorf("Consume %s/%s: %v", cfg.Stream, cfg.Durable, err)
		}
	}()
	stop = sync.OnceFunc(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(waitFor):
			t.Errorf("Consume %s/%s did not return within %s of cancel", cfg.Stream, cfg.Durable, waitFor)
		}
	})
	t.Cleanup(stop)
	return stop
}

// receive waits for a value on ch, failing the test after waitFor.
func receive[T any](t *testing.T, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(waitFor):
		t.Fatalf("timed out after %s waiting for %s", waitFor, what)
		panic("unreachable")
	}
}

// runSchedule checks that a scheduled message fires at its time (never
// early) on its target subject, and that rescheduling replaces it.
func runSchedule(t *testing.T, b *bus.Bus) {
	ctx := context.Background()
	if err := b.EnsureStream(ctx, bus.StreamConfig{Name: "TIMERS", Subjects: []string{"timers.>"}, Schedules: true}); err != nil {
		t.Fatal(err)
	}
	at := time.Now().Add(1200 * time.Millisecond)
	for i, when := range []time.Time{at.Add(time.Hour), at} { // the second replaces the first
		if _, err := b.Publish(ctx, bus.Msg{Subject: "timers.schedule.x", ID: fmt.Sprint("s", i), Data: []byte("fire"),
			Header: map[string]string{bus.Schedule: bus.ScheduleAt(when), bus.ScheduleTarget: "timers.fire.x"}}); err != nil {
			t.Fatal(err)
		}
	}
	got := make(chan time.Time, 4)
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go b.Consume(cctx, bus.ConsumerConfig{Stream: "TIMERS", Durable: "fire", FilterSubjects: []string{"timers.fire.>"}},
		func(_ context.Context, m bus.Msg) error {
			if string(m.Data) == "fire" && m.Subject == "timers.fire.x" {
				got <- time.Now()
			}
			return nil
		})
	select {
	case fired := <-got:
		due := at.Truncate(time.Second).Add(time.Second)
		if fired.Before(due) {
			t.Fatalf("fired %v before its time %v", fired, due)
		}
		if fired.After(due.Add(1500 * time.Millisecond)) {
			t.Fatalf("fired %v, more than 1.5 s after its time %v", fired, due)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("scheduled message did not fire")
	}
	select {
	case <-got:
		t.Fatal("the replaced schedule fired too")
	case <-time.After(200 * time.Millisecond):
	}
}
