// Package eventually is how tests wait for what happens asynchronously
// (an event consumed, a node taking over, a cache expiring): they poll a
// condition until it holds, and fail once a deadline has passed. A fixed
// sleep is either too short on a loaded machine or wastes time on a quiet
// one.
package eventually

import (
	"testing"
	"time"
)

// Every is how often a condition is checked.
const Every = 10 * time.Millisecond

// True polls cond until it returns true; when d has passed first it fails
// tb (Fatal) saying what it waited for.
func True(tb testing.TB, d time.Duration, what string, cond func() bool) {
	tb.Helper()
	Saw(tb, d, what, func() (bool, string) { return cond(), "" })
}

// Saw is True for a condition that also says what it saw; the failure
// message gives the last of it.
func Saw(tb testing.TB, d time.Duration, what string, cond func() (ok bool, saw string)) {
	tb.Helper()
	deadline := time.Now().Add(d)
	for {
		ok, saw := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			if saw != "" {
				tb.Fatalf("not after %v: %s; last saw %s", d, what, saw)
			}
			tb.Fatalf("not after %v: %s", d, what)
		}
		time.Sleep(Every)
	}
}
