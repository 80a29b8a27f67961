package limit

import (
	"context"
	"crypto/rand"
	"math"
	"sync/atomic"
	"time"

	"github.com/surge-platform/surge/internal/platform/kv"
)

// The modes of a Cluster, as ClusterStats.Mode says them.
const (
	ModeShared = "shared" // permits come from the limit shared in kv
	ModeLocal  = "local"  // kv did not answer (or not yet): this node's share, in-process
	ModeOff    = "off"    // no cap: everything is allowed
)

// ClusterOptions tune a Cluster. A zero field takes its default.
type ClusterOptions struct {
	// Burst is how many permits the whole cluster may take at once after
	// a quiet spell, or on its return from local mode. Default: 200ms of
	// the rate. It is also what kv keeps for nodes that could not ask in
	// time: a stall of every node longer than the burst's time (a busy
	// machine, a slow kv) loses the rest of the stall's permits for good
	// (with 50ms, 3 processes on a loaded 2-core machine admitted 244/s of
	// a 300/s cap). It is raised to at least 4 x Gap of the rate (20ms by
	// default), so that nodes asking in turn lose no permits between two
	// asks.
	Burst int64
	// Node names this node in the heartbeat set; it must differ between
	// nodes. Default: a random name, new on every start (a restarted node
	// counts twice until its old name leaves the window).
	Node string
	// Nodes is the number of live nodes assumed until kv has counted
	// them: a node that cannot reach kv from the start takes rate / Nodes.
	// Default 1, which lets such a node take the whole cap; deployments
	// that know their size should say it.
	Nodes int64
	// Timeout bounds each kv call; a call that fails or takes longer puts
	// the node in local mode. Default 50ms.
	Timeout time.Duration
	// Horizon is how much of this node's recent demand one lease covers
	// (at most Horizon of the whole cluster's rate). Default 50ms (a lease from a Redis slowed by a busy machine must come before the reserve runs dry).
	Horizon time.Duration
	// Gap is the least time between two asks while the cap holds this
	// node back (kv granted less than asked). Default 5ms: at most 200
	// asks a second per node, whatever the rate.
	Gap time.Duration
	// Probe is how often a node in local mode asks kv again. Default
	// 250ms.
	Probe time.Duration
	// Beat is how often a node tells kv it is alive; nodes not heard for
	// 3 beats are not counted. Default 1s.
	Beat time.Duration
}

// ClusterStats is a snapshot of a Cluster, for metrics.
type ClusterStats struct {
	Mode      string // ModeShared, ModeLocal or ModeOff
	Rate      int64  // the cluster-wide cap, per second
	Nodes     int64  // live nodes as last counted; local mode takes Rate / Nodes
	Reserve   int64  // permits leased from kv and not used yet
	Allowed   uint64 // Allow calls that said yes, since New
	Refused   uint64 // Allow calls that said no
	Fallbacks uint64 // switches from shared to local mode
	Err       error  // the kv error that put the node in local mode; nil in shared mode
}

// Cluster is a cluster-wide rate cap (perSecond for all nodes together)
// checked on the request path without a round trip: Allow takes a permit
// from a local reserve that Run keeps leasing, in batches, from a GCRA
// shared in kv (kv.Store.GCRA, on Redis's clock). When kv fails or is
// slower than Timeout, the node switches to local mode, an in-process
// GCRA at its share (rate / live nodes, the count kv last gave), and
// back to shared mode when kv answers again. Until its first lease a
// node is in local mode too, at rate / Nodes.
//
// What is exact is what kv grants: the cluster never takes more than
// Burst + perSecond x elapsed from kv. On top of that a node may hold a
// lease (at most Horizon of the cluster's rate) and, when kv fails, its
// local share overlaps the leases of others for a moment; leases a node
// leaves unused (it stopped, or fell back) are lost, never handed out
// twice.
//
// A Cluster is safe for concurrent use. A nil *Cluster, and one of
// perSecond <= 0, allows everything.
type Cluster struct {
	store       kv.Store
	key, beats  string
	rate, burst int64
	per         time.Duration // the cluster's emission interval
	maxLease    int64
	o           ClusterOptions

	local    atomic.Pointer[gcra] // non-nil: local mode, Allow asks it
	reserve  atomic.Int64         // permits leased, shared mode
	low      atomic.Int64         // Allow wakes Run when the reserve falls to it
	nextAt   atomic.Int64         // unix ns when Run will ask kv again; a refusal's retry time
	wanted   atomic.Bool          // Run was woken and has not asked since
	wake     chan struct{}
	allowed  atomic.Uint64
	refused  atomic.Uint64
	fallback atomic.Uint64
	nodes    atomic.Int64
	err      atomic.Pointer[error]

	// Owned by Run.
	demand     float64 // Allow calls a second, recently
	sampled    uint64
	sampleAt   time.Time
	heardSince time.Time // first good heartbeat since kv last failed
}

