// Package kvtest is the conformance suite every kv.Store adapter must pass
// before it counts as done.
package kvtest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/surge-platform/surge/internal/platform/kv"
)

// Run runs the suite. open is called once per subtest and must return a
// usable store with a namespace no other test writes to; it registers the
// store's Close (and any cleanup of the namespace) with t.Cleanup. Subtests
// run in parallel and use distinct keys all the same.
func Run(t *testing.T, open func(t *testing.T) kv.Store) {
	tests := []struct {
		name string
		fn   func(t *testing.T, s kv.Store)
	}{
		{"GetMissing", testGetMissing},
		{"SetGet", testSetGet},
		{"ValuesAreCopied", testValuesAreCopied},
		{"Overwrite", testOverwrite},
		{"NegativeTTL", testNegativeTTL},
		{"TTLExpiry", testTTLExpiry},
		{"SetNX", testSetNX},
		{"SetNXRace", testSetNXRace},
		{"Del", testDel},
		{"IncrBy", testIncrBy},
		{"IncrByNotInteger", testIncrByNotInteger},
		{"IncrByConcurrent", testIncrByConcurrent},
		{"Take", testTake},
		{"TakeInvalid", testTakeInvalid},
		{"TakeKeepsTTL", testTakeKeepsTTL},
		{"TakeRace", testTakeRace},
		{"TakeMixedRace", testTakeMixedRace},
		{"AdmitBasic", testAdmitBasic},
		{"AdmitTTL", testAdmitTTL},
		{"AdmitErrors", testAdmitErrors},
		{"AdmitRace", testAdmitRace},
		{"Unadmit", testUnadmit},
		{"AdmitUnadmitRace", testAdmitUnadmitRace},
		{"ZOrder", testZOrder},
		{"ZAfterPaging", testZAfterPaging},
		{"ZAddReplaces", testZAddReplaces},
		{"ZTrim", testZTrim},
		{"ZRem", testZRem},
		{"ZEmpty", testZEmpty},
		{"ZScoreRange", testZScoreRange},
		{"ZAfterInvalidLimit", testZAfterInvalidLimit},
		{"ZWrongType", testZWrongType},
		{"ZAddConcurrent", testZAddConcurrent},
		{"ZTrimRace", testZTrimRace},
		{"ZAppend", testZAppend},
		{"ZAppendFloor", testZAppendFloor},
		{"ZAppendKeepsMember", testZAppendKeepsMember},
		{"ZAppendErrors", testZAppendErrors},
		{"ZAppendSameMembersRace", testZAppendSameMembersRace},
		{"ZAck", testZAck},
		{"ZAckRace", testZAckRace},
		{"GCRABurst", testGCRABurst},
		{"GCRARace", testGCRARace},
		{"GCRAExpiry", testGCRAExpiry},
		{"GCRAErrors", testGCRAErrors},
		{"Heartbeat", testHeartbeat},
		{"Ping", testPing},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			tt.fn(t, open(t))
		})
	}
}

// ctx returns a context bounded well above any single operation's latency,
// so a hung backend fails the test instead of hanging it.
func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	t.Cleanup(cancel)
	return c
}

func mustSet(t *testing.T, s kv.Store, key, val string, ttl time.Duration) {
	t.Helper()
	if err := s.Set(ctx(t), key, []byte(val), ttl); err != nil {
		t.Fatalf("Set(%q): %v", key, err)
	}
}

// mustGet fails the test unless key holds want.
func mustGet(t *testing.T, s kv.Store, key, want string) {
	t.Helper()
	got, err := s.Get(ctx(t), key)
	if err != nil {
		t.Fatalf("Get(%q): %v, want %q", key, err, want)
	}
	if string(got) != want {
		t.Fatalf("Get(%q) = %q, want %q", key, got, want)
	}
}

// mustMissing fails the test unless key is absent.
func mustMissing(t *testing.T, s kv.Store, key string) {
	t.Helper()
	got, err := s.Get(ctx(t), key)
	if !errors.Is(err, kv.ErrNotFound) {
		t.Fatalf("Get(%q) = %q, %v; want ErrNotFound", key, got, err)
	}
}

func mustTake(t *testing.T, s kv.Store, key string, n, wantLeft int64, wantOK bool) {
	t.Helper()
	left, ok, err := s.Take(ctx(t), key, n)
	if err != nil {
		t.Fatalf("Take(%q, %d): %v", key, n, err)
	}
	if left != wantLeft || ok != wantOK {
		t.Fatalf("Take(%q, %d) = %d, %v; want %d, %v", key, n, left, ok, wantLeft, wantOK)
	}
}

// waitMissing polls until key is gone, failing the test after within.
func waitMissing(t *testing.T, s kv.Store, key string, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		_, err := s.Get(ctx(t), key)
		if errors.Is(err, kv.ErrNotFound) {
			return
		}
		if err != nil {
			t.Fatalf("Get(%q): %v", key, err)
		}
		if time.Now().After(deadline) {
			t.Fatalf("key %q still present %v after its ttl", key, within)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// race runs fn(i) for i in [0, n) on n goroutines released at once.
func race(n int, fn func(i int)) {
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			<-start
			fn(i)
		})
	}
	close(start)
	wg.Wait()
}

func testGetMissing(t *testing.T, s kv.Store) {
	got, err := s.Get(ctx(t), "get-missing")
	if !errors.Is(err, kv.ErrNotFound) {
		t.Fatalf("Get(missing) = %q, %v; want ErrNotFound", got, err)
	}
	if got != nil {
		t.Errorf("Get(missing) value = %q, want nil", got)
	}
}

func testSetGet(t *testing.T, s kv.Store) {
	tests := []struct {
		name string
		val  []byte
	}{
		{"text", []byte("hello")},
		{"empty", []byte{}},
		{"binary", []byte{0, 1, 0xff, '\n', 0, 'x'}},
		{"large", bytes.Repeat([]byte("0123456789abcdef"), 4096)},
	}
	for _, tt := range tests {
		key := "set-get-" + tt.name
		if err := s.Set(ctx(t), key, tt.val, 0); err != nil {
			t.Fatalf("Set(%q): %v", key, err)
		}
		got, err := s.Get(ctx(t), key)
		if err != nil {
			t.Fatalf("Get(%q): %v", key, err)
		}
		if !bytes.Equal(got, tt.val) {
			t.Errorf("%s: Get = %q (len %d), want len %d", tt.name, truncate(got), len(got), len(tt.val))
		}
	}
}

