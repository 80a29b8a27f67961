package promo

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/surge-platform/surge/internal/eventually"
	"github.com/surge-platform/surge/internal/platform/bus"
	"github.com/surge-platform/surge/internal/platform/id"
	"github.com/surge-platform/surge/internal/platform/kv"
	"github.com/surge-platform/surge/internal/platform/kv/kvtest"
	"github.com/surge-platform/surge/internal/platform/sqldb"
	"github.com/surge-platform/surge/internal/pricing"
)

// newService returns a promo service on two SQLite shards, an embedded bus
// and the given kv store, with its claims consumer running.
func newService(t *testing.T, store kv.Store) *Service {
	t.Helper()
	ctx := t.Context()
	c, err := sqldb.Open(ctx, []string{"sqlite:" + t.TempDir() + "/db?shards=2"}, sqldb.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if err := c.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	b, err := bus.Open(context.Background(), "embedded:"+t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	if err := b.EnsureStream(ctx, Claims); err != nil {
		t.Fatal(err)
	}
	ids, err := id.New(1)
	if err != nil {
		t.Fatal(err)
	}
	s := New(c, store, b, ids, nil, slog.New(slog.NewTextHandler(io.Discard, nil)))
	cctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); s.Consume(cctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return s
}

// stores are the kv adapters the claim tests run on: memory, and a private
// Redis that a test may restart empty (nil for memory).
func stores(t *testing.T) map[string]func(t *testing.T) (kv.Store, *kvtest.Server) {
	return map[string]func(t *testing.T) (kv.Store, *kvtest.Server){
		"memory": func(t *testing.T) (kv.Store, *kvtest.Server) {
			s, err := kv.Open(t.Context(), "mem:")
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { s.Close() })
			return s, nil
		},
		"redis": func(t *testing.T) (kv.Store, *kvtest.Server) {
			srv := kvtest.StartRedis(t)
			s, err := kv.Open(t.Context(), srv.URL(""))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { s.Close() })
			return s, srv
		},
	}
}

// campaign races `attempts` claims from `users` users (user u makes
// attempts/users of them) on t, calling mid once when midAt coupons have
// been handed out; it returns the coupons handed out per user and how many
// answers were 503 (paused while the counters were rebuilt).
func campaign(t *testing.T, s *Service, tid int64, users, attempts int, midAt int64, mid func()) (map[int64][]int64, int64) {
	t.Helper()
	var (
		mu     sync.Mutex
		got    = map[int64][]int64{}
		handed atomic.Int64
		once   sync.Once
		paused atomic.Int64
	)
	work := make(chan int64)
	var wg sync.WaitGroup
	for range 64 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for uid := range work {
				for try := 0; ; try++ {
					c, err := s.Claim(context.Background(), uid, tid)
					if err == nil {
						mu.Lock()
						got[uid] = append(got[uid], c.CouponID)
						mu.Unlock()
						if handed.Add(1) == midAt && mid != nil {
							once.Do(mid)
						}
						break
					}
					if errors.Is(err, ErrCouponsGone) || errors.Is(err, ErrClaimLimit) {
						break
					}
					if !errors.Is(err, ErrReloading) && !errors.Is(err, kv.ErrUnavailable) || try > 400 {
						t.Errorf("claim by user %d: %v", uid, err)
						break
					}
					paused.Add(1)
					time.Sleep(25 * time.Millisecond) // 503: try again, as a client would
				}
			}
		}()
	}
	for i := range attempts {
		work <- int64(100_000 + i%users)
	}
	close(work)
	wg.Wait()
	return got, paused.Load()
}

// settled waits until every claim answered is in the databases and checks
// the durable records: exactly `want` claims kept, none refused, one
// wallet coupon per answered claim, nobody over the limit.
func settled(t *testing.T, s *Service, tid int64, got map[int64][]int64, want, perUser int64) {
	t.Helper()
	ctx := t.Context()
	var answered int64
	for uid, cs := range got {
		answered += int64(len(cs))
		if int64(len(cs)) > perUser {
			t.Errorf("user %d was answered %d coupons, limit %d", uid, len(cs), perUser)
		}
	}
	if answered != want {
		t.Errorf("%d claims answered 201, want exactly %d", answered, want)
	}
	main := s.db.Main().W
	eventually.True(t, 20*time.Second, "every answered claim reaches the database", func() bool {
		var n int64
		main.QueryRowContext(ctx, `SELECT COUNT(*) FROM coupon_claims WHERE template_id = $1`, tid).Scan(&n)
		return n >= answered
	})
	var ok, refused, claimed, over int64
	main.QueryRowContext(ctx, `SELECT COUNT(*) FROM coupon_claims WHERE template_id = $1 AND state = 'ok'`, tid).Scan(&ok)
	main.QueryRowContext(ctx, `SELECT COUNT(*) FROM coupon_claims WHERE template_id = $1 AND state = 'refused'`, tid).Scan(&refused)
	main.QueryRowContext(ctx, `SELECT claimed FROM coupon_templates WHERE id = $1`, tid).Scan(&claimed)
	main.QueryRowContext(ctx, `SELECT COUNT(*) FROM (SELECT user_id FROM coupon_claims WHERE template_id = $1 AND state = 'ok'
		GROUP BY user_id HAVING COUNT(*) > $2) x`, tid, perUser).Scan(&over)
	if ok != want || claimed != want || refused != 0 || over != 0 {
		t.Errorf("durable: %d claims kept, template counts %d, %d refused, %d users over the limit; want %d, %d, 0, 0",
			ok, claimed, refused, over, want, want)
	}
	for uid, cs := range got {
		wallet, err := s.Wallet(ctx, uid)
		if err != nil {
			t.Fatal(err)
		}
		for _, cid := range cs {
			found := false
			for _, c := range wallet {
				if c.ID == cid {
					found = c.State == Available
				}
			}
			if !found {
				t.Errorf("user %d: coupon %d answered 201 is not available in the wallet: %+v", uid, cid, wallet)
			}
		}
	}
}

