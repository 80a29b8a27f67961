package kv

import (
	"context"
	"fmt"
	"math"
	"strconv"
	"time"
)

// checkGCRA checks the arguments of GCRA. Both adapters use it.
func checkGCRA(perSecond, burst, n int64) error {
	switch {
	case perSecond <= 0 || perSecond > MaxGCRARate:
		return fmt.Errorf("perSecond must be in [1, %d], got %d", int64(MaxGCRARate), perSecond)
	case burst <= 0:
		return fmt.Errorf("burst must be > 0, got %d", burst)
	case n <= 0:
		return fmt.Errorf("n must be > 0, got %d", n)
	}
	return nil
}

// gcraStep is one GCRA call at time now with the theoretical arrival time
// tat, in any unit of time: per is the emission interval (the time one
// permit takes to come back), burst the permits a full limit holds. It
// returns how many of n conform, the new tat and the time until the next
// permit conforms. The Lua of Redis.GCRA is the same arithmetic.
func gcraStep(now, tat, per float64, burst, n int64) (granted int64, newTAT, wait float64) {
	tat = max(tat, now)
	full := float64(burst) * per
	// 1e-9 keeps a limit with exactly k free permits from reading as
	// k-1.999... after the rounding of the arithmetic.
	free := math.Floor((full-(tat-now))/per + 1e-9)
	granted = int64(max(0, min(float64(n), free)))
	tat += float64(granted) * per
	return granted, tat, max(0, tat+per-full-now)
}

// GCRA implements Store on the store's monotonic clock; key holds the
// theoretical arrival time in nanoseconds of that clock.
func (m *Memory) GCRA(_ context.Context, key string, perSecond, burst, n int64) (int64, time.Duration, error) {
	if err := checkGCRA(perSecond, burst, n); err != nil {
		return 0, 0, fmt.Errorf("kv: gcra %q: %w", key, err)
	}
	s := m.shard(key)
	s.mu.Lock()
	defer s.mu.Unlock()
	now := m.now()
	e, found := s.lookupLocked(key, now)
	tat := float64(now)
	switch {
	case e.z != nil:
		return 0, 0, fmt.Errorf("kv: gcra %q: %w", key, ErrWrongType)
	case found:
		v, err := strconv.ParseFloat(string(e.val), 64)
		if err != nil || math.IsNaN(v) || math.IsInf(v, 0) {
			return 0, 0, fmt.Errorf("kv: gcra %q: %w", key, ErrNotInteger)
		}
		tat = v
	}
	granted, tat, wait := gcraStep(float64(now), tat, float64(time.Second)/float64(perSecond), burst, n)
	if granted > 0 {
		e.val = strconv.AppendFloat(e.val[:0], tat, 'f', -1, 64)
		e.exp = int64(math.Ceil(tat)) + 1 // the whole burst is free again
		s.storeLocked(key, e)
	}
	return granted, time.Duration(math.Ceil(wait)), nil
}

// Heartbeat implements Store on the store's monotonic clock.
func (m *Memory) Heartbeat(_ context.Context, key, member string, window time.Duration) (int64, error) {
	if window <= 0 {
		return 0, fmt.Errorf("kv: heartbeat %q: window must be > 0, got %v", key, window)
	}
	s := m.shard(key)
	s.mu.Lock()
	defer s.mu.Unlock()
	now := m.now()
	z, err := s.zsetLocked(key, now)
	if err != nil {
		return 0, fmt.Errorf("kv: heartbeat %q: %w", key, err)
	}
	if z == nil {
		z = newZset()
		s.m[key] = entry{z: z}
	}
	ms := now / int64(time.Millisecond)
	z.add(ms, member)
	z.trim(ms - millis(window))
	return int64(len(z.items)), nil
}
