package kv_test

import (
	"context"
	"errors"
	"maps"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/surge-platform/surge/internal/platform/kv"
)

// lossy is a Store that loses data the ways a real one does: everything
// (a restart without persistence, a flush), or the writes since a
// snapshot (a failover to a replica that was behind); or stops answering.
// Keys live under a generation prefix in the store below. Only the value
// operations a Watch uses are wrapped.
type lossy struct {
	kv.Store
	mu   sync.Mutex
	gen  int
	vals map[string]string // what the current generation holds, as written through lossy
	down atomic.Bool
	lost atomic.Bool // writes land but report an error (an answer lost in a failover)
}

var errDown = errors.Join(kv.ErrUnavailable, errors.New("lossy: down"))

func newLossy(s kv.Store) *lossy { return &lossy{Store: s, vals: map[string]string{}} }

func (l *lossy) key(k string) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return "g" + strconv.Itoa(l.gen) + ":" + k
}

func (l *lossy) Get(ctx context.Context, key string) ([]byte, error) {
	if l.down.Load() {
		return nil, errDown
	}
	return l.Store.Get(ctx, l.key(key))
}

func (l *lossy) Set(ctx context.Context, key string, val []byte, ttl time.Duration) error {
	if l.down.Load() {
		return errDown
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.vals[key] = string(val)
	err := l.Store.Set(ctx, "g"+strconv.Itoa(l.gen)+":"+key, val, ttl)
	if err == nil && l.lost.Load() {
		return errDown
	}
	return err
}

func (l *lossy) SetNX(ctx context.Context, key string, val []byte, ttl time.Duration) (bool, error) {
	if l.down.Load() {
		return false, errDown
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	ok, err := l.Store.SetNX(ctx, "g"+strconv.Itoa(l.gen)+":"+key, val, ttl)
	if ok {
		l.vals[key] = string(val)
	}
	return ok, err
}

// flush loses everything.
func (l *lossy) flush() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.gen++
	l.vals = map[string]string{}
}

func (l *lossy) snapshot() map[string]string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return maps.Clone(l.vals)
}

// failover loses every write made since snap was taken.
func (l *lossy) failover(t *testing.T, snap map[string]string) {
	l.flush()
	for k, v := range snap {
		if err := l.Set(t.Context(), k, []byte(v), 0); err != nil {
			t.Fatal(err)
		}
	}
}

// process is one process watching the structure "queues".
type process struct {
	w        *kv.Watch
	rebuilds atomic.Int32
	mu       sync.Mutex
	events   []kv.Event
}

func newProcess(l kv.Store, rebuild func(ctx context.Context, n int) error) *process {
	p := &process{}
	p.w = kv.NewWatch(l, 10*time.Millisecond, func(e kv.Event) {
		p.mu.Lock()
		defer p.mu.Unlock()
		p.events = append(p.events, e)
	})
	p.w.Register("queues", func(ctx context.Context) error {
		n := int(p.rebuilds.Add(1))
		if rebuild != nil {
			return rebuild(ctx, n)
		}
		return nil
	})
	return p
}

// check runs one round and fails the test unless it rebuilt `want` times
// in all so far.
func (p *process) check(t *testing.T, what string, want int32) {
	t.Helper()
	p.w.Check(t.Context())
	if got := p.rebuilds.Load(); got != want {
		t.Fatalf("%s: %d rebuilds in all, want %d; events %v", what, got, want, p.events)
	}
}

