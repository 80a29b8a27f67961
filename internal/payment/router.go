package payment

import (
	"math/rand/v2"
	"slices"
	"sync"
	"time"

	"github.com/surge-platform/surge/internal/platform/errkind"
)

var (
	ErrUnknownChannel = errkind.New(errkind.Invalid, "unknown_channel", "no such payment channel")
	ErrNoChannel      = errkind.New(errkind.Unavailable, "no_channel_available", "every payment channel is unavailable, try again later")
)

// Routing parameters. A channel is judged on the calls of the last Window:
// with at least MinCalls calls and an error rate above MaxErrors it is taken
// out for Cooldown; then it is on probation (a small share of traffic) until
// a call succeeds. A mean latency above SlowLatency halves its weight.
const (
	Window      = 30 * time.Second
	MinCalls    = 5
	MaxErrors   = 0.5
	Cooldown    = 10 * time.Second
	SlowLatency = time.Second
	probation   = 0.1 // share of picks a probation channel gets when another is healthy
)

type bucket struct {
	sec          int64
	calls, fails int
	latency      time.Duration
}

type health struct {
	weight    int
	outUntil  time.Time // taken out until then
	probation bool      // back from an outage, not yet proven
	buckets   [30]bucket
}

// Router picks a channel for each new payment from the channels' recent
// health and the operator's switches. Safe for concurrent use; each node
// judges health from its own calls, while the switches are the cluster's
// (see Follow).
type Router struct {
	now   func() time.Time
	mu    sync.Mutex
	names []string               // in configuration order
	h     map[string]*health     // guarded by mu
	on    func(name string) bool // the operator's switch of a channel; guarded by mu
}

// NewRouter routes between the named channels with the given weights (> 0).
func NewRouter(weights map[string]int) *Router {
	r := &Router{now: time.Now, h: map[string]*health{}, on: func(string) bool { return true }}
	for name, w := range weights {
		r.names = append(r.names, name)
		r.h[name] = &health{weight: max(w, 1)}
	}
	slices.Sort(r.names)
	return r
}

// Record tells the router how a call to a channel went.
func (r *Router) Record(name string, err error, took time.Duration) {
	r.mu.Lock()
	defer r.mu.Unlock()
	h := r.h[name]
	if h == nil {
		return
	}
	now := r.now()
	b := &h.buckets[now.Unix()%int64(len(h.buckets))]
	if b.sec != now.Unix() {
		*b = bucket{sec: now.Unix()}
	}
	b.calls++
	b.latency += took
	if err != nil {
		b.fails++
		if h.probation {
			h.outUntil = now.Add(Cooldown) // failed its probation: out again
		}
		calls, fails, _ := h.statsLocked(now)
		if calls >= MinCalls && float64(fails)/float64(calls) > MaxErrors && !now.Before(h.outUntil) {
			h.outUntil, h.probation = now.Add(Cooldown), true
		}
		return
	}
	h.probation = false
}

func (h *health) statsLocked(now time.Time) (calls, fails int, mean time.Duration) {
	var lat time.Duration
	for _, b := range h.buckets {
		if now.Unix()-b.sec < int64(Window/time.Second) {
			calls, fails, lat = calls+b.calls, fails+b.fails, lat+b.latency
		}
	}
	if calls > 0 {
		mean = lat / time.Duration(calls)
	}
	return calls, fails, mean
}

// Follow makes on the operator's switch of every channel: a channel for
// which on reports false takes no new payments. on is called under the
// router's lock on every pick, so it must be quick and must not call the
// Router; a node passes the cluster-wide switches (pay.channel.<name>).
// Until Follow is called every channel is on.
func (r *Router) Follow(on func(channel string) bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.on = on
}

// Check returns ErrUnknownChannel when name is not a channel of the router.
func (r *Router) Check(name string) error {
	if r.h[name] == nil { // names are fixed at NewRouter: no lock needed
		return ErrUnknownChannel.With("no payment channel %q (have %v)", name, r.names)
	}
	return nil
}

// Out reports whether the channel is taken out for failing (an operator's
// switch does not count: queries and refunds still go to a switched-off
// channel).
func (r *Router) Out(name string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	h := r.h[name]
	return h != nil && r.now().Before(h.outUntil)
}

// ChannelState is one channel as the router sees it.
type ChannelState struct {
	Name      string  `json:"name"`
	Weight    int     `json:"weight"`
	Effective int     `json:"effective_weight"` // in picks now: 0 when off or out
	ForcedOff bool    `json:"forced_off"`       // its switch pay.channel.<name> is off (cluster-wide)
	Out       bool    `json:"out"`
	Probation bool    `json:"probation"`
	Calls     int     `json:"calls"`
	ErrorRate float64 `json:"error_rate"`
	MeanMS    float64 `json:"mean_latency_ms"`
}

// States reports every channel.
func (r *Router) States() []ChannelState {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := r.now()
	var out []ChannelState
	for _, name := range r.names {
		h := r.h[name]
		calls, fails, mean := h.statsLocked(now)
		st := ChannelState{Name: name, Weight: h.weight, Effective: r.effectiveLocked(name, now), ForcedOff: !r.on(name),
			Out: now.Before(h.outUntil), Probation: h.probation, Calls: calls, MeanMS: float64(mean.Microseconds()) / 1000}
		if calls > 0 {
			st.ErrorRate = float64(fails) / float64(calls)
		}
		out = append(out, st)
	}
	return out
}

// effectiveLocked is the weight a pick uses now: 0 when switched off or
// out. r.mu must be held.
func (r *Router) effectiveLocked(name string, now time.Time) int {
	h := r.h[name]
	if !r.on(name) || now.Before(h.outUntil) {
		return 0
	}
	w := h.weight * 10
	if _, _, mean := h.statsLocked(now); mean > SlowLatency {
		w /= 2
	}
	return max(w, 1)
}

// Pick returns the channel for a new payment. A requested channel is used
// if it is up (ErrUnknownChannel, or ErrChannelDown when it is off or out);
// otherwise a weighted random pick among the channels that are up and not
// in except, where a channel on probation gets a small share. ErrNoChannel
// when none is left.
func (r *Router) Pick(requested string, except ...string) (string, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := r.now()
	if requested != "" {
		h := r.h[requested]
		if h == nil {
			return "", ErrUnknownChannel.With("no payment channel %q (have %v)", requested, r.names)
		}
		if r.effectiveLocked(requested, now) == 0 {
			return "", ErrChannelDown.With("payment channel %s is unavailable now; try another or none", requested)
		}
		return requested, nil
	}
	total, healthy := 0, 0
	weights := make([]int, len(r.names))
	for i, name := range r.names {
		h := r.h[name]
		if slices.Contains(except, name) {
			continue
		}
		weights[i] = r.effectiveLocked(name, now)
		if weights[i] > 0 && !h.probation {
			healthy++
		}
	}
	for i, name := range r.names {
		if r.h[name].probation && healthy > 0 && weights[i] > 0 {
			weights[i] = max(int(float64(weights[i])*probation), 1)
		}
		total += weights[i]
	}
	if total == 0 {
		return "", ErrNoChannel
	}
	x := rand.IntN(total)
	for i, w := range weights {
		if x < w {
			return r.names[i], nil
		}
		x -= w
	}
	return r.names[len(r.names)-1], nil
}
