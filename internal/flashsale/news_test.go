package flashsale

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"github.com/surge-platform/surge/internal/eventually"
	"github.com/surge-platform/surge/internal/order"
	"github.com/surge-platform/surge/internal/platform/bus"
	"github.com/surge-platform/surge/internal/platform/id"
	"github.com/surge-platform/surge/internal/platform/kv"
	"github.com/surge-platform/surge/internal/platform/sqldb"
)

// counting counts the admissions that reach kv.
type counting struct {
	kv.Store
	admits atomic.Int64
}

func (c *counting) Admit(ctx context.Context, stock, user string, n, limit int64, ttl time.Duration) (int64, kv.AdmitResult, error) {
	c.admits.Add(1)
	return c.Store.Admit(ctx, stock, user, n, limit, ttl)
}

// twoNodes returns two services (api nodes) sharing one database, one kv
// store and one bus, each running (sold-out news, refreshes).
func twoNodes(t *testing.T, cfg Config) (a, b *Service, bkv *counting) {
	t.Helper()
	ctx := t.Context()
	db, err := sqldb.Open(ctx, []string{"sqlite:" + t.TempDir() + "/db"}, sqldb.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	if err := db.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	bs, err := bus.Open(context.Background(), "embedded:"+t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { bs.Close() })
	if err := bs.EnsureStream(ctx, order.Stream); err != nil { // the workers' consumer of sales' orders follows it
		t.Fatal(err)
	}
	store, err := kv.Open(ctx, "mem:")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	node := func(n int, st kv.Store) *Service {
		ids, err := id.New(n)
		if err != nil {
			t.Fatal(err)
		}
		s := New(db, st, bs, ids, nil, nil, nil, "node", cfg, log)
		if err := s.Prepare(ctx); err != nil {
			t.Fatal(err)
		}
		rctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { defer close(done); s.Run(rctx) }()
		t.Cleanup(func() { cancel(); <-done })
		return s
	}
	bkv = &counting{Store: store}
	return node(1, store), node(2, bkv), bkv
}

// TestSoldOutNews: when one node sells the last unit, the other answers
// sold out from memory, without asking kv.
func TestSoldOutNews(t *testing.T) {
	a, b, bkv := twoNodes(t, Config{UserRate: -1, IPRate: -1})
	ctx := t.Context()
	now := time.Now()
	sale, err := a.Create(ctx, Sale{StoreID: 1001, SKU: 1001001, Price: 100, Stock: 2, PerUser: 1,
		StartsAt: now.Add(-time.Second), EndsAt: now.Add(time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.Purchase(ctx, sale.ID, Buyer{UserID: 1}); err != nil { // b serves the sale, 1 left
		t.Fatal(err)
	}
	if _, err := a.Purchase(ctx, sale.ID, Buyer{UserID: 2}); err != nil { // the last one, on a
		t.Fatal(err)
	}
	eventually.True(t, 5*time.Second, "node b told of the sell-out", func() bool {
		b.mu.RLock()
		defer b.mu.RUnlock()
		return b.sales[sale.ID].soldOut.Load()
	})
	before := bkv.admits.Load()
	for u := int64(3); u < 100; u++ {
		if _, err := b.Purchase(ctx, sale.ID, Buyer{UserID: u}); !errors.Is(err, ErrSoldOut) {
			t.Fatalf("user %d after sell-out: %v", u, err)
		}
	}
	if n := bkv.admits.Load() - before; n != 0 {
		t.Fatalf("%d sold-out attempts asked kv, want none", n)
	}
}

// TestHotKeyBudget: beyond the sale's per-node admission budget, a
// purchase is refused as busy before kv is asked.
func TestHotKeyBudget(t *testing.T) {
	_, b, bkv := twoNodes(t, Config{UserRate: -1, IPRate: -1, HotRate: 5})
	ctx := t.Context()
	now := time.Now()
	sale, err := b.Create(ctx, Sale{StoreID: 1001, SKU: 1001001, Price: 100, Stock: 1000, PerUser: 1,
		StartsAt: now.Add(-time.Second), EndsAt: now.Add(time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	var ok, busy int
	for u := int64(1); u <= 50; u++ {
		_, err := b.Purchase(ctx, sale.ID, Buyer{UserID: u})
		switch {
		case err == nil:
			ok++
		case errors.Is(err, ErrBusy):
			busy++
		default:
			t.Fatalf("user %d: %v", u, err)
		}
	}
	if ok < 5 || ok > 7 || busy != 50-ok || bkv.admits.Load() != int64(ok) {
		t.Fatalf("%d admitted, %d busy, %d admissions asked kv; want the budget of 5 (burst 5) admitted, the rest busy without kv",
			ok, busy, bkv.admits.Load())
	}
}
