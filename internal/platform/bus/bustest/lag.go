package bustest

import (
	"context"
	"fmt"
	"testing"

	"github.com/surge-platform/surge/internal/eventually"
	"github.com/surge-platform/surge/internal/platform/bus"
)

// testLags: Lags reports a durable consumer's undelivered, unacknowledged
// and redelivered messages as they change, under the un-prefixed names,
// and another namespace's bus does not see them.
func testLags(t *testing.T, open func(t *testing.T) *bus.Bus) {
	b, other := open(t), open(t)
	ctx := testContext(t)
	mustEnsure(t, b, bus.StreamConfig{Name: "LAG", Subjects: []string{"lag.>"}})
	for i := range 5 {
		mustPublish(t, b, bus.Msg{Subject: "lag.x", ID: fmt.Sprint("lag-", i), Data: []byte("x")})
	}
	cfg := bus.ConsumerConfig{Stream: "LAG", Durable: "lag-slow", Workers: 1, MaxAckPending: 1}
	if err := b.EnsureConsumer(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	lag := func(bb *bus.Bus) (bus.ConsumerLag, bool) {
		ls, err := bb.Lags(ctx)
		if err != nil {
			t.Fatalf("Lags: %v", err)
		}
		for _, l := range ls {
			if l.Stream == "LAG" && l.Consumer == "lag-slow" {
				return l, true
			}
		}
		return bus.ConsumerLag{}, false
	}
	if l, ok := lag(b); !ok || l.Pending != 5 || l.AckPending != 0 {
		t.Fatalf("before consuming: %+v (listed: %v), want 5 pending", l, ok)
	}
	if l, ok := lag(other); ok {
		t.Fatalf("another namespace's bus lists this one's consumer: %+v", l)
	}
	release := make(chan struct{})
	failed := false
	startConsume(t, b, cfg, func(ctx context.Context, m bus.Msg) error {
		if !failed { // the first delivery fails once: a redelivery
			failed = true
			return fmt.Errorf("not yet")
		}
		select {
		case <-release:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	})
	eventually.Saw(t, waitFor, "one message held unacknowledged after a redelivery", func() (bool, string) {
		l, _ := lag(b)
		return l.AckPending == 1 && l.Redelivered == 1 && l.Pending == 4, fmt.Sprintf("%+v", l)
	})
	close(release)
	eventually.Saw(t, waitFor, "everything acknowledged", func() (bool, string) {
		l, _ := lag(b)
		return l.AckPending == 0 && l.Pending == 0, fmt.Sprintf("%+v", l)
	})
}
