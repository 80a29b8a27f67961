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

// TestBeatsWholeOrError: on a real bus, every listing of the heartbeats,
// whatever its deadline, is the whole bucket or an error; never a shorter
// list. (The monitor takes a node missing from a list for one that
// stopped, and drops it from the page.) TestCollectWholeOrError proves
// each way a listing can end.
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
	// Deadlines from nothing upwards, until one listing is whole: some end
	// before the listing starts, some while it waits for its keys.
	whole := 0
	for d := time.Duration(0); whole == 0; d += max(50*time.Microsecond, d/10) {
		if d > 30*time.Second {
			t.Fatal("no whole listing within 30 s")
		}
		dctx, cancel := context.WithTimeout(ctx, d)
		beats, err := monitor.Beats(dctx, b)
		cancel()
		switch {
		case err != nil:
		case len(beats) != nodes:
			t.Fatalf("with a deadline of %v: %d heartbeats and no error, want %d or an error", d, len(beats), nodes)
		default:
			whole++
		}
	}
}
