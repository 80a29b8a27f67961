package kv

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"
)

// lockPair locks the shards of keys a and b (once if they share one) and
// returns them; release them with unlockPair. The locks are taken in shard
// order. Only Admit and Unadmit hold two shard locks, and every other
// operation holds one at a time, so two pairs never wait on each other in
// a cycle.
func (m *Memory) lockPair(a, b string) (sa, sb *shard) {
	i, j := m.shardIndex(a), m.shardIndex(b)
	sa, sb = &m.shards[i], &m.shards[j]
	switch {
	case i == j:
		sa.mu.Lock()
	case i < j:
		sa.mu.Lock()
		sb.mu.Lock()
	default:
		sb.mu.Lock()
		sa.mu.Lock()
	}
	return sa, sb
}

// unlockPair releases what lockPair locked.
func unlockPair(sa, sb *shard) {
	sa.mu.Unlock()
	if sb != sa {
		sb.mu.Unlock()
	}
}

// intEntryLocked returns the live entry at key and the integer it holds;
// found is false (and v 0) for a missing key. Errors: ErrWrongType,
// ErrNotInteger. s.mu must be held.
func (s *shard) intEntryLocked(key string, now int64) (e entry, v int64, found bool, err error) {
	e, found = s.lookupLocked(key, now)
	switch {
	case !found:
		return entry{}, 0, false, nil
	case e.z != nil:
		return entry{}, 0, true, ErrWrongType
	}
	v, ok := parseInt(e.val)
	if !ok {
		return entry{}, 0, true, ErrNotInteger
	}
	return e, v, true, nil
}

// checkAdmit checks the arguments of Admit and Unadmit (limit and userTTL
// only for Admit: pass 0). Both adapters use it.
func checkAdmit(stock, user string, n, limit int64, userTTL time.Duration) error {
	switch {
	case n <= 0:
		return fmt.Errorf("n must be > 0, got %d", n)
	case limit < 0:
		return fmt.Errorf("limit must be >= 0, got %d", limit)
	case userTTL < 0:
		return fmt.Errorf("negative user ttl %v", userTTL)
	case stock == user:
		return errors.New("stock and user are the same key")
	}
	return nil
}

// Admit implements Store. It holds the locks of both keys' shards, so it
// is atomic with respect to every other operation on either key.
func (m *Memory) Admit(_ context.Context, stock, user string, n, limit int64, userTTL time.Duration) (int64, AdmitResult, error) {
	if err := checkAdmit(stock, user, n, limit, userTTL); err != nil {
		return 0, NotLoaded, fmt.Errorf("kv: admit %q user %q: %w", stock, user, err)
	}
	ss, us := m.lockPair(stock, user)
	defer unlockPair(ss, us)
	now := m.now()
	se, left, sFound, err := ss.intEntryLocked(stock, now)
	if err != nil {
		return 0, NotLoaded, fmt.Errorf("kv: admit %q user %q: %w", stock, user, err)
	}
	ue, cur, uFound, err := us.intEntryLocked(user, now)
	if err != nil {
		return 0, NotLoaded, fmt.Errorf("kv: admit %q user %q: %w", stock, user, err)
	}
	switch {
	case !sFound:
		return 0, NotLoaded, nil
	case cur > limit-n: // cur+n > limit without overflow: limit >= 0, n > 0
		return left, OverLimit, nil
	case left < n:
		return left, SoldOut, nil
	}
	// Neither overflows: left >= n > 0, and cur+n <= limit.
	left -= n
	se.val = strconv.AppendInt(se.val[:0], left, 10)
	ss.m[stock] = se
	if !uFound && userTTL > 0 {
		ue.exp = now + int64(userTTL)
	}
	ue.val = strconv.AppendInt(ue.val[:0], cur+n, 10)
	us.storeLocked(user, ue)
	return left, Admitted, nil
}

// Unadmit implements Store, holding both shard locks as Admit does.
func (m *Memory) Unadmit(_ context.Context, stock, user string, n int64) (int64, error) {
	if err := checkAdmit(stock, user, n, 0, 0); err != nil {
		return 0, fmt.Errorf("kv: unadmit %q user %q: %w", stock, user, err)
	}
	ss, us := m.lockPair(stock, user)
	defer unlockPair(ss, us)
	now := m.now()
	se, left, sFound, err := ss.intEntryLocked(stock, now)
	if err != nil {
		return 0, fmt.Errorf("kv: unadmit %q user %q: %w", stock, user, err)
	}
	ue, cur, uFound, err := us.intEntryLocked(user, now)
	if err != nil {
		return 0, fmt.Errorf("kv: unadmit %q user %q: %w", stock, user, err)
	}
	if sFound {
		if left > maxInt64-n {
			return 0, fmt.Errorf("kv: unadmit %q by %d: %w", stock, n, ErrNotInteger)
		}
		left += n
		se.val = strconv.AppendInt(se.val[:0], left, 10)
		ss.m[stock] = se
	}
	if uFound && cur > 0 {
		ue.val = strconv.AppendInt(ue.val[:0], cur-min(cur, n), 10)
		us.m[user] = ue
	}
	return left, nil
}
