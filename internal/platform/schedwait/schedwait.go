// Package schedwait tells whether this process's goroutines queue for a
// CPU: the runtime measures how long each goroutine waited between
// becoming runnable and running (/sched/latencies:seconds), and a Meter
// keeps a quantile of those waits over its last sample period. Waits that
// grow mean the process has more work than cores: requests queue before
// any handler sees them (net/http reads and parses them on goroutines that
// wait their turn), so in-flight counts cannot show it and this can.
package schedwait

import (
	"math"
	"runtime/metrics"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// Meter is the q-quantile of the scheduling waits over its last period.
// The zero value is not usable; call New.
type Meter struct {
	q      float64
	period time.Duration
	last   atomic.Int64 // ns: the quantile of the last period

	mu     sync.Mutex // held to sample
	at     time.Time  // last sample
	counts []uint64   // the histogram then
	sample []metrics.Sample
}

// New returns a meter of the q-quantile (0 < q < 1) over periods of p.
func New(q float64, p time.Duration) *Meter {
	return &Meter{q: q, period: p, sample: []metrics.Sample{{Name: "/sched/latencies:seconds"}}}
}

// Wait is the q-quantile of the waits over the last period (0 before
// two samples, or where the runtime does not measure them). It samples at
// most once a period, on the caller's goroutine (a few microseconds);
// a caller that finds a sample being taken gets the last answer.
func (m *Meter) Wait() time.Duration {
	if m.mu.TryLock() {
		if now := time.Now(); now.Sub(m.at) >= m.period {
			m.at = now
			m.sampleLocked()
		}
		m.mu.Unlock()
	}
	return time.Duration(m.last.Load())
}

func (m *Meter) sampleLocked() {
	metrics.Read(m.sample)
	if m.sample[0].Value.Kind() != metrics.KindFloat64Histogram {
		return
	}
	h := m.sample[0].Value.Float64Histogram()
	if m.counts != nil && len(m.counts) == len(h.Counts) {
		delta := make([]uint64, len(h.Counts))
		for i := range h.Counts {
			delta[i] = h.Counts[i] - m.counts[i]
		}
		m.last.Store(int64(Quantile(delta, h.Buckets, m.q) * float64(time.Second)))
	}
	m.counts = slices.Clone(h.Counts)
}

// Quantile returns the upper bound of the bucket holding the q-quantile
// of a histogram (counts[i] between buckets[i] and buckets[i+1]); 0 when
// it is empty.
func Quantile(counts []uint64, buckets []float64, q float64) float64 {
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
			return upper(buckets, i)
		}
	}
	return upper(buckets, len(counts)-1)
}

// upper is bucket i's upper bound, or its lower one for the last,
// unbounded bucket.
func upper(buckets []float64, i int) float64 {
	if b := buckets[i+1]; !math.IsInf(b, 1) {
		return b
	}
	return buckets[i]
}
