package monitor

import (
	"cmp"
	"context"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"
)

// Health is a colour: green (serving as usual), yellow (degraded: errors
// or latency above the usual, a breaker probing), red (failing, silent or
// not serving).
type Health string

const (
	Green  Health = "green"
	Yellow Health = "yellow"
	Red    Health = "red"
)

func worse(a, b Health) Health {
	rank := map[Health]int{Green: 0, Yellow: 1, Red: 2}
	if rank[b] > rank[a] {
		return b
	}
	return a
}

// Thresholds are the rules of the colours (docs/observability.md). The
// error shares follow Kiali's: 0.1% of 5xx is degraded, over 10% failing.
type Thresholds struct {
	Silent      time.Duration // no heartbeat for this long: red (BeatEvery x 3)
	ProbeFails  int           // readyz probes failed in a row for red (one is yellow)
	ErrYellow   float64       // share of 5xx for yellow
	ErrRed      float64       // share of 5xx for red
	MinRequests float64       // requests per second below which error shares are not judged
	SlowFactor  float64       // p99 above this times the node's own baseline: yellow
	SlowFloor   float64       // ... and above this many seconds (sub-millisecond jitter is no news)
	Forget      time.Duration // a node silent this long leaves the page
}

// DefaultThresholds are the documented defaults.
var DefaultThresholds = Thresholds{Silent: 3 * BeatEvery, ProbeFails: 2, ErrYellow: 0.001, ErrRed: 0.10, MinRequests: 1,
	SlowFactor: 2, SlowFloor: 0.05, Forget: 10 * time.Minute}

// NodeState is one node as the monitor sees it.
type NodeState struct {
	Beat
	Health   Health    `json:"health"`
	Reason   string    `json:"reason"`
	Probe    string    `json:"probe"` // the last readyz probe: "ok" or why not
	Baseline float64   `json:"baseline_p99"`
	Since    time.Time `json:"since"` // in this health since
}

// DepState is one dependency (a database shard, kv, the bus, the payment
// channels) as the nodes that use it see it.
type DepState struct {
	Name   string `json:"name"`
	Health Health `json:"health"`
	Reason string `json:"reason"`
}

// Edge is a node's use of a dependency, coloured by its breaker there.
type Edge struct {
	From   string `json:"from"` // a node's key
	To     string `json:"to"`   // a dependency's name
	Health Health `json:"health"`
	Reason string `json:"reason"`
}

// judge colours one node from its last beat, its probes and its own
// history (the state before: for the baseline and since).
func judge(th Thresholds, now time.Time, b Beat, probeFails int, probe string, prev *NodeState) NodeState {
	st := NodeState{Beat: b, Health: Green, Reason: "serving", Probe: probe}
	if prev != nil {
		st.Baseline = prev.Baseline
	}
	set := func(h Health, why string) {
		if worse(st.Health, h) != st.Health || st.Reason == "serving" && h != Green {
			st.Health, st.Reason = h, why
		}
	}
	l := b.Load
	switch age := now.Sub(b.At); {
	case age > th.Silent:
		set(Red, fmt.Sprintf("no heartbeat for %s", age.Round(time.Second)))
	case probeFails >= th.ProbeFails:
		set(Red, "not serving: readyz "+probe)
	case l.RPS >= th.MinRequests && l.ErrShare > th.ErrRed:
		set(Red, fmt.Sprintf("%.1f%% of requests fail (5xx)", 100*l.ErrShare))
	}
	for _, dep := range slices.Sorted(maps.Keys(b.Deps)) {
		if b.Deps[dep] == "open" {
			set(Red, dep+" unreachable (breaker open)")
		}
	}
	if st.Health == Green {
		switch {
		case probeFails > 0:
			set(Yellow, "readyz "+probe)
		case l.RPS >= th.MinRequests && l.ErrShare >= th.ErrYellow:
			set(Yellow, fmt.Sprintf("%.2f%% of requests fail (5xx)", 100*l.ErrShare))
		case st.Baseline > 0 && l.P99 > th.SlowFactor*st.Baseline && l.P99 > th.SlowFloor:
			set(Yellow, fmt.Sprintf("p99 %s, usually %s", secs(l.P99), secs(st.Baseline)))
		}
		for _, dep := range slices.Sorted(maps.Keys(b.Deps)) {
			if b.Deps[dep] == "half-open" {
				set(Yellow, dep+" recovering (breaker half-open)")
			}
		}
	}
	// The baseline is what the node does when all is well: it learns only
	// from green beats with traffic, slowly (a minute's memory).
	if st.Health == Green && l.RPS >= th.MinRequests && l.P99 > 0 {
		if st.Baseline == 0 {
			st.Baseline = l.P99
		} else {
			st.Baseline += (l.P99 - st.Baseline) / 60
		}
	}
	st.Since = now
	if prev != nil && prev.Health == st.Health {
		st.Since = prev.Since
	}
	return st
}

