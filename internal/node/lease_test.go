package node

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/surge-platform/surge/internal/platform/kv"
)

func TestLeaseIsKeptRetakenOrGivenUp(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	store := kv.NewMemory()
	defer store.Close()
	a, err := leaseNode(ctx, store)
	if err != nil {
		t.Fatal(err)
	}
	b, err := leaseNode(ctx, store)
	if err != nil || a.node == b.node {
		t.Fatalf("two leases got nodes %d and %d (%v)", a.node, b.node, err)
	}
	a.every = 20 * time.Millisecond
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- a.renew(rctx) }()

	// The key vanishes (expired while the kv store was away): taken back.
	store.Del(ctx, a.key)
	deadline := time.Now().Add(2 * time.Second)
	for {
		if v, err := store.Get(ctx, a.key); err == nil && string(v) == string(a.me) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("lost lease not taken back")
		}
		time.Sleep(5 * time.Millisecond)
	}
	// Another process holds it now: the node must stop.
	store.Set(ctx, a.key, []byte("someone else"), time.Minute)
	select {
	case err := <-done:
		if !errors.Is(err, errLeaseLost) {
			t.Fatalf("renew ended with %v, want errLeaseLost", err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("renew kept going with its id held by another process")
	}
	cancel()
}
