// Package breakertest holds the checks that every breaker in front of a
// real server passes (sqldb's and bus's, with the server behind a
// faultnet proxy): it opens while the server is stalled, then refuses at
// once, and closes again once the server is back.
package breakertest

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/surge-platform/surge/internal/platform/breaker"
	"github.com/surge-platform/surge/internal/platform/errkind"
)

// A Call is one call through the breaker, bounded by a deadline of its own.
type Call func() error

// Within makes a Call of do, with a deadline wait from when it starts.
func Within(wait time.Duration, do func(context.Context) error) Call {
	return func() error {
		ctx, cancel := context.WithTimeout(context.Background(), wait)
		defer cancel()
		return do(ctx)
	}
}

// mustUnavailable fails tb unless err is of kind Unavailable.
func mustUnavailable(tb testing.TB, what string, err error) {
	tb.Helper()
	if e := errkind.Of(err); err == nil || e == nil || e.Kind != errkind.Unavailable {
		tb.Errorf("%s: err %v kind %+v; want Unavailable", what, err, e)
	}
}

// Trip calls call from 8 goroutines at a time, round after round, until b
// opens, with the server stalled: every call must fail as Unavailable (a
// timeout, or a refusal once b is open). It fails tb when b is not open
// after 40 rounds and returns how long opening took.
func Trip(tb testing.TB, b *breaker.Breaker, call Call) time.Duration {
	tb.Helper()
	start := time.Now()
	for range 40 {
		var wg sync.WaitGroup
		for range 8 {
			wg.Go(func() { mustUnavailable(tb, "a call to a stalled server", call()) })
		}
		wg.Wait()
		if b.State() == "open" {
			return time.Since(start)
		}
	}
	tb.Fatalf("breaker still %s after %v of a stalled server", b.State(), time.Since(start))
	return 0
}

// Refuses makes n calls while b is open: each must fail as Unavailable,
// wrapping breaker.ErrOpen, within limit (well under the call's own
// deadline: nothing waited on the server). It returns the slowest.
func Refuses(tb testing.TB, b *breaker.Breaker, n int, limit time.Duration, call Call) time.Duration {
	tb.Helper()
	var slowest time.Duration
	for i := range n {
		t0 := time.Now()
		err := call()
		took := time.Since(t0)
		slowest = max(slowest, took)
		mustUnavailable(tb, "a call on an open breaker", err)
		if !errors.Is(err, breaker.ErrOpen) {
			tb.Fatalf("call %d on an open breaker (%s): %v, want ErrOpen", i, b.State(), err)
		}
		if took > limit {
			tb.Fatalf("call %d on an open breaker took %v, want under %v: it waited", i, took, limit)
		}
	}
	return slowest
}

// Closes polls call, with the server back, until it succeeds and b is
// closed again (within breaker.Delay and some). It returns how long that
// took.
func Closes(tb testing.TB, b *breaker.Breaker, call Call) time.Duration {
	tb.Helper()
	start := time.Now()
	deadline := start.Add(breaker.Delay + 10*time.Second)
	for {
		err := call()
		if err == nil && b.State() == "closed" {
			return time.Since(start)
		}
		if time.Now().After(deadline) {
			tb.Fatalf("breaker %s %v after the server came back; last call: %v", b.State(), time.Since(start), err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Race opens b with calls[0] (Trip), then runs calls in turn from 32
// goroutines for breaker.Delay and a second, the server still stalled,
// while b goes half-open and opens again: no call may succeed, every
// error must be of kind Unavailable, and nearly every call must be
// refused at once (only the half-open probes, and calls that meet them,
// may wait on the server). It returns the number of calls and of
// refusals.
func Race(tb testing.TB, b *breaker.Breaker, calls ...Call) (n, refused int64) {
	tb.Helper()
	const g = 32
	Trip(tb, b, calls[0])
	var nCalls, nRefused, turn atomic.Int64
	var mu sync.Mutex
	waitedBy := map[string]int{} // the errors of the calls not refused, by text
	stop := time.Now().Add(breaker.Delay + time.Second)
	var wg sync.WaitGroup
	for range g {
		wg.Go(func() {
			for time.Now().Before(stop) {
				err := calls[turn.Add(1)%int64(len(calls))]()
				nCalls.Add(1)
				if err == nil {
					tb.Errorf("a call to a stalled server succeeded")
					return
				}
				if errors.Is(err, breaker.ErrOpen) {
					nRefused.Add(1)
				} else {
					mu.Lock()
					waitedBy[err.Error()]++
					mu.Unlock()
				}
				mustUnavailable(tb, "a racing call", err)
			}
		})
	}
	wg.Wait()
	if waited := nCalls.Load() - nRefused.Load(); waited > g {
		tb.Errorf("%d of %d racing calls waited on the stalled server while the breaker was open: %v", waited, nCalls.Load(), waitedBy)
	}
	return nCalls.Load(), nRefused.Load()
}