func testValuesAreCopied(t *testing.T, s kv.Store) {
	val := []byte("original")
	if err := s.Set(ctx(t), "copied", val, 0); err != nil {
		t.Fatal(err)
	}
	copy(val, "CHANGED!")
	mustGet(t, s, "copied", "original")

	got, err := s.Get(ctx(t), "copied")
	if err != nil {
		t.Fatal(err)
	}
	copy(got, "CHANGED!")
	mustGet(t, s, "copied", "original")

	if ok, err := s.SetNX(ctx(t), "copied-nx", val, 0); err != nil || !ok {
		t.Fatalf("SetNX = %v, %v; want true", ok, err)
	}
	copy(val, "mutated!")
	mustGet(t, s, "copied-nx", "CHANGED!")
}

func testOverwrite(t *testing.T, s kv.Store) {
	mustSet(t, s, "overwrite", "first value, longer", 0)
	mustSet(t, s, "overwrite", "second", 0)
	mustGet(t, s, "overwrite", "second")

	// A counter can be overwritten by a plain value and back.
	if _, err := s.IncrBy(ctx(t), "overwrite-counter", 7); err != nil {
		t.Fatal(err)
	}
	mustSet(t, s, "overwrite-counter", "40", 0)
	if got, err := s.IncrBy(ctx(t), "overwrite-counter", 2); err != nil || got != 42 {
		t.Fatalf("IncrBy after Set = %d, %v; want 42", got, err)
	}
}

func testNegativeTTL(t *testing.T, s kv.Store) {
	if err := s.Set(ctx(t), "negative-ttl", []byte("v"), -time.Second); err == nil {
		t.Error("Set with negative ttl: no error")
	}
	if _, err := s.SetNX(ctx(t), "negative-ttl", []byte("v"), -time.Second); err == nil {
		t.Error("SetNX with negative ttl: no error")
	}
	mustMissing(t, s, "negative-ttl")
}

func testTTLExpiry(t *testing.T, s kv.Store) {
	const ttl = 80 * time.Millisecond
	// ttl-short is written last, so once it has expired every other key
	// with the same ttl has too: all count from their write on one clock.
	start := time.Now()
	if ok, err := s.SetNX(ctx(t), "ttl-nx", []byte("nx"), ttl); err != nil || !ok {
		t.Fatalf("SetNX = %v, %v; want true", ok, err)
	}
	mustSet(t, s, "ttl-cleared", "old", ttl)
	mustSet(t, s, "ttl-cleared", "new", 0) // Set replaces the ttl too
	mustSet(t, s, "ttl-long", "long", time.Hour)
	mustSet(t, s, "ttl-counter", "5", ttl)
	if _, err := s.IncrBy(ctx(t), "ttl-counter", 1); err != nil {
		t.Fatal(err)
	}
	mustSet(t, s, "ttl-short", "short", ttl)

	// Before the ttl has run out the keys must be there. On a loaded
	// machine the ttl may be over already; then nothing can be concluded.
	got, err := s.Get(ctx(t), "ttl-short")
	switch {
	case err == nil && string(got) != "short":
		t.Fatalf("Get(ttl-short) = %q, want short", got)
	case errors.Is(err, kv.ErrNotFound) && time.Since(start) < ttl:
		t.Fatalf("ttl-short gone after %v, before its ttl %v", time.Since(start), ttl)
	case err != nil && !errors.Is(err, kv.ErrNotFound):
		t.Fatal(err)
	}

	waitMissing(t, s, "ttl-short", ttl+3*time.Second)
	if since := time.Since(start); since < ttl-5*time.Millisecond {
		t.Errorf("ttl-short expired after %v, want >= %v", since, ttl)
	}
	mustMissing(t, s, "ttl-nx")
	mustMissing(t, s, "ttl-counter") // IncrBy keeps the ttl
	mustGet(t, s, "ttl-cleared", "new")
	mustGet(t, s, "ttl-long", "long")

	// An expired key counts as missing for SetNX and IncrBy.
	if ok, err := s.SetNX(ctx(t), "ttl-nx", []byte("again"), 0); err != nil || !ok {
		t.Fatalf("SetNX after expiry = %v, %v; want true", ok, err)
	}
	mustGet(t, s, "ttl-nx", "again")
	if n, err := s.IncrBy(ctx(t), "ttl-counter", 1); err != nil || n != 1 {
		t.Fatalf("IncrBy after expiry = %d, %v; want 1", n, err)
	}
}

func testSetNX(t *testing.T, s kv.Store) {
	ok, err := s.SetNX(ctx(t), "setnx", []byte("first"), 0)
	if err != nil || !ok {
		t.Fatalf("first SetNX = %v, %v; want true", ok, err)
	}
	ok, err = s.SetNX(ctx(t), "setnx", []byte("second"), 0)
	if err != nil || ok {
		t.Fatalf("second SetNX = %v, %v; want false", ok, err)
	}
	mustGet(t, s, "setnx", "first")

	if err := s.Del(ctx(t), "setnx"); err != nil {
		t.Fatal(err)
	}
	ok, err = s.SetNX(ctx(t), "setnx", []byte("third"), time.Hour)
	if err != nil || !ok {
		t.Fatalf("SetNX after Del = %v, %v; want true", ok, err)
	}
	mustGet(t, s, "setnx", "third")
}

func testSetNXRace(t *testing.T, s kv.Store) {
	const n = 50
	var wins atomic.Int32
	var winner atomic.Int64
	errs := make(chan error, n)
	race(n, func(i int) {
		ok, err := s.SetNX(ctx(t), "setnx-race", []byte(strconv.Itoa(i)), time.Minute)
		if err != nil {
			errs <- err
			return
		}
		if ok {
			wins.Add(1)
			winner.Store(int64(i))
		}
	})
	close(errs)
	for err := range errs {
		t.Fatalf("SetNX: %v", err)
	}
	if got := wins.Load(); got != 1 {
		t.Fatalf("%d of %d SetNX calls won, want exactly 1", got, n)
	}
	mustGet(t, s, "setnx-race", strconv.FormatInt(winner.Load(), 10))
}

func testDel(t *testing.T, s kv.Store) {
	for _, k := range []string{"del-a", "del-b", "del-c"} {
		mustSet(t, s, k, k, 0)
	}
	if err := s.Del(ctx(t), "del-a", "del-missing", "del-b"); err != nil {
		t.Fatalf("Del: %v", err)
	}
	mustMissing(t, s, "del-a")
	mustMissing(t, s, "del-b")
	mustGet(t, s, "del-c", "del-c")

	if err := s.Del(ctx(t)); err != nil {
		t.Fatalf("Del(): %v", err)
	}
	if err := s.Del(ctx(t), "del-missing"); err != nil {
		t.Fatalf("Del(missing): %v", err)
	}
	mustGet(t, s, "del-c", "del-c")
}

