// Package breaker is the circuit breaker in front of a remote dependency
// that a request waits on (a PostgreSQL shard in sqldb, the NATS server in
// bus): failsafe-go's, with the thresholds those share.
//
// When 10 of the last 20 calls failed because the dependency is down or
// did not answer in time, the breaker opens: for Delay calls fail at once
// with an error of kind errkind.Unavailable (wrapping ErrOpen), so that a
// request gets its 503 (or its fallback) without waiting on a dead
// dependency. Then it lets 2 calls through (half-open); when both succeed
// it closes, when one fails it opens again for another Delay.
package breaker

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/failsafe-go/failsafe-go/circuitbreaker"

	"github.com/surge-platform/surge/internal/platform/errkind"
)

// ErrOpen is in the error of every call a Breaker refused without asking
// the dependency. That error's kind is errkind.Unavailable.
var ErrOpen = errors.New("circuit open: the dependency failed too often just now")

// Delay is how long an open Breaker refuses calls before it tries again.
const Delay = 2 * time.Second

const (
	failures  = 10 // failed calls among the last window ones that open it
	window    = 20
	successes = 2 // calls let through when half-open, each of which must succeed to close it
)

// Breaker is safe for concurrent use. The zero value is not usable; call
// New.
type Breaker struct {
	cb       circuitbreaker.CircuitBreaker[any]
	failed   func(error) bool
	refused  error
	onChange atomic.Pointer[func(from, to string)]

	mu     sync.Mutex
	opened chan struct{} // closed when b opens, then replaced

	fmu      sync.Mutex
	failedAt [failingCount]int64 // unix ns of the last failures recorded, a ring
	fnext    int
}

// Failing is failingCount failures within failingWithin.
const (
	failingCount  = 3
	failingWithin = time.Second
)

// New returns a closed breaker for the dependency called name (it begins
// the message of a refused call's error). failed says whether an error a
// call returned is the dependency's failure; nil means Unavailable. Every
// other outcome, the caller's own errors included (a constraint violated,
// a cancelled ctx), counts as a success: the dependency answered.
func New(name string, failed func(error) bool) *Breaker {
	if failed == nil {
		failed = Unavailable
	}
	b := &Breaker{failed: failed, refused: &refusedError{name: name}, opened: make(chan struct{})}
	b.cb = circuitbreaker.NewBuilder[any]().
		WithFailureThresholdRatio(failures, window).
		WithSuccessThreshold(successes).
		WithDelay(Delay).
		OnStateChanged(func(e circuitbreaker.StateChangedEvent) {
			if e.NewState == circuitbreaker.OpenState {
				b.mu.Lock()
				close(b.opened)
				b.opened = make(chan struct{})
				b.mu.Unlock()
			}
			if fn := b.onChange.Load(); fn != nil {
				(*fn)(e.OldState.String(), e.NewState.String())
			}
		}).
		Build()
	return b
}

// Unavailable reports whether err's kind is errkind.Unavailable: the
// dependency is down or did not answer in time (errkind.ErrTimeout).
func Unavailable(err error) bool {
	e := errkind.Of(err)
	return e != nil && e.Kind == errkind.Unavailable
}

// OnChange makes b call fn with its old and new state (closed, open,
// half-open) on every change from now on, replacing any earlier fn. fn
// runs on the goroutine of the call that changed it and must not block.
func (b *Breaker) OnChange(fn func(from, to string)) { b.onChange.Store(&fn) }

// Allow asks for a call: nil lets it through, and then exactly one Done
// must follow with its outcome (a permit that is never given back keeps a
// half-open breaker from closing). While open it returns, at once and
// without allocating, an error of kind errkind.Unavailable that wraps
// ErrOpen.
func (b *Breaker) Allow() error {
	if b.cb.TryAcquirePermit() {
		return nil
	}
	return b.refused
}

// Err is the error of a call b refuses: of kind errkind.Unavailable,
// wrapping ErrOpen.
func (b *Breaker) Err() error { return b.refused }

// Opened returns a channel that is closed when b next opens (at once if
// it opens between the call and the first receive: ask before Allow).
func (b *Breaker) Opened() <-chan struct{} {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.opened
}

// Done records the outcome of a call Allow let through.
//
// A call its caller cancelled says nothing of the dependency: while b is
// closed it counts as a success; while it is not, as a failure (a probe
// whose client went away must not close b over a server still hung).
func (b *Breaker) Done(err error) {
	if err != nil && (b.failed(err) || errors.Is(err, context.Canceled) && !b.Closed()) {
		b.Failure()
		return
	}
	b.cb.RecordSuccess()
}

// Failure records a failure the dependency showed outside a call Allow let
// through (a pooled connection's health check), so that it counts
// towards opening b.
func (b *Breaker) Failure() {
	b.fmu.Lock()
	b.failedAt[b.fnext] = time.Now().UnixNano()
	b.fnext = (b.fnext + 1) % failingCount
	b.fmu.Unlock()
	b.cb.RecordFailure()
}

// Failing reports whether the dependency is failing right now, before
// the breaker may have opened: 3 failures recorded within the last second.
func (b *Breaker) Failing() bool {
	b.fmu.Lock()
	oldest := b.failedAt[b.fnext] // the ring's oldest of the last 3
	b.fmu.Unlock()
	return oldest != 0 && time.Now().UnixNano()-oldest < int64(failingWithin)
}

// State is closed, open or half-open.
func (b *Breaker) State() string { return b.cb.State().String() }

// Closed reports whether b is closed (calls go through uncounted by
// permits).
func (b *Breaker) Closed() bool { return b.cb.IsClosed() }

// refusedError is a refused call's error: of kind Unavailable (a 503 at
// the edge), and ErrOpen.
type refusedError struct{ name string }

func (e *refusedError) Error() string   { return e.name + ": " + ErrOpen.Error() }
func (e *refusedError) Unwrap() []error { return []error{errkind.ErrUnavailable, ErrOpen} }
