package kv

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"
)

// zsetCompactMin is the capacity below which a zset never compacts its
// slice after a trim.
const zsetCompactMin = 64

// zset is a Memory sorted set: its members ordered by (score, member) in a
// slice, and a map from member to score that finds a member's place by
// binary search. Adding above the highest (score, member) and trimming the
// lowest scores, the queue pattern, cost O(1) amortised plus O(log n);
// other adds move the tail of the slice. A zset is guarded by the mutex of
// the shard holding its key.
type zset struct {
	score map[string]int64 // member -> score, the same members as items
	items []Scored         // ascending by score, then member
}

func newZset() *zset {
	return &zset{score: make(map[string]int64)}
}

// compareScored orders sorted-set members as Redis does: by score, then
// bytewise by member.
func compareScored(a, b Scored) int {
	if c := cmp.Compare(a.Score, b.Score); c != 0 {
		return c
	}
	return strings.Compare(a.Member, b.Member)
}

// add sets member's score, inserting member if it is absent.
func (z *zset) add(score int64, member string) {
	if old, ok := z.score[member]; ok {
		if old == score {
			return
		}
		i, _ := slices.BinarySearchFunc(z.items, Scored{Score: old, Member: member}, compareScored)
		z.items = slices.Delete(z.items, i, i+1)
	}
	z.score[member] = score
	it := Scored{Score: score, Member: member}
	if n := len(z.items); n == 0 || compareScored(z.items[n-1], it) < 0 {
		z.items = append(z.items, it)
		return
	}
	i, _ := slices.BinarySearchFunc(z.items, it, compareScored)
	z.items = slices.Insert(z.items, i, it)
}

// above returns the index of the first member with a score > after.
func (z *zset) above(after int64) int {
	return sort.Search(len(z.items), func(i int) bool { return z.items[i].Score > after })
}

// trim removes the members with a score <= upTo and returns how many. When
// the slice is left mostly unused, it and the map are rebuilt at their live
// size, so a long-lived queue does not keep the memory of its peak.
func (z *zset) trim(upTo int64) int {
	k := z.above(upTo)
	if k == 0 {
		return 0
	}
	for _, it := range z.items[:k] {
		delete(z.score, it.Member)
	}
	clear(z.items[:k]) // drop the member strings for the collector
	z.items = z.items[k:]
	if c := cap(z.items); c >= zsetCompactMin && len(z.items) < c/4 {
		z.items = slices.Clone(z.items)
		z.score = make(map[string]int64, len(z.items))
		for _, it := range z.items {
			z.score[it.Member] = it.Score
		}
	}
	return k
}

// remove removes member and reports whether it was there.
func (z *zset) remove(member string) bool {
	score, ok := z.score[member]
	if !ok {
		return false
	}
	i, _ := slices.BinarySearchFunc(z.items, Scored{Score: score, Member: member}, compareScored)
	z.items = slices.Delete(z.items, i, i+1)
	delete(z.score, member)
	return true
}

// zsetLocked returns the sorted set at key, nil if key is missing, or
// ErrWrongType if key holds a value. s.mu must be held.
func (s *shard) zsetLocked(key string, now int64) (*zset, error) {
	e, ok := s.lookupLocked(key, now)
	switch {
	case !ok:
		return nil, nil
	case e.z == nil:
		return nil, ErrWrongType
	}
	return e.z, nil
}

// ZAdd implements Store.
func (m *Memory) ZAdd(_ context.Context, key string, score int64, member string) error {
	if score < MinScore || score > MaxScore {
		return fmt.Errorf("kv: zadd %q score %d: %w", key, score, ErrScoreRange)
	}
	s := m.shard(key)
	s.mu.Lock()
	defer s.mu.Unlock()
	z, err := s.zsetLocked(key, m.now())
	if err != nil {
		return fmt.Errorf("kv: zadd %q: %w", key, err)
	}
	if z == nil {
		z = newZset()
		s.m[key] = entry{z: z}
	}
	z.add(score, member)
	return nil
}

