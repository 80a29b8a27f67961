package id

import (
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestFields(t *testing.T) {
	t.Parallel()
	g, err := New(77)
	if err != nil {
		t.Fatal(err)
	}
	before := time.Now().Truncate(time.Millisecond)
	x := must(t, g, 1000)
	if Gene(x) != 1000 || Node(x) != 77 {
		t.Fatalf("gene %d node %d, want 1000 77", Gene(x), Node(x))
	}
	if ts := Time(x); ts.Before(before) || ts.After(time.Now()) {
		t.Fatalf("time %v outside [%v, now]", ts, before)
	}
	if x <= 0 {
		t.Fatalf("id %d must be positive (63 bits)", x)
	}
	if GeneOf(123456789) != 123456789%1024 || Gene(must(t, g, 1024+5)) != 5 {
		t.Fatal("gene arithmetic wrong")
	}
	if _, err := New(128); err == nil {
		t.Fatal("node 128 accepted")
	}
}

func TestUniqueAndIncreasingUnderConcurrency(t *testing.T) {
	t.Parallel()
	g, _ := New(1)
	const workers, each = 8, 5000
	out := make([][]int64, workers)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				out[w] = append(out[w], must(t, g, i))
			}
		}()
	}
	wg.Wait()
	seen := make(map[int64]bool, workers*each)
	for _, ids := range out {
		for i, x := range ids {
			if seen[x] {
				t.Fatalf("duplicate id %d", x)
			}
			seen[x] = true
			// Ids differ only in the gene when sequence and time are equal, so
			// compare with the gene stripped: each worker sees increasing ids.
			if i > 0 && x>>geneBits <= ids[i-1]>>geneBits {
				t.Fatalf("not increasing: %d after %d", x, ids[i-1])
			}
		}
	}
}

func TestClockStepBackDoesNotRepeat(t *testing.T) {
	t.Parallel()
	g, _ := New(3)
	now := time.Now()
	g.now = func() time.Time { return now }
	seen := map[int64]bool{}
	for range maxSeq + 1 {
		seen[must(t, g, 0)] = true
	}
	// The clock steps back one second; the generator must keep going forward
	// (within the remembered millisecond) and then wait rather than repeat.
	calls := 0
	g.now = func() time.Time {
		calls++
		if calls > 3 {
			return now.Add(time.Millisecond)
		}
		return now.Add(-time.Second)
	}
	x := must(t, g, 0)
	if seen[x] {
		t.Fatalf("repeated id %d after clock step back", x)
	}
	if Time(x).Before(now.Truncate(time.Millisecond)) {
		t.Fatalf("id time %v went back", Time(x))
	}
}

func must(t *testing.T, g *Generator, gene int) int64 {
	t.Helper()
	x, err := g.Next(gene)
	if err != nil {
		t.Error(err)
	}
	return x
}

func TestLeasedStopsAtItsDeadline(t *testing.T) {
	t.Parallel()
	g := NewLeased()
	if _, err := g.Next(0); !errors.Is(err, ErrNoLease) {
		t.Fatalf("no lease yet: %v, want ErrNoLease", err)
	}
	g.Lease(9, time.Now().Add(time.Hour), 0, hourAhead())
	if x := must(t, g, 0); Node(x) != 9 {
		t.Fatalf("node %d, want 9", Node(x))
	}
	// A paused process wakes past its deadline: no id, whatever its wall
	// clock says, until the lease is renewed.
	g.Lease(9, time.Now().Add(-time.Millisecond), 0, hourAhead())
	if _, err := g.Next(0); !errors.Is(err, ErrNoLease) {
		t.Fatalf("past the deadline: %v, want ErrNoLease", err)
	}
	g.Lease(10, time.Now().Add(time.Hour), 0, hourAhead()) // renewed under another node id
	x := must(t, g, 0)
	if Node(x) != 10 {
		t.Fatalf("node %d after switching, want 10", Node(x))
	}
}

func hourAhead() int64 { return time.Now().Add(time.Hour).UnixMilli() }

// A new holder of a node id issues ids only in milliseconds after the
// bound its previous holder declared, whatever its own clock says; and
// none past the bound it declared itself (its clock stepped forward).
func TestLeasedBounds(t *testing.T) {
	t.Parallel()
	g := NewLeased()
	floor := time.Now().Add(20 * time.Millisecond).UnixMilli() // the previous holder's clock was ahead
	g.Lease(3, time.Now().Add(time.Hour), floor, hourAhead())
	for i := range 100 {
		x, err := g.Next(i)
		if err != nil {
			continue // refused while our clock is behind the floor
		}
		if ms := Time(x).UnixMilli(); ms <= floor {
			t.Fatalf("id in millisecond %d, not after the previous holder's bound %d", ms, floor)
		}
	}
	far := time.Now().Add(time.Minute).UnixMilli()
	g2 := NewLeased()
	g2.Lease(4, time.Now().Add(time.Hour), far, hourAhead())
	if _, err := g2.Next(0); !errors.Is(err, ErrNoLease) {
		t.Fatalf("a clock a minute behind the previous holder's bound: %v, want ErrNoLease, not a wait", err)
	}
	g3 := NewLeased()
	g3.Lease(5, time.Now().Add(time.Hour), 0, time.Now().Add(-time.Second).UnixMilli())
	if _, err := g3.Next(0); !errors.Is(err, ErrNoLease) {
		t.Fatalf("past the declared bound: %v, want ErrNoLease", err)
	}
}

// TestBurstBorrowsAhead: a burst of more than 32 ids in one millisecond
// takes the next milliseconds at once (no waiting for the clock), up to
// 20 ms ahead; beyond that Next waits for the clock.
func TestBurstBorrowsAhead(t *testing.T) {
	t.Parallel()
	g, _ := New(5)
	now := time.Now()
	var clock atomic.Int64
	clock.Store(now.UnixNano())
	g.now = func() time.Time { return time.Unix(0, clock.Load()) }
	var last int64
	for i := range 21 * (maxSeq + 1) { // this millisecond and 20 more, with the clock frozen
		x := must(t, g, 0)
		if x <= last {
			t.Fatalf("id %d: %d not above %d", i, x, last)
		}
		last = x
	}
	if ahead := Time(last).Sub(now.Truncate(time.Millisecond)); ahead != 20*time.Millisecond {
		t.Fatalf("the burst borrowed %v ahead, want 20 ms", ahead)
	}
	// The next one must wait until the clock moves.
	got := make(chan int64)
	go func() { got <- must(t, g, 0) }()
	select {
	case x := <-got:
		t.Fatalf("id %d handed out 20 ms ahead of a frozen clock", x)
	case <-time.After(50 * time.Millisecond):
	}
	clock.Add(int64(5 * time.Millisecond))
	if x := <-got; x <= last {
		t.Fatalf("%d not above %d", x, last)
	}
}

// Floor(t) is above every id made before t's millisecond and at or below
// every id made in it or after.
func TestFloor(t *testing.T) {
	g, err := New(MaxNode)
	if err != nil {
		t.Fatal(err)
	}
	for range 1000 {
		x, err := g.Next(Genes - 1)
		if err != nil {
			t.Fatal(err)
		}
		at := Time(x)
		if f := Floor(at); f > x || Floor(at.Add(time.Millisecond)) <= x {
			t.Fatalf("id %d made at %v: Floor there %d, a millisecond later %d", x, at, f, Floor(at.Add(time.Millisecond)))
		}
	}
	if f := Floor(Epoch.Add(-time.Hour)); f != 0 {
		t.Errorf("Floor before the epoch: %d, want 0", f)
	}
}
