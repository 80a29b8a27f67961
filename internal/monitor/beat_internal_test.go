package monitor

import (
	"context"
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// entry is a heartbeat as a watcher gives it.
type entry struct {
	jetstream.KeyValueEntry
	value   []byte
	created time.Time
}

func (e entry) Value() []byte      { return e.value }
func (e entry) Created() time.Time { return e.created }

// TestCollectWholeOrError: a watcher's first pass counts only once its
// nil came; a pass that ends without it (the subscription closed) or
// whose context ends is an error, never a shorter list.
func TestCollectWholeOrError(t *testing.T) {
	at := time.Date(2026, 12, 7, 0, 0, 0, 0, time.UTC)
	beat := func(id int) jetstream.KeyValueEntry {
		data, _ := json.Marshal(Beat{Key: Key(id), NodeID: id})
		return entry{value: data, created: at}
	}
	pass := func(entries ...jetstream.KeyValueEntry) chan jetstream.KeyValueEntry {
		ch := make(chan jetstream.KeyValueEntry, len(entries))
		for _, e := range entries {
			ch <- e
		}
		return ch
	}

	whole := pass(beat(1), beat(2), nil)
	got, err := collect(t.Context(), whole)
	if err != nil || len(got) != 2 || got[0].NodeID != 1 || got[1].NodeID != 2 || !got[1].At.Equal(at) {
		t.Fatalf("a whole pass: %+v, %v; want beats 1 and 2 at their entries' time", got, err)
	}
	if got, err := collect(t.Context(), pass(nil)); err != nil || len(got) != 0 {
		t.Fatalf("an empty bucket: %+v, %v; want no beats, no error", got, err)
	}

	closed := pass(beat(1))
	close(closed) // the subscription closed before the pass ended
	if got, err := collect(t.Context(), closed); !errors.Is(err, errCutShort) {
		t.Fatalf("a pass closed before its end: %+v, %v; want errCutShort", got, err)
	}

	ctx, cancel := context.WithCancel(t.Context())
	waiting := pass(beat(1)) // the rest never comes
	go func() {
		time.Sleep(10 * time.Millisecond)
		cancel()
	}()
	if got, err := collect(ctx, waiting); !errors.Is(err, errCutShort) || !errors.Is(err, context.Canceled) {
		t.Fatalf("a pass whose context ended: %+v, %v; want errCutShort and the context's error", got, err)
	}
}
