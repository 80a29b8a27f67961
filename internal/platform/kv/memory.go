package kv

import (
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

const (
	// shardCount is the number of independently locked maps in a Memory
	// store. A power of two so that a mask picks the shard.
	shardCount = 64
	// defaultSweepEvery is how often a Memory store's janitor removes expired
	// keys that nobody read.
	defaultSweepEvery = time.Second
)

// errClosed is returned by Memory.Ping after Close.
var errClosed = errors.New("kv: store is closed")

// Memory is the in-process Store. Keys are spread over 64 shards, each behind
// its own mutex. Expired keys are dropped when read and, for keys nobody
// reads, by a janitor goroutine that NewMemory starts and Close stops.
// Sorted sets live in the same shards (see zset) and never expire.
// Admit and Unadmit hold the locks of two shards at once, taken in shard
// order (see lockPair); every other operation holds one shard lock at a
// time. The zero value is not usable; call NewMemory.
type Memory struct {
	seed   maphash.Seed
	epoch  time.Time // origin of the monotonic clock used for expiry
	shards [shardCount]shard

	appendMu sync.Mutex // serialises ZAppend, whose two keys may be in two shards

	closed    atomic.Bool
	closeOnce sync.Once
	stop      chan struct{}
	done      chan struct{}
}

// shard is one lock domain of a Memory store.
type shard struct {
	mu sync.Mutex
	m  map[string]entry // guarded by mu
	// mayExpire is set when an entry with a ttl is stored and cleared by a
	// sweep that found none left; it lets the janitor skip counter-only
	// shards. Guarded by mu.
	mayExpire bool
	_         [48]byte // keep neighbouring mutexes on separate cache lines
}

// entry is a stored value or sorted set. exp is the expiry in nanoseconds
// since the store's epoch; 0 means none. A sorted set has a non-nil z, no
// val and no expiry.
type entry struct {
	val []byte
	exp int64
	z   *zset
}

// NewMemory returns an empty Memory store and starts its janitor, which runs
// until Close.
func NewMemory() *Memory {
	return newMemory(defaultSweepEvery)
}

func newMemory(sweepEvery time.Duration) *Memory {
	m := &Memory{
		seed:  maphash.MakeSeed(),
		epoch: time.Now(),
		stop:  make(chan struct{}),
		done:  make(chan struct{}),
	}
	for i := range m.shards {
		m.shards[i].m = make(map[string]entry)
	}
	go m.janitor(sweepEvery)
	return m
}

// now is the time on the store's monotonic clock; it is never 0.
func (m *Memory) now() int64 {
	return int64(time.Since(m.epoch)) + 1
}

// deadline turns a ttl into an entry expiry.
func (m *Memory) deadline(ttl time.Duration) int64 {
	if ttl == 0 {
		return 0
	}
	return m.now() + int64(ttl)
}

func (m *Memory) shard(key string) *shard {
	return &m.shards[m.shardIndex(key)]
}

func (m *Memory) shardIndex(key string) uint64 {
	return maphash.String(m.seed, key) & (shardCount - 1)
}

// lookupLocked returns the live entry at key, deleting it if it has expired.
// s.mu must be held.
func (s *shard) lookupLocked(key string, now int64) (entry, bool) {
	e, ok := s.m[key]
	if !ok {
		return entry{}, false
	}
	if e.exp != 0 && e.exp <= now {
		delete(s.m, key)
		return entry{}, false
	}
	return e, true
}

// storeLocked puts e at key. s.mu must be held.
func (s *shard) storeLocked(key string, e entry) {
	if e.exp != 0 {
		s.mayExpire = true
	}
	s.m[key] = e
}

// Get implements Store.
func (m *Memory) Get(_ context.Context, key string) ([]byte, error) {
	s := m.shard(key)
	s.mu.Lock()
	e, ok := s.lookupLocked(key, m.now())
	var val []byte
	if ok && e.z == nil {
		val = append(make([]byte, 0, len(e.val)), e.val...)
	}
	s.mu.Unlock()
	switch {
	case !ok:
		return nil, ErrNotFound
	case e.z != nil:
		return nil, fmt.Errorf("kv: get %q: %w", key, ErrWrongType)
	}
	return val, nil
}

// Set implements Store.
func (m *Memory) Set(_ context.Context, key string, val []byte, ttl time.Duration) error {
	if ttl < 0 {
		return fmt.Errorf("kv: set %q: negative ttl %v", key, ttl)
	}
	e := entry{val: append(make([]byte, 0, len(val)), val...), exp: m.deadline(ttl)}
	s := m.shard(key)
	s.mu.Lock()
	s.storeLocked(key, e)
	s.mu.Unlock()
	return nil
}

// SetNX implements Store.
func (m *Memory) SetNX(_ context.Context, key string, val []byte, ttl time.Duration) (bool, error) {
	if ttl < 0 {
		return false, fmt.Errorf("kv: setnx %q: negative ttl %v", key, ttl)
	}
	s := m.shard(key)
	s.mu.Lock()
	defer s.mu.Unlock()
	now := m.now()
	if _, ok := s.lookupLocked(key, now); ok {
		return false, nil
	}
	exp := int64(0)
	if ttl != 0 {
		exp = now + int64(ttl)
	}
	s.storeLocked(key, entry{val: append(make([]byte, 0, len(val)), val...), exp: exp})
	return true, nil
}

// Del implements Store.
func (m *Memory) Del(_ context.Context, keys ...string) error {
	for _, key := range keys {
		s := m.shard(key)
		s.mu.Lock()
		delete(s.m, key)
		s.mu.Unlock()
	}
	return nil
}

// IncrBy implements Store.
func (m *Memory) IncrBy(_ context.Context, key string, n int64) (int64, error) {
	s := m.shard(key)
	s.mu.Lock()
	defer s.mu.Unlock()
	e, found := s.lookupLocked(key, m.now())
	if e.z != nil {
		return 0, fmt.Errorf("kv: incrby %q: %w", key, ErrWrongType)
	}
	cur := int64(0)
	if found {
		var ok bool
		if cur, ok = parseInt(e.val); !ok {
			return 0, fmt.Errorf("kv: incrby %q: %w", key, ErrNotInteger)
		}
	}
	if (n > 0 && cur > maxInt64-n) || (n < 0 && cur < minInt64-n) {
		return 0, fmt.Errorf("kv: incrby %q by %d: %w", key, n, ErrNotInteger)
	}
	cur += n
	// Get and Set copy, so the buffer is ours to reuse.
	e.val = strconv.AppendInt(e.val[:0], cur, 10)
	s.storeLocked(key, e)
	return cur, nil
}

// Take implements Store.
func (m *Memory) Take(_ context.Context, key string, n int64) (int64, bool, error) {
	if n <= 0 {
		return 0, false, fmt.Errorf("kv: take %q: n must be > 0, got %d", key, n)
	}
	s := m.shard(key)
	s.mu.Lock()
	defer s.mu.Unlock()
	e, found := s.lookupLocked(key, m.now())
	if !found {
		return 0, false, nil
	}
	if e.z != nil {
		return 0, false, fmt.Errorf("kv: take %q: %w", key, ErrWrongType)
	}
	cur, ok := parseInt(e.val)
	if !ok {
		return 0, false, fmt.Errorf("kv: take %q: %w", key, ErrNotInteger)
	}
	if cur < n {
		return cur, false, nil
	}
	cur -= n
	e.val = strconv.AppendInt(e.val[:0], cur, 10)
	s.m[key] = e
	return cur, true, nil
}

// Ping implements Store; it fails only after Close.
func (m *Memory) Ping(context.Context) error {
	if m.closed.Load() {
		return errClosed
	}
	return nil
}

// Close stops the janitor and waits for it to return. The data stays in
// memory until the store is garbage collected.
func (m *Memory) Close() error {
	m.closeOnce.Do(func() {
		m.closed.Store(true)
		close(m.stop)
		<-m.done
	})
	return nil
}

// janitor sweeps expired keys every interval until Close.
func (m *Memory) janitor(every time.Duration) {
	defer close(m.done)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-m.stop:
			return
		case <-t.C:
			m.sweep()
		}
	}
}

