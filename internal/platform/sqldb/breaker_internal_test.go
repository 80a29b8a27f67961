package sqldb

import (
	"context"
	"database/sql/driver"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/surge-platform/surge/internal/eventually"
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
// TestBreakerRacingCalls saw under load): the opener is refused at once,
// and the probe runs on a goroutine of its own (probeSoon), so that a node
// whose only callers have no deadline still probes the server.
func TestOpenerLeavesTheProbeToItsOwnGoroutine(t *testing.T) {
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
	c := guardedConnector{Connector: h, b: b, probing: new(atomic.Bool)}

	t0 := time.Now()
	_, err := c.Connect(context.Background())
	if !errors.Is(err, breaker.ErrOpen) {
		t.Fatalf("the opener's connect while half-open: %v; want ErrOpen", err)
	}
	if took := time.Since(t0); took > 100*time.Millisecond {
		t.Fatalf("the opener's refusal took %v: it waited on the server", took)
	}
	eventually.True(t, time.Second, "the probe tries the server", func() bool { return h.tried.Load() == 1 })
	c.Connect(context.Background()) // refused again: one probe at a time
	time.Sleep(50 * time.Millisecond)
	if n := h.tried.Load(); n != 1 {
		t.Fatalf("%d tries of the server, want the one probe", n)
	}
	// The probe hangs until openerTimeout, then fails: open again.
	eventually.True(t, 2*openerTimeout, "the failed probe opens the breaker", func() bool { return b.State() == "open" })
}

// A server that answers again closes the breaker through probeSoon alone,
// with no caller that has a deadline.
func TestProbesAloneCloseTheBreaker(t *testing.T) {
	t.Parallel()
	b := breaker.New("test", nil)
	for range 20 {
		b.Failure()
	}
	time.Sleep(breaker.Delay + 100*time.Millisecond)
	up := &upConnector{}
	c := guardedConnector{Connector: up, b: b, probing: new(atomic.Bool)}
	eventually.True(t, 5*time.Second, "closed by probes", func() bool {
		if _, err := c.Connect(context.Background()); err == nil {
			return true
		}
		return b.Closed()
	})
	if up.tried.Load() < 2 {
		t.Fatalf("%d probes; the breaker needs 2 successes to close", up.tried.Load())
	}
}

// upConnector is a server that answers: a connection that does nothing.
type upConnector struct{ tried atomic.Int32 }

func (u *upConnector) Connect(context.Context) (driver.Conn, error) {
	u.tried.Add(1)
	return nopConn{}, nil
}

func (u *upConnector) Driver() driver.Driver { return nil }

type nopConn struct{}

func (nopConn) Prepare(string) (driver.Stmt, error) { return nil, errors.New("nop") }
func (nopConn) Close() error                        { return nil }
func (nopConn) Begin() (driver.Tx, error)           { return nil, errors.New("nop") }
