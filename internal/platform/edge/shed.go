package edge

import (
	"context"
	"math"
	"math/rand/v2"
	"net/http"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/failsafe-go/failsafe-go/adaptivelimiter"

	"github.com/surge-platform/surge/internal/platform/schedwait"
	"github.com/surge-platform/surge/internal/platform/web"
)

// Shed is the step that refuses work the node cannot do now (503
// overloaded, soon, instead of slowing every request down):
//
//   - Hard caps on requests in flight: MaxInflight in all; the customer
//     classes together at most 70% of it and each at most 50%, operators
//     at most 10%, so a flood of one class leaves room for the others, and
//     at least 20% is always left for POS terminals and payment callbacks.
//   - Early refusals (dropP): on a node short of CPU, requests queue
//     before any step sees them, in the Go scheduler's run queue (net/http
//     reads and parses each on a goroutine that waits its turn for a
//     core), where no in-flight count can tell. While the process uses
//     80% of its cores or more and its goroutines' wait for a core grows,
//     customers' requests are refused as they arrive with a chance that
//     follows that wait (reads with it, writes with half of it).
//   - A limit on customers' requests at once, after go-zero's shedder and
//     Kratos's BBR, with a queue of its own: while the process's CPU is
//     above 90% of its cores (or for a second after a refusal), at most
//     what the node has shown it can carry run at once (the best
//     throughput of the last 5 s times the lowest latency: Little's law),
//     with half again as headroom and at least 4 a core; writes may go
//     half again past it. A request that finds no place waits, parked, for
//     one (a place freed goes to the newest waiter, writes before reads),
//     at most four of the node's fastest latencies, and is then refused.
//
// POS terminals, payment callbacks, operators and probes are never
// refused by either.
func (e *Edge) Shed() web.Step { return shedStep{e} }

type shedStep struct{ e *Edge }

func (s shedStep) Wrap(next http.Handler) http.Handler {
	e, sh := s.e, s.e.shed
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		in := web.InfoOf(r.Context())
		if in == nil || in.Class == web.ClassOps {
			next.ServeHTTP(w, r)
			return
		}
		c := &e.stats[in.Class]
		if !sh.admit(in.Class, &c.inflight) {
			c.shed.Add(1)
			refuse(w, r, ErrBusy, time.Second)
			return
		}
		queued := sh.queues(in.Class)
		if queued && (sh.early(in.Write) || !sh.acquire(r, in.Write)) {
			sh.undo(in.Class, &c.inflight)
			c.shed.Add(1)
			refuse(w, r, ErrBusy, time.Second)
			return
		}
		start, learn := e.now(), queued
		defer func() {
			if queued {
				sh.release()
			}
			sh.done(in.Class, &c.inflight, learn, e.now().Sub(start))
		}()
		if sh.fs != nil && queued {
			permit, err := sh.fs.AcquirePermitWithMaxWait(r.Context(), sh.maxWait())
			if err != nil {
				learn = false
				c.shed.Add(1)
				refuse(w, r, ErrBusy, time.Second)
				return
			}
			defer permit.Record()
		}
		next.ServeHTTP(w, r)
	})
}

// Window of the adaptive shedder: 50 buckets of 100 ms.
const (
	buckets   = 50
	bucketDur = 100 * time.Millisecond
	cpuHot    = 0.9
	waitHot   = time.Millisecond // goroutines' 90th percentile wait for a core
	busyHot   = 0.8              // early refusals only while the CPU is this busy
	coolOff   = time.Second
)

