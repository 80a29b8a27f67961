package edge

import (
	"math"
	"net/http"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/failsafe-go/failsafe-go/adaptivelimiter"

	"github.com/surge-platform/surge/internal/platform/web"
)

// Shed is the step that refuses work the node cannot do now (503
// overloaded, at once, instead of slowing every request down):
//
//   - Hard caps on requests in flight: MaxInflight in all; the customer
//     classes together at most 70% of it and each at most 50%, operators
//     at most 10%, so a flood of one class leaves room for the others, and
//     at least 20% is always left for POS terminals and payment callbacks.
//   - Adaptive shedding, as go-zero's shedder and Kratos's BBR do: while
//     the process's CPU is above 90% of its cores (or for a second after a refusal), a
//     request is refused when the requests in flight (now and on average)
//     exceed what the node has shown it can carry: the best throughput of
//     the last 5 s times the lowest latency (Little's law). Customer reads
//     are refused past 2 times that (the headroom keeps a closed loop of
//     clients at the node's own pace from being refused), customer writes
//     past 3 times, operators past 4 times; POS terminals, payment
//     callbacks and operations never.
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
		start := e.now()
		if !sh.admit(in.Class, in.Write, &c.inflight, start) {
			c.shed.Add(1)
			refuse(w, r, ErrBusy, time.Second)
			return
		}
		defer func() { sh.done(in.Class, &c.inflight, e.now().Sub(start)) }()
		if sh.fs != nil && priority(in.Class, in.Write) > 0 {
			permit, ok := sh.fs.TryAcquirePermit()
			if !ok {
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
	coolOff   = time.Second
)

// Shedder keeps the in-flight counts and the adaptive shedder's window.
type Shedder struct {
	max      int64 // 0: no hard cap
	adaptive bool

	inflight atomic.Int64 // all classes but operations
	customer atomic.Int64 // the customer classes

	mu        sync.Mutex
	win       [buckets]bucket // guarded by mu
	avgFlying float64         // guarded by mu: an average of inflight at completions
	dropped   atomic.Int64    // unix ns of the last adaptive refusal
	cpu       cpuMeter
	usage     func(time.Time) float64              // the CPU's use now, 0..1 (tests set it)
	fs        adaptivelimiter.AdaptiveLimiter[any] // ShedFailsafe's; nil otherwise
}

type bucket struct {
	start int64 // unix ns of the bucket's start
	pass  int64 // requests completed in it
	rtSum int64 // their latency, ns
}

// Adaptive shedders (Config.Shed).
const (
	ShedBBR      = "bbr"      // this file's, as go-zero's and Kratos's
	ShedFailsafe = "failsafe" // failsafe-go's adaptive limiter (kept to compare)
	ShedOff      = "off"
)

// NewShedder returns a shedder with a hard cap of max requests in flight
// (0: none) and the adaptive shedder mode ("" or ShedOff: none).
func NewShedder(maxInflight int, mode string) *Shedder {
	s := &Shedder{max: int64(maxInflight), adaptive: mode == ShedBBR}
	s.usage = s.cpu.usage
	if mode == ShedFailsafe {
		s.fs = adaptivelimiter.NewBuilder[any]().WithLimits(1, uint(max(s.max, 200)), 20).Build()
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

// priority is how far past the adaptive limit a request may still go, in
// quarters: customer reads 8 (2x), writes 12 (3x), operators 16 (4x); 0 =
// never shed adaptively.
func priority(c web.Class, write bool) int64 {
	switch {
	case c.Customer() && write:
		return 12
	case c.Customer():
		return 8
	case c == web.ClassAdmin:
		return 16
	}
	return 0
}

// admit takes a place in flight for a request of class c (its class's own
// count in mine), or reports that it must be refused.
func (s *Shedder) admit(c web.Class, write bool, mine *atomic.Int64, now time.Time) bool {
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
	if p := priority(c, write); p > 0 && s.adaptive && s.overloaded(now) {
		// A floor of 4 requests a core: a window learnt in a quiet spell
		// (a few requests a bucket) must not strangle the first burst.
		if limit := s.limit(now); limit > 0 {
			limit = max(limit, int64(4*runtime.GOMAXPROCS(0)))
			if n*4 > limit*p && s.avg()*4 > float64(limit*p) {
				s.undo(c, mine)
				s.dropped.Store(now.UnixNano())
				return false
			}
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

// done records a request's completion after rt.
func (s *Shedder) done(c web.Class, mine *atomic.Int64, rt time.Duration) {
	flying := s.inflight.Add(-1) + 1
	mine.Add(-1)
	if c.Customer() {
		s.customer.Add(-1)
	}
	if !s.adaptive {
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
	s.avgFlying = s.avgFlying*0.9 + float64(flying)*0.1
	s.mu.Unlock()
}

func (s *Shedder) avg() float64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.avgFlying
}

// limit is the in-flight count the node has shown it can carry: the most
// requests completed in a bucket of the window (the one filling excluded),
// per second, times the lowest average latency of a bucket, at least 1. 0
// while the window is empty.
func (s *Shedder) limit(now time.Time) int64 {
	t := now.UnixNano()
	cur := t - t%int64(bucketDur)
	oldest := cur - buckets*int64(bucketDur)
	var maxPass int64
	minRT := int64(-1)
	s.mu.Lock()
	for i := range s.win {
		b := &s.win[i]
		if b.start == cur || b.start <= oldest || b.pass == 0 {
			continue
		}
		maxPass = max(maxPass, b.pass)
		if rt := b.rtSum / b.pass; minRT < 0 || rt < minRT {
			minRT = rt
		}
	}
	s.mu.Unlock()
	if maxPass == 0 {
		return 0
	}
	// maxPass per bucket -> per second, times minRT in seconds; rounded up.
	return max(1, (maxPass*minRT+int64(bucketDur)-1)/int64(bucketDur))
}

// overloaded: the CPU is hot, or a request was refused within coolOff.
func (s *Shedder) overloaded(now time.Time) bool {
	if now.UnixNano()-s.dropped.Load() < int64(coolOff) {
		return true
	}
	return s.usage(now) > cpuHot
}

// ShedState is the shedder's state for operators.
type ShedState struct {
	Inflight int64   `json:"inflight"`
	Max      int64   `json:"max_inflight"`
	Adaptive bool    `json:"adaptive"`
	Limit    int64   `json:"adaptive_limit"` // 0: no measure yet (failsafe: its limit)
	CPU      float64 `json:"cpu"`
	Hot      bool    `json:"hot"`
}

// State returns the shedder's state now.
func (s *Shedder) State() ShedState {
	now := time.Now()
	st := ShedState{Inflight: s.inflight.Load(), Max: s.max, Adaptive: s.adaptive || s.fs != nil, Limit: s.limit(now),
		CPU: s.usage(now), Hot: s.adaptive && s.overloaded(now)}
	if s.fs != nil {
		st.Limit = int64(s.fs.Limit())
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
			var ru syscall.Rusage
			if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) == nil {
				used := ru.Utime.Nano() + ru.Stime.Nano()
				if m.at != 0 && t > m.at {
					cur := float64(used-m.used) / float64(t-m.at) / float64(runtime.GOMAXPROCS(0))
					old := math.Float64frombits(m.value.Load())
					m.value.Store(math.Float64bits(old*0.6 + min(cur, 1)*0.4))
				}
				m.at, m.used = t, used
			}
		}
		m.mu.Unlock()
	}
	return math.Float64frombits(m.value.Load())
}
