package limit_test

import (
	"math"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/surge-platform/surge/internal/platform/limit"
)

// t0 is a fixed clock reading that starts in a whole second.
var t0 = time.Unix(1_700_000_000, 0)

func TestBurstThenRate(t *testing.T) {
	t.Parallel()
	k := limit.NewKeyed(10, 5, 1000)
	type call struct {
		at      time.Duration // after t0
		ok      bool
		strikes int
	}
	steps := []call{
		{0, true, 0}, {0, true, 0}, {0, true, 0}, {0, true, 0}, {0, true, 0}, // the burst
		{0, false, 1}, {0, false, 2}, // empty: each refusal is a strike
		{99 * time.Millisecond, false, 3},
		{101 * time.Millisecond, true, 0}, // one token a 100ms
		{101 * time.Millisecond, false, 4},
		{50 * time.Millisecond, false, 5}, // a call passed by a later one adds nothing
		{10 * time.Second, true, 0},       // idle: full again, but no more than burst
		{10 * time.Second, true, 0}, {10 * time.Second, true, 0}, {10 * time.Second, true, 0}, {10 * time.Second, true, 0},
		{10 * time.Second, false, 6}, // the strikes of second 0 still count in second 10
		{11 * time.Second, true, 0}, {11 * time.Second, true, 0}, {11 * time.Second, true, 0}, {11 * time.Second, true, 0}, {11 * time.Second, true, 0},
		{11 * time.Second, false, 2}, // in second 11 they are gone, the one of second 10 is not
	}
	for i, c := range steps {
		ok, strikes := k.Allow(7, t0.Add(c.at))
		if ok != c.ok || strikes != c.strikes {
			t.Fatalf("call %d at t0+%v: (%v, %d), want (%v, %d)", i, c.at, ok, strikes, c.ok, c.strikes)
		}
	}
	if ok, _ := k.Allow(8, t0); !ok {
		t.Fatal("another key shares the empty bucket")
	}
}

func TestStrikes(t *testing.T) {
	t.Parallel()
	k := limit.NewKeyed(1, 1, 1000)
	if n := k.Strikes(1, t0); n != 0 {
		t.Fatalf("unknown key has %d strikes", n)
	}
	k.Allow(1, t0)
	k.Allow(1, t0)                           // strike 1, in second 0
	k.Allow(1, t0.Add(500*time.Millisecond)) // strike 2, in second 0
	k.Allow(1, t0.Add(5*time.Second))        // a token came back in the meantime
	k.Allow(1, t0.Add(5*time.Second))        // strike 3, in second 5
	cases := []struct {
		name string
		at   time.Duration
		want int
	}{
		{"now", 5 * time.Second, 3},
		{"just before the window ends for second 0", 10*time.Second + 999*time.Millisecond, 3},
		{"second 0 gone", 11 * time.Second, 1},
		{"second 5 gone", 16 * time.Second, 0},
		{"long after", time.Hour, 0},
		{"a reading from the past counts up to the newest strike", 2 * time.Second, 3},
	}
	for _, c := range cases {
		if n := k.Strikes(1, t0.Add(c.at)); n != c.want {
			t.Errorf("%s: Strikes at t0+%v = %d, want %d", c.name, c.at, n, c.want)
		}
	}
	if ok, _ := k.Allow(1, t0.Add(5*time.Second)); ok {
		t.Error("Strikes took no token but the bucket refilled")
	}
}