func TestWatch(t *testing.T) {
	t.Parallel()
	backends := []struct {
		name string
		open func(t *testing.T) kv.Store
	}{
		{"memory", func(t *testing.T) kv.Store {
			m := kv.NewMemory()
			t.Cleanup(func() { m.Close() })
			return m
		}},
		{"redis", func(t *testing.T) kv.Store {
			s, _ := mustRedis(t, nil)
			return s
		}},
	}
	scenarios := []struct {
		name string
		fn   func(t *testing.T, l *lossy)
	}{
		{"FreshStoreRebuildsOnce", testWatchFresh},
		{"Flush", testWatchFlush},
		{"FailoverToAReplicaBehind", testWatchFailover},
		{"PausedProcess", testWatchPaused},
		{"LossDuringRebuild", testWatchLossDuringRebuild},
		{"FailedRebuildRetried", testWatchRetry},
		{"StoreDown", testWatchDown},
		{"FailoverSeenOnce", testWatchFailoverSeenOnce},
		{"ProcessesRace", testWatchRace},
		{"Run", testWatchRun},
	}
	for _, b := range backends {
		t.Run(b.name, func(t *testing.T) {
			t.Parallel()
			for _, sc := range scenarios {
				t.Run(sc.name, func(t *testing.T) {
					t.Parallel()
					sc.fn(t, newLossy(b.open(t)))
				})
			}
		})
	}
}

// A store without the marker counts as lost at start: a new store, or one
// emptied while no process ran. A process started later, with the store
// intact, rebuilds nothing.
func testWatchFresh(t *testing.T, l *lossy) {
	a := newProcess(l, nil)
	a.check(t, "first round", 1)
	a.check(t, "second round", 1)
	a.check(t, "third round", 1)
	b := newProcess(l, nil)
	b.check(t, "a process started on an intact store", 0)
	b.check(t, "its second round", 0)
	if e := a.events[0]; e.Reason == "" || !e.AtStart || e.Err != nil {
		t.Fatalf("event of the first rebuild: %+v", e)
	}
}

func testWatchFlush(t *testing.T, l *lossy) {
	a, b := newProcess(l, nil), newProcess(l, nil)
	a.check(t, "a, start", 1)
	b.check(t, "b, start", 0)
	l.flush()
	a.check(t, "a after the flush", 2)
	b.check(t, "b after the flush", 1)
	a.check(t, "a, next round", 2)
	b.check(t, "b, next round", 1)
}

// A replica that was behind keeps the marker (written long ago) but not
// the latest beat.
func testWatchFailover(t *testing.T, l *lossy) {
	a := newProcess(l, nil)
	a.check(t, "start", 1)
	a.check(t, "round 2", 1)
	snap := l.snapshot()
	a.check(t, "round 3, lost below", 1)
	l.failover(t, snap)
	a.check(t, "after the failover", 2)
	a.check(t, "next round", 2)
	if e := a.events[len(a.events)-1]; e.AtStart || !strings.Contains(e.Reason, "beat went back") {
		t.Fatalf("event of the rebuild after the failover: %+v", e)
	}
}

// A process paused through a loss that another process has rebuilt
// already sees the marker changed (and its beat gone) when it wakes.
func testWatchPaused(t *testing.T, l *lossy) {
	a, b := newProcess(l, nil), newProcess(l, nil)
	a.check(t, "a, start", 1)
	b.check(t, "b, start", 0)
	l.flush()
	b.check(t, "b rebuilds", 1)
	b.check(t, "b, next round", 1)
	a.check(t, "a wakes", 2)
	a.check(t, "a, next round", 2)
	b.check(t, "b, after a", 1)
}

// The store loses its data again while a rebuild runs: the beat written
// before the rebuild is gone, so the next round rebuilds again.
func testWatchLossDuringRebuild(t *testing.T, l *lossy) {
	a := newProcess(l, func(_ context.Context, n int) error {
		if n == 2 {
			l.flush()
		}
		return nil
	})
	a.check(t, "start", 1)
	l.flush()
	a.check(t, "after a flush, lost again during the rebuild", 2)
	a.check(t, "next round", 3)
	a.check(t, "then", 3)
}