// Shedder keeps the in-flight counts and the adaptive shedder's window.
type Shedder struct {
	max  int64  // 0: no hard cap
	mode string // ShedBBR, ShedFailsafe or ShedOff

	inflight atomic.Int64 // all classes but operations
	customer atomic.Int64 // the customer classes

	mu      sync.Mutex
	win     [buckets]bucket // guarded by mu
	dropped atomic.Int64    // unix ns of the last adaptive refusal
	gate    gate
	pMu     sync.Mutex    // held to update p
	pNext   atomic.Int64  // unix ns of p's next update
	pAt     int64         // guarded by pMu: unix ns of busy's last reading
	pUsed   int64         // guarded by pMu: CPU ns used by the process then
	p       atomic.Uint64 // float64 bits: dropP
	cpu     cpuMeter
	waits   *schedwait.Meter
	usage   func(time.Time) float64              // the CPU's use now, 0..1 (tests set it)
	waited  func() time.Duration                 // goroutines' wait for a core (tests set it)
	busyNow func(int64) float64                  // the CPU's use since the last call (tests set it)
	fs      adaptivelimiter.AdaptiveLimiter[any] // ShedFailsafe's; nil otherwise
}

type bucket struct {
	start int64 // unix ns of the bucket's start
	pass  int64 // requests completed in it
	rtSum int64 // their latency, ns
}

// Adaptive shedders (Config.Shed).
const (
	ShedBBR      = "bbr"      // this file's, after go-zero's and Kratos's
	ShedFailsafe = "failsafe" // failsafe-go's adaptive limiter with its queue (kept to compare)
	ShedOff      = "off"
)

// NewShedder returns a shedder with a hard cap of max requests in flight
// (0: none) and the adaptive shedder mode ("" or ShedOff: none).
func NewShedder(maxInflight int, mode string) *Shedder {
	if mode == "" {
		mode = ShedOff
	}
	s := &Shedder{max: int64(maxInflight), mode: mode, waits: schedwait.New(0.9, bucketDur)}
	s.usage, s.waited, s.busyNow = s.cpu.usage, s.waits.Wait, s.busy
	if mode == ShedFailsafe {
		s.fs = adaptivelimiter.NewBuilder[any]().WithLimits(1, uint(max(s.max, 200)), 20).WithQueueing(2, 4).Build()
	}
	return s
}

// shares of the hard cap, in thousandths.
func (s *Shedder) capFor(c web.Class) (class, customers int64) {
	switch {
	case c.Customer():
		return s.max * 500 / 1000, s.max * 700 / 1000
	case c == web.ClassAdmin:
		return max(1, s.max/10), 0
	}
	return s.max, 0
}

// queues: whether requests of class c go through the adaptive shedder
// (customers only).
func (s *Shedder) queues(c web.Class) bool { return s.mode != ShedOff && c.Customer() }

// admit takes a place in flight for a request of class c (its class's own
// count in mine) under the hard caps, or reports that it must be refused.
func (s *Shedder) admit(c web.Class, mine *atomic.Int64) bool {
	n := s.inflight.Add(1)
	m := mine.Add(1)
	var cust int64
	if c.Customer() {
		cust = s.customer.Add(1)
	}
	if s.max > 0 {
		classCap, custCap := s.capFor(c)
		if n > s.max || m > classCap || custCap > 0 && cust > custCap {
			s.undo(c, mine)
			return false
		}
	}
	return true
}

func (s *Shedder) undo(c web.Class, mine *atomic.Int64) {
	s.inflight.Add(-1)
	mine.Add(-1)
	if c.Customer() {
		s.customer.Add(-1)
	}
}

// acquire takes one of the adaptive limit's places for r, waiting for one
// if need be; false: refused (the wait was too long, r's client went
// away, or newer requests pushed it out of a full queue).
func (s *Shedder) acquire(r *http.Request, write bool) bool {
	if s.mode != ShedBBR {
		return true
	}
	limit := s.gateLimit(time.Now())
	var wait time.Duration
	if limit > 0 {
		wait = s.maxWait()
	}
	if s.gate.acquire(r.Context(), write, limit, wait) {
		return true
	}
	if r.Context().Err() == nil { // refused, not given up on by its client
		s.dropped.Store(time.Now().UnixNano())
	}
	return false
}

func (s *Shedder) release() {
	if s.mode == ShedBBR {
		s.gate.release(s.gateLimit(time.Now()))
	}
}

// gateLimit is how many customers' requests may run at once: no bound
// (0) while the node is not overloaded or has not measured itself yet;
// else what it has shown it can carry, with half again as headroom, at
// least one a core.
func (s *Shedder) gateLimit(now time.Time) int64 {
	if !s.overloaded(now) {
		return 0
	}
	return carry(s.limit(now))
}

