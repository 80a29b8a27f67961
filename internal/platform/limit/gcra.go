package limit

import (
	"math"
	"sync/atomic"
	"time"
)

// gcra is an in-process generic cell rate limit, lock-free: one
// compare-and-swap of the theoretical arrival time (TAT) per permit
// granted, and none for a refusal, which only reads. It allocates nothing.
type gcra struct {
	per  int64        // emission interval, ns: the time one permit takes to come back
	full int64        // burst x per: how far ahead of now the TAT may run
	tat  atomic.Int64 // unix ns; 0 (long past) is a full burst
}

// newGCRA returns a limit of perSecond (> 0) permits a second and at most
// burst (>= 1) at once. It starts with its whole burst free, or, with
// empty, with nothing free at now (unix ns): the first permit conforms one
// emission interval later.
func newGCRA(perSecond float64, burst int64, empty bool, now int64) *gcra {
	per := max(int64(math.Round(float64(time.Second)/perSecond)), 1)
	g := &gcra{per: per, full: max(burst, 1) * per}
	if empty {
		g.tat.Store(now + g.full)
	}
	return g
}

// allow takes a permit at now (unix ns) if one conforms; otherwise it
// returns false and the time until one will. A now earlier than an
// earlier call's is fine: it conforms less, never more.
func (g *gcra) allow(now int64) (bool, time.Duration) {
	for {
		tat := g.tat.Load()
		next := max(tat, now) + g.per
		if next-now > g.full {
			return false, time.Duration(next - g.full - now)
		}
		if g.tat.CompareAndSwap(tat, next) {
			return true, 0
		}
	}
}
