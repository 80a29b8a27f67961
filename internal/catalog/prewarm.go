package catalog

import (
	"context"
	"errors"
	"time"
)

// Prewarmed counts what PreWarm did.
type Prewarmed struct {
	Stores int `json:"stores"` // stores in the database
	Built  int `json:"built"`  // menus built and put in kv (and in this node's cache)
	Failed int `json:"failed"` // menus that could not be built or put in kv
}

// PreWarm builds the menu of every store from the database and puts it in
// the shared tier (kv; without one, only in this node's cache), so that the
// first reads after it (a campaign's start, the morning after the nightly
// refresh) find every menu ready. It is idempotent and safe to run on
// several nodes at once (each copy is keyed by the store's generation, as
// in a read). It stops at ctx's end, returning ctx's error with what it
// did so far; a store that fails is counted and skipped, and the first such
// failure is returned with the counts when nothing at all could be
// done. Errors: the database's when the store list cannot be read.
func (s *Service) PreWarm(ctx context.Context) (Prewarmed, error) {
	var out Prewarmed
	stores, err := s.loadStores(ctx)
	if err != nil {
		return out, unavailable(0, err)
	}
	out.Stores = len(stores)
	var first error
	for _, st := range stores {
		if err := ctx.Err(); err != nil {
			return out, err
		}
		if err := s.cache.warm(ctx, st.ID); err != nil {
			out.Failed++
			if first == nil {
				first = err
			}
			s.log.Warn("catalog: pre-warm of a menu failed", "store_id", st.ID, "err", err)
			continue
		}
		out.Built++
	}
	if out.Built == 0 && first != nil {
		return out, unavailable(0, first)
	}
	return out, nil
}

// warm builds one menu into kv and this node's cache.
func (c *cache) warm(ctx context.Context, storeID int64) error {
	c.mu.RLock()
	local := c.gen
	c.mu.RUnlock()
	var gen int64
	if c.shared != nil {
		var err error
		if gen, err = c.shared.gen(ctx, storeID); err != nil {
			return err
		}
	}
	m, err := c.build(ctx, storeID)
	if errors.Is(err, ErrNoStore) {
		return nil // deleted meanwhile
	}
	if err != nil {
		return err
	}
	if c.shared != nil {
		if err := c.shared.write(ctx, storeID, gen, m, nil); err != nil {
			return err
		}
	}
	c.put(local, storeID, &entry{menu: m, expires: time.Now().Add(localTTL(m, false))})
	return nil
}

// ForgetShared makes every store's copy in kv unreachable (each store's
// generation moves on). A kv that came back from a replica that was behind
// may hold generations from before changes it lost; register this with the
// kv loss watch. (A kv restarted empty needs nothing: it holds no copies.)
func (s *Service) ForgetShared(ctx context.Context) error {
	if s.cache.shared == nil {
		return nil
	}
	stores, err := s.loadStores(ctx)
	if err != nil {
		return err
	}
	for _, st := range stores {
		if err := s.cache.shared.incr(st.ID); err != nil {
			return err
		}
	}
	return nil
}