func testIncrBy(t *testing.T, s kv.Store) {
	steps := []struct {
		n, want int64
	}{
		{5, 5},
		{1, 6},
		{-10, -4},
		{0, -4},
		{1 << 40, 1<<40 - 4},
	}
	for _, st := range steps {
		got, err := s.IncrBy(ctx(t), "incrby", st.n)
		if err != nil {
			t.Fatalf("IncrBy(%d): %v", st.n, err)
		}
		if got != st.want {
			t.Fatalf("IncrBy(%d) = %d, want %d", st.n, got, st.want)
		}
	}
	mustGet(t, s, "incrby", strconv.FormatInt(1<<40-4, 10))

	mustSet(t, s, "incrby-set", "-12", 0)
	if got, err := s.IncrBy(ctx(t), "incrby-set", 2); err != nil || got != -10 {
		t.Fatalf("IncrBy on Set value = %d, %v; want -10", got, err)
	}
}

func testIncrByNotInteger(t *testing.T, s kv.Store) {
	tests := []struct {
		name string
		val  string
		n    int64
	}{
		{"text", "abc", 1},
		{"empty", "", 1},
		{"float", "1.5", 1},
		{"space", " 1", 1},
		{"overflow", strconv.FormatInt(1<<63-1, 10), 1},
		{"underflow", strconv.FormatInt(-1<<63, 10), -1},
	}
	for _, tt := range tests {
		key := "incrby-nan-" + tt.name
		mustSet(t, s, key, tt.val, 0)
		got, err := s.IncrBy(ctx(t), key, tt.n)
		if !errors.Is(err, kv.ErrNotInteger) {
			t.Errorf("%s: IncrBy(%q, %d) = %d, %v; want ErrNotInteger", tt.name, tt.val, tt.n, got, err)
		}
		mustGet(t, s, key, tt.val)
	}
}

func testIncrByConcurrent(t *testing.T, s kv.Store) {
	const workers, each = 20, 10
	errs := make(chan error, workers)
	race(workers, func(int) {
		for range each {
			if _, err := s.IncrBy(ctx(t), "incrby-race", 3); err != nil {
				errs <- err
				return
			}
		}
	})
	close(errs)
	for err := range errs {
		t.Fatalf("IncrBy: %v", err)
	}
	mustGet(t, s, "incrby-race", strconv.Itoa(3*workers*each))
}

func testTake(t *testing.T, s kv.Store) {
	mustTake(t, s, "take-missing", 1, 0, false)
	mustMissing(t, s, "take-missing") // a failed Take creates nothing

	mustSet(t, s, "take", "5", 0)
	mustTake(t, s, "take", 3, 2, true)
	mustTake(t, s, "take", 3, 2, false) // not enough: unchanged
	mustGet(t, s, "take", "2")
	mustTake(t, s, "take", 2, 0, true) // exact
	mustTake(t, s, "take", 1, 0, false)
	mustGet(t, s, "take", "0")

	// A counter made by IncrBy can be taken from, and refilled.
	if _, err := s.IncrBy(ctx(t), "take-incr", 10); err != nil {
		t.Fatal(err)
	}
	mustTake(t, s, "take-incr", 10, 0, true)
	if _, err := s.IncrBy(ctx(t), "take-incr", 4); err != nil {
		t.Fatal(err)
	}
	mustTake(t, s, "take-incr", 1, 3, true)

	// A negative value (possible through IncrBy) is never taken from.
	mustSet(t, s, "take-negative", "-3", 0)
	mustTake(t, s, "take-negative", 1, -3, false)
	mustGet(t, s, "take-negative", "-3")
}

func testTakeInvalid(t *testing.T, s kv.Store) {
	mustSet(t, s, "take-invalid", "5", 0)
	for _, n := range []int64{0, -1} {
		if _, ok, err := s.Take(ctx(t), "take-invalid", n); err == nil || ok {
			t.Errorf("Take(n=%d) = %v, %v; want an error", n, ok, err)
		}
	}
	mustGet(t, s, "take-invalid", "5")

	for _, val := range []string{"abc", "", "2.5", "007"} {
		key := "take-nan-" + val
		mustSet(t, s, key, val, 0)
		left, ok, err := s.Take(ctx(t), key, 1)
		if !errors.Is(err, kv.ErrNotInteger) || ok {
			t.Errorf("Take on %q = %d, %v, %v; want ErrNotInteger", val, left, ok, err)
		}
		mustGet(t, s, key, val)
	}
}

func testTakeKeepsTTL(t *testing.T, s kv.Store) {
	const ttl = 80 * time.Millisecond
	mustSet(t, s, "take-ttl", "10", ttl)
	left, ok, err := s.Take(ctx(t), "take-ttl", 1)
	if err != nil {
		t.Fatal(err)
	}
	// The key may have expired already on a slow machine; then Take saw 0.
	if ok && left != 9 {
		t.Fatalf("Take = %d, true; want 9", left)
	}
	waitMissing(t, s, "take-ttl", ttl+3*time.Second)
}

func testTakeRace(t *testing.T, s kv.Store) {
	const stock, buyers = 50, 200
	mustSet(t, s, "take-race", strconv.Itoa(stock), 0)
	var (
		mu    sync.Mutex
		lefts = make(map[int64]int)
		fails int
		errs  []error
	)
	race(buyers, func(int) {
		left, ok, err := s.Take(ctx(t), "take-race", 1)
		mu.Lock()
		defer mu.Unlock()
		switch {
		case err != nil:
			errs = append(errs, err)
		case ok:
			lefts[left]++
		case left != 0:
			errs = append(errs, fmt.Errorf("failed Take reported %d left, want 0", left))
		default:
			fails++
		}
	})
	if len(errs) > 0 {
		t.Fatalf("%d Take calls failed, first: %v", len(errs), errs[0])
	}
	if len(lefts) != stock || fails != buyers-stock {
		t.Fatalf("%d distinct successful Takes and %d failures, want %d and %d", len(lefts), fails, stock, buyers-stock)
	}
	// Every success saw a distinct remainder 0..stock-1: no double sale.
	for left := range int64(stock) {
		if lefts[left] != 1 {
			t.Fatalf("remainder %d reported %d times, want once", left, lefts[left])
		}
	}
	mustGet(t, s, "take-race", "0")
}