// NewCluster returns a cap of perSecond permits for the whole cluster,
// shared through store under the name (several caps may share a store;
// each name is one cap, and every node must give it the same perSecond
// and Burst). Run must run for the node to take part: until then it takes
// perSecond / o.Nodes on its own. perSecond <= 0 means no cap; it is at
// most kv.MaxGCRARate. A nil store keeps the cap in-process: the whole
// perSecond on this node, always in local mode (a single process; the
// embedded mode passes its kv.Memory instead, which works as Redis does).
func NewCluster(store kv.Store, name string, perSecond int64, o ClusterOptions) *Cluster {
	if perSecond <= 0 {
		return &Cluster{}
	}
	perSecond = min(perSecond, kv.MaxGCRARate)
	o.Nodes = max(o.Nodes, 1)
	o.Timeout = positiveOr(o.Timeout, 50*time.Millisecond)
	o.Horizon = positiveOr(o.Horizon, 50*time.Millisecond)
	o.Gap = positiveOr(o.Gap, 5*time.Millisecond)
	o.Probe = positiveOr(o.Probe, 250*time.Millisecond)
	o.Beat = positiveOr(o.Beat, time.Second)
	if o.Node == "" {
		o.Node = rand.Text()[:16]
	}
	if store == nil {
		o.Nodes = 1
	}
	burst := o.Burst
	if burst <= 0 {
		burst = perSecond / 5
	}
	burst = max(burst, ceilRate(perSecond, 4*o.Gap), 1)
	c := &Cluster{
		store:    store,
		key:      "limit:{" + name + "}:gcra",
		beats:    "limit:{" + name + "}:nodes",
		rate:     perSecond,
		burst:    burst,
		per:      time.Second / time.Duration(perSecond),
		maxLease: max(ceilRate(perSecond, o.Horizon), 1),
		o:        o,
		wake:     make(chan struct{}, 1),
	}
	c.nodes.Store(o.Nodes)
	c.local.Store(c.share())
	return c
}

func positiveOr(d, def time.Duration) time.Duration {
	if d <= 0 {
		return def
	}
	return d
}

// ceilRate is how many permits perSecond gives in d, rounded up.
func ceilRate(perSecond int64, d time.Duration) int64 {
	return int64(math.Ceil(float64(perSecond) * d.Seconds()))
}

// share is a fresh in-process limit at this node's share of the cap. With
// a store it starts with nothing saved up: a node entering local mode
// (at start, or kv failing) takes its share from then on and no burst
// on top of what it and the others have taken already; without a store
// it is the only limit, and starts with its burst.
func (c *Cluster) share() *gcra {
	n := c.nodes.Load()
	return newGCRA(float64(c.rate)/float64(n), (c.burst+n-1)/n, c.store != nil, time.Now().UnixNano())
}

// Allow takes a permit at now. When it refuses, retryAfter is the time
// until a permit is expected (at least the cluster's emission interval):
// answer 429 with it at once (see RetryAfterSeconds), never wait. It
// takes no lock and allocates nothing.
func (c *Cluster) Allow(now time.Time) (ok bool, retryAfter time.Duration) {
	if c == nil || c.rate == 0 {
		return true, 0
	}
	if g := c.local.Load(); g != nil {
		ok, retryAfter = g.allow(now.UnixNano())
		c.count(ok)
		return ok, retryAfter
	}
	for r := c.reserve.Load(); r > 0; r = c.reserve.Load() {
		if c.reserve.CompareAndSwap(r, r-1) {
			if r-1 <= c.low.Load() {
				c.wakeRun()
			}
			c.allowed.Add(1)
			return true, 0
		}
	}
	c.wakeRun()
	c.refused.Add(1)
	return false, max(time.Duration(c.nextAt.Load()-now.UnixNano()), c.per)
}

func (c *Cluster) count(ok bool) {
	if ok {
		c.allowed.Add(1)
	} else {
		c.refused.Add(1)
	}
}

// wakeRun tells Run that the reserve runs low, once until Run has asked.
func (c *Cluster) wakeRun() {
	if c.wanted.Load() || !c.wanted.CompareAndSwap(false, true) {
		return
	}
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// RetryAfterSeconds is d as the value of a Retry-After header: whole
// seconds, rounded up, at least 1.
func RetryAfterSeconds(d time.Duration) int64 {
	return max(int64((d+time.Second-1)/time.Second), 1)
}

// Stats returns a snapshot of the limiter's mode and counters.
func (c *Cluster) Stats() ClusterStats {
	if c == nil || c.rate == 0 {
		return ClusterStats{Mode: ModeOff}
	}
	s := ClusterStats{
		Mode:      ModeShared,
		Rate:      c.rate,
		Nodes:     c.nodes.Load(),
		Reserve:   max(c.reserve.Load(), 0),
		Allowed:   c.allowed.Load(),
		Refused:   c.refused.Load(),
		Fallbacks: c.fallback.Load(),
	}
	if c.local.Load() != nil {
		s.Mode = ModeLocal
		if err := c.err.Load(); err != nil {
			s.Err = *err
		}
	}
	return s
}

// Run leases permits and beats until ctx ends, then leaves the heartbeat
// set and returns nil; leased permits left then are lost. It is the Cluster's only goroutine: start
// it once. With no cap, or no store, it only waits for ctx.
func (c *Cluster) Run(ctx context.Context) error {
	if c == nil || c.rate == 0 || c.store == nil {
		<-ctx.Done()
		return nil
	}
	c.beat(ctx)
	nextBeat := time.Now().Add(c.o.Beat)
	var hold time.Time // no ask before
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		now := time.Now()
		if !now.Before(nextBeat) {
			c.beat(ctx)
			now = time.Now()
			nextBeat = now.Add(c.o.Beat)
		}
		if !now.Before(hold) && c.needs() {
			hold = c.ask(ctx, now)
			continue
		}
		sleep := nextBeat.Sub(now)
		if now.Before(hold) {
			sleep = min(sleep, hold.Sub(now))
		}
		timer.Reset(sleep)
		select {
		case <-ctx.Done():
			c.leave()
			return nil
		case <-c.wake:
		case <-timer.C:
		}
	}
}