// carry is the gate's limit for a measured limit l: half again, at least
// 4 a core (a window learnt in a quiet spell, a few requests a bucket,
// must not strangle the first burst); 0 for 0 (no measure).
func carry(l int64) int64 {
	if l == 0 {
		return 0
	}
	return max(int64(4*runtime.GOMAXPROCS(0)), (3*l+1)/2)
}

// maxWait is how long a request may wait for a place: four of the
// window's lowest latencies, between 1 ms and 100 ms (5 ms before any
// measure).
func (s *Shedder) maxWait() time.Duration {
	rt := s.minRT(time.Now())
	if rt <= 0 {
		return 5 * time.Millisecond
	}
	return min(max(4*rt, time.Millisecond), 100*time.Millisecond)
}

// early reports whether a customer's request is refused as it arrives,
// with the probability the scheduling waits call for (writes with half
// of it), before it waits for a place.
func (s *Shedder) early(write bool) bool {
	if s.mode != ShedBBR {
		return false
	}
	p := s.dropP()
	if p == 0 {
		return false
	}
	if write {
		p /= 2
	}
	if rand.Float64() >= p {
		return false
	}
	s.dropped.Store(time.Now().UnixNano())
	return true
}

// dropP is the probability of refusing a customer's read as it arrives.
// A request must be read and parsed before any step can see it, and on a
// node short of CPU the goroutines that do that wait their turn for a
// core: requests queue there, out of sight of in-flight counts, and every
// request waits behind all of them (POS terminals' and callbacks' too).
// So, as PIE does for a router's queue, the chance of refusing a request
// follows the delay: every 100 ms, while the process used 80% of its
// cores or more, when the goroutines' 90th percentile wait for a core is
// above waitHot it rises (steeply past 8 times that), when it is below
// half of waitHot it decays; it decays too while the CPU is not that busy
// (a node at rest can see long waits: its few goroutines wait on each
// other). A refusal costs the CPU a fraction of a request served.
func (s *Shedder) dropP() float64 {
	now := time.Now().UnixNano()
	if now >= s.pNext.Load() && s.pMu.TryLock() {
		if next := s.pNext.Load(); now >= next {
			s.pNext.Store(now + int64(bucketDur))
			p := math.Float64frombits(s.p.Load())
			if idle := (now - next) / int64(bucketDur); idle > 0 { // periods without a request: decay as if updated
				p *= math.Pow(0.5, float64(idle))
			}
			busy := s.busyNow(now)
			switch d := s.waited(); {
			case busy < busyHot:
				if p *= 0.5; p < 0.02 {
					p = 0
				}
			case d > 8*waitHot:
				p = max(p, 0.5)
				p += (1 - p) / 2
			case d > waitHot:
				p = max(p+0.05, p+(1-p)/5)
			case d < waitHot/2:
				if p *= 0.5; p < 0.02 {
					p = 0
				}
			}
			s.p.Store(math.Float64bits(min(p, 0.99)))
		}
		s.pMu.Unlock()
	}
	return math.Float64frombits(s.p.Load())
}

// busy is the process's CPU use since the last call, 0..1 of GOMAXPROCS
// cores (called by dropP alone).
func (s *Shedder) busy(now int64) float64 { return cpuSince(&s.pAt, &s.pUsed, now) }

// cpuSince is the process's CPU use, 0..1 of GOMAXPROCS cores, between
// the reading at *at (unix ns; *used CPU ns then) and now, which it then
// records there; 0 for the first reading.
func cpuSince(at, used *int64, now int64) float64 {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	u := ru.Utime.Nano() + ru.Stime.Nano()
	var b float64
	if *at != 0 && now > *at {
		b = float64(u-*used) / float64(now-*at) / float64(runtime.GOMAXPROCS(0))
	}
	*at, *used = now, u
	return b
}