func TestUnlimited(t *testing.T) {
	cases := []struct {
		name string
		k    *limit.Keyed
	}{
		{"zero rate", limit.NewKeyed(0, 10, 100)},
		{"negative rate", limit.NewKeyed(-1, 10, 100)},
		{"infinite rate", limit.NewKeyed(math.Inf(1), 10, 100)},
		{"NaN rate", limit.NewKeyed(math.NaN(), 10, 100)},
		{"zero value", &limit.Keyed{}},
		{"nil", nil},
	}
	for _, c := range cases {
		// Not parallel: AllocsPerRun counts the whole process's allocations.
		t.Run(c.name, func(t *testing.T) {
			allocs := testing.AllocsPerRun(1000, func() {
				if ok, strikes := c.k.Allow(1, t0); !ok || strikes != 0 {
					t.Fatalf("Allow = %v, %d", ok, strikes)
				}
			})
			if allocs != 0 {
				t.Errorf("%v allocations per Allow", allocs)
			}
			if n := c.k.Strikes(1, t0); n != 0 {
				t.Errorf("Strikes = %d", n)
			}
		})
	}
}

func TestSmallLimits(t *testing.T) {
	t.Parallel()
	// burst 0 is taken as 1, maxKeys 0 as 2: a limiter that works.
	k := limit.NewKeyed(1, 0, 0)
	if ok, _ := k.Allow(1, t0); !ok {
		t.Fatal("first call refused")
	}
	if ok, _ := k.Allow(1, t0); ok {
		t.Fatal("second call allowed with burst 1")
	}
	if ok, _ := k.Allow(2, t0); !ok {
		t.Fatal("another key refused")
	}
	if ok, _ := k.Allow(1, t0); ok {
		t.Fatal("key 1 forgotten with 2 keys held")
	}
}

func TestAllowDoesNotAllocate(t *testing.T) {
	// Not parallel: AllocsPerRun counts the whole process's allocations.
	k := limit.NewKeyed(1, 3, 1<<16)
	for key := range uint64(1000) {
		k.Allow(key, t0)
	}
	now := t0
	cases := []struct {
		name string
		fn   func()
	}{
		{"allowed", func() { now = now.Add(time.Second); k.Allow(3, now) }},
		{"refused", func() { k.Allow(4, t0) }},
		{"strikes", func() { k.Strikes(5, t0) }},
	}
	for _, c := range cases {
		if allocs := testing.AllocsPerRun(1000, c.fn); allocs != 0 {
			t.Errorf("%s: %v allocations per call, want 0", c.name, allocs)
		}
	}
}

// TestHammeredKey races 16 goroutines on one key with a clock they all
// advance: the tokens granted must be exactly those the bucket earned —
// never more than burst + rate*elapsed, and none lost — and the strikes
// reported must count every refusal once.
func TestHammeredKey(t *testing.T) {
	t.Parallel()
	const (
		rate       = 1000.0 // a second
		burst      = 50
		goroutines = 16
		calls      = 2000 // each
		step       = 20 * time.Microsecond
	)
	k := limit.NewKeyed(rate, burst, 1<<10)
	var (
		clock            atomic.Int64 // ns after t0
		granted, refused atomic.Int64
		maxStrikes       atomic.Int64
		wg               sync.WaitGroup
		start            = make(chan struct{})
	)
	for range goroutines {
		wg.Go(func() {
			<-start
			for range calls {
				ok, strikes := k.Allow(42, t0.Add(time.Duration(clock.Add(int64(step)))))
				if ok {
					granted.Add(1)
					continue
				}
				refused.Add(1)
				for m := maxStrikes.Load(); int64(strikes) > m && !maxStrikes.CompareAndSwap(m, int64(strikes)); m = maxStrikes.Load() {
				}
			}
		})
	}
	close(start)
	wg.Wait()
	end := t0.Add(time.Duration(clock.Load()))
	elapsed := time.Duration(clock.Load()) - step // from the first reading to the last
	earned := burst + rate*elapsed.Seconds()
	if g := float64(granted.Load()); g > earned+1e-6 {
		t.Fatalf("%v tokens granted, at most %.2f earned in %v", g, earned, elapsed)
	}
	// Take what is left at the last reading: the total is what was earned,
	// less the fraction of a token left and the refill of the few calls
	// made before the bucket was created.
	left := 0
	for {
		ok, _ := k.Allow(42, end)
		if !ok {
			break
		}
		left++
	}
	total := float64(granted.Load()) + float64(left)
	if total > earned+1e-6 || total < earned-2 {
		t.Fatalf("%v tokens in all (%d during the race, %d after), want %.2f", total, granted.Load(), left, earned)
	}
	if refused.Load() == 0 {
		t.Fatal("no call refused: the race did not empty the bucket")
	}
	if got, want := maxStrikes.Load(), refused.Load(); got != want {
		t.Errorf("highest strikes reported %d, want %d refusals", got, want)
	}
	if got, want := k.Strikes(42, end), refused.Load()+1; int64(got) != want {
		t.Errorf("Strikes after = %d, want %d", got, want)
	}
}

