package bus_test

import (
	"context"
	"errors"
	"net/url"
	"testing"
	"time"

	"github.com/surge-platform/surge/internal/eventually"
	"github.com/surge-platform/surge/internal/platform/breaker"
	"github.com/surge-platform/surge/internal/platform/breaker/breakertest"
	"github.com/surge-platform/surge/internal/platform/bus"
	"github.com/surge-platform/surge/internal/platform/bus/bustest"
	"github.com/surge-platform/surge/internal/platform/errkind"
	"github.com/surge-platform/surge/internal/platform/faultnet"
)

// openViaProxy opens a Bus on the external server through a
// fault-injecting proxy, and makes stream.
func openViaProxy(t *testing.T, stream bus.StreamConfig) (*bus.Bus, *faultnet.Proxy) {
	t.Helper()
	u, err := url.Parse(bustest.ExternalURL(t))
	if err != nil {
		t.Fatal(err)
	}
	proxy := faultnet.Start(t, u.Host)
	u.Host = proxy.Addr()
	b := bustest.MustOpen(t, bustest.Namespaced(t, u.String()))
	if err := b.EnsureStream(t.Context(), stream); err != nil {
		t.Fatal(err)
	}
	return b, proxy
}

var brk = bus.StreamConfig{Name: "BRK", Subjects: []string{"brk.>"}}

// publish is one publish to brk with a deadline of its own.
func publish(b *bus.Bus, wait time.Duration) breakertest.Call {
	return breakertest.Within(wait, func(ctx context.Context) error {
		_, err := b.Publish(ctx, bus.Msg{Subject: "brk.x", Data: []byte("x")})
		return err
	})
}

// TestBreakerOpensOnStall: with the NATS server hung, publishes wait out
// their deadline until the Bus's breaker opens; then every guarded call
// fails at once as Unavailable; after Resume and the breaker's delay,
// calls go through and close it again. The caller's errors (a bad
// subject, a wrong expected sequence, a stream that does not exist) and a
// cancelled ctx do not count against it.
func TestBreakerOpensOnStall(t *testing.T) {
	t.Parallel()
	b, proxy := openViaProxy(t, brk)
	br := b.Breaker()
	ctx := t.Context()
	seq, err := b.Publish(ctx, bus.Msg{Subject: "brk.x", Data: []byte("x")})
	if err != nil {
		t.Fatal(err)
	}
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	for range 30 {
		if _, err := b.PublishAfter(ctx, bus.Msg{Subject: "brk.x"}, seq+100); !errors.Is(err, bus.ErrNotNext) {
			t.Fatalf("a publish after the wrong sequence: %v", err)
		}
		if _, err := b.Publish(ctx, bus.Msg{Subject: "brk.bad subject"}); err == nil || errkind.Of(err) != nil {
			t.Fatalf("a publish to a bad subject: %v (kind %+v)", err, errkind.Of(err))
		}
		if err := b.PublishCore("bad subject", nil); err == nil || errkind.Of(err) != nil {
			t.Fatalf("a core publish to a bad subject: %v", err)
		}
		if _, _, err := b.StreamInfo(ctx, "NOSUCH"); !errors.Is(err, bus.ErrNotFound) {
			t.Fatalf("info of a stream that does not exist: %v", err)
		}
		if _, err := b.DiscardDeadLetter(ctx, 1<<40, "test"); !errors.Is(err, bus.ErrNotFound) {
			t.Fatalf("discard a dead letter that does not exist: %v", err)
		}
		if _, err := b.Publish(cancelled, bus.Msg{Subject: "brk.x"}); !errors.Is(err, context.Canceled) {
			t.Fatalf("a publish with a cancelled ctx: %v", err)
		}
	}
	if br.State() != "closed" {
		t.Fatalf("the caller's errors opened it: %s", br.State())
	}

	proxy.Stall()
	const deadline = 300 * time.Millisecond
	opened := breakertest.Trip(t, br, publish(b, deadline))
	slowest := breakertest.Refuses(t, br, 1000, deadline/3, publish(b, deadline))
	for _, call := range []struct {
		name string
		do   func(context.Context) error
	}{
		{"publish ack", func(ctx context.Context) error {
			_, err := b.PublishAfter(ctx, bus.Msg{Subject: "brk.x"}, seq)
			return err
		}},
		{"publish batch", func(ctx context.Context) error {
			return errors.Join(b.PublishBatch(ctx, []bus.Msg{{Subject: "brk.x"}, {Subject: "brk.y"}})...)
		}},
		{"publish core", func(context.Context) error { return b.PublishCore("brk.core", nil) }},
		{"stream info", func(ctx context.Context) error { _, _, err := b.StreamInfo(ctx, "BRK"); return err }},
		{"replay", func(ctx context.Context) error { _, _, _, err := b.Replay(ctx, "BRK", "brk.x", 0, 10); return err }},
		{"dead letters", func(ctx context.Context) error {
			_, _, err := b.DeadLetters(ctx, bus.DeadLetterQuery{})
			return err
		}},
		{"dead letter counts", func(ctx context.Context) error { _, err := b.DeadLetterCounts(ctx); return err }},
	} {
		t.Run(call.name, func(t *testing.T) {
			breakertest.Refuses(t, br, 50, deadline/3, breakertest.Within(deadline, call.do))
		})
	}
	t.Logf("opened after %v; 1,000 refused publishes, the slowest %v", opened.Round(time.Millisecond), slowest)

	proxy.Resume()
	closed := breakertest.Closes(t, br, publish(b, 5*time.Second))
	if _, _, err := b.StreamInfo(ctx, "BRK"); err != nil {
		t.Fatalf("stream info after it closed: %v", err)
	}
	t.Logf("closed %v after the server came back", closed.Round(time.Millisecond))
}

