package bus

import (
	"cmp"
	"context"
	"fmt"
	"sync"
	"time"
)

// Batcher makes items durable on a stream in batches: the items recorded
// while a batch is being published go together in the next one, so a
// campaign (coupon claims, flash-sale tickets) costs the bus a message per
// batch, not per item, and a lone item waits for no one. Items of
// different partitions go in different messages of one batch, published
// together. Record returns once the message that carries the item is
// acknowledged by JetStream.
//
// Set the fields before the first Record; the zero limits get defaults.
type Batcher[T any] struct {
	Bus *Bus
	// Partition names an item's partition (0 when nil): items of one
	// message share it.
	Partition func(T) int
	// Message makes the message of items of one partition (their subject,
	// a dedup id, the data).
	Message    func(items []T) Msg
	MaxBatch   int // items per batch; 0 = 64
	Publishers int // batches published at once; 0 = 4

	once    sync.Once
	pending chan *pending[T]
}

// ErrNotSent is Record's error for an item dropped before it was sent (its
// deadline passed while it waited): it is certainly not on the stream.
var ErrNotSent = fmt.Errorf("bus: not sent before its deadline: %w", context.DeadlineExceeded)

type pending[T any] struct {
	item     T
	deadline time.Time
	done     chan error
}

// Record makes item durable: it returns nil once the message that carries
// it is acknowledged. An item is sent before deadline or not at all
// (ErrNotSent): a caller that rebuilds counters after a kv
// loss waits out that deadline for the items admitted before the loss.
// Errors: the bus's, ctx's, context.DeadlineExceeded.
func (b *Batcher[T]) Record(ctx context.Context, item T, deadline time.Time) error {
	b.once.Do(func() {
		b.pending = make(chan *pending[T], 1024)
		for range cmp.Or(b.Publishers, 4) {
			go b.publishLoop()
		}
	})
	p := &pending[T]{item: item, deadline: deadline, done: make(chan error, 1)}
	select {
	case b.pending <- p:
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case err := <-p.done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (b *Batcher[T]) publishLoop() {
	limit := cmp.Or(b.MaxBatch, 64)
	for first := range b.pending {
		ps := []*pending[T]{first}
	more:
		for len(ps) < limit {
			select {
			case p := <-b.pending:
				ps = append(ps, p)
			default:
				break more
			}
		}
		b.publish(ps)
	}
}

// publish sends the batch ps, a message per partition, each bounded by the
// earliest deadline of its items; items already past theirs are dropped.
func (b *Batcher[T]) publish(ps []*pending[T]) {
	now := time.Now()
	var (
		parts []int
		group = map[int][]*pending[T]{}
	)
	for _, p := range ps {
		if !now.Before(p.deadline) {
			p.done <- ErrNotSent
			continue
		}
		k := 0
		if b.Partition != nil {
			k = b.Partition(p.item)
		}
		if _, ok := group[k]; !ok {
			parts = append(parts, k)
		}
		group[k] = append(group[k], p)
	}
	if len(parts) == 0 {
		return
	}
	msgs := make([]Msg, len(parts))
	deadline := now.Add(time.Hour)
	for i, k := range parts {
		items := make([]T, len(group[k]))
		for j, p := range group[k] {
			items[j] = p.item
			if p.deadline.Before(deadline) {
				deadline = p.deadline
			}
		}
		msgs[i] = b.Message(items)
	}
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	var errs []error
	if len(msgs) == 1 {
		_, err := b.Bus.Publish(ctx, msgs[0])
		errs = []error{err}
	} else {
		errs = b.Bus.PublishBatch(ctx, msgs)
	}
	cancel()
	for i, k := range parts {
		for _, p := range group[k] {
			p.done <- errs[i]
		}
	}
}
