package sqldb

import (
	"context"
	"database/sql/driver"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/surge-platform/surge/internal/platform/breaker"
)

// hungConnector is a server that never answers a connect: it returns only
// when ctx ends.
type hungConnector struct{ tried atomic.Int32 }

func (h *hungConnector) Connect(ctx context.Context) (driver.Conn, error) {
	h.tried.Add(1)
	<-ctx.Done()
	return nil, ctx.Err()
}

func (h *hungConnector) Driver() driver.Driver { return nil }

// database/sql's opener connects without a deadline, on one goroutine,
// for every caller queued for a connection. A half-open breaker's probe
// taken there would hang for openerTimeout and hold up the whole queue
// (the callers waited out their deadlines instead of being refused, as
// TestBreakerRacingCalls saw under load); the opener is refused at once
// and leaves the probe to a caller with a deadline.
func TestOpenerLeavesTheProbeToBoundedCallers(t *testing.T) {
	t.Parallel()
	b := breaker.New("test", nil)
	for range 20 {
		b.Failure()
	}
	if b.State() != "open" {
		t.Fatalf("breaker %s after 20 failures", b.State())
	}
	time.Sleep(breaker.Delay + 100*time.Millisecond) // due to go half-open; Failing no longer (the failures are old)
	h := &hungConnector{}
	c := guardedConnector{Connector: h, b: b}

	t0 := time.Now()
	_, err := c.Connect(context.Background())
	if !errors.Is(err, breaker.ErrOpen) || h.tried.Load() != 0 {
		t.Fatalf("the opener's connect while half-open: %v, %d tries of the server; want ErrOpen and none", err, h.tried.Load())
	}
	if took := time.Since(t0); took > 100*time.Millisecond {
		t.Fatalf("the opener's refusal took %v", took)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	_, err = c.Connect(ctx)
	if h.tried.Load() != 1 || err == nil {
		t.Fatalf("a caller's bounded connect while half-open: %v, %d tries of the server; want it to probe, and fail", err, h.tried.Load())
	}
	if b.State() != "open" {
		t.Fatalf("breaker %s after its probe failed; want open", b.State())
	}
}
