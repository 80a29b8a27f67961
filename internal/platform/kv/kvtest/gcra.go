package kvtest

import (
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/surge-platform/surge/internal/platform/kv"
)

// mustGCRA fails the test unless GCRA grants want, and returns the wait.
func mustGCRA(t *testing.T, s kv.Store, key string, perSecond, burst, n, want int64) time.Duration {
	t.Helper()
	got, wait, err := s.GCRA(ctx(t), key, perSecond, burst, n)
	if err != nil {
		t.Fatalf("GCRA(%q, %d/s, burst %d, n %d): %v", key, perSecond, burst, n, err)
	}
	if got != want {
		t.Fatalf("GCRA(%q, %d/s, burst %d, n %d) granted %d, want %d", key, perSecond, burst, n, got, want)
	}
	return wait
}

// testGCRABurst: a new limit grants its whole burst, then nothing, and
// says how long until the next permit; that permit comes then, not before.
func testGCRABurst(t *testing.T, s kv.Store) {
	const rate, burst = 4, 5 // a permit every 250ms
	const per = time.Second / rate
	if wait := mustGCRA(t, s, "gcra-burst", rate, burst, 3, 3); wait != 0 {
		t.Fatalf("wait with 2 of 5 free = %v, want 0", wait)
	}
	drained := time.Now()                                   // before the store's clock reads it
	wait := mustGCRA(t, s, "gcra-burst", rate, burst, 5, 2) // only 2 were left
	if wait <= 0 || wait > per {
		t.Fatalf("wait after the whole burst = %v, want in (0, %v]", wait, per)
	}
	// The test's own delays only make the store's wait shorter.
	wait2 := mustGCRA(t, s, "gcra-burst", rate, burst, 1, 0)
	if wait2 <= 0 || wait2 > wait {
		t.Fatalf("wait on an empty limit = %v, want in (0, %v]", wait2, wait)
	}
	for {
		got, w, err := s.GCRA(ctx(t), "gcra-burst", rate, burst, 2)
		if err != nil {
			t.Fatal(err)
		}
		if got > 0 {
			if got != 1 {
				t.Fatalf("first grant after the burst = %d permits, want 1", got)
			}
			// 2ms of slack for the store's clock against the test's.
			if e := time.Since(drained); e < wait-2*time.Millisecond {
				t.Fatalf("next permit after %v, want no sooner than the wait %v", e, wait)
			}
			break
		}
		if w <= 0 || w > per {
			t.Fatalf("nothing granted but wait = %v, want in (0, %v]", w, per)
		}
		if time.Since(drained) > 5*time.Second {
			t.Fatal("no permit within 5s of a 4/s limit")
		}
		time.Sleep(min(w, 20*time.Millisecond))
	}
}

// testGCRARace: goroutines taking batches at once never get more than the
// rate allows (burst + rate x elapsed), and get most of it. The burst
// holds 100ms of permits, so that takers that the scheduler of a busy
// machine (or a busy shared Redis) keeps waiting lose few.
func testGCRARace(t *testing.T, s kv.Store) {
	const rate, burst, takers = 1000, 100, 4
	var granted atomic.Int64
	var failed atomic.Pointer[error]
	start := time.Now()
	race(takers, func(i int) {
		for time.Since(start) < 400*time.Millisecond {
			got, _, err := s.GCRA(ctx(t), "gcra-race", rate, burst, int64(3+i))
			if err != nil {
				failed.Store(&err)
				return
			}
			granted.Add(got)
			time.Sleep(time.Millisecond)
		}
	})
	elapsed := time.Since(start)
	if err := failed.Load(); err != nil {
		t.Fatal(*err)
	}
	// The store's clock may start a little before ours: 5ms of slack.
	most := burst + int64(rate*(elapsed+5*time.Millisecond).Seconds())
	least := int64(rate * 0.5 * elapsed.Seconds())
	if g := granted.Load(); g > most || g < least {
		t.Fatalf("granted %d permits in %v at %d/s with burst %d, want %d to %d", g, elapsed, rate, burst, least, most)
	}
}

