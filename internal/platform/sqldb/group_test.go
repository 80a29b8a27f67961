package sqldb

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestGroupWritesEachOnceTogether: items of concurrent callers are each
// written exactly once, callers queued behind a write go together in the
// next, no batch is larger than the maximum, and each caller gets its own
// batch's error.
func TestGroupWritesEachOnceTogether(t *testing.T) {
	const callers, max = 200, 16
	var (
		mu      sync.Mutex
		written = map[int]int{}
		batches [][]int
	)
	bad := errors.New("batch refused")
	g := NewGroup(max, time.Second, func(ctx context.Context, items []int) error {
		time.Sleep(2 * time.Millisecond) // a write in flight: others queue
		mu.Lock()
		defer mu.Unlock()
		batches = append(batches, items)
		for _, v := range items {
			written[v]++
		}
		if len(batches)%3 == 0 {
			return bad
		}
		return nil
	})
	errs := make([]error, callers)
	var wg sync.WaitGroup
	for i := range callers {
		wg.Go(func() { errs[i] = g.Do(t.Context(), i) })
	}
	wg.Wait()
	failed := map[int]bool{}
	for k, b := range batches {
		if len(b) > max {
			t.Errorf("batch %d has %d items, more than %d", k, len(b), max)
		}
		for _, v := range b {
			failed[v] = (k+1)%3 == 0
		}
	}
	for i := range callers {
		if written[i] != 1 {
			t.Errorf("item %d written %d times, want once", i, written[i])
		}
		if got := errs[i] != nil; got != failed[i] {
			t.Errorf("item %d: error %v, but its batch failed: %v", i, errs[i], failed[i])
		}
	}
	if len(batches) > callers/2 {
		t.Errorf("%d callers took %d writes: not grouped", callers, len(batches))
	}
	t.Logf("%d callers, %d writes", callers, len(batches))
	// Nothing is left queued or marked busy: a lone item is written at once.
	if err := g.Do(t.Context(), -1); err != nil && !errors.Is(err, bad) {
		t.Fatal(err)
	}
	if written[-1] != 1 {
		t.Error("a lone item after the rush was not written")
	}
}

// TestGroupSurvivesPanic: a write that panics answers its batch with an
// error and leaves the group usable; the panic goes on up its caller.
func TestGroupSurvivesPanic(t *testing.T) {
	var calls atomic.Int64
	g := NewGroup(8, time.Second, func(ctx context.Context, items []int) error {
		if calls.Add(1) == 1 {
			panic("driver bug")
		}
		return nil
	})
	func() {
		defer func() {
			if recover() == nil {
				t.Error("the write's panic did not reach its caller")
			}
		}()
		g.Do(t.Context(), 1)
	}()
	done := make(chan error, 1)
	go func() { done <- g.Do(t.Context(), 2) }()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("a write after the panic: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the group hangs after a write panicked")
	}
}