// done records a request's completion after rt; the window learns from
// the requests the limit applies to (customers'), served.
func (s *Shedder) done(c web.Class, mine *atomic.Int64, learn bool, rt time.Duration) {
	s.undo(c, mine)
	if s.mode == ShedOff || !learn {
		return
	}
	now := time.Now().UnixNano()
	s.mu.Lock()
	b := &s.win[now/int64(bucketDur)%buckets]
	if start := now - now%int64(bucketDur); b.start != start {
		*b = bucket{start: start}
	}
	b.pass++
	b.rtSum += int64(rt)
	s.mu.Unlock()
}

// window returns the most requests completed in a bucket of the window
// (the one filling excluded) and the lowest average latency of a bucket;
// 0, 0 while the window is empty.
func (s *Shedder) window(now time.Time) (maxPass int64, minRT time.Duration) {
	t := now.UnixNano()
	cur := t - t%int64(bucketDur)
	oldest := cur - buckets*int64(bucketDur)
	minRT = -1
	s.mu.Lock()
	for i := range s.win {
		b := &s.win[i]
		if b.start == cur || b.start <= oldest || b.pass == 0 {
			continue
		}
		maxPass = max(maxPass, b.pass)
		if rt := time.Duration(b.rtSum / b.pass); minRT < 0 || rt < minRT {
			minRT = rt
		}
	}
	s.mu.Unlock()
	if maxPass == 0 {
		return 0, 0
	}
	return maxPass, minRT
}

func (s *Shedder) minRT(now time.Time) time.Duration {
	_, rt := s.window(now)
	return rt
}

// limit is the in-flight count the node has shown it can carry: the most
// requests completed in a bucket of the window, per second, times the
// lowest latency of a bucket, rounded up, at least 1; 0 while the window
// is empty.
func (s *Shedder) limit(now time.Time) int64 {
	maxPass, minRT := s.window(now)
	if maxPass == 0 {
		return 0
	}
	return max(1, (maxPass*int64(minRT)+int64(bucketDur)-1)/int64(bucketDur))
}

// overloaded: the process's CPU is hot, or a request was refused within
// coolOff. (Not the goroutines' wait for a core alone: that is long too
// when other processes take the machine's cores, and this node is not
// what is busy.)
func (s *Shedder) overloaded(now time.Time) bool {
	if now.UnixNano()-s.dropped.Load() < int64(coolOff) {
		return true
	}
	return s.usage(now) > cpuHot
}

// gate holds the adaptive limit's places. A request that finds none free
// waits, parked, in a stack (the newest is served first: under overload
// the oldest waiters are the ones whose clients have waited longest, and
// they are the ones refused). A place freed goes to the newest write, then
// the newest read.
type gate struct {
	used    atomic.Int64 // places taken
	waiting atomic.Int64 // len(reads) + len(writes), and those about to join them

	mu     sync.Mutex
	reads  []*waiter // the newest last
	writes []*waiter
}

type waiter struct{ ch chan bool } // true: a place is handed over; false: pushed out

var waiters = sync.Pool{New: func() any { return &waiter{ch: make(chan bool, 1)} }}

// maxQueue bounds each stack; a waiter past it pushes the oldest out.
const maxQueue = 1024

// acquire takes a place: at once without a limit (no lock: the node is not
// overloaded), or under the limit; else it waits for one up to wait.
func (g *gate) acquire(ctx context.Context, write bool, limit int64, wait time.Duration) bool {
	if limit <= 0 {
		g.used.Add(1)
		return true
	}
	g.mu.Lock()
	g.waiting.Add(1) // before looking: a release that misses this place sees a waiter
	if g.used.Load() < writeLimit(limit, write) {
		g.waiting.Add(-1)
		g.used.Add(1)
		g.mu.Unlock()
		return true
	}
	q := &g.reads
	if write {
		q = &g.writes
	}
	if len(*q) >= maxQueue {
		(*q)[0].ch <- false
		*q = append((*q)[:0], (*q)[1:]...)
		g.waiting.Add(-1)
	}
	w := waiters.Get().(*waiter)
	*q = append(*q, w)
	g.mu.Unlock()
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case ok := <-w.ch:
		waiters.Put(w)
		return ok
	case <-t.C:
	case <-ctx.Done():
	}
	g.mu.Lock()
	if i := slices.Index(*q, w); i >= 0 {
		*q = slices.Delete(*q, i, i+1)
		g.waiting.Add(-1)
		g.mu.Unlock()
		waiters.Put(w)
		return false
	}
	g.mu.Unlock()
	ok := <-w.ch // handed a place, or pushed out, just now
	waiters.Put(w)
	return ok // a place handed over is the caller's to release, its client gone or not
}