func testTakeMixedRace(t *testing.T, s kv.Store) {
	const stock, buyers = 100, 60
	mustSet(t, s, "take-mixed", strconv.Itoa(stock), 0)
	var (
		mu      sync.Mutex
		taken   int64
		minFail int64 = 1 << 62
		errs    []error
	)
	race(buyers, func(i int) {
		n := int64(1 + i%5)
		for range 3 {
			left, ok, err := s.Take(ctx(t), "take-mixed", n)
			mu.Lock()
			switch {
			case err != nil:
				errs = append(errs, err)
			case left < 0:
				errs = append(errs, fmt.Errorf("Take(%d) left %d, below zero", n, left))
			case ok:
				taken += n
			case left >= n:
				errs = append(errs, fmt.Errorf("Take(%d) refused with %d left", n, left))
			default:
				minFail = min(minFail, n)
			}
			mu.Unlock()
		}
	})
	if len(errs) > 0 {
		t.Fatalf("%d Take calls failed, first: %v", len(errs), errs[0])
	}
	got, err := s.Get(ctx(t), "take-mixed")
	if err != nil {
		t.Fatal(err)
	}
	final, err := strconv.ParseInt(string(got), 10, 64)
	if err != nil {
		t.Fatalf("final value %q: %v", got, err)
	}
	if final != stock-taken {
		t.Fatalf("final value %d, but %d of %d were taken", final, taken, stock)
	}
	if final < 0 {
		t.Fatalf("final value %d below zero", final)
	}
	// The value only shrinks, so every refused Take(n) means it ends below n.
	if final >= minFail {
		t.Fatalf("final value %d, yet a Take(%d) was refused", final, minFail)
	}
	if taken == 0 {
		t.Fatal("no Take succeeded")
	}
}

func mustZAdd(t *testing.T, s kv.Store, key string, score int64, member string) {
	t.Helper()
	if err := s.ZAdd(ctx(t), key, score, member); err != nil {
		t.Fatalf("ZAdd(%q, %d, %q): %v", key, score, member, err)
	}
}

// mustZAfter fails the test unless ZAfter(key, after, limit) returns want.
func mustZAfter(t *testing.T, s kv.Store, key string, after int64, limit int, want []kv.Scored) {
	t.Helper()
	got, err := s.ZAfter(ctx(t), key, after, limit)
	if err != nil {
		t.Fatalf("ZAfter(%q, %d, %d): %v", key, after, limit, err)
	}
	if !slices.Equal(got, want) {
		t.Fatalf("ZAfter(%q, %d, %d) = %v, want %v", key, after, limit, got, want)
	}
}

func mustZCard(t *testing.T, s kv.Store, key string, want int64) {
	t.Helper()
	got, err := s.ZCard(ctx(t), key)
	if err != nil || got != want {
		t.Fatalf("ZCard(%q) = %d, %v; want %d", key, got, err, want)
	}
}

func mustZTrim(t *testing.T, s kv.Store, key string, upTo, want int64) {
	t.Helper()
	got, err := s.ZTrim(ctx(t), key, upTo)
	if err != nil || got != want {
		t.Fatalf("ZTrim(%q, %d) = %d, %v; want %d", key, upTo, got, err, want)
	}
}

// member is the member name the sorted-set tests give to score i.
func member(i int64) string {
	return fmt.Sprintf("m%04d", i)
}

func testZOrder(t *testing.T, s kv.Store) {
	want := []kv.Scored{
		{Score: -40, Member: "neg"},
		{Score: 0, Member: "zero"},
		{Score: 3, Member: ""},
		{Score: 3, Member: "A"},
		{Score: 3, Member: "a"},
		{Score: 3, Member: "ab"},
		{Score: 3, Member: "b"},
		{Score: 3, Member: "\xff"},
		{Score: 7, Member: "seven"},
		{Score: 1 << 40, Member: "big"},
	}
	for _, i := range rand.Perm(len(want)) {
		mustZAdd(t, s, "z-order", want[i].Score, want[i].Member)
	}
	mustZCard(t, s, "z-order", int64(len(want)))
	mustZAfter(t, s, "z-order", math.MinInt64, 100, want)
	mustZAfter(t, s, "z-order", -41, len(want), want)
	mustZAfter(t, s, "z-order", -40, 100, want[1:])
	mustZAfter(t, s, "z-order", 2, 3, want[2:5])
	mustZAfter(t, s, "z-order", 3, 100, want[8:])
	mustZAfter(t, s, "z-order", 1<<40, 100, nil)
}

func testZAfterPaging(t *testing.T, s kv.Store) {
	const n, page = 100, 7
	for _, i := range rand.Perm(n) {
		score := int64(i + 1)
		mustZAdd(t, s, "z-paging", score, member(score))
	}
	var got []kv.Scored
	cursor, pages := int64(0), 0
	for {
		p, err := s.ZAfter(ctx(t), "z-paging", cursor, page)
		if err != nil {
			t.Fatalf("ZAfter(%d): %v", cursor, err)
		}
		if len(p) == 0 {
			break
		}
		if len(p) > page {
			t.Fatalf("ZAfter(%d, %d) returned %d members", cursor, page, len(p))
		}
		pages++
		got = append(got, p...)
		cursor = p[len(p)-1].Score
		if pages > n {
			t.Fatal("paging does not end")
		}
	}
	if want := (n + page - 1) / page; pages != want {
		t.Errorf("%d pages, want %d", pages, want)
	}
	if len(got) != n {
		t.Fatalf("paged through %d members, want %d", len(got), n)
	}
	for i, sc := range got {
		if want := (kv.Scored{Score: int64(i + 1), Member: member(int64(i + 1))}); sc != want {
			t.Fatalf("member %d of the pages = %v, want %v", i, sc, want)
		}
	}
	mustZCard(t, s, "z-paging", n) // reading removes nothing
}

func testZAddReplaces(t *testing.T, s kv.Store) {
	mustZAdd(t, s, "z-replace", 5, "a")
	mustZAdd(t, s, "z-replace", 9, "b")
	mustZAdd(t, s, "z-replace", 12, "a") // moves up, past b
	mustZCard(t, s, "z-replace", 2)
	mustZAfter(t, s, "z-replace", 0, 10, []kv.Scored{{Score: 9, Member: "b"}, {Score: 12, Member: "a"}})

	mustZAdd(t, s, "z-replace", 12, "a") // same score: no change
	mustZAdd(t, s, "z-replace", 1, "b")  // moves down
	mustZCard(t, s, "z-replace", 2)
	mustZAfter(t, s, "z-replace", 0, 10, []kv.Scored{{Score: 1, Member: "b"}, {Score: 12, Member: "a"}})
	mustZAfter(t, s, "z-replace", 1, 10, []kv.Scored{{Score: 12, Member: "a"}})
}