// testGCRAExpiry: the key goes once the whole burst is free again (after
// 1.5s; long enough for a busy machine to read it first).
func testGCRAExpiry(t *testing.T, s kv.Store) {
	mustGCRA(t, s, "gcra-expiry", 2, 3, 3, 3)
	if _, err := s.Get(ctx(t), "gcra-expiry"); err != nil {
		t.Fatalf("Get after a grant: %v, want the limit's state", err)
	}
	waitMissing(t, s, "gcra-expiry", 5*time.Second)
	mustGCRA(t, s, "gcra-expiry", 2, 3, 5, 3)
}

func testGCRAErrors(t *testing.T, s kv.Store) {
	args := []struct {
		name                string
		perSecond, burst, n int64
	}{
		{"zero rate", 0, 1, 1},
		{"rate above max", kv.MaxGCRARate + 1, 1, 1},
		{"zero burst", 1, 0, 1},
		{"zero n", 1, 1, 0},
		{"negative n", 1, 1, -1},
	}
	for _, a := range args {
		_, _, err := s.GCRA(ctx(t), "gcra-args", a.perSecond, a.burst, a.n)
		if err == nil || errors.Is(err, kv.ErrUnavailable) {
			t.Errorf("GCRA with %s: %v, want a plain error", a.name, err)
		}
	}
	mustSet(t, s, "gcra-text", "abc", 0)
	if _, _, err := s.GCRA(ctx(t), "gcra-text", 1, 1, 1); !errors.Is(err, kv.ErrNotInteger) {
		t.Errorf("GCRA on a text value: %v, want ErrNotInteger", err)
	}
	if err := s.ZAdd(ctx(t), "gcra-zset", 1, "m"); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.GCRA(ctx(t), "gcra-zset", 1, 1, 1); !errors.Is(err, kv.ErrWrongType) {
		t.Errorf("GCRA on a sorted set: %v, want ErrWrongType", err)
	}
	if _, err := s.Heartbeat(ctx(t), "gcra-text", "m", time.Second); !errors.Is(err, kv.ErrWrongType) {
		t.Errorf("Heartbeat on a value: %v, want ErrWrongType", err)
	}
	if _, err := s.Heartbeat(ctx(t), "beats-args", "m", 0); err == nil || errors.Is(err, kv.ErrUnavailable) {
		t.Errorf("Heartbeat with window 0: %v, want a plain error", err)
	}
}

// testHeartbeat: members count while they beat within the window and are
// forgotten after it.
func testHeartbeat(t *testing.T, s kv.Store) {
	const window = 300 * time.Millisecond
	beat := func(member string, want int64) {
		t.Helper()
		if got, err := s.Heartbeat(ctx(t), "beats", member, window); err != nil || got != want {
			t.Fatalf("Heartbeat(%q) = %d, %v; want %d", member, got, err, want)
		}
	}
	beat("a", 1)
	beat("b", 2)
	aBeat := time.Now() // before the store's clock reads it
	beat("a", 2)
	if n, err := s.ZCard(ctx(t), "beats"); err != nil || n != 2 {
		t.Fatalf("ZCard = %d, %v; want 2", n, err)
	}
	for {
		live, err := s.Heartbeat(ctx(t), "beats", "b", window)
		if err != nil {
			t.Fatal(err)
		}
		if live == 1 {
			// 2ms of slack for the store's clock (in whole milliseconds).
			if e := time.Since(aBeat); e < window-2*time.Millisecond {
				t.Fatalf("a forgotten %v after its beat, want no sooner than %v", e, window)
			}
			return
		}
		if live != 2 {
			t.Fatalf("Heartbeat(b) = %d, want 2 then 1", live)
		}
		if time.Since(aBeat) > 5*time.Second {
			t.Fatalf("a still counted 5s after its last beat, window %v", window)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
