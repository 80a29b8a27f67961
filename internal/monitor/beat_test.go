package monitor_test

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/surge-platform/surge/internal/monitor"
	"github.com/surge-platform/surge/internal/platform/bus/bustest"
)

// TestBeatsWholeOrError: a listing of the heartbeats cut short by its
// deadline is an error, never a shorter list. The monitor takes a node
// missing from a list for one that stopped, and drops it from the page;
// a loaded machine made the dashboard lose a live node that way.
func TestBeatsWholeOrError(t *testing.T) {
	b := bustest.MustOpen(t, "embedded:"+t.TempDir())
	ctx := t.Context()
	kv, err := b.JetStream().CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: b.Name(monitor.Bucket), TTL: monitor.BeatTTL,
		Storage: jetstream.MemoryStorage, History: 1})
	if err != nil {
		t.Fatal(err)
	}
	const nodes = 40
	for i := range nodes {
		data, _ := json.Marshal(monitor.Beat{Key: monitor.Key(i), NodeID: i, At: time.Now()})
		if _, err := kv.Put(ctx, monitor.Key(i), data); err != nil {
			t.Fatal(err)
		}
	}
	whole, cut := 0, 0
	// Deadlines from nothing to well past a whole listing: some end while
	// the listing waits for its first key, some while it reads them.
	for d := time.Duration(0); d < 20*time.Millisecond; d += 50 * time.Microsecond {
		dctx, cancel := context.WithTimeout(ctx, d)
		beats, err := monitor.Beats(dctx, b)
		cancel()
		switch {
		case err != nil:
			cut++
		case len(beats) != nodes:
			t.Fatalf("with a deadline of %v: %d heartbeats and no error, want %d or an error", d, len(beats), nodes)
		default:
			whole++
		}
	}
	if whole == 0 || cut == 0 {
		t.Fatalf("%d whole listings, %d cut short: the deadlines did not span a listing", whole, cut)
	}
}
