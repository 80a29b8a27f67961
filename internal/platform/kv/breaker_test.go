package kv_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/url"
	"sync"
	"testing"
	"time"

	"github.com/surge-platform/surge/internal/platform/faultnet"
	"github.com/surge-platform/surge/internal/platform/kv"
)

// TestBreakerOpensOnStall: with Redis frozen, calls wait out their
// deadline until the breaker opens; then they fail at once as
// unavailable; after Resume and the breaker's delay, calls go through and
// close it again. A caller's own error does not count against the store.
func TestBreakerOpensOnStall(t *testing.T) {
	u, _ := url.Parse(redisURL())
	px := faultnet.Start(t, u.Host)
	u.Host = px.Addr()
	q := u.Query()
	q.Set("timeout", "200ms")
	u.RawQuery = q.Encode()
	s, err := kv.Open(context.Background(), u.String())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	b := kv.NewBreaker(s, slog.New(slog.NewTextHandler(io.Discard, nil)))
	ctx := context.Background()
	key := "breakertest:" + t.Name()
	defer b.Del(ctx, key)
	if err := b.Set(ctx, key, []byte("x"), time.Minute); err != nil {
		t.Fatal(err)
	}
	// Wrong-type errors are the caller's: many of them leave it closed.
	for range 30 {
		if _, err := b.ZCard(ctx, key); err == nil || errors.Is(err, kv.ErrUnavailable) {
			t.Fatalf("ZCard on a value: %v", err)
		}
	}
	if b.State() != "closed" {
		t.Fatalf("caller errors opened it: %s", b.State())
	}

	px.Stall()
	var slow int
	start := time.Now()
	for range 40 { // 8 at a time: the first calls wait out 200 ms each
		var wg sync.WaitGroup
		for range 8 {
			wg.Go(func() {
				if _, err := b.Get(ctx, key); !errors.Is(err, kv.ErrUnavailable) {
					t.Errorf("a call to a frozen store: %v", err)
				}
			})
		}
		wg.Wait()
		if b.State() == "open" {
			break
		}
		slow++
	}
	if b.State() != "open" {
		t.Fatalf("still %s after %v of a frozen store", b.State(), time.Since(start))
	}
	t0 := time.Now()
	for range 1000 {
		if _, err := b.Get(ctx, key); !errors.Is(err, kv.ErrUnavailable) || !errors.Is(err, kv.ErrOpen) {
			t.Fatalf("open: %v", err)
		}
	}
	if d := time.Since(t0); d > 100*time.Millisecond {
		t.Fatalf("1,000 calls on an open breaker took %v: not failing fast", d)
	}
	t.Logf("opened after %d rounds of 8 calls (%v); 1,000 refusals took %v", slow+1, time.Since(start).Round(time.Millisecond), time.Since(t0))

	px.Resume()
	deadline := time.Now().Add(kv.BreakerDelay + 5*time.Second)
	for {
		v, err := b.Get(ctx, key)
		if err == nil && string(v) == "x" && b.State() == "closed" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("not closed again: %s, last %q %v", b.State(), v, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
