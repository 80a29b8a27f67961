// Package heapfloor gives the Go garbage collector a minimum heap goal.
//
// With the default GOGC=100 the next collection starts when the heap has
// doubled, but at 4 MiB at the least. A surge node's live heap is small (a
// few MiB: caches, connections) while a busy node allocates a few KiB per
// request, so at tens of thousands of requests a second it collected 30+
// times a second, and each collection stops and scans every goroutine
// (the embedded NATS server has many): measured, a third of the CPU of a
// menu read. A floor of 64 MiB makes that one collection every second or
// two, at the cost of up to that much more memory. A node whose live heap
// is large (many sockets) keeps GOGC's own goal: the floor only raises a
// goal below it.
package heapfloor

import (
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"sync"
)

var once sync.Once

// Set keeps the heap goal at least floor bytes from now on, by setting the
// GC percent after every collection to max(base, floor/live*100), where base
// is the percent in force at the call (GOGC). It does nothing when the
// collector is off (GOGC=off) or floor <= 0, and once per process.
func Set(floor int64) {
	if floor <= 0 {
		return
	}
	once.Do(func() {
		base := debug.SetGCPercent(100)
		debug.SetGCPercent(base)
		if base < 0 {
			return
		}
		t := &tuner{floor: floor, base: base, sample: []metrics.Sample{{Name: "/gc/heap/live:bytes"}}}
		t.tune()
		t.arm()
	})
}

type tuner struct {
	floor  int64
	base   int
	sample []metrics.Sample
}

// arm sets a finalizer on a fresh object: it runs after the next
// collection, retunes, and arms again.
func (t *tuner) arm() {
	runtime.SetFinalizer(&sentinel{t}, func(s *sentinel) {
		s.t.tune()
		s.t.arm()
	})
}

type sentinel struct{ t *tuner }

func (t *tuner) tune() {
	metrics.Read(t.sample)
	live := int64(t.sample[0].Value.Uint64())
	pct := t.base
	if live > 0 {
		pct = max(pct, int(t.floor*100/live))
	} else {
		pct = max(pct, int(t.floor*100/(4<<20)))
	}
	debug.SetGCPercent(pct)
}