func testZTrim(t *testing.T, s kv.Store) {
	for i := int64(1); i <= 10; i++ {
		mustZAdd(t, s, "z-trim", i, member(i))
	}
	mustZTrim(t, s, "z-trim", 0, 0)
	mustZTrim(t, s, "z-trim", 3, 3)
	mustZTrim(t, s, "z-trim", 3, 0)
	mustZCard(t, s, "z-trim", 7)
	mustZAfter(t, s, "z-trim", math.MinInt64, 1, []kv.Scored{{Score: 4, Member: member(4)}})

	// Trimming does not stop new members below the trimmed scores.
	mustZAdd(t, s, "z-trim", 2, "late")
	mustZAfter(t, s, "z-trim", 0, 2, []kv.Scored{{Score: 2, Member: "late"}, {Score: 4, Member: member(4)}})
	mustZTrim(t, s, "z-trim", 5, 3)
	mustZTrim(t, s, "z-trim", math.MaxInt64, 5)
	mustZCard(t, s, "z-trim", 0)
	// A set trimmed empty is gone: the key is free for a value.
	mustMissing(t, s, "z-trim")
	if ok, err := s.SetNX(ctx(t), "z-trim", []byte("v"), 0); err != nil || !ok {
		t.Fatalf("SetNX on an emptied set = %v, %v; want true", ok, err)
	}
}

func mustZRem(t *testing.T, s kv.Store, key, m string, want bool) {
	t.Helper()
	got, err := s.ZRem(ctx(t), key, m)
	if err != nil || got != want {
		t.Fatalf("ZRem(%q, %q) = %v, %v; want %v", key, m, got, err, want)
	}
}

// testZRem: a member leaves from anywhere in the set, once; the others keep
// their places, and a set left empty is gone.
func testZRem(t *testing.T, s kv.Store) {
	for i := int64(1); i <= 5; i++ {
		mustZAdd(t, s, "z-rem", i, member(i))
	}
	mustZRem(t, s, "z-rem", member(3), true)
	mustZRem(t, s, "z-rem", member(3), false)
	mustZRem(t, s, "z-rem", "never", false)
	mustZRem(t, s, "z-missing", "a", false)
	mustMissing(t, s, "z-missing")
	mustZAfter(t, s, "z-rem", 0, 10, []kv.Scored{{Score: 1, Member: member(1)}, {Score: 2, Member: member(2)},
		{Score: 4, Member: member(4)}, {Score: 5, Member: member(5)}})
	mustZRem(t, s, "z-rem", member(1), true)
	mustZRem(t, s, "z-rem", member(5), true)
	mustZAfter(t, s, "z-rem", 0, 10, []kv.Scored{{Score: 2, Member: member(2)}, {Score: 4, Member: member(4)}})
	mustZRem(t, s, "z-rem", member(2), true)
	mustZRem(t, s, "z-rem", member(4), true)
	mustZCard(t, s, "z-rem", 0)
	mustMissing(t, s, "z-rem")
}

func testZEmpty(t *testing.T, s kv.Store) {
	got, err := s.ZAfter(ctx(t), "z-empty", math.MinInt64, 10)
	if err != nil || len(got) != 0 {
		t.Fatalf("ZAfter(missing) = %v, %v; want none", got, err)
	}
	mustZCard(t, s, "z-empty", 0)
	mustZTrim(t, s, "z-empty", math.MaxInt64, 0)
	mustMissing(t, s, "z-empty") // reading creates nothing
}

func testZScoreRange(t *testing.T, s kv.Store) {
	for _, score := range []int64{kv.MaxScore + 1, kv.MinScore - 1, math.MaxInt64, math.MinInt64} {
		if err := s.ZAdd(ctx(t), "z-range", score, "out"); !errors.Is(err, kv.ErrScoreRange) {
			t.Errorf("ZAdd(score %d) = %v, want ErrScoreRange", score, err)
		}
	}
	mustZCard(t, s, "z-range", 0)

	// Scores next to the bounds stay distinct and exact.
	want := []kv.Scored{
		{Score: kv.MinScore, Member: "min"},
		{Score: kv.MinScore + 1, Member: "min+1"},
		{Score: kv.MaxScore - 1, Member: "max-1"},
		{Score: kv.MaxScore, Member: "max"},
	}
	for _, sc := range want {
		mustZAdd(t, s, "z-range", sc.Score, sc.Member)
	}
	mustZAfter(t, s, "z-range", math.MinInt64, 10, want)
	mustZAfter(t, s, "z-range", kv.MinScore, 10, want[1:])
	mustZAfter(t, s, "z-range", kv.MaxScore-2, 10, want[2:])
	mustZAfter(t, s, "z-range", kv.MaxScore-1, 10, want[3:])
	mustZAfter(t, s, "z-range", kv.MaxScore, 10, nil)
	mustZAfter(t, s, "z-range", math.MaxInt64, 10, nil)
	mustZTrim(t, s, "z-range", math.MinInt64, 0)
	mustZTrim(t, s, "z-range", kv.MinScore, 1)
	mustZTrim(t, s, "z-range", kv.MaxScore-1, 2)
	mustZAfter(t, s, "z-range", math.MinInt64, 10, want[3:])
}

func testZAfterInvalidLimit(t *testing.T, s kv.Store) {
	mustZAdd(t, s, "z-limit", 1, "a")
	for _, limit := range []int{0, -1} {
		if got, err := s.ZAfter(ctx(t), "z-limit", 0, limit); err == nil {
			t.Errorf("ZAfter(limit %d) = %v, nil; want an error", limit, got)
		}
	}
	mustZAfter(t, s, "z-limit", 0, math.MaxInt32, []kv.Scored{{Score: 1, Member: "a"}})
}