// writeLimit: writes may go half again past the limit.
func writeLimit(limit int64, write bool) int64 {
	if write {
		return limit + limit/2
	}
	return limit
}

// release frees a place, and hands what is free to the newest waiters.
func (g *gate) release(limit int64) {
	g.used.Add(-1)
	if g.waiting.Load() == 0 {
		return
	}
	g.mu.Lock()
	for {
		var q *[]*waiter
		used := g.used.Load()
		switch {
		case len(g.writes) > 0 && (limit <= 0 || used < writeLimit(limit, true)):
			q = &g.writes
		case len(g.reads) > 0 && (limit <= 0 || used < limit):
			q = &g.reads
		}
		if q == nil {
			break
		}
		w := (*q)[len(*q)-1]
		*q = (*q)[:len(*q)-1]
		g.waiting.Add(-1)
		g.used.Add(1)
		w.ch <- true
	}
	g.mu.Unlock()
}

// queued is how many requests wait for a place.
func (g *gate) queued() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return len(g.reads) + len(g.writes)
}

// ShedState is the shedder's state for operators.
type ShedState struct {
	Inflight int64   `json:"inflight"`
	Max      int64   `json:"max_inflight"`
	Adaptive string  `json:"adaptive"`       // bbr, failsafe or off
	Limit    int64   `json:"adaptive_limit"` // customers' requests at once while overloaded; 0: no measure yet (failsafe: its limit)
	Queued   int     `json:"queued"`         // waiting for a place
	CPU      float64 `json:"cpu"`
	Wait     string  `json:"sched_wait"` // goroutines' 90th percentile wait for a core
	Hot      bool    `json:"hot"`        // overloaded: the limit applies
	Drop     float64 `json:"drop"`       // the chance of refusing a customer's read as it arrives
}

// State returns the shedder's state now.
func (s *Shedder) State() ShedState {
	now := time.Now()
	st := ShedState{Inflight: s.inflight.Load(), Max: s.max, Adaptive: s.mode, Limit: carry(s.limit(now)), Queued: s.gate.queued(),
		CPU: s.usage(now), Wait: s.waited().String(), Hot: s.mode == ShedBBR && s.overloaded(now), Drop: math.Float64frombits(s.p.Load())}
	if s.fs != nil {
		st.Limit, st.Queued = int64(s.fs.Limit()), s.fs.Queued()
	}
	return st
}

// cpuMeter is this process's CPU use, 0..1 of GOMAXPROCS cores: read
// (getrusage) at most every 250 ms by the request that finds the reading
// old, smoothed. The process's own, not the machine's: shedding helps only
// when this node is what is busy (a load generator or a database on the
// same machine must not make it refuse work it has the cores for).
type cpuMeter struct {
	mu    sync.Mutex
	next  int64         // unix ns of the next reading
	at    int64         // unix ns of the last reading
	used  int64         // CPU ns used by the process at the last reading
	value atomic.Uint64 // float64 bits
}

func (m *cpuMeter) usage(now time.Time) float64 {
	t := now.UnixNano()
	if m.mu.TryLock() {
		if t >= m.next {
			m.next = t + int64(250*time.Millisecond)
			first := m.at == 0
			if cur := cpuSince(&m.at, &m.used, t); !first {
				old := math.Float64frombits(m.value.Load())
				m.value.Store(math.Float64bits(old*0.6 + min(cur, 1)*0.4))
			}
		}
		m.mu.Unlock()
	}
	return math.Float64frombits(m.value.Load())
}
