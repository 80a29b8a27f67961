package sqldb

import (
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
			if got := quantile(tc.counts, buckets, tc.q); got != tc.want {
				t.Fatalf("quantile(%v, %v) = %v; want %v", tc.counts, tc.q, got, tc.want)
			}
		})
	}
}

// More runnable goroutines than CPUs make the process contended within a
// few sample periods.
func TestContendedUnderLoad(t *testing.T) {
	var c contention
	c.contended() // first sample: the baseline
	var stop atomic.Bool
	var wg sync.WaitGroup
	for range 4 * runtime.GOMAXPROCS(0) {
		wg.Go(func() {
			for !stop.Load() {
			}
		})
	}
	defer func() { stop.Store(true); wg.Wait() }()
	for deadline := time.Now().Add(5 * time.Second); !c.contended(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("not contended after 5 s with 4 spinning goroutines per CPU")
		}
	}
}