// TestIdleForgottenBusyKept: a key in use survives any number of other
// keys passing; an idle one is forgotten and comes back with a full bucket.
func TestIdleForgottenBusyKept(t *testing.T) {
	t.Parallel()
	k := limit.NewKeyed(1e-9, 1, 1<<10) // no refill within the test
	const busy, idle = 1 << 40, 1<<40 + 1
	for _, key := range []uint64{busy, idle} {
		k.Allow(key, t0)
		if ok, _ := k.Allow(key, t0); ok {
			t.Fatalf("key %d not emptied", key)
		}
	}
	for key := range uint64(100_000) {
		k.Allow(key, t0)
		if key%64 == 0 {
			k.Strikes(busy, t0) // a lookup keeps a key as well as Allow does
		}
	}
	if ok, strikes := k.Allow(busy, t0); ok || strikes != 2 {
		t.Errorf("busy key: (%v, %d), want (false, 2): its state was lost", ok, strikes)
	}
	if ok, _ := k.Allow(idle, t0); !ok {
		t.Error("idle key still held after 100,000 others")
	}
}

func TestIPKey(t *testing.T) {
	t.Parallel()
	same := []struct{ a, b string }{
		{"192.0.2.1", "::ffff:192.0.2.1"},
		{"2001:db8::1", "2001:0db8:0:0::1"},
		{"fe80::1%eth0", "fe80::1"},
	}
	for _, c := range same {
		a, b := netip.MustParseAddr(c.a), netip.MustParseAddr(c.b)
		if limit.IPKey(a) != limit.IPKey(b) {
			t.Errorf("IPKey(%s) != IPKey(%s)", a, b)
		}
	}
	seen := map[uint64]netip.Addr{}
	add := func(a netip.Addr) {
		if prev, dup := seen[limit.IPKey(a)]; dup {
			t.Fatalf("IPKey(%s) == IPKey(%s)", a, prev)
		}
		seen[limit.IPKey(a)] = a
	}
	for i := range 1 << 16 {
		add(netip.AddrFrom4([4]byte{10, 0, byte(i >> 8), byte(i)}))
		add(netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 14: byte(i >> 8), 15: byte(i)}))
	}
	limit.IPKey(netip.Addr{}) // the zero Addr does not panic
}

// BenchmarkAllow takes tokens for 1024 keys already held, from one
// goroutine and from all.
func BenchmarkAllow(b *testing.B) {
	k := limit.NewKeyed(1e9, 1<<30, 1<<16)
	for key := range uint64(1024) {
		k.Allow(key, t0)
	}
	b.Run("serial", func(b *testing.B) {
		b.ReportAllocs()
		key := uint64(0)
		for b.Loop() {
			k.Allow(key&1023, t0)
			key++
		}
	})
	b.Run("parallel", func(b *testing.B) {
		b.ReportAllocs()
		var goroutine atomic.Uint64
		b.RunParallel(func(pb *testing.PB) {
			key := goroutine.Add(1) * 512 // apart from the others
			for pb.Next() {
				k.Allow(key&1023, t0)
				key += 7
			}
		})
	})
}
