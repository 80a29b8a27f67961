package sqldb

import (
	"context"
	"errors"
	"sync"
	"time"
)

// Group writes the items of concurrent callers together. A caller whose
// item arrives while a write is in flight waits for it to end, and then
// goes with every item that queued meanwhile in one call of write: one
// statement and one commit for a batch where each item cost one of each.
// Nobody waits for a timer: an item alone is written at once.
type Group[T any] struct {
	write   func(ctx context.Context, items []T) error
	max     int
	timeout time.Duration

	mu   sync.Mutex
	q    []groupItem[T]
	busy bool // a caller is writing; while false the queue is empty
}

type groupItem[T any] struct {
	v    T
	done chan error
}

// errLead hands the writing on to the first caller in the queue.
var errLead = errors.New("lead")

// NewGroup returns a group that writes at most max items per call of
// write, each call bounded by timeout.
func NewGroup[T any](max int, timeout time.Duration, write func(ctx context.Context, items []T) error) *Group[T] {
	return &Group[T]{write: write, max: max, timeout: timeout}
}

// Do writes v (with whatever else is queued) and returns the write's
// error. The write runs on the context of the caller that leads it,
// without its cancellation (others' items ride on it), bounded by the
// group's timeout; so Do returns within about two timeouts.
func (g *Group[T]) Do(ctx context.Context, v T) error {
	done := make(chan error, 1)
	g.mu.Lock()
	g.q = append(g.q, groupItem[T]{v, done})
	lead := !g.busy
	g.busy = true
	g.mu.Unlock()
	if lead {
		g.writeOne(ctx)
	}
	for {
		err := <-done
		if err != errLead {
			return err
		}
		g.writeOne(ctx)
	}
}

// writeOne writes the head of the queue (the caller's own item is first
// in it) and hands the writing on to the next caller waiting, if any.
func (g *Group[T]) writeOne(ctx context.Context) {
	g.mu.Lock()
	n := min(len(g.q), g.max)
	batch := g.q[:n:n]
	g.q = g.q[n:]
	g.mu.Unlock()
	items := make([]T, n)
	for i, it := range batch {
		items[i] = it.v
	}
	err := errGroupPanicked
	// Whatever write does (a panic, a Goexit), the batch gets an answer and
	// the writing passes on: a group left busy with nobody writing would
	// hold every later caller forever.
	defer func() {
		for _, it := range batch {
			it.done <- err
		}
		g.mu.Lock()
		if len(g.q) > 0 {
			g.q[0].done <- errLead
		} else {
			g.busy = false
		}
		g.mu.Unlock()
	}()
	wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), g.timeout)
	defer cancel()
	err = g.write(wctx, items)
}

// errGroupPanicked answers a batch whose write panicked or exited.
var errGroupPanicked = errors.New("sqldb: group write did not return")