func secs(s float64) string { return time.Duration(s * float64(time.Second)).String() }

// Topology is the whole picture at one moment.
type Topology struct {
	At    time.Time   `json:"at"`
	Nodes []NodeState `json:"nodes"`
	Deps  []DepState  `json:"deps"`
	Edges []Edge      `json:"edges"`
}

// topology colours the edges (a node's breaker of the dependency) and the
// dependencies (the worst of their edges from live nodes: one node that
// cannot reach a database may be that node's problem, every node is the
// database's).
func topology(now time.Time, nodes []NodeState) Topology {
	t := Topology{At: now, Nodes: nodes}
	type tally struct{ edges, bad, probing int }
	deps := map[string]*tally{}
	for _, n := range nodes {
		for dep, br := range n.Deps {
			e := Edge{From: n.Key, To: dep, Health: Green, Reason: "breaker closed"}
			silent := n.Health == Red && strings.HasPrefix(n.Reason, "no heartbeat")
			switch {
			case silent:
				e.Health, e.Reason = Red, "the node is silent"
			case br == "open":
				e.Health, e.Reason = Red, "breaker open: calls refused"
			case br == "half-open":
				e.Health, e.Reason = Yellow, "breaker half-open: probing"
			}
			t.Edges = append(t.Edges, e)
			d := deps[dep]
			if d == nil {
				d = &tally{}
				deps[dep] = d
			}
			if silent {
				continue // a silent node's word on its dependencies is old
			}
			d.edges++
			switch e.Health {
			case Red:
				d.bad++
			case Yellow:
				d.probing++
			}
		}
	}
	for name, d := range deps {
		s := DepState{Name: name, Health: Green, Reason: "reachable"}
		switch {
		case d.edges > 0 && d.bad == d.edges:
			s.Health, s.Reason = Red, "unreachable from every node"
		case d.bad > 0:
			s.Health, s.Reason = Yellow, fmt.Sprintf("unreachable from %d of %d nodes", d.bad, d.edges)
		case d.probing > 0:
			s.Health, s.Reason = Yellow, "recovering"
		}
		t.Deps = append(t.Deps, s)
	}
	slices.SortFunc(t.Deps, func(a, b DepState) int { return cmp.Compare(a.Name, b.Name) })
	slices.SortFunc(t.Edges, func(a, b Edge) int { return cmp.Or(cmp.Compare(a.From, b.From), cmp.Compare(a.To, b.To)) })
	return t
}

// Prober asks each node's /readyz, remembering failures in a row.
type Prober struct {
	Client  *http.Client
	mu      sync.Mutex
	fails   map[string]int
	results map[string]string
}

// Probe probes every node of beats at once (each within the client's
// timeout) and returns, per key, the failures in a row and the last result.
func (p *Prober) Probe(ctx context.Context, beats []Beat) (map[string]int, map[string]string) {
	var wg sync.WaitGroup
	p.mu.Lock()
	if p.fails == nil {
		p.fails, p.results = map[string]int{}, map[string]string{}
	}
	p.mu.Unlock()
	for _, b := range beats {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res := "ok"
			req, _ := http.NewRequestWithContext(ctx, "GET", strings.TrimSuffix(b.URL, "/")+"/readyz", nil)
			r, err := p.Client.Do(req)
			switch {
			case err != nil:
				res = "unanswered"
				if strings.Contains(err.Error(), "refused") {
					res = "connection refused"
				} else if strings.Contains(err.Error(), "Timeout") || strings.Contains(err.Error(), "deadline") {
					res = "timed out"
				}
			case r.StatusCode != http.StatusOK:
				res = fmt.Sprintf("answered %d", r.StatusCode)
			}
			if r != nil {
				r.Body.Close()
			}
			p.mu.Lock()
			if res == "ok" {
				p.fails[b.Key] = 0
			} else {
				p.fails[b.Key]++
			}
			p.results[b.Key] = res
			p.mu.Unlock()
		}()
	}
	wg.Wait()
	p.mu.Lock()
	defer p.mu.Unlock()
	fails, results := map[string]int{}, map[string]string{}
	for _, b := range beats {
		fails[b.Key], results[b.Key] = p.fails[b.Key], p.results[b.Key]
	}
	return fails, results
}