// A core publish only fills the connection's buffer: with the server hung
// it succeeds, and many of them must not keep the breaker from opening
// on the publishes that wait for an ack; when half-open, one does not
// close it until the server answers.
func TestBreakerCorePublishesAreNoProof(t *testing.T) {
	t.Parallel()
	b, proxy := openViaProxy(t, brk)
	br := b.Breaker()
	proxy.Stall()
	breakertest.Trip(t, br, func() error {
		for range 50 {
			if err := b.PublishCore("brk.core", []byte("x")); err != nil {
				return err
			}
		}
		return publish(b, 200*time.Millisecond)()
	})
	probes := 0
	eventually.True(t, 4*breaker.Delay+5*time.Second, "two core publishes let through as probes", func() bool {
		t0 := time.Now()
		err := b.PublishCore("brk.core", []byte("x"))
		took := time.Since(t0)
		if e := errkind.Of(err); e == nil || e.Kind != errkind.Unavailable || took > 2*time.Second {
			t.Fatalf("a core publish to a hung server, the breaker %s: %v after %v", br.State(), err, took)
		}
		if !errors.Is(err, bus.ErrOpen) {
			probes++
		}
		if br.State() == "closed" {
			t.Fatalf("%d core publishes to a hung server closed the breaker", probes)
		}
		return probes == 2
	})
	proxy.Resume()
	breakertest.Closes(t, br, func() error { return b.PublishCore("brk.core", []byte("x")) })
}

// Many goroutines publishing, reading and asking for stream info while
// the server hangs, through the breaker's open, half-open and open again:
// no panic, every error of kind Unavailable, nearly every call refused at
// once; once the server is back the breaker closes.
func TestBreakerRacingCalls(t *testing.T) {
	t.Parallel()
	b, proxy := openViaProxy(t, brk)
	proxy.Stall()
	const wait = 200 * time.Millisecond
	calls, refused := breakertest.Race(t, b.Breaker(), publish(b, wait),
		breakertest.Within(wait, func(ctx context.Context) error {
			return errors.Join(b.PublishBatch(ctx, []bus.Msg{{Subject: "brk.x"}, {Subject: "brk.y"}})...)
		}),
		breakertest.Within(wait, func(ctx context.Context) error { _, _, err := b.StreamInfo(ctx, "BRK"); return err }),
		breakertest.Within(wait, func(ctx context.Context) error { _, err := b.After(ctx, "BRK", "brk.x", 0, 0, 5); return err }))
	t.Logf("%d calls, %d refused", calls, refused)
	proxy.Resume()
	breakertest.Closes(t, b.Breaker(), publish(b, 5*time.Second))
}

// A closed Bus answers ErrClosed, of kind Unavailable: a node shutting
// down answers 503, not 500.
func TestClosedIsUnavailable(t *testing.T) {
	t.Parallel()
	b := bustest.MustOpen(t, "embedded:")
	b.Close()
	_, err := b.Publish(t.Context(), bus.Msg{Subject: "x"})
	if e := errkind.Of(err); !errors.Is(err, bus.ErrClosed) || e == nil || e.Kind != errkind.Unavailable {
		t.Fatalf("publish on a closed bus: %v (kind %+v)", err, e)
	}
}
