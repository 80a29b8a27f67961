package eventually

import (
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// fake records a failure instead of ending the test.
type fake struct {
	testing.TB
	failed string
}

func (f *fake) Helper() {}
func (f *fake) Fatalf(format string, args ...any) {
	f.failed = format
	panic(f)
}

func run(f func()) {
	defer func() {
		if r := recover(); r != nil {
			if _, ok := r.(*fake); !ok {
				panic(r)
			}
		}
	}()
	f()
}

func TestTrue(t *testing.T) {
	t.Parallel()
	var n atomic.Int32
	f := &fake{TB: t}
	run(func() { True(f, time.Second, "three polls", func() bool { return n.Add(1) == 3 }) })
	if f.failed != "" || n.Load() != 3 {
		t.Fatalf("a condition that holds on the 3rd poll: failed %q after %d polls", f.failed, n.Load())
	}
	t0 := time.Now()
	run(func() { Saw(f, 50*time.Millisecond, "never", func() (bool, string) { return false, "nothing" }) })
	if !strings.Contains(f.failed, "last saw") || time.Since(t0) < 50*time.Millisecond {
		t.Fatalf("a condition that never holds: failed %q after %v", f.failed, time.Since(t0))
	}
}
