package lease_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/surge-platform/surge/internal/eventually"
	"github.com/surge-platform/surge/internal/platform/errkind"
	"github.com/surge-platform/surge/internal/platform/id"
	"github.com/surge-platform/surge/internal/platform/lease"
	"github.com/surge-platform/surge/internal/platform/obs"
	"github.com/surge-platform/surge/internal/platform/sqldb"
	"github.com/surge-platform/surge/internal/platform/sqldb/sqldbtest"
)

// engines runs f on SQLite and PostgreSQL: leases live in the main
// database only, so one shard is enough.
func engines(t *testing.T, f func(t *testing.T, tab *lease.Table)) {
	for _, e := range sqldbtest.Engines() {
		if !strings.HasSuffix(e.Name, "/1") {
			continue
		}
		t.Run(e.Name, func(t *testing.T) {
			t.Parallel()
			f(t, lease.New(e.Open(t).Main()))
		})
	}
}

func TestOneWinnerOfARace(t *testing.T) {
	t.Parallel()
	engines(t, func(t *testing.T, tab *lease.Table) {
		ctx := context.Background()
		const racers = 20
		var won atomic.Int32
		var wg sync.WaitGroup
		start := make(chan struct{})
		for i := range racers {
			wg.Go(func() {
				<-start
				ok, err := tab.Acquire(ctx, "job:x", fmt.Sprint("owner-", i), time.Minute)
				if err != nil {
					t.Error(err)
				}
				if ok {
					won.Add(1)
				}
			})
		}
		close(start)
		wg.Wait()
		if won.Load() != 1 {
			t.Fatalf("%d owners hold one lease, want 1", won.Load())
		}
	})
}

