// Package monitor is the seeds' integrated monitoring (一体化监控, 001):
// every node says what it is and how it is doing with a heartbeat in
// JetStream KV; the monitor role probes every node it hears of, rates
// nodes, their dependencies and the edges between them green, yellow or
// red with a reason (health.go), serves that on the dashboard
// (dashboard.go) and sends alerts to the team's chat (alert.go). The
// topology is found from the heartbeats, never configured.
package monitor

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/surge-platform/surge/internal/platform/bus"
	"github.com/surge-platform/surge/internal/platform/obs"
)

// Bucket is the KV bucket of heartbeats; an entry lives BeatTTL after its
// last put, so a node gone for good leaves the bucket by itself.
const (
	Bucket    = "surge_nodes"
	BeatEvery = time.Second
	BeatTTL   = 30 * time.Second
)

// Beat is what a node says of itself every BeatEvery.
type Beat struct {
	Key     string            `json:"key"` // "n<node id>": one per live process (node ids are leased)
	Owner   string            `json:"owner"`
	NodeID  int               `json:"node_id"`
	Roles   []string          `json:"roles"`
	URL     string            `json:"url"` // its HTTP address, for probes
	Version string            `json:"version"`
	Started time.Time         `json:"started"`
	At      time.Time         `json:"at"`
	Load    Load              `json:"load"`
	Deps    map[string]string `json:"deps"` // dependency ("db0", "kv", "bus", "pay") -> its breaker here: closed, half-open, open
}

// Load is a node's work over its last beat's interval.
type Load struct {
	RPS      float64 `json:"rps"`       // client requests per second
	ErrShare float64 `json:"err_share"` // share of them answered 5xx
	P99      float64 `json:"p99"`       // their 99th percentile, seconds (a histogram bucket's bound)
	CPU      float64 `json:"cpu"`       // the process's CPU, 0..1 of its cores
	Inflight int64   `json:"inflight"`
	Orders   float64 `json:"orders"` // order.created events its ledger applied per second (workers)
}

// Self is how a node describes itself to Beater.
type Self struct {
	Owner   string
	NodeID  int
	Roles   []string
	URL     string
	Started time.Time
	Metrics *obs.Metrics
	Deps    func() map[string]string // breaker state per dependency
	Load    func(*Load)              // fills CPU, Inflight, Orders
}

// Beater puts the node's heartbeat every BeatEvery.
type Beater struct {
	b    *bus.Bus
	self Self
	log  *slog.Logger
}

// NewBeater returns the heartbeat of self.
func NewBeater(b *bus.Bus, self Self, log *slog.Logger) *Beater {
	return &Beater{b: b, self: self, log: log}
}

// Key is the heartbeat key of a node id.
func Key(nodeID int) string { return "n" + strconv.Itoa(nodeID) }

// Run beats until ctx is done. A bus that is away is waited out: the
// beats resume with it (a monitor meanwhile sees the node as silent).
func (h *Beater) Run(ctx context.Context) error {
	t := time.NewTicker(BeatEvery)
	defer t.Stop()
	var kv jetstream.KeyValue
	last, lastAt := h.self.Metrics.Totals(), time.Now()
	failing := false
	first := time.After(0) // the first beat at once: a monitor sees a new node within a second
	for {
		select {
		case <-first:
		case <-ctx.Done():
			if kv != nil { // gone: say so at once rather than after BeatTTL
				dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
				kv.Delete(dctx, Key(h.self.NodeID))
				cancel()
			}
			return nil
		case <-t.C:
		}
		now, tot := time.Now(), h.self.Metrics.Totals()
		n, errShare, p99 := tot.Since(last)
		beat := Beat{Key: Key(h.self.NodeID), Owner: h.self.Owner, NodeID: h.self.NodeID, Roles: h.self.Roles, URL: h.self.URL,
			Version: Version, Started: h.self.Started, At: now, Deps: h.self.Deps(),
			Load: Load{RPS: float64(n) / now.Sub(lastAt).Seconds(), ErrShare: errShare, P99: p99}}
		if h.self.Load != nil {
			h.self.Load(&beat.Load)
		}
		last, lastAt = tot, now
		pctx, cancel := context.WithTimeout(ctx, time.Second)
		var err error
		if kv == nil {
			kv, err = openBucket(pctx, h.b)
		}
		if err == nil {
			data, _ := json.Marshal(beat)
			_, err = kv.Put(pctx, beat.Key, data)
		}
		cancel()
		if err != nil && !failing && ctx.Err() == nil {
			h.log.Warn("heartbeat: not put (retried every second)", "err", err)
		}
		if errors.Is(err, jetstream.ErrBucketNotFound) { // the bus lost it: make it again
			kv = nil
		}
		failing = err != nil
	}
}

// Version is the build's version (set by the node).
var Version = "dev"

// openBucket opens the heartbeats' bucket, making it when missing.
func openBucket(ctx context.Context, b *bus.Bus) (jetstream.KeyValue, error) {
	js := b.JetStream()
	name := b.Name(Bucket)
	kv, err := js.KeyValue(ctx, name)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		kv, err = js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: name, Description: "surge heartbeats (docs/observability.md)",
			TTL: BeatTTL, Storage: jetstream.MemoryStorage, History: 1})
		if errors.Is(err, jetstream.ErrBucketExists) {
			kv, err = js.KeyValue(ctx, name)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("heartbeats bucket: %w", err)
	}
	return kv, nil
}

// Beats reads every heartbeat in the bucket: all of them, or an error.
func Beats(ctx context.Context, b *bus.Bus) ([]Beat, error) {
	kv, err := openBucket(ctx, b)
	if err != nil {
		return nil, err
	}
	// The watcher's first pass gives each key's entry, then nil. (nats.go's
	// key lister ends its keys quietly when ctx ends or the subscription
	// closes, so a list cut short would pass for the whole, and the monitor
	// takes a node missing from it for one that stopped.)
	w, err := kv.WatchAll(ctx, jetstream.IgnoreDeletes())
	if err != nil {
		return nil, fmt.Errorf("heartbeats: %w", err)
	}
	defer w.Stop()
	return collect(ctx, w.Updates())
}

// errCutShort: the heartbeats' listing ended before its last key.
var errCutShort = errors.New("heartbeats: listing cut short")

// collect reads the beats of a watcher's first pass, up to its nil.
func collect(ctx context.Context, updates <-chan jetstream.KeyValueEntry) ([]Beat, error) {
	var out []Beat
	for {
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("%w: %w", errCutShort, ctx.Err())
		case e, ok := <-updates:
			switch {
			case !ok:
				return nil, errCutShort
			case e == nil:
				return out, nil
			}
			var bt Beat
			if json.Unmarshal(e.Value(), &bt) == nil {
				// Its age by the bus's clock, not the node's: a node whose
				// clock is off must not look silent (or fresh) for it.
				bt.At = e.Created()
				out = append(out, bt)
			}
		}
	}
}