func newTemplate(t *testing.T, s *Service, qty, perUser int64) *Template {
	t.Helper()
	tp, err := s.CreateTemplate(t.Context(), Template{Terms: Terms{Name: "满50减10", Kind: pricing.ThresholdOff, Min: 5000, Off: 1000},
		Quantity: qty, PerUser: perUser})
	if err != nil {
		t.Fatal(err)
	}
	return &tp
}

// 10,000 claims from 5,000 users on a 1,000-coupon template with a limit
// of 1: exactly 1,000 coupons, nobody holds 2 — on memory and on Redis.
func TestClaimRace(t *testing.T) {
	for name, open := range stores(t) {
		t.Run(name, func(t *testing.T) {
			store, _ := open(t)
			s := newService(t, store)
			tp := newTemplate(t, s, 1000, 1)
			got, _ := campaign(t, s, tp.ID, 5000, 10_000, 0, nil)
			settled(t, s, tp.ID, got, 1000, 1)
		})
	}
}

// The same campaign with Redis restarted empty (no persistence) when 400
// coupons have been handed out: claims pause (503) while the counters are rebuilt from
// the durable claims, then go on, and still exactly 1,000 coupons are
// handed out and nobody holds 2.
func TestClaimRaceRedisRestarted(t *testing.T) {
	store, srv := stores(t)["redis"](t)
	s := newService(t, store)
	tp := newTemplate(t, s, 1000, 1)
	got, paused := campaign(t, s, tp.ID, 5000, 10_000, 400, srv.Restart)
	if paused == 0 {
		t.Error("no claim was paused: the restart did not take the counters away")
	}
	t.Logf("%d answers were 503 while the counters were rebuilt", paused)
	settled(t, s, tp.ID, got, 1000, 1)
}

// A limit above 1 holds too, and a claim that finds the template not
// loaded (a new node, a kv that lost it) loads it from the durable claims:
// each of 10 customers claims once, the counter is dropped, and a
// campaign of 100 more claims pauses, reloads and hands out exactly the
// 20 the limit of 3 still allows.
func TestClaimLimitAndReload(t *testing.T) {
	store, _ := stores(t)["memory"](t)
	s := newService(t, store)
	tp := newTemplate(t, s, 50, 3)
	got, _ := campaign(t, s, tp.ID, 10, 10, 0, nil)
	if err := s.kv.Del(t.Context(), leftKey(tp.ID)); err != nil {
		t.Fatal(err)
	}
	more, paused := campaign(t, s, tp.ID, 10, 100, 0, nil)
	if paused == 0 {
		t.Error("no claim found the template not loaded")
	}
	for uid, cs := range more {
		got[uid] = append(got[uid], cs...)
	}
	settled(t, s, tp.ID, got, 30, 3)
}

// A kv that comes back with stale counters (a failover to a replica that
// was behind) is caught by the loss watch, which calls Forget: the
// counters are dropped and the next claims reload them from the durable
// claims, so the stale, higher count hands out nothing extra.
func TestForgetStaleCounters(t *testing.T) {
	store, _ := stores(t)["memory"](t)
	s := newService(t, store)
	tp := newTemplate(t, s, 20, 1)
	got, _ := campaign(t, s, tp.ID, 15, 15, 0, nil)
	// The "replica": 15 claimed, but it still says 20 are left and
	// nobody has claimed.
	if err := s.kv.Set(t.Context(), leftKey(tp.ID), []byte("20"), 0); err != nil {
		t.Fatal(err)
	}
	for uid := range got {
		s.kv.Del(t.Context(), userKey(tp.ID, uid))
	}
	if err := s.Forget(t.Context()); err != nil {
		t.Fatal(err)
	}
	more, paused := campaign(t, s, tp.ID, 40, 40, 0, nil) // the 15 again, and 25 new customers
	if paused == 0 {
		t.Error("no claim waited for the reload")
	}
	for uid, cs := range more {
		got[uid] = append(got[uid], cs...)
	}
	settled(t, s, tp.ID, got, 20, 1)
}
