package guard

import (
	"context"
	"log/slog"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/surge-platform/surge/internal/platform/sqldb/sqldbtest"
)

// TestRefreshOrder steps a refresh by hand around local changes.
func TestRefreshOrder(t *testing.T) {
	t.Parallel()
	db := sqldbtest.Open(t, sqldbtest.SQLiteURL(t, 1))
	b := NewBlacklist(db, slog.New(slog.DiscardHandler))
	ctx := t.Context()
	until := time.Now().Add(time.Hour)
	add := func(user string) {
		t.Helper()
		if err := b.Add(ctx, Entry{Kind: KindUser, Value: user, Until: until}); err != nil {
			t.Fatal(err)
		}
	}
	read := func() []row {
		t.Helper()
		rows, _, err := b.load(ctx, time.Now(), "")
		if err != nil {
			t.Fatal(err)
		}
		return rows
	}
	seen := func(want map[int64]bool) {
		t.Helper()
		for user, w := range want {
			if _, ok := b.User(user, time.Now()); ok != w {
				t.Errorf("user %d blacklisted: %v, want %v", user, ok, w)
			}
		}
	}
	add("2")

	// A refresh that reads before an Add and a Clear and publishes after
	// them keeps both.
	from := b.begin()
	rows := read()
	add("1")
	if _, err := b.Clear(ctx, KindUser, "2"); err != nil {
		t.Fatal(err)
	}
	b.publish(from, rows)
	seen(map[int64]bool{1: true, 2: false})

	// A refresh that began before the last one published changes nothing,
	// though it missed an Add that the last one saw.
	stale := b.begin()
	staleRows := read()
	add("3")
	if err := b.refresh(ctx); err != nil {
		t.Fatal(err)
	}
	b.publish(stale, staleRows)
	seen(map[int64]bool{1: true, 2: false, 3: true})
	if len(b.pending) != 0 {
		t.Errorf("%d changes pending after a refresh that saw them all", len(b.pending))
	}
}

// TestRefreshKeepsLocalChanges races refreshes, back to back, against Adds
// and Clears on the same node: a change is seen at once after its call
// returns, even when a refresh that began before it ends after it.
func TestRefreshKeepsLocalChanges(t *testing.T) {
	t.Parallel()
	db := sqldbtest.Open(t, sqldbtest.SQLiteURL(t, 1))
	b := NewBlacklist(db, slog.New(slog.DiscardHandler))
	ctx, cancel := context.WithCancel(t.Context())
	var wg sync.WaitGroup
	for range 2 {
		wg.Go(func() {
			for ctx.Err() == nil {
				if err := b.refresh(ctx); err != nil && ctx.Err() == nil {
					t.Error(err)
				}
			}
		})
	}
	until := time.Now().Add(time.Hour)
	const n = 40
	for i := int64(1); i <= n; i++ {
		if err := b.Add(ctx, Entry{Kind: KindUser, Value: strconv.FormatInt(i, 10), Until: until}); err != nil {
			t.Fatal(err)
		}
		if _, ok := b.User(i, time.Now()); !ok {
			t.Fatalf("user %d not seen right after Add", i)
		}
		if i%2 == 0 {
			if was, err := b.Clear(ctx, KindUser, strconv.FormatInt(i-1, 10)); !was || err != nil {
				t.Fatalf("Clear %d = %v, %v", i-1, was, err)
			}
			if _, ok := b.User(i-1, time.Now()); ok {
				t.Fatalf("user %d seen right after Clear", i-1)
			}
		}
	}
	cancel()
	wg.Wait()
	// A refresh begun after the last change sees all of them and keeps none
	// of them as local.
	if err := b.refresh(t.Context()); err != nil {
		t.Fatal(err)
	}
	s := b.snap.Load()
	if len(s.local) != 0 || len(b.pending) != 0 {
		t.Errorf("%d local changes, %d pending after a refresh", len(s.local), len(b.pending))
	}
	if len(s.live) != n/2 {
		t.Errorf("%d live entries, want %d", len(s.live), n/2)
	}
	for i := int64(1); i <= n; i++ {
		if _, ok := b.User(i, time.Now()); ok != (i%2 == 0) {
			t.Errorf("user %d: blacklisted %v", i, ok)
		}
	}
}