// ZAppend implements Store. Appends are serialised, so scores become
// visible in the order they are handed out.
func (m *Memory) ZAppend(_ context.Context, key, counter, member string, floor, fresh int64) (int64, error) {
	m.appendMu.Lock()
	defer m.appendMu.Unlock()
	now := m.now()
	ks := m.shard(key)
	ks.mu.Lock()
	z, err := ks.zsetLocked(key, now)
	var have int64
	var found bool
	if z != nil {
		have, found = z.score[member]
	}
	ks.mu.Unlock()
	switch {
	case err != nil:
		return 0, fmt.Errorf("kv: zappend %q: %w", key, err)
	case found:
		return have, nil
	}

	cs := m.shard(counter)
	cs.mu.Lock()
	cur, err := cs.counterLocked(counter, now)
	score := max(cur+1, floor)
	if _, present := cs.lookupLocked(counter, now); !present {
		score = max(score, fresh)
	}
	switch {
	case err != nil:
	case cur == maxInt64 || score < MinScore || score > MaxScore:
		err = fmt.Errorf("score %d after counter %d: %w", score, cur, ErrScoreRange)
	default:
		e, _ := cs.lookupLocked(counter, now)
		e.val = strconv.AppendInt(e.val[:0], score, 10)
		cs.storeLocked(counter, e)
	}
	cs.mu.Unlock()
	if err != nil {
		return 0, fmt.Errorf("kv: zappend %q counter %q: %w", key, counter, err)
	}

	ks.mu.Lock()
	defer ks.mu.Unlock()
	// Looked up again: a ZTrim or Del may have removed the set meanwhile.
	if z, err = ks.zsetLocked(key, m.now()); err != nil {
		return 0, fmt.Errorf("kv: zappend %q: %w", key, err)
	}
	if z == nil {
		z = newZset()
		ks.m[key] = entry{z: z}
	}
	z.add(score, member)
	return score, nil
}

// ZAck implements Store. It holds the append lock, so no ZAppend hands
// out a score between the check of the counter and the trim.
func (m *Memory) ZAck(ctx context.Context, key, counter string, upTo int64) (int64, bool, error) {
	m.appendMu.Lock()
	defer m.appendMu.Unlock()
	cs := m.shard(counter)
	cs.mu.Lock()
	cur, err := cs.counterLocked(counter, m.now())
	cs.mu.Unlock()
	if err != nil {
		return 0, false, fmt.Errorf("kv: zack %q counter %q: %w", key, counter, err)
	}
	if upTo > cur {
		return 0, false, nil
	}
	n, err := m.ZTrim(ctx, key, upTo)
	if err != nil {
		return 0, false, fmt.Errorf("kv: zack %q: %w", key, errors.Unwrap(err))
	}
	return n, true, nil
}

// counterLocked returns the integer at key (missing = 0), ErrNotInteger
// or ErrWrongType. s.mu must be held.
func (s *shard) counterLocked(key string, now int64) (int64, error) {
	e, found := s.lookupLocked(key, now)
	switch {
	case !found:
		return 0, nil
	case e.z != nil:
		return 0, ErrWrongType
	}
	v, ok := parseInt(e.val)
	if !ok {
		return 0, ErrNotInteger
	}
	return v, nil
}

// ZAfter implements Store.
func (m *Memory) ZAfter(_ context.Context, key string, after int64, limit int) ([]Scored, error) {
	if limit <= 0 {
		return nil, fmt.Errorf("kv: zafter %q: limit must be > 0, got %d", key, limit)
	}
	s := m.shard(key)
	s.mu.Lock()
	defer s.mu.Unlock()
	z, err := s.zsetLocked(key, m.now())
	if err != nil {
		return nil, fmt.Errorf("kv: zafter %q: %w", key, err)
	}
	if z == nil {
		return nil, nil
	}
	i := z.above(after)
	n := min(limit, len(z.items)-i)
	if n == 0 {
		return nil, nil
	}
	return slices.Clone(z.items[i : i+n]), nil
}

// ZTrim implements Store.
func (m *Memory) ZTrim(_ context.Context, key string, upTo int64) (int64, error) {
	s := m.shard(key)
	s.mu.Lock()
	defer s.mu.Unlock()
	z, err := s.zsetLocked(key, m.now())
	if err != nil {
		return 0, fmt.Errorf("kv: ztrim %q: %w", key, err)
	}
	if z == nil {
		return 0, nil
	}
	n := z.trim(upTo)
	if len(z.items) == 0 {
		delete(s.m, key)
	}
	return int64(n), nil
}

// ZRem implements Store.
func (m *Memory) ZRem(_ context.Context, key, member string) (bool, error) {
	s := m.shard(key)
	s.mu.Lock()
	defer s.mu.Unlock()
	z, err := s.zsetLocked(key, m.now())
	if err != nil {
		return false, fmt.Errorf("kv: zrem %q: %w", key, err)
	}
	if z == nil || !z.remove(member) {
		return false, nil
	}
	if len(z.items) == 0 {
		delete(s.m, key)
	}
	return true, nil
}

// ZCard implements Store.
func (m *Memory) ZCard(_ context.Context, key string) (int64, error) {
	s := m.shard(key)
	s.mu.Lock()
	defer s.mu.Unlock()
	z, err := s.zsetLocked(key, m.now())
	if err != nil {
		return 0, fmt.Errorf("kv: zcard %q: %w", key, err)
	}
	if z == nil {
		return 0, nil
	}
	return int64(len(z.items)), nil
}