// A rebuild that fails is retried each round until it succeeds, also when
// only the beat said there was a loss (the marker is fine).
func testWatchRetry(t *testing.T, l *lossy) {
	a := newProcess(l, func(_ context.Context, n int) error {
		if n == 2 || n == 3 {
			return errors.New("database down")
		}
		return nil
	})
	a.check(t, "start", 1)
	snap := l.snapshot()
	a.check(t, "round 2", 1)
	l.failover(t, snap)
	a.check(t, "after the failover, the rebuild fails", 2)
	a.check(t, "retried, fails again", 3)
	a.check(t, "retried, succeeds", 4)
	a.check(t, "then", 4)
	var failed int
	for _, e := range a.events {
		if e.Err != nil && e.Reason != "" {
			failed++
		}
	}
	if failed != 2 {
		t.Fatalf("%d failed rebuilds reported, want 2: %v", failed, a.events)
	}
}

// A store that does not answer: rounds fail without rebuilding (and are
// reported once); when it answers again with its data, nothing is rebuilt.
func testWatchDown(t *testing.T, l *lossy) {
	a := newProcess(l, nil)
	a.check(t, "start", 1)
	l.down.Store(true)
	for range 3 {
		if err := a.w.Check(t.Context()); !errors.Is(err, kv.ErrUnavailable) {
			t.Fatalf("Check with the store down = %v, want ErrUnavailable", err)
		}
	}
	l.down.Store(false)
	// Writes meant for the store while it was away may be missing (a
	// queue entry whose order.paid went to dead letters): one rebuild.
	a.check(t, "back", 2)
	a.check(t, "next round", 2)
	var failures int
	for _, e := range a.events {
		if e.Reason == "" && e.Err != nil {
			failures++
		}
	}
	if failures != 1 {
		t.Fatalf("%d failed rounds reported, want 1 for the outage: %v", failures, a.events)
	}
}

// Processes that find the same loss at once each rebuild once, then agree
// on one marker.
func testWatchRace(t *testing.T, l *lossy) {
	const n = 8
	ps := make([]*process, n)
	for i := range ps {
		ps[i] = newProcess(l, nil)
	}
	for range 2 {
		var wg sync.WaitGroup
		for _, p := range ps {
			wg.Go(func() { p.w.Check(t.Context()) })
		}
		wg.Wait()
		l.flush()
	}
	// Each found the second flush (its beat gone); the first round found
	// the fresh store at least once.
	for _, p := range ps {
		p.w.Check(t.Context())
	}
	var total int32
	for i, p := range ps {
		before := p.rebuilds.Load()
		if before < 1 {
			t.Fatalf("process %d never rebuilt after a flush", i)
		}
		total += before
		p.check(t, "a quiet round", before)
	}
	if total < n {
		t.Fatalf("%d rebuilds in all for %d processes", total, n)
	}
}

// Run checks each period: a flush is rebuilt within a few of them.
func testWatchRun(t *testing.T, l *lossy) {
	a := newProcess(l, nil)
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- a.w.Run(ctx) }()
	waitRebuilds(t, a, 1)
	l.flush()
	waitRebuilds(t, a, 2)
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run = %v, want nil", err)
	}
}

func waitRebuilds(t *testing.T, p *process, want int32) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); p.rebuilds.Load() < want; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d rebuilds after 10s, want %d", p.rebuilds.Load(), want)
		}
	}
}

// A failover found by a beat that went back, whose next beat lands but
// reports an error: the next rounds no longer see the old beat, and the
// rebuild must still come (it was found, then forgotten, before).
func testWatchFailoverSeenOnce(t *testing.T, l *lossy) {
	a := newProcess(l, nil)
	a.check(t, "start", 1)
	snap := l.snapshot()
	a.check(t, "a round after the snapshot", 1)
	l.failover(t, snap)
	l.lost.Store(true)
	if err := a.w.Check(t.Context()); err == nil {
		t.Fatal("a round whose beat write failed reported no error")
	}
	l.lost.Store(false)
	a.check(t, "the next round", 2)
	a.check(t, "and the one after", 2)
}
