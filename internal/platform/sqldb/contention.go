package sqldb

import (
	"runtime/metrics"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// CPU contention, as the group commit sees it: whether this process's
// goroutines queue for a CPU. The runtime measures how long each goroutine
// waited between becoming runnable and running; when the slowest tenth of
// those waits over the last sample period exceed contendedWait, the
// machine (not the disk or the database) is the bottleneck, and a commit
// saved is worth more than a writer's wait for company.
//
// Measured on the pickup bench (2 cores, load generator beside surge): the
// 90th percentile wait is 100–200 µs at 300 orders/s, 200–330 µs at 600/s
// and 450–1000 µs at 1,000/s, where the machine is saturated.
const (
	contendedWait = 400 * time.Microsecond
	samplePeriod  = 100 * time.Millisecond
)

var cpu contention

type contention struct {
	busy   atomic.Bool
	mu     sync.Mutex // held to sample
	at     time.Time  // last sample
	counts []uint64   // the histogram then
	sample []metrics.Sample
}

// contended reports whether goroutines queued for a CPU over the last
// sample period. It samples at most once per period, on the caller's
// goroutine (a few microseconds); callers that find a sample being taken
// use the last answer.
func (c *contention) contended() bool {
	if c.mu.TryLock() {
		if now := time.Now(); now.Sub(c.at) >= samplePeriod {
			c.at = now
			c.sampleLocked()
		}
		c.mu.Unlock()
	}
	return c.busy.Load()
}

func (c *contention) sampleLocked() {
	if c.sample == nil {
		c.sample = []metrics.Sample{{Name: "/sched/latencies:seconds"}}
	}
	metrics.Read(c.sample)
	if c.sample[0].Value.Kind() != metrics.KindFloat64Histogram {
		return // not measured by this runtime: never contended
	}
	h := c.sample[0].Value.Float64Histogram()
	if c.counts != nil && len(c.counts) == len(h.Counts) {
		delta := make([]uint64, len(h.Counts))
		for i := range h.Counts {
			delta[i] = h.Counts[i] - c.counts[i]
		}
		c.busy.Store(quantile(delta, h.Buckets, 0.9) > contendedWait.Seconds())
	}
	c.counts = slices.Clone(h.Counts)
}

// quantile returns the upper bound of the bucket holding the q-quantile of
// a histogram (counts[i] between buckets[i] and buckets[i+1]); 0 when it
// is empty.
func quantile(counts []uint64, buckets []float64, q float64) float64 {
	var n uint64
	for _, c := range counts {
		n += c
	}
	if n == 0 {
		return 0
	}
	var acc uint64
	for i, c := range counts {
		acc += c
		if float64(acc) >= q*float64(n) {
			return buckets[i+1]
		}
	}
	return buckets[len(buckets)-1]
}
