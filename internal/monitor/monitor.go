package monitor

import (
	"cmp"
	"context"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/surge-platform/surge/internal/platform/bus"
)

// Figures are the cluster's queues and business, for the page and the
// alert rules.
type Figures struct {
	OrdersPerMin float64           `json:"orders_per_min"`
	RPS          float64           `json:"rps"`
	OutboxRows   int64             `json:"outbox_rows"`
	OutboxOldest float64           `json:"outbox_oldest_s"`
	Lags         []bus.ConsumerLag `json:"lags"`
	DeadLetters  map[string]int64  `json:"dead_letters"`
	Err          string            `json:"error,omitempty"` // why the queues could not be read
}

// Snapshot is what the monitor knows at one moment: the dashboard's whole
// state.
type Snapshot struct {
	Topology
	Figures Figures `json:"figures"`
	Alerts  []Alert `json:"alerts"`
}

// Config is what a Monitor watches and how.
type Config struct {
	Bus        *bus.Bus
	Thresholds Thresholds // zero: DefaultThresholds
	// Queues reads the outbox and the consumers (nil: not shown).
	Queues func(ctx context.Context, f *Figures) error
	Rules  *Rules // nil: DefaultRules
}

// Monitor rates the cluster every second.
type Monitor struct {
	cfg    Config
	log    *slog.Logger
	prober Prober

	mu    sync.Mutex
	nodes map[string]*NodeState // by beat key
	snap  Snapshot
	subs  map[chan struct{}]bool // dashboards following

	closing   chan struct{} // closed by Close
	closeOnce sync.Once
	queuesAt  time.Time // the queues are read every queueEvery
	queues    Figures
}

// queueEvery is how often a monitor reads the outbox and the consumers
// (each monitor node does: every 5 s, not every second, keeps N monitors
// off the databases).
const queueEvery = 5 * time.Second

// New returns a monitor; Run makes it watch.
func New(cfg Config, log *slog.Logger) *Monitor {
	if cfg.Thresholds == (Thresholds{}) {
		cfg.Thresholds = DefaultThresholds
	}
	if cfg.Rules == nil {
		cfg.Rules = &DefaultRules
	}
	// 2.5 s: a node's /readyz answers within about 2 s even when a check
	// hangs (and names it); a dead node refuses at once.
	return &Monitor{cfg: cfg, log: log, prober: Prober{Client: &http.Client{Timeout: 2500 * time.Millisecond}},
		nodes: map[string]*NodeState{}, subs: map[chan struct{}]bool{}, closing: make(chan struct{})}
}

// Run rates the cluster every second until ctx is done.
func (m *Monitor) Run(ctx context.Context) error {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		m.Tick(ctx)
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// Tick reads the heartbeats, probes the nodes and the queues, and makes a
// new snapshot. When the heartbeats cannot be read (the bus is away), the
// nodes keep their last colours and the snapshot says why: the bus is the
// news, not every node at once.
func (m *Monitor) Tick(ctx context.Context) {
	tctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	beats, berr := Beats(tctx, m.cfg.Bus)
	var fails map[string]int
	var results map[string]string
	if berr == nil {
		fails, results = m.prober.Probe(tctx, beats)
	}
	now := time.Now()
	if m.cfg.Queues != nil && now.Sub(m.queuesAt) >= queueEvery {
		m.queuesAt, m.queues = now, Figures{}
		if err := m.cfg.Queues(tctx, &m.queues); err != nil {
			m.queues.Err = err.Error()
		}
	}
	f := m.queues
	th := m.cfg.Thresholds

	m.mu.Lock()
	if berr != nil {
		f.Err = "heartbeats unreadable: " + berr.Error()
		m.log.Debug("monitor: heartbeats", "err", berr)
	} else {
		seen := map[string]bool{}
		for _, b := range beats {
			seen[b.Key] = true
			st := judge(th, now, b, fails[b.Key], results[b.Key], m.nodes[b.Key])
			m.nodes[b.Key] = &st
		}
		for k, prev := range m.nodes {
			if seen[k] {
				continue
			}
			// Gone from the bucket: a node that stopped deletes its beat (it
			// leaves the page); one whose beat expired was silent long before
			// (it stays, red, for Forget).
			if now.Sub(prev.At) < th.Silent || now.Sub(prev.At) > th.Forget {
				delete(m.nodes, k)
				continue
			}
			st := judge(th, now, prev.Beat, 0, prev.Probe, prev)
			m.nodes[k] = &st
		}
	}
	nodes := make([]NodeState, 0, len(m.nodes))
	for _, n := range m.nodes {
		nodes = append(nodes, *n)
		if n.Health != Red || !strings.HasPrefix(n.Reason, "no heartbeat") { // a silent node's figures are old
			f.OrdersPerMin += 60 * n.Load.Orders
			f.RPS += n.Load.RPS
		}
	}
	slices.SortFunc(nodes, func(a, b NodeState) int { return cmp.Compare(a.NodeID, b.NodeID) })
	snap := Snapshot{Topology: topology(now, nodes), Figures: f}
	snap.Alerts = m.cfg.Rules.Eval(snap)
	m.snap = snap
	for ch := range m.subs {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
	m.mu.Unlock()
}

// Rules are the alert rules in force.
func (m *Monitor) Rules() Rules { return *m.cfg.Rules }

// Snapshot returns the last snapshot.
func (m *Monitor) Snapshot() Snapshot {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.snap
}

// follow returns a channel told of each new snapshot, and its cancel.
func (m *Monitor) follow() (<-chan struct{}, func()) {
	ch := make(chan struct{}, 1)
	m.mu.Lock()
	m.subs[ch] = true
	m.mu.Unlock()
	return ch, func() {
		m.mu.Lock()
		delete(m.subs, ch)
		m.mu.Unlock()
	}
}
