package limit

import (
	"sync"
	"testing"
	"time"
)

// held returns the buckets k holds.
func (k *Keyed) held() int {
	n := 0
	for i := range k.shards {
		s := &k.shards[i]
		s.mu.Lock()
		n += len(s.cur) + len(s.prev)
		s.mu.Unlock()
	}
	return n
}

// TestBoundedMemory passes 1,000,000 distinct keys, from 8 goroutines, through
// a Keyed of 10,000: it never holds more than that, and it does hold keys.
func TestBoundedMemory(t *testing.T) {
	t.Parallel()
	const maxKeys, keys, goroutines = 10_000, 1_000_000, 8
	k := NewKeyed(1, 1, maxKeys)
	now := time.Unix(1_700_000_000, 0)
	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Go(func() {
			for i := g; i < keys; i += goroutines {
				k.Allow(uint64(i)*0x9e3779b97f4a7c15, now)
				if i%10_000 == g {
					if n := k.held(); n > maxKeys {
						t.Errorf("%d buckets held after %d keys, at most %d allowed", n, i, maxKeys)
						return
					}
				}
			}
		})
	}
	wg.Wait()
	// Each shard's current map holds at least one key, its previous one
	// (once filled) perGen: about half of maxKeys at the least.
	if n := k.held(); n > maxKeys || n < maxKeys/2 {
		t.Fatalf("%d buckets held at the end, want %d to %d", n, maxKeys/2, maxKeys)
	}
}

// TestChurnDoesNotAllocate: once its maps have grown, a Keyed that keeps
// meeting new keys reuses their memory.
func TestChurnDoesNotAllocate(t *testing.T) {
	// Not parallel: AllocsPerRun counts the whole process's allocations.
	k := NewKeyed(1, 1, 1<<12)
	now := time.Unix(1_700_000_000, 0)
	key := uint64(0)
	for range 1 << 16 {
		k.Allow(key, now)
		key++
	}
	allocs := testing.AllocsPerRun(10_000, func() {
		k.Allow(key, now)
		key++
	})
	if allocs > 0.01 {
		t.Errorf("%v allocations per new key once warm", allocs)
	}
}
