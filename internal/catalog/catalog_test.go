package catalog_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/surge-platform/surge/internal/catalog"
	"github.com/surge-platform/surge/internal/inventory"
	"github.com/surge-platform/surge/internal/platform/bus"
	"github.com/surge-platform/surge/internal/platform/errkind"
	"github.com/surge-platform/surge/internal/platform/id"
	"github.com/surge-platform/surge/internal/platform/sqldb/sqldbtest"
)

// twoNodes returns two catalog services on one database, each with its own
// cache, wired to invalidate each other over an embedded bus, as two api
// nodes are.
func twoNodes(t *testing.T) (a, b *catalog.Service) {
	t.Helper()
	db := sqldbtest.Open(t, sqldbtest.SQLiteURL(t, 1))
	bs, err := bus.Open(context.Background(), "embedded:"+t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { bs.Close() })
	ids, _ := id.New(1)
	inv := inventory.New(db)
	a, b = catalog.New(db, ids, inv, bs), catalog.New(db, ids, inv, bs)
	follow(t, bs, a)
	follow(t, bs, b)
	return a, b
}

// follow has s drop what the bus says changed, as node.New wires it.
func follow(t *testing.T, bs *bus.Bus, s *catalog.Service) {
	t.Helper()
	unsub, err := bs.Subscribe(catalog.InvalidateSubject, func(_ string, data []byte) { s.OnInvalidate(data) })
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(unsub)
}

