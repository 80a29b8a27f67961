package bus

import (
	"context"
	"fmt"
	"strings"
)

// ConsumerLag is how far one durable consumer is behind its stream.
type ConsumerLag struct {
	Stream, Consumer string // un-prefixed names
	Pending          uint64 // messages of the stream it has not been given yet
	AckPending       int    // given and not acknowledged yet
	Redelivered      int    // given more than once and not acknowledged yet
}

// Lags returns the lag of every durable consumer of this bus's namespace
// (one request per stream). Ephemeral consumers (a node's own, named at
// random) are left out: they come and go with nodes.
func (b *Bus) Lags(ctx context.Context) ([]ConsumerLag, error) {
	if b.closed.Load() {
		return nil, ErrClosed
	}
	var out []ConsumerLag
	_, err := guarded(b, func() (struct{}, error) {
		names := b.js.StreamNames(ctx)
		for name := range names.Name() {
			stream, ok := b.ownName(name)
			if !ok {
				continue
			}
			s, err := b.js.Stream(ctx, name)
			if err != nil {
				return struct{}{}, err
			}
			cs := s.ListConsumers(ctx)
			for ci := range cs.Info() {
				if ci.Config.Durable == "" {
					continue
				}
				consumer, ok := b.ownName(ci.Name)
				if !ok {
					continue
				}
				out = append(out, ConsumerLag{Stream: stream, Consumer: consumer, Pending: ci.NumPending,
					AckPending: ci.NumAckPending, Redelivered: ci.NumRedelivered})
			}
			if err := cs.Err(); err != nil {
				return struct{}{}, err
			}
		}
		return struct{}{}, names.Err()
	})
	if err != nil {
		return nil, fmt.Errorf("bus: consumer lags: %w", b.connErr(err))
	}
	return out, nil
}

// ownName is the inverse of Name: false for a name outside the namespace.
func (b *Bus) ownName(name string) (string, bool) {
	if b.ns == "" {
		return name, true
	}
	return strings.CutPrefix(name, b.ns+"_")
}
