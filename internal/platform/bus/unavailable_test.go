package bus_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/surge-platform/surge/internal/eventually"
	"github.com/surge-platform/surge/internal/platform/bus"
	"github.com/surge-platform/surge/internal/platform/errkind"
)

func TestKindOfNATSErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		err  error
		want string // errkind code; "" = no kind
	}{
		{"no responders", nats.ErrNoResponders, "unavailable"},
		{"reconnecting", fmt.Errorf("bus: publish a: %w", nats.ErrConnectionReconnecting), "unavailable"},
		{"closed", nats.ErrConnectionClosed, "unavailable"},
		{"bus closed", fmt.Errorf("bus: publish a: %w", bus.ErrClosed), "unavailable"},
		{"no stream response", jetstream.ErrNoStreamResponse, "unavailable"},
		{"no heartbeat", jetstream.ErrNoHeartbeat, "unavailable"},
		{"jetstream 503", &jetstream.APIError{Code: 503, ErrorCode: 10008, Description: "JetStream system temporarily unavailable"}, "unavailable"},
		{"timeout", nats.ErrTimeout, "timeout"},
		{"ack timeout", jetstream.ErrAsyncPublishTimeout, "timeout"},
		{"stream not found", jetstream.ErrStreamNotFound, ""},
		{"wrong last sequence", &jetstream.APIError{Code: 400, ErrorCode: jetstream.JSErrCodeStreamWrongLastSequence}, ""},
		{"bad subject", nats.ErrBadSubject, ""},
		{"cancelled", context.Canceled, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e := errkind.Of(tt.err)
			switch {
			case tt.want == "" && e != nil:
				t.Fatalf("Of(%v) = %+v, want no kind", tt.err, e)
			case tt.want != "" && (e == nil || e.Code != tt.want || e.Kind != errkind.Unavailable):
				t.Fatalf("Of(%v) = %+v, want Unavailable %q", tt.err, e, tt.want)
			}
		})
	}
}

// A NATS server that goes away or hangs makes a publish fail as
// Unavailable by the caller's deadline, not later; publishing works again
// once it is back.
func TestPublishToAServerDownIsUnavailable(t *testing.T) {
	t.Parallel()
	b, proxy := openViaProxy(t, bus.StreamConfig{Name: "DOWN", Subjects: []string{"down.>"}})
	ctx := t.Context()
	publish := func(wait time.Duration) (time.Duration, error) {
		ctx, cancel := context.WithTimeout(ctx, wait)
		defer cancel()
		t0 := time.Now()
		_, err := b.Publish(ctx, bus.Msg{Subject: "down.x", Data: []byte("x")})
		return time.Since(t0), err
	}
	if _, err := publish(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	for _, fault := range []struct {
		name   string
		inject func()
	}{{"cut", proxy.Cut}, {"stalled", proxy.Stall}} {
		fault.inject()
		took, err := publish(time.Second)
		t.Logf("publish with the server %s: %v after %v", fault.name, err, took)
		if e := errkind.Of(err); err == nil || e == nil || e.Kind != errkind.Unavailable {
			t.Errorf("publish with the server %s: err %v kind %+v; want Unavailable", fault.name, err, e)
		}
		if errors.Is(err, context.Canceled) || took > 3*time.Second {
			t.Errorf("publish with the server %s: %v after %v; want the deadline's error within 3s", fault.name, err, took)
		}
		proxy.Resume()
		eventually.True(t, 15*time.Second, "publishing works after the server is back", func() bool {
			_, err := publish(time.Second)
			return err == nil
		})
	}
}