func TestChangeOnOneNodeShowsOnTheOther(t *testing.T) {
	t.Parallel()
	a, b := twoNodes(t)
	ctx := context.Background()
	st, err := a.CreateStore(ctx, 0, catalog.StoreInput{Name: "One"})
	if err != nil {
		t.Fatal(err)
	}
	cat, err := a.CreateCategory(ctx, st.ID, 0, catalog.CategoryInput{Name: "Tea"})
	if err != nil {
		t.Fatal(err)
	}
	it, err := a.PutItem(ctx, st.ID, 0, catalog.ItemInput{CategoryID: cat.ID, Name: "Oolong", Price: 900})
	if err != nil {
		t.Fatal(err)
	}
	m, err := b.Menu(ctx, st.ID) // node b caches the menu
	if err != nil || m.Items[it.SKU].Price != 900 {
		t.Fatalf("menu on b: %v %+v", err, m)
	}
	if _, err := a.PutItem(ctx, st.ID, it.SKU, catalog.ItemInput{CategoryID: cat.ID, Name: "Oolong", Price: 1200}); err != nil {
		t.Fatal(err)
	}
	if m, _ := a.Menu(ctx, st.ID); m.Items[it.SKU].Price != 1200 {
		t.Fatalf("node a serves the old price %d after its own change", m.Items[it.SKU].Price)
	}
	deadline := time.Now().Add(time.Second) // well inside the 30 s TTL: only the invalidation can do it
	for {
		m, err := b.Menu(ctx, st.ID)
		if err == nil && m.Items[it.SKU].Price == 1200 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("node b still serves the old menu 1 s after the change")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestUnknownStoreIsCachedNegativelyUntilCreated(t *testing.T) {
	t.Parallel()
	a, b := twoNodes(t)
	ctx := context.Background()
	if _, err := b.Menu(ctx, 4242); !errors.Is(err, catalog.ErrNoStore) {
		t.Fatalf("unknown store: %v", err)
	}
	if _, err := a.CreateStore(ctx, 4242, catalog.StoreInput{Name: "Late"}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(time.Second)
	for {
		if _, err := b.Menu(ctx, 4242); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("a created store stays unknown on the other node")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestStockShowsOnLimitedItems(t *testing.T) {
	t.Parallel()
	a, _ := twoNodes(t)
	ctx := context.Background()
	st, _ := a.CreateStore(ctx, 0, catalog.StoreInput{Name: "S"})
	cat, _ := a.CreateCategory(ctx, st.ID, 0, catalog.CategoryInput{Name: "C"})
	five := int64(5)
	it, err := a.PutItem(ctx, st.ID, 0, catalog.ItemInput{CategoryID: cat.ID, Name: "Rare", Price: 100, Limited: true, Stock: &five})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.PutItem(ctx, st.ID, 0, catalog.ItemInput{CategoryID: cat.ID, Name: "Bad", Price: 100, Stock: &five}); err == nil {
		t.Fatal("stock on an unlimited item was accepted")
	}
	m, _ := a.Menu(ctx, st.ID)
	if m.MaxAge != time.Second || !contains(m.Body, `"stock":5`) {
		t.Fatalf("menu: max-age %v body %s", m.MaxAge, m.Body)
	}
	if err := a.SetStock(ctx, it.SKU, 0); err != nil {
		t.Fatal(err)
	}
	m, _ = a.Menu(ctx, st.ID)
	if !contains(m.Body, `"available":false`) || !contains(m.Body, `"stock":0`) {
		t.Fatalf("sold-out item still shows available: %s", m.Body)
	}
}

func contains(b []byte, s string) bool { return strings.Contains(string(b), s) }

// TestOperatorInputBounds: what an operator sets stays within the
// documented bounds, and stock only goes on limited items.
func TestOperatorInputBounds(t *testing.T) {
	t.Parallel()
	a, _ := twoNodes(t)
	ctx := context.Background()
	st, _ := a.CreateStore(ctx, 0, catalog.StoreInput{Name: "S"})
	cat, _ := a.CreateCategory(ctx, st.ID, 0, catalog.CategoryInput{Name: "C"})
	plain, err := a.PutItem(ctx, st.ID, 0, catalog.ItemInput{CategoryID: cat.ID, Name: "Tea", Price: catalog.MaxPrice})
	if err != nil {
		t.Fatal(err)
	}
	if err := a.SetStock(ctx, plain.SKU, 5); !errors.Is(err, catalog.ErrNotLimited) {
		t.Fatalf("stock of an unlimited item: %v, want ErrNotLimited", err)
	}
	over, huge := int64(inventory.MaxStock+1), int64(1<<62)
	for _, tc := range []struct {
		name string
		in   catalog.ItemInput
	}{
		{"price", catalog.ItemInput{Name: "x", Price: catalog.MaxPrice + 1}},
		{"sort", catalog.ItemInput{Name: "x", Sort: catalog.MaxSort + 1}},
		{"stock", catalog.ItemInput{Name: "x", Limited: true, Stock: &over}},
		{"huge stock", catalog.ItemInput{Name: "x", Limited: true, Stock: &huge}},
		{"stock, not limited", catalog.ItemInput{Name: "x", Stock: new(int64)}},
		{"name", catalog.ItemInput{Name: strings.Repeat("x", catalog.MaxName+1)}},
		{"blank name", catalog.ItemInput{Name: " "}},
	} {
		tc.in.CategoryID = cat.ID
		if _, err := a.PutItem(ctx, st.ID, plain.SKU, tc.in); errkind.Of(err) == nil || errkind.Of(err).Kind == errkind.Internal {
			t.Errorf("%s: %v, want a kinded refusal", tc.name, err)
		}
	}
	if _, err := a.CreateCategory(ctx, st.ID, 0, catalog.CategoryInput{Name: "C", Sort: -catalog.MaxSort - 1}); errkind.Of(err) == nil {
		t.Errorf("category sort: %v", err)
	}
	if _, err := a.CreateStore(ctx, 0, catalog.StoreInput{Name: strings.Repeat("店", catalog.MaxName)}); err != nil {
		t.Errorf("a name of %d wide characters: %v", catalog.MaxName, err)
	}
	if _, err := a.UpdateStore(ctx, st.ID, catalog.StoreInput{Name: "S", Address: strings.Repeat("x", catalog.MaxAddress+1)}); errkind.Of(err) == nil {
		t.Errorf("long address: %v", err)
	}
}