func testZWrongType(t *testing.T, s kv.Store) {
	mustSet(t, s, "z-value", "5", 0)
	mustZAdd(t, s, "z-set", 1, "a")
	tests := []struct {
		name string
		key  string // holds the other kind
		op   func(key string) error
	}{
		{"ZAdd", "z-value", func(k string) error { return s.ZAdd(ctx(t), k, 1, "a") }},
		{"ZAfter", "z-value", func(k string) error { _, err := s.ZAfter(ctx(t), k, 0, 10); return err }},
		{"ZTrim", "z-value", func(k string) error { _, err := s.ZTrim(ctx(t), k, 10); return err }},
		{"ZCard", "z-value", func(k string) error { _, err := s.ZCard(ctx(t), k); return err }},
		{"ZRem", "z-value", func(k string) error { _, err := s.ZRem(ctx(t), k, "a"); return err }},
		{"Get", "z-set", func(k string) error { _, err := s.Get(ctx(t), k); return err }},
		{"IncrBy", "z-set", func(k string) error { _, err := s.IncrBy(ctx(t), k, 1); return err }},
		{"Take", "z-set", func(k string) error { _, _, err := s.Take(ctx(t), k, 1); return err }},
	}
	for _, tt := range tests {
		if err := tt.op(tt.key); !errors.Is(err, kv.ErrWrongType) {
			t.Errorf("%s on %s: %v, want ErrWrongType", tt.name, tt.key, err)
		}
	}
	mustGet(t, s, "z-value", "5")
	mustZAfter(t, s, "z-set", 0, 10, []kv.Scored{{Score: 1, Member: "a"}})

	if ok, err := s.SetNX(ctx(t), "z-set", []byte("v"), 0); err != nil || ok {
		t.Fatalf("SetNX on a sorted set = %v, %v; want false", ok, err)
	}
	mustZCard(t, s, "z-set", 1)
	mustSet(t, s, "z-set", "replaced", 0) // Set replaces a sorted set
	mustGet(t, s, "z-set", "replaced")
	if err := s.Del(ctx(t), "z-set"); err != nil {
		t.Fatal(err)
	}
	mustZAdd(t, s, "z-set", 2, "b")
	if err := s.Del(ctx(t), "z-set"); err != nil { // Del removes a sorted set
		t.Fatal(err)
	}
	mustZCard(t, s, "z-set", 0)
	mustMissing(t, s, "z-set")
}

func testZAddConcurrent(t *testing.T, s kv.Store) {
	const n = 50
	race(n, func(i int) {
		if err := s.ZAdd(ctx(t), "z-concurrent", int64(i), member(int64(i))); err != nil {
			t.Errorf("ZAdd(%d): %v", i, err)
		}
	})
	mustZCard(t, s, "z-concurrent", n)
	want := make([]kv.Scored, n)
	for i := range want {
		want[i] = kv.Scored{Score: int64(i), Member: member(int64(i))}
	}
	mustZAfter(t, s, "z-concurrent", -1, 2*n, want)
}

// testZTrimRace runs the queue pattern: a producer appends scores above
// the initial ones, a consumer acknowledges (trims) all but the last step
// of the initial ones, and readers page from the start. A reader must never
// see a score the consumer had trimmed before the read began, nor a trim
// half done, and every read is one contiguous run.
func testZTrimRace(t *testing.T, s kv.Store) {
	const (
		initial, added = 300, 200
		step, readers  = 10, 8
		page           = 40
	)
	const key = "z-trim-race"
	for i := int64(1); i <= initial; i++ {
		mustZAdd(t, s, key, i, member(i))
	}
	var (
		trimmed atomic.Int64 // every score <= trimmed is gone
		done    atomic.Bool
		reads   atomic.Int64
	)
	race(readers+2, func(i int) {
		switch i {
		case 0: // producer
			for sc := int64(initial + 1); sc <= initial+added; sc++ {
				if err := s.ZAdd(ctx(t), key, sc, member(sc)); err != nil {
					t.Errorf("ZAdd(%d): %v", sc, err)
					return
				}
			}
		case 1: // consumer
			defer done.Store(true)
			for upTo := int64(step); upTo < initial; upTo += step {
				n, err := s.ZTrim(ctx(t), key, upTo)
				if err != nil {
					t.Errorf("ZTrim(%d): %v", upTo, err)
					return
				}
				if n != step {
					t.Errorf("ZTrim(%d) removed %d, want %d", upTo, n, step)
					return
				}
				trimmed.Store(upTo)
			}
		default: // reader
			for first := true; first || !done.Load(); first = false {
				floor := trimmed.Load()
				got, err := s.ZAfter(ctx(t), key, 0, page)
				if err != nil {
					t.Errorf("ZAfter: %v", err)
					return
				}
				reads.Add(1)
				if len(got) == 0 {
					t.Errorf("ZAfter returned nothing; the last %d initial members are never trimmed", step)
					return
				}
				if got[0].Score <= floor {
					t.Errorf("ZAfter returned score %d, trimmed (up to %d) before the read", got[0].Score, floor)
					return
				}
				if (got[0].Score-1)%step != 0 {
					t.Errorf("ZAfter starts at score %d: it saw a ZTrim of %d members half done", got[0].Score, step)
					return
				}
				for j, sc := range got {
					want := got[0].Score + int64(j)
					if sc.Score != want || sc.Member != member(want) {
						t.Errorf("ZAfter member %d = %v, want score %d: a gap or a duplicate in %v", j, sc, want, got)
						return
					}
				}
			}
		}
	})
	if t.Failed() {
		return
	}
	mustZCard(t, s, key, step+added)
	first := int64(initial - step + 1)
	mustZAfter(t, s, key, 0, 1, []kv.Scored{{Score: first, Member: member(first)}})
	if reads.Load() < readers {
		t.Fatalf("%d reads, want at least %d", reads.Load(), readers)
	}
}

func testPing(t *testing.T, s kv.Store) {
	if err := s.Ping(ctx(t)); err != nil {
		t.Fatalf("Ping: %v", err)
	}
}

func truncate(b []byte) []byte {
	if len(b) > 32 {
		return b[:32]
	}
	return b
}