func TestRenewExpireRelease(t *testing.T) {
	t.Parallel()
	engines(t, func(t *testing.T, tab *lease.Table) {
		ctx := context.Background()
		const ttl = 400 * time.Millisecond
		a, b := tab.Hold("job:y", "a", ttl), tab.Hold("job:y", "b", ttl)
		if ok, err := a.Acquire(ctx); !ok || err != nil {
			t.Fatalf("a acquires a free lease: %v %v", ok, err)
		}
		taken := time.Now()
		if !a.Valid() {
			t.Fatal("a's lease not valid right after acquiring it")
		}
		if ok, err := b.Acquire(ctx); ok || err != nil {
			t.Fatalf("b takes a live lease: %v %v", ok, err)
		}
		if ok, err := a.Acquire(ctx); !ok || err != nil {
			t.Fatalf("a renews its own lease: %v %v", ok, err)
		}
		// a stops renewing: b gets the lease once it expires, not before,
		// and a's local deadline has passed by then.
		deadline := time.Now().Add(10 * time.Second)
		for {
			ok, err := b.Acquire(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if ok {
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("an expired lease was never taken over")
			}
			time.Sleep(20 * time.Millisecond)
		}
		if since := time.Since(taken); since < ttl {
			t.Fatalf("b took the lease %v after a renewed it, before its ttl %v", since, ttl)
		}
		if a.Valid() {
			t.Fatal("a still thinks it holds a lease b took")
		}
		hs, err := tab.List(ctx, "job:")
		if err != nil || len(hs) != 1 || hs[0].Owner != "b" || !hs[0].Live {
			t.Fatalf("list: %+v %v", hs, err)
		}
		if ok, _ := a.Acquire(ctx); ok || a.Valid() {
			t.Fatal("a took back b's live lease")
		}
		if err := b.Release(ctx, 0); err != nil {
			t.Fatal(err)
		}
		if ok, err := a.Acquire(ctx); !ok || err != nil {
			t.Fatalf("a after b released: %v %v", ok, err)
		}
		if err := b.Release(ctx, 0); err != nil { // b's release of a's lease does nothing
			t.Fatal(err)
		}
		if hs, _ := tab.List(ctx, "job:"); len(hs) != 1 || hs[0].Owner != "a" || !hs[0].Live {
			t.Fatalf("b's release removed a's lease: %+v", hs)
		}
	})
}

func TestNodeIDsDistinct(t *testing.T) {
	t.Parallel()
	engines(t, func(t *testing.T, tab *lease.Table) {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		const nodes = 6
		got := make([]int, nodes)
		gens := make([]*id.Generator, nodes)
		var wg sync.WaitGroup
		for i := range nodes {
			wg.Go(func() {
				gens[i] = id.NewLeased()
				n, err := lease.LeaseNodeID(ctx, tab, fmt.Sprint("p", i), -1, 0, gens[i], slog.Default())
				if err != nil {
					t.Error(err)
					return
				}
				got[i] = n.Node()
			})
		}
		wg.Wait()
		seen := map[int]bool{}
		for i, n := range got {
			if seen[n] || n < 0 || n >= nodes {
				t.Fatalf("node ids %v: not distinct lowest ones", got)
			}
			seen[n] = true
			x, err := gens[i].Next(0)
			if err != nil || id.Node(x) != n {
				t.Fatalf("generator of node %d made %d (node %d): %v", n, x, id.Node(x), err)
			}
		}
		// An operator's choice of a held id is refused with what to do.
		_, err := lease.LeaseNodeID(ctx, tab, "late", got[0], 0, id.NewLeased(), slog.Default())
		if !errors.Is(err, lease.ErrNodeTaken) || !strings.Contains(err.Error(), "--node-id") {
			t.Fatalf("a held node id given: %v, want ErrNodeTaken saying what to pass", err)
		}
		if _, err := lease.LeaseNodeID(ctx, tab, "late", id.MaxNode+1, 0, id.NewLeased(), slog.Default()); err == nil {
			t.Fatal("node id out of range accepted")
		}
	})
}

func TestNodeIDKeepsAndReleases(t *testing.T) {
	t.Parallel()
	engines(t, func(t *testing.T, tab *lease.Table) {
		ctx, cancel := context.WithCancel(context.Background())
		const ttl = 500 * time.Millisecond
		g := id.NewLeased()
		n, err := lease.LeaseNodeID(ctx, tab, "keeper", 5, ttl, g, slog.Default())
		if err != nil {
			t.Fatal(err)
		}
		done := make(chan error)
		go func() { done <- n.Keep(ctx) }()
		// Kept past several ttls, the generator never stops.
		end := time.Now().Add(3 * ttl)
		for time.Now().Before(end) {
			if _, err := g.Next(0); err != nil {
				t.Fatalf("a kept lease stopped the generator: %v", err)
			}
			time.Sleep(10 * time.Millisecond)
		}
		cancel()
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		if _, err := g.Next(0); !errors.Is(err, id.ErrNoLease) {
			t.Fatalf("after Keep returned: %v, want ErrNoLease", err)
		}
		// Released: another process gets node id 5 at once.
		if _, err := lease.LeaseNodeID(context.Background(), tab, "next", 5, ttl, id.NewLeased(), slog.Default()); err != nil {
			t.Fatalf("node id 5 after its holder stopped: %v", err)
		}
	})
}

func TestJobRunsOnOneNode(t *testing.T) {
	t.Parallel()
	engines(t, func(t *testing.T, tab *lease.Table) {
		const ttl, period, nodes = 600 * time.Millisecond, 50 * time.Millisecond, 3
		var running, overlap atomic.Int32
		runs := make([]atomic.Int32, nodes)
		cancels := make([]context.CancelFunc, nodes)
		jobs := make([]*lease.Jobs, nodes)
		var wg sync.WaitGroup
		for i := range nodes {
			ctx, cancel := context.WithCancel(context.Background())
			cancels[i] = cancel
			jobs[i] = lease.NewJobs(tab, fmt.Sprint("node", i), ttl, slog.Default())
			wg.Go(func() {
				jobs[i].Every(ctx, "sweep", period, func(context.Context) error {
					if running.Add(1) > 1 {
						overlap.Add(1)
					}
					time.Sleep(5 * time.Millisecond)
					running.Add(-1)
					runs[i].Add(1)
					return nil
				})
			})
		}
		defer func() {
			for _, c := range cancels {
				if c != nil {
					c()
				}
			}
			wg.Wait()
		}()
		leader := func() int {
			deadline := time.Now().Add(10 * time.Second)
			for {
				for i := range nodes {
					if cancels[i] != nil && runs[i].Load() > 0 {
						return i
					}
				}
				if time.Now().After(deadline) {
					t.Fatal("no node ran the job")
				}
				time.Sleep(10 * time.Millisecond)
			}
		}
		first := leader()
		t0 := time.Now()
		base := runs[first].Load()
		time.Sleep(20 * period)
		elapsed := time.Since(t0)
		for i := range nodes {
			if i != first && runs[i].Load() != 0 {
				t.Fatalf("node %d ran the job while node %d held it: runs %v", i, first, runs[i].Load())
			}
		}
		if got, most := runs[first].Load()-base, int32(elapsed/period)+1; got < most/4 || got > most {
			t.Fatalf("leader ran %d times in %v at one per %v", got, elapsed, period)
		}
		st := jobs[first].Stats()
		if len(st) != 1 || !st[0].Leader || st[0].Runs == 0 {
			t.Fatalf("leader's stats %+v", st)
		}
		// The leader stops (and releases): another node takes over at once.
		cancels[first]()
		for i := range nodes {
			runs[i].Store(0)
		}
		cancels[first] = nil
		if next := leader(); next == first {
			t.Fatal("a stopped node still runs the job")
		}
		if overlap.Load() != 0 {
			t.Fatalf("%d runs overlapped another node's", overlap.Load())
		}
	})
}

// With a tracer, each run of a job is a trace of its own: the run's ctx
// carries it, and the line logged when a run fails names it.
func TestJobRunsAreTraced(t *testing.T) {
	t.Parallel()
	tab := lease.New(sqldbtest.Engines()[0].Open(t).Main())
	var logged bytes.Buffer
	var mu sync.Mutex
	log := slog.New(obs.LogHandler{Handler: slog.NewJSONHandler(lockedWriter{&mu, &logged}, nil)})
	jobs := lease.NewJobs(tab, "node0", 600*time.Millisecond, log)
	jobs.Trace(obs.NewTracing("test", nil, 0).Tracer())
	ctx, cancel := context.WithCancel(context.Background())
	seen := make(chan string, 8)
	done := make(chan struct{})
	go func() {
		defer close(done)
		jobs.Every(ctx, "sweep", 20*time.Millisecond, func(ctx context.Context) error {
			select {
			case seen <- trace.SpanContextFromContext(ctx).TraceID().String():
			default:
			}
			return errors.New("boom")
		})
	}()
	var ids []string
	for len(ids) < 3 {
		select {
		case id := <-seen:
			ids = append(ids, id)
		case <-time.After(10 * time.Second):
			t.Fatal("the job did not run")
		}
	}
	cancel()
	<-done
	if ids[0] == (trace.TraceID{}).String() || ids[0] == ids[1] || ids[1] == ids[2] {
		t.Fatalf("trace ids of three runs: %v; want three distinct, valid ones", ids)
	}
	mu.Lock()
	defer mu.Unlock()
	for _, id := range ids[:2] { // the third's line may be cut off by the stop
		if !strings.Contains(logged.String(), `"msg":"job failed","job":"sweep","err":"boom","trace_id":"`+id+`"`) {
			t.Fatalf("no failure line with trace id %s in:\n%s", id, logged.String())
		}
	}
}

type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// A process paused past its node id lease finds the id taken when it wakes:
// it issues nothing with it, and moves to a free id.
func TestNodeIDPausedPastItsLease(t *testing.T) {
	t.Parallel()
	engines(t, func(t *testing.T, tab *lease.Table) {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		const ttl = time.Second
		ga := id.NewLeased()
		a, err := lease.LeaseNodeID(ctx, tab, "sleeper", -1, ttl, ga, slog.Default())
		if err != nil {
			t.Fatal(err)
		}
		// a is "paused": it does not renew. b takes its id once it expires.
		gb := id.NewLeased()
		deadline := time.Now().Add(10 * time.Second)
		for {
			b, err := lease.LeaseNodeID(ctx, tab, "newcomer", a.Node(), ttl, gb, slog.Default())
			if err == nil {
				if b.Node() != a.Node() {
					t.Fatalf("newcomer got %d, asked for %d", b.Node(), a.Node())
				}
				go b.Keep(ctx)
				break
			}
			if !errors.Is(err, lease.ErrNodeTaken) || time.Now().After(deadline) {
				t.Fatal(err)
			}
			time.Sleep(20 * time.Millisecond)
		}
		if _, err := ga.Next(0); !errors.Is(err, id.ErrNoLease) {
			t.Fatalf("the paused process issued an id after its lease ran out: %v", err)
		}
		// a wakes up and renews: it finds its id taken and leases another.
		go a.Keep(ctx)
		for {
			if x, err := ga.Next(0); err == nil {
				// The id it issues with is leased to it, not to the newcomer.
				hs, err := tab.List(ctx, fmt.Sprintf("node:%d", id.Node(x)))
				if err != nil {
					t.Fatal(err)
				}
				if len(hs) != 1 || hs[0].Owner != "sleeper" {
					t.Fatalf("the woken process issues ids as node %d, leased as %+v", id.Node(x), hs)
				}
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("the woken process never got a new node id")
			}
			time.Sleep(20 * time.Millisecond)
		}
	})
}

// A node id handed from one process to the next (a clean stop, then a
// start) carries the first one's bound: the second issues ids only in
// later milliseconds, even with a clock seconds behind the first one's.
func TestNodeIDHandoverAcrossSkewedClocks(t *testing.T) {
	t.Parallel()
	engines(t, func(t *testing.T, tab *lease.Table) {
		ctx := context.Background()
		ga := id.NewLeased()
		a, err := lease.LeaseNodeID(ctx, tab, "first", 7, time.Second, ga, slog.Default())
		if err != nil {
			t.Fatal(err)
		}
		var last int64
		for range 50 {
			x, err := ga.Next(0)
			if err != nil {
				t.Fatal(err)
			}
			last = x
		}
		if err := a.Release(ctx); err != nil {
			t.Fatal(err)
		}
		gb := id.NewLeased()
		if _, err := lease.LeaseNodeID(ctx, tab, "second", 7, time.Second, gb, slog.Default()); err != nil {
			t.Fatalf("node id 7 after a clean stop: %v", err)
		}
		eventually.True(t, 5*time.Second, "an id from the second holder", func() bool {
			x, err := gb.Next(0)
			if err != nil {
				return false
			}
			if id.Time(x).UnixMilli() <= id.Time(last).UnixMilli() || x <= last {
				t.Fatalf("second holder's id %d (%v) not after the first holder's last %d (%v)", x, id.Time(x), last, id.Time(last))
			}
			return true
		})
	})
}

// The bound a holder leaves reaches the next holder's generator: a
// previous holder whose clock ran an hour ahead leaves a bound the new one
// cannot issue ids under until its own clock passes it (refused, not
// repeated).
func TestNodeIDBoundReachesTheNextHolder(t *testing.T) {
	t.Parallel()
	engines(t, func(t *testing.T, tab *lease.Table) {
		ctx := context.Background()
		ahead := time.Now().Add(time.Hour).UnixMilli()
		if ok, _, err := tab.AcquireMarked(ctx, "node:9", "ahead", time.Second, ahead); !ok || err != nil {
			t.Fatalf("acquire: %v %v", ok, err)
		}
		if err := tab.Release(ctx, "node:9", "ahead", ahead); err != nil {
			t.Fatal(err)
		}
		g := id.NewLeased()
		if _, err := lease.LeaseNodeID(ctx, tab, "behind", 9, time.Second, g, slog.Default()); err != nil {
			t.Fatal(err)
		}
		if x, err := g.Next(0); !errors.Is(err, id.ErrNoLease) {
			t.Fatalf("an id (%v) below the previous holder's bound %v: %v", id.Time(x), time.UnixMilli(ahead), err)
		}
		// Another id is unaffected.
		g2 := id.NewLeased()
		if _, err := lease.LeaseNodeID(ctx, tab, "other", 10, time.Second, g2, slog.Default()); err != nil {
			t.Fatal(err)
		}
		if _, err := g2.Next(0); err != nil {
			t.Fatalf("a fresh node id: %v", err)
		}
	})
}

// A node cut off from the database keeps running: its generator issues ids
// until the lease's local deadline, then refuses (Unavailable: a 503 at the
// edge), and Keep goes on trying instead of stopping the node.
func TestNodeIDDatabaseAway(t *testing.T) {
	t.Parallel()
	c, err := sqldb.Open(context.Background(), []string{sqldbtest.SQLiteURL(t, 1)}, sqldb.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Migrate(context.Background()); err != nil {
		t.Fatal(err)
	}
	const ttl = 500 * time.Millisecond
	g := id.NewLeased()
	n, err := lease.LeaseNodeID(context.Background(), lease.New(c.Main()), "cut-off", -1, ttl, g, slog.Default())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	kept := make(chan error, 1)
	go func() { kept <- n.Keep(ctx) }()
	c.Close() // the database is away from now on
	eventually.True(t, 5*time.Second, "the generator stops at its lease's deadline", func() bool {
		_, err := g.Next(0)
		return errors.Is(err, id.ErrNoLease)
	})
	if e := errkind.Of(id.ErrNoLease); e == nil || e.Kind != errkind.Unavailable {
		t.Fatalf("ErrNoLease is %+v, want kind Unavailable (503)", e)
	}
	select {
	case err := <-kept:
		t.Fatalf("Keep stopped while the database was away: %v", err)
	case <-time.After(3 * ttl):
	}
}
