package heapfloor

import (
	"runtime"
	"runtime/debug"
	"testing"
)

// After a collection, a small live heap gets a GC percent that puts the
// next goal at the floor or above; GOGC's own percent is never lowered.
func TestFloorRaisesASmallGoal(t *testing.T) {
	old := debug.SetGCPercent(100)
	defer debug.SetGCPercent(old)
	const floor = 256 << 20
	Set(floor)
	runtime.GC()
	runtime.GC() // the finalizer of the first retunes; wait for one more round
	for range 100 {
		runtime.Gosched()
	}
	pct := debug.SetGCPercent(100)
	debug.SetGCPercent(pct)
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	if pct <= 100 || ms.NextGC < floor/2 {
		t.Fatalf("GC percent %d, next goal %d MiB with a %d MiB floor", pct, ms.NextGC>>20, floor>>20)
	}
}