// sweep removes expired entries from every shard that may hold some. It
// locks one shard at a time, so readers of other shards never wait.
func (m *Memory) sweep() {
	for i := range m.shards {
		s := &m.shards[i]
		s.mu.Lock()
		if s.mayExpire {
			now := m.now()
			left := false
			for k, e := range s.m {
				switch {
				case e.exp == 0:
				case e.exp <= now:
					delete(s.m, k)
				default:
					left = true
				}
			}
			s.mayExpire = left
		}
		s.mu.Unlock()
	}
}

const (
	maxInt64 = 1<<63 - 1
	minInt64 = -1 << 63
)

// parseInt parses b the way Redis does for INCRBY: an optional minus sign
// and decimal digits without leading zeros, fitting an int64.
func parseInt(b []byte) (int64, bool) {
	if len(b) == 0 || len(b) > 20 {
		return 0, false
	}
	if len(b) == 1 && b[0] == '0' {
		return 0, true
	}
	neg := b[0] == '-'
	if neg {
		b = b[1:]
	}
	if len(b) == 0 || b[0] < '1' || b[0] > '9' {
		return 0, false
	}
	var u uint64
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		d := uint64(c - '0')
		if u > (1<<64-1-d)/10 {
			return 0, false
		}
		u = u*10 + d
	}
	if neg {
		if u > 1<<63 {
			return 0, false
		}
		return -int64(u), true
	}
	if u > maxInt64 {
		return 0, false
	}
	return int64(u), true
}