// needs says whether Run should ask kv: always in local mode (to learn
// that it answers again), and when the reserve is down to its low mark.
func (c *Cluster) needs() bool {
	return c.local.Load() != nil || c.reserve.Load() <= c.low.Load()
}

// ask leases permits to fill the reserve up to the target and returns
// when Run may ask next: at once after a full grant, after the GCRA's
// wait (at least Gap) after a partial one, after Probe after a failure.
func (c *Cluster) ask(ctx context.Context, now time.Time) time.Time {
	target := c.target(now)
	want := max(target-max(c.reserve.Load(), 0), 1)
	cctx, cancel := context.WithTimeout(ctx, c.o.Timeout)
	got, wait, err := c.store.GCRA(cctx, c.key, c.rate, c.burst, want)
	cancel()
	now = time.Now()
	if err != nil {
		if ctx.Err() == nil {
			c.fallBack(err)
		}
		hold := now.Add(c.o.Probe)
		c.nextAt.Store(hold.UnixNano())
		return hold
	}
	c.low.Store(target / 2)
	c.reserve.Add(got)
	if c.local.Load() != nil {
		c.local.Store(nil) // shared again
		c.err.Store(nil)
	}
	c.wanted.Store(false)
	if got < want {
		hold := now.Add(max(wait, c.o.Gap))
		c.nextAt.Store(hold.UnixNano())
		return hold
	}
	c.nextAt.Store(now.UnixNano())
	return now
}

// target is the reserve Run keeps: Horizon of this node's recent demand
// (Allow calls, allowed or not), at most Horizon of the cluster's rate and
// at least this node's share of that, so that a quiet node still takes a
// sudden burst of its share without refusing while it asks for more.
// Demand rises at once and halves with each sample that is lower.
func (c *Cluster) target(now time.Time) int64 {
	n := c.allowed.Load() + c.refused.Load()
	if dt := now.Sub(c.sampleAt); dt >= 10*time.Millisecond {
		if !c.sampleAt.IsZero() {
			c.demand = max(float64(n-c.sampled)/dt.Seconds(), c.demand/2)
		}
		c.sampled, c.sampleAt = n, now
	}
	least := (c.maxLease + c.nodes.Load() - 1) / c.nodes.Load()
	return min(max(int64(math.Ceil(c.demand*c.o.Horizon.Seconds())), least), c.maxLease)
}

// fallBack puts the node in local mode at its share, if it is not there
// yet; the reserve is dropped (those permits are lost).
func (c *Cluster) fallBack(err error) {
	c.err.Store(&err)
	c.heardSince = time.Time{}
	if c.local.Load() != nil {
		return
	}
	c.local.Store(c.share())
	c.reserve.Store(0)
	c.fallback.Add(1)
}

// leave takes this node out of the heartbeat set, so that the others
// count one node less at once rather than after the window.
func (c *Cluster) leave() {
	ctx, cancel := context.WithTimeout(context.Background(), c.o.Timeout)
	defer cancel()
	c.store.ZRem(ctx, c.beats, c.o.Node) // an error: the window forgets the node
}

// beat tells kv this node is alive and counts the live nodes. A count
// lower than the one known is believed only after kv has answered for a
// whole window (3 beats): a set that kv lost (a restart) fills again
// within one. A failure puts the node in local mode.
func (c *Cluster) beat(ctx context.Context) {
	window := 3 * c.o.Beat
	cctx, cancel := context.WithTimeout(ctx, c.o.Timeout)
	live, err := c.store.Heartbeat(cctx, c.beats, c.o.Node, window)
	cancel()
	if err != nil {
		if ctx.Err() == nil {
			c.fallBack(err)
		}
		return
	}
	now := time.Now()
	if c.heardSince.IsZero() {
		c.heardSince = now
	}
	if live >= c.nodes.Load() || now.Sub(c.heardSince) >= window {
		c.nodes.Store(max(live, 1))
	}
}
