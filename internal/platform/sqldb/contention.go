package sqldb

import (
	"time"

	"github.com/surge-platform/surge/internal/platform/schedwait"
)

// CPU contention, as the group commit sees it: whether this process's
// goroutines queue for a CPU. When the slowest tenth of their waits for a
// core over the last sample period exceed contendedWait, the machine (not
// the disk or the database) is the bottleneck, and a commit saved is worth
// more than a writer's wait for company.
//
// Measured on the pickup bench (2 cores, load generator beside surge): the
// 90th percentile wait is 100–200 µs at 300 orders/s, 200–330 µs at 600/s
// and 450–1000 µs at 1,000/s, where the machine is saturated.
const (
	contendedWait = 400 * time.Microsecond
	samplePeriod  = 100 * time.Millisecond
)

var waits = schedwait.New(0.9, samplePeriod)

// contended reports whether goroutines queued for a CPU over the last
// sample period.
func contended() bool { return waits.Wait() > contendedWait }
