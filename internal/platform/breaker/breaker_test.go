package breaker_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/surge-platform/surge/internal/platform/breaker"
	"github.com/surge-platform/surge/internal/platform/errkind"
)

// The thresholds: the caller's errors never open it; 10 failures among
// 20 calls do; a refused call's error is Unavailable and ErrOpen, and
// names the dependency.
func TestOpensOnFailuresOnly(t *testing.T) {
	t.Parallel()
	b := breaker.New("db x", nil)
	var changes []string
	b.OnChange(func(from, to string) { changes = append(changes, from+">"+to) })
	call := func(err error) error {
		if err := b.Allow(); err != nil {
			return err
		}
		b.Done(err)
		return nil
	}
	mine := errors.New("a constraint the caller broke")
	down := fmt.Errorf("query: %w", errkind.ErrTimeout)
	for range 100 {
		if err := call(mine); err != nil {
			t.Fatalf("the caller's errors: %v", err)
		}
	}
	for i := range 9 {
		call(down)
		call(nil)
		if b.State() != "closed" {
			t.Fatalf("open after %d failures in %d calls", i+1, 2*(i+1))
		}
	}
	call(down)
	if b.State() != "open" {
		t.Fatalf("10 failures in 19 calls: %s", b.State())
	}
	err := call(nil)
	if e := errkind.Of(err); e == nil || e.Kind != errkind.Unavailable || !errors.Is(err, breaker.ErrOpen) ||
		!errors.Is(err, errkind.ErrUnavailable) || err.Error() != "db x: "+breaker.ErrOpen.Error() {
		t.Fatalf("refused: %v (kind %+v)", err, e)
	}
	if len(changes) != 1 || changes[0] != "closed>open" {
		t.Fatalf("changes seen: %q", changes)
	}
}

// Asking and recording cost no allocation, let through or refused.
func TestAllowDoneAllocateNothing(t *testing.T) {
	b := breaker.New("x", nil)
	if n := testing.AllocsPerRun(1000, func() {
		if b.Allow() == nil {
			b.Done(nil)
		}
	}); n != 0 {
		t.Fatalf("closed: %v allocations per call", n)
	}
	for range 10 {
		b.Allow()
		b.Done(errkind.ErrUnavailable)
	}
	if n := testing.AllocsPerRun(1000, func() { _ = b.Allow() }); n != 0 || b.State() != "open" {
		t.Fatalf("open (%s): %v allocations per refusal", b.State(), n)
	}
}

func BenchmarkAllowDone(b *testing.B) {
	br := breaker.New("x", nil)
	b.ReportAllocs()
	for b.Loop() {
		if br.Allow() == nil {
			br.Done(nil)
		}
	}
}

// Failing: 3 failures within a second, not 2, and not 3 spread wider;
// before the breaker opens (10 of 20).
func TestFailing(t *testing.T) {
	t.Parallel()
	b := breaker.New("db x", nil)
	down := fmt.Errorf("query: %w", errkind.ErrTimeout)
	for range 2 {
		b.Allow()
		b.Done(down)
	}
	if b.Failing() {
		t.Fatal("failing after 2 failures")
	}
	b.Allow()
	b.Done(down)
	if !b.Failing() || b.State() != "closed" {
		t.Fatalf("after 3 failures at once: failing %v, state %s; want failing and still closed", b.Failing(), b.State())
	}
	time.Sleep(1100 * time.Millisecond)
	if b.Failing() {
		t.Fatal("still failing a second later")
	}
}

// A call its caller cancelled counts as a success while the breaker is
// closed, and as a failure while it probes: a probe whose client went
// away opens it again.
func TestCancelledCalls(t *testing.T) {
	t.Parallel()
	b := breaker.New("db x", nil)
	for range 30 {
		b.Allow()
		b.Done(fmt.Errorf("query: %w", context.Canceled))
	}
	if b.State() != "closed" {
		t.Fatalf("cancelled calls opened it: %s", b.State())
	}
	for range 20 {
		b.Allow()
		b.Done(errkind.ErrTimeout)
	}
	if b.State() != "open" {
		t.Fatalf("state %s after 20 failures", b.State())
	}
	time.Sleep(breaker.Delay + 100*time.Millisecond)
	if err := b.Allow(); err != nil {
		t.Fatalf("no probe let through after the delay: %v", err)
	}
	b.Done(context.Canceled)
	if b.State() != "open" {
		t.Fatalf("a probe whose client went away left it %s, want open again", b.State())
	}
}