// testZAppend: concurrent appenders get distinct consecutive scores, and a
// reader paging behind them never sees a score before a lower one (the gap
// a POS would skip for good).
func testZAppend(t *testing.T, s kv.Store) {
	const writers, each = 16, 40
	key, counter := "zapp:"+t.Name(), "zapp-seq:"+t.Name()
	var wg sync.WaitGroup
	done := make(chan struct{})
	gap := make(chan string, 1)
	go func() { // the reader: consecutive scores only
		var last int64
		for {
			select {
			case <-done:
				return
			default:
			}
			got, err := s.ZAfter(ctx(t), key, last, 100)
			if err != nil {
				gap <- err.Error()
				return
			}
			for _, m := range got {
				if m.Score != last+1 {
					gap <- fmt.Sprintf("saw score %d right after %d", m.Score, last)
					return
				}
				last = m.Score
			}
		}
	}()
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				if _, err := s.ZAppend(ctx(t), key, counter, fmt.Sprintf("%d-%d", w, i), 0, 0); err != nil {
					t.Errorf("ZAppend: %v", err)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(done)
	select {
	case g := <-gap:
		t.Fatalf("reader: %s", g)
	default:
	}
	all, err := s.ZAfter(ctx(t), key, 0, writers*each+10)
	if err != nil || len(all) != writers*each {
		t.Fatalf("ZAfter = %d members, %v; want %d", len(all), err, writers*each)
	}
	for i, m := range all {
		if m.Score != int64(i+1) {
			t.Fatalf("member %d has score %d; want %d", i, m.Score, i+1)
		}
	}
	if err := s.Set(ctx(t), counter, []byte("x"), 0); err != nil {
		t.Fatal(err)
	}
	if _, err := s.ZAppend(ctx(t), key, counter, "bad", 0, 0); !errors.Is(err, kv.ErrNotInteger) {
		t.Fatalf("ZAppend on a non-integer counter = %v; want ErrNotInteger", err)
	}
}

// scored is a sorted-set member and its score.
func scored(score int64, member string) kv.Scored {
	return kv.Scored{Score: score, Member: member}
}

func mustZAppend(t *testing.T, s kv.Store, key, counter, member string, floor, want int64) {
	t.Helper()
	got, err := s.ZAppend(ctx(t), key, counter, member, floor, 0)
	if err != nil || got != want {
		t.Fatalf("ZAppend(%q, %q, %q, floor %d) = %d, %v; want %d", key, counter, member, floor, got, err, want)
	}
}

// testZAppendFloor: the score is the greater of counter+1 and the floor,
// and the counter follows it, so a counter lost and started again under a
// floor hands out scores above the old ones.
func testZAppendFloor(t *testing.T, s kv.Store) {
	const key, counter = "zfloor", "zfloor-seq"
	mustZAppend(t, s, key, counter, "a", 0, 1)
	mustZAppend(t, s, key, counter, "b", -5, 2)
	mustZAppend(t, s, key, counter, "c", 100, 100) // jumps to the floor
	mustZAppend(t, s, key, counter, "d", 50, 101)  // a lower floor: counter+1
	mustZAppend(t, s, key, counter, "e", 101, 102) // a floor equal to the counter
	mustGet(t, s, counter, "102")
	mustZAfter(t, s, key, 0, 10, []kv.Scored{scored(1, "a"), scored(2, "b"), scored(100, "c"), scored(101, "d"), scored(102, "e")})

	// The counter lost: with a floor above the old scores the new ones
	// stay above them.
	if err := s.Del(ctx(t), counter); err != nil {
		t.Fatal(err)
	}
	mustZAppend(t, s, key, counter, "f", 1000, 1000)
	mustZAppend(t, s, key, counter, "g", 0, 1001)
	// A counter set by hand (IncrBy) is continued.
	if _, err := s.IncrBy(ctx(t), "zfloor-other", 41); err != nil {
		t.Fatal(err)
	}
	mustZAppend(t, s, "zfloor-2", "zfloor-other", "x", 0, 42)
	// Scores up to MaxScore are exact.
	mustZAppend(t, s, "zfloor-3", "zfloor-3-seq", "near", kv.MaxScore-1, kv.MaxScore-1)
	mustZAppend(t, s, "zfloor-3", "zfloor-3-seq", "max", 0, kv.MaxScore)
	mustZAfter(t, s, "zfloor-3", 0, 10, []kv.Scored{scored(kv.MaxScore-1, "near"), scored(kv.MaxScore, "max")})
	mustGet(t, s, "zfloor-3-seq", strconv.FormatInt(kv.MaxScore, 10))

	// fresh: the least score of a missing counter only.
	fresh := func(key, counter, member string, floor, fresh, want int64) {
		t.Helper()
		if got, err := s.ZAppend(ctx(t), key, counter, member, floor, fresh); err != nil || got != want {
			t.Fatalf("ZAppend(%s, floor %d, fresh %d) = %d, %v; want %d", member, floor, fresh, got, err, want)
		}
	}
	fresh("zfresh", "zfresh-seq", "a", 10, 500, 500) // missing: the fresh score
	fresh("zfresh", "zfresh-seq", "b", 10, 900, 501) // present: fresh is ignored
	fresh("zfresh", "zfresh-seq", "c", 700, 900, 700)
	if err := s.Del(ctx(t), "zfresh-seq"); err != nil {
		t.Fatal(err)
	}
	fresh("zfresh", "zfresh-seq", "d", 10, 2000, 2000) // lost: above every score before
	fresh("zfresh", "zfresh-seq", "a", 10, 9000, 500)  // a member present keeps its score
	mustGet(t, s, "zfresh-seq", "2000")
}

// testZAppendKeepsMember: a member already in the set keeps its score and
// the counter does not move; once trimmed, it is appended anew.
func testZAppendKeepsMember(t *testing.T, s kv.Store) {
	const key, counter = "zkeep", "zkeep-seq"
	mustZAppend(t, s, key, counter, "a", 0, 1)
	mustZAppend(t, s, key, counter, "b", 0, 2)
	mustZAppend(t, s, key, counter, "a", 0, 1)
	mustZAppend(t, s, key, counter, "a", 500, 1) // the floor does not move it either
	mustGet(t, s, counter, "2")
	mustZAppend(t, s, key, counter, "c", 0, 3)
	mustZTrim(t, s, key, 1, 1)
	mustZAppend(t, s, key, counter, "a", 0, 4)
	mustZAfter(t, s, key, 0, 10, []kv.Scored{scored(2, "b"), scored(3, "c"), scored(4, "a")})
	// A member added by ZAdd counts as present too.
	mustZAdd(t, s, key, 77, "z")
	mustZAppend(t, s, key, counter, "z", 0, 77)
	mustGet(t, s, counter, "4")
}

func testZAppendErrors(t *testing.T, s kv.Store) {
	mustSet(t, s, "zerr-text", "x", 0)
	mustSet(t, s, "zerr-value", "1", 0)
	mustZAdd(t, s, "zerr-set", 1, "a")
	mustSet(t, s, "zerr-max", strconv.FormatInt(kv.MaxScore, 10), 0)
	tests := []struct {
		name, key, counter string
		floor              int64
		want               error
	}{
		{"counter not an integer", "zerr-1", "zerr-text", 0, kv.ErrNotInteger},
		{"counter a sorted set", "zerr-2", "zerr-set", 0, kv.ErrWrongType},
		{"key a value", "zerr-value", "zerr-3-seq", 0, kv.ErrWrongType},
		{"floor above the range", "zerr-4", "zerr-4-seq", kv.MaxScore + 1, kv.ErrScoreRange},
		{"floor far above the range", "zerr-5", "zerr-5-seq", math.MaxInt64, kv.ErrScoreRange},
		{"counter at the top", "zerr-6", "zerr-max", 0, kv.ErrScoreRange},
	}
	for _, tt := range tests {
		if got, err := s.ZAppend(ctx(t), tt.key, tt.counter, "m", tt.floor, 0); !errors.Is(err, tt.want) {
			t.Errorf("%s: ZAppend = %d, %v; want %v", tt.name, got, err, tt.want)
		}
	}
	// Nothing was changed by a failed append.
	mustGet(t, s, "zerr-text", "x")
	mustGet(t, s, "zerr-max", strconv.FormatInt(kv.MaxScore, 10))
	mustMissing(t, s, "zerr-3-seq")
	mustMissing(t, s, "zerr-4-seq")
	for _, k := range []string{"zerr-1", "zerr-2", "zerr-4", "zerr-5", "zerr-6"} {
		mustZCard(t, s, k, 0)
	}
	// A low floor never takes the score below counter+1, even far below
	// the range.
	mustZAppend(t, s, "zerr-7", "zerr-7-seq", "m", math.MinInt64, 1)
}

// testZAppendSameMembersRace: processes rebuilding a lost queue at once
// append the same members, while new ones keep coming: every member ends
// with one score, which every append of it returned, and the scores are
// distinct and consecutive.
func testZAppendSameMembersRace(t *testing.T, s kv.Store) {
	const key, counter = "zrace", "zrace-seq"
	const rebuilders, old, fresh = 8, 60, 40
	var (
		mu     sync.Mutex
		scores = map[string]map[int64]int{} // member -> score -> times returned
	)
	record := func(m string, sc int64, err error) {
		mu.Lock()
		defer mu.Unlock()
		if err != nil {
			t.Errorf("ZAppend(%q): %v", m, err)
			return
		}
		if scores[m] == nil {
			scores[m] = map[int64]int{}
		}
		scores[m][sc]++
	}
	race(rebuilders+1, func(i int) {
		if i == rebuilders { // new members
			for k := range fresh {
				m := fmt.Sprintf("new-%03d", k)
				sc, err := s.ZAppend(ctx(t), key, counter, m, 0, 0)
				record(m, sc, err)
			}
			return
		}
		for _, k := range rand.Perm(old) {
			m := fmt.Sprintf("old-%03d", k)
			sc, err := s.ZAppend(ctx(t), key, counter, m, 0, 0)
			record(m, sc, err)
		}
	})
	if t.Failed() {
		return
	}
	mustZCard(t, s, key, old+fresh)
	all, err := s.ZAfter(ctx(t), key, 0, 2*(old+fresh))
	if err != nil {
		t.Fatal(err)
	}
	for i, sc := range all {
		if sc.Score != int64(i+1) {
			t.Fatalf("member %d of the set has score %d, want %d: %v", i, sc.Score, i+1, all)
		}
		got := scores[sc.Member]
		if len(got) != 1 || got[sc.Score] == 0 {
			t.Fatalf("appends of %q returned %v; the set holds it at %d", sc.Member, got, sc.Score)
		}
	}
	mustGet(t, s, counter, strconv.Itoa(old+fresh))
}

func mustZAck(t *testing.T, s kv.Store, key, counter string, upTo, want int64, wantKnown bool) {
	t.Helper()
	got, known, err := s.ZAck(ctx(t), key, counter, upTo)
	if err != nil || got != want || known != wantKnown {
		t.Fatalf("ZAck(%q, %q, %d) = %d, %v, %v; want %d, %v", key, counter, upTo, got, known, err, want, wantKnown)
	}
}

// testZAck: a cursor the counter has handed out acknowledges; one above
// the counter (from before the counter was lost) removes nothing.
func testZAck(t *testing.T, s kv.Store) {
	const key, counter = "zack", "zack-seq"
	for i := int64(1); i <= 5; i++ {
		mustZAppend(t, s, key, counter, member(i), 0, i)
	}
	mustZAck(t, s, key, counter, 0, 0, true)
	mustZAck(t, s, key, counter, 2, 2, true)
	mustZAck(t, s, key, counter, 2, 0, true)
	mustZAck(t, s, key, counter, 6, 0, false) // never handed out
	mustZAck(t, s, key, counter, math.MaxInt64, 0, false)
	mustZCard(t, s, key, 3)
	mustZAck(t, s, key, counter, 5, 3, true)
	mustZCard(t, s, key, 0)

	// The queue and its counter lost, then filled again under a floor:
	// an old cursor above the new counter acknowledges nothing.
	if err := s.Del(ctx(t), key, counter); err != nil {
		t.Fatal(err)
	}
	mustZAck(t, s, key, counter, 5, 0, false) // missing counter = 0
	mustZAck(t, s, key, counter, math.MinInt64, 0, true)
	mustZAppend(t, s, key, counter, "after-1", 3, 3)
	mustZAck(t, s, key, counter, 4, 0, false)
	mustZCard(t, s, key, 1)
	mustZAck(t, s, key, counter, 3, 1, true)

	mustSet(t, s, "zack-text", "x", 0)
	if _, _, err := s.ZAck(ctx(t), key, "zack-text", 1); !errors.Is(err, kv.ErrNotInteger) {
		t.Errorf("ZAck with a non-integer counter: %v, want ErrNotInteger", err)
	}
	mustSet(t, s, "zack-value", "v", 0)
	if _, _, err := s.ZAck(ctx(t), "zack-value", counter, 1); !errors.Is(err, kv.ErrWrongType) {
		t.Errorf("ZAck on a value: %v, want ErrWrongType", err)
	}
}

// testZAckRace: appenders and an acknowledger that acknowledges what it
// has read: nothing it has not read is ever removed, and everything it
// acknowledged is gone.
func testZAckRace(t *testing.T, s kv.Store) {
	const key, counter = "zack-race", "zack-race-seq"
	const writers, each = 6, 40
	var appended atomic.Int64
	seen := map[string]bool{}
	race(writers+1, func(i int) {
		if i < writers {
			for k := range each {
				if _, err := s.ZAppend(ctx(t), key, counter, fmt.Sprintf("%d-%d", i, k), 0, 0); err != nil {
					t.Errorf("ZAppend: %v", err)
					return
				}
				appended.Add(1)
			}
			return
		}
		var cursor int64
		for len(seen) < writers*each {
			all := appended.Load() == writers*each // before the read: all of them are there to read
			page, err := s.ZAfter(ctx(t), key, cursor, 7)
			if err != nil {
				t.Errorf("ZAfter: %v", err)
				return
			}
			for _, sc := range page {
				if seen[sc.Member] {
					t.Errorf("member %q read twice: an acknowledgement was lost", sc.Member)
					return
				}
				seen[sc.Member] = true
				cursor = sc.Score
			}
			if _, known, err := s.ZAck(ctx(t), key, counter, cursor); err != nil || !known {
				t.Errorf("ZAck(%d) = %v, %v; want known", cursor, known, err)
				return
			}
			if len(page) == 0 && all {
				return // some were removed unread: the count below says so
			}
		}
	})
	if len(seen) != writers*each {
		t.Fatalf("read %d of %d members: some were removed unread", len(seen), writers*each)
	}
	mustZCard(t, s, key, 0)
}
