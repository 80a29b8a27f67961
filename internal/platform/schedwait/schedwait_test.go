package schedwait

import (
	"math"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestQuantile(t *testing.T) {
	buckets := []float64{0, 1, 2, 3, 4}
	for _, tc := range []struct {
		name   string
		counts []uint64
		q      float64
		want   float64
	}{
		{"empty", []uint64{0, 0, 0, 0}, 0.9, 0},
		{"all in one bucket", []uint64{0, 5, 0, 0}, 0.9, 2},
		{"the tenth slowest decides", []uint64{9, 0, 0, 1}, 0.9, 1},
		{"past the tenth", []uint64{8, 0, 0, 2}, 0.9, 4},
		{"median", []uint64{1, 1, 1, 1}, 0.5, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := Quantile(tc.counts, buckets, tc.q); got != tc.want {
				t.Fatalf("Quantile(%v, %v) = %v; want %v", tc.counts, tc.q, got, tc.want)
			}
		})
	}
	// The runtime's last bucket has no upper bound: its lower one is given.
	if got := Quantile([]uint64{0, 1}, []float64{0, 1, math.Inf(1)}, 0.9); got != 1 {
		t.Fatalf("unbounded last bucket: %v, want 1", got)
	}
}

// More runnable goroutines than CPUs make goroutines wait for a core
// within a few sample periods: well over a millisecond at the 90th
// percentile, where a process at rest waits microseconds.
func TestWaitUnderLoad(t *testing.T) {
	m := New(0.9, 50*time.Millisecond)
	m.Wait() // first sample: the baseline
	var stop atomic.Bool
	var wg sync.WaitGroup
	for range 4 * runtime.GOMAXPROCS(0) {
		wg.Go(func() {
			for !stop.Load() {
			}
		})
	}
	defer func() { stop.Store(true); wg.Wait() }()
	for deadline := time.Now().Add(5 * time.Second); m.Wait() < time.Millisecond; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("90th percentile wait %v after 5 s with 4 spinning goroutines per CPU", m.Wait())
		}
	}
}
