package bus_test

import (
	"context"
	"errors"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/surge-platform/surge/internal/platform/bus"
	"github.com/surge-platform/surge/internal/platform/bus/bustest"
)

func TestMain(m *testing.M) {
	code := m.Run()
	bustest.StopExternal()
	os.Exit(code)
}

// TestEmbedded runs the suite against a fresh embedded server per test. The
// first Bus of a test owns the server (un-namespaced, in-process
// connection); the server also listens on a free local port so that later
// Bus of the same test reach it over TCP, each in a namespace of its own.
func TestEmbedded(t *testing.T) {
	t.Parallel()
	var (
		mu    sync.Mutex
		owner = map[*testing.T]*bus.Bus{}
	)
	bustest.Run(t, func(t *testing.T) *bus.Bus {
		mu.Lock()
		defer mu.Unlock()
		if o, ok := owner[t]; ok {
			return bustest.MustOpen(t, bustest.Namespaced(t, o.ClientURL()))
		}
		b := bustest.MustOpen(t, "embedded:"+t.TempDir()+"?listen=127.0.0.1:0")
		if b.ClientURL() == "" {
			t.Fatal("embedded server with ?listen= has no ClientURL")
		}
		owner[t] = b
		t.Cleanup(func() {
			mu.Lock()
			delete(owner, t)
			mu.Unlock()
		})
		return b
	})
}

// TestExternal runs the suite against a nats-server process (or
// $SURGE_TEST_NATS), a fresh namespace per Bus.
func TestExternal(t *testing.T) {
	t.Parallel()
	url := bustest.ExternalURL(t)
	bustest.Run(t, func(t *testing.T) *bus.Bus {
		return bustest.MustOpen(t, bustest.Namespaced(t, url))
	})
}

// TestEmbeddedSurvivesRestart checks that the embedded server keeps its
// streams, messages and dedup state on disk across Close and Open.
func TestEmbeddedSurvivesRestart(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	url := "embedded:" + t.TempDir() // no listener: the default
	msg := bus.Msg{Subject: "keep.1", ID: "keep-1", Data: []byte("still here")}

	b := bustest.MustOpen(t, url)
	if b.ClientURL() != "" {
		t.Errorf("ClientURL without ?listen= = %q; want empty", b.ClientURL())
	}
	if err := b.EnsureStream(ctx, bus.StreamConfig{Name: "KEEP", Subjects: []string{"keep.>"}}); err != nil {
		t.Fatalf("EnsureStream: %v", err)
	}
	seq, err := b.Publish(ctx, msg)
	if err != nil {
		t.Fatalf("Publish: %v", err)
	}
	if err := b.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}

	b = bustest.MustOpen(t, url)
	if n, last, err := b.StreamInfo(ctx, "KEEP"); err != nil || n != 1 || last != seq {
		t.Fatalf("after restart StreamInfo = %d, %d, %v; want 1, %d, nil", n, last, err, seq)
	}
	if again, err := b.Publish(ctx, msg); err != nil || again != seq {
		t.Errorf("republish after restart = %d, %v; want the original seq %d (dedup kept)", again, err, seq)
	}
	got := make(chan bus.Msg, 1)
	cctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- b.Consume(cctx, bus.ConsumerConfig{Stream: "KEEP", Durable: "keep"}, func(_ context.Context, m bus.Msg) error {
			select {
			case got <- m:
			default:
			}
			return nil
		})
	}()
	select {
	case m := <-got:
		if m.Seq != seq || m.ID != msg.ID || string(m.Data) != string(msg.Data) {
			t.Errorf("after restart got %+v; want seq %d id %s data %q", m, seq, msg.ID, msg.Data)
		}
	case <-ctx.Done():
		t.Fatal("no message delivered after restart")
	}
	stop()
	if err := <-done; err != nil {
		t.Errorf("Consume: %v", err)
	}
}

// A consumer started while its server is away (restarting) waits for it
// and then consumes, instead of failing its caller (a node role).
func TestConsumeWaitsForTheServer(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	dir := t.TempDir()
	srv := bustest.MustOpen(t, "embedded:"+dir+"?listen=127.0.0.1:0")
	addr := strings.TrimPrefix(srv.ClientURL(), "nats://")
	if err := srv.EnsureStream(ctx, bus.StreamConfig{Name: "AWAY", Subjects: []string{"away.>"}}); err != nil {
		t.Fatal(err)
	}
	client := bustest.MustOpen(t, "nats://"+addr)
	srv.Close() // the server is gone

	got := make(chan bus.Msg, 1)
	done := make(chan error, 1)
	go func() {
		done <- client.Consume(ctx, bus.ConsumerConfig{Stream: "AWAY", Durable: "away"}, func(_ context.Context, m bus.Msg) error {
			select {
			case got <- m:
			default:
			}
			return nil
		})
	}()
	time.Sleep(7 * time.Second) // longer than a JetStream request waits (5 s): the first attempts fail
	select {
	case err := <-done:
		t.Fatalf("Consume returned while the server was away: %v", err)
	default:
	}
	srv = bustest.MustOpen(t, "embedded:"+dir+"?listen="+addr)
	if _, err := srv.Publish(ctx, bus.Msg{Subject: "away.1", ID: "away-1", Data: []byte("back")}); err != nil {
		t.Fatal(err)
	}
	select {
	case m := <-got:
		if string(m.Data) != "back" {
			t.Errorf("got %q", m.Data)
		}
	case err := <-done:
		t.Fatalf("Consume returned: %v", err)
	case <-ctx.Done():
		t.Fatal("no message after the server came back")
	}
}

// ?max_deliver= caps every consumer of the Bus, even one that never gives
// up on its own.
func TestMaxDeliverCap(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	b := bustest.MustOpen(t, "embedded:"+t.TempDir()+"?max_deliver=2")
	if err := b.EnsureStream(ctx, bus.StreamConfig{Name: "CAP", Subjects: []string{"cap.>"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Publish(ctx, bus.Msg{Subject: "cap.1", Data: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	var runs atomic.Int32
	go b.Consume(ctx, bus.ConsumerConfig{Stream: "CAP", Durable: "cap", MaxDeliver: -1}, func(context.Context, bus.Msg) error {
		runs.Add(1)
		return errors.New("no")
	})
	for {
		list, _, err := b.DeadLetters(ctx, bus.DeadLetterQuery{Consumer: "cap"})
		if err != nil {
			t.Fatal(err)
		}
		if len(list) == 1 {
			if list[0].Deliveries != 2 || runs.Load() != 2 {
				t.Fatalf("dead letter after %d deliveries, %d runs; want 2 and 2", list[0].Deliveries, runs.Load())
			}
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("no dead letter after %d runs", runs.Load())
		case <-time.After(20 * time.Millisecond):
		}
	}
}
