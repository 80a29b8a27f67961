// Package limit holds a token bucket per key (a user id, a hashed IP
// address, a hot parameter such as a sale id: Sentinel's hotspot limits)
// in bounded memory, for the limits taken on the request path. Taking a
// token for a key already held locks one of 64 shards and allocates
// nothing.
//
// Memory is bounded by generations, not by a clock: each shard keeps two
// maps, current and previous. A key found in previous moves to current;
// when current is full, previous is dropped and current becomes previous.
// A key that goes unused for a whole generation is forgotten and comes
// back with a full bucket and no strikes. A key used all the time (the
// one an abuser hammers) is never forgotten, however many others pass;
// what is lost is the state of idle keys, so maxKeys/2 should exceed the
// keys that appear within a refill (burst/perSecond) and a StrikeWindow.
// Once that many keys have passed, a Keyed takes about 128 bytes per key
// of maxKeys (measured: 134 MB for 1<<20), and allocates no more.
package limit

import (
	"encoding/binary"
	"math"
	"math/rand/v2"
	"net/netip"
	"sync"
	"time"
)

// StrikeWindow is how long a refusal counts as a strike against its key.
const StrikeWindow = 10 * time.Second

// slots is the number of one-second strike counters a bucket keeps: a
// refusal made in second s counts while now is in second s+10 or earlier,
// so for at least StrikeWindow and less than StrikeWindow + 1s.
const slots = int64(StrikeWindow/time.Second) + 1

// shardCount is the number of shards of a Keyed with enough keys.
const shardCount = 64

// Keyed holds a token bucket per key (a user id, a hashed IP, a sale id):
// perSecond tokens a second up to burst, a new key starting full. At most
// maxKeys buckets exist at once. It is safe for concurrent use. The zero
// value, and a nil *Keyed, allow everything.
type Keyed struct {
	rate   float64 // tokens per nanosecond
	burst  float64
	perGen int    // entries of one map of one shard
	seed   uint64 // spreads keys over shards, unknown to clients
	shards []shard
}

type shard struct {
	mu   sync.Mutex
	cur  map[uint64]bucket // guarded by mu
	prev map[uint64]bucket // guarded by mu
	_    [40]byte          // keeps the next shard's mutex off this cache line
}

// bucket is one key's state. It holds no pointers, so the garbage
// collector does not scan a shard's maps.
type bucket struct {
	tokens  float64
	last    int64         // unix ns of the last refill
	head    int64         // unix second of the newest strike counter
	strikes [slots]uint16 // refusals in second s at strikes[s mod slots], saturating
}

// NewKeyed returns buckets of burst tokens (at least 1) refilled at
// perSecond, holding at most maxKeys keys (at least 2). perSecond <= 0 (or
// +Inf, or NaN) means unlimited: Allow always says yes and nothing is kept.
func NewKeyed(perSecond float64, burst int, maxKeys int) *Keyed {
	if !(perSecond > 0) || math.IsInf(perSecond, 1) {
		return &Keyed{}
	}
	n := shardCount
	for n > 1 && maxKeys/n/2 < 1 {
		n /= 2
	}
	k := &Keyed{
		rate:   perSecond / float64(time.Second),
		burst:  float64(max(burst, 1)),
		perGen: max(maxKeys/n/2, 1),
		seed:   rand.Uint64(),
		shards: make([]shard, n),
	}
	for i := range k.shards {
		k.shards[i].cur = map[uint64]bucket{}
		k.shards[i].prev = map[uint64]bucket{}
	}
	return k
}

// Allow takes a token from key's bucket. When the bucket is empty it counts
// a strike against the key and returns false with the key's strikes within
// the last StrikeWindow, this one included; strikes is 0 when allowed.
// Calls may pass each other with their now: a now earlier than the key's
// last adds no tokens.
func (k *Keyed) Allow(key uint64, now time.Time) (ok bool, strikes int) {
	if k == nil || k.shards == nil {
		return true, 0
	}
	ns, sec := now.UnixNano(), now.Unix()
	s := k.shard(key)
	s.mu.Lock()
	defer s.mu.Unlock()
	b, held := s.cur[key]
	if !held {
		if b, held = s.prev[key]; held {
			delete(s.prev, key)
		} else {
			b = bucket{tokens: k.burst, last: ns}
		}
		s.makeRoomLocked(k.perGen)
	}
	if ns > b.last {
		b.tokens = min(k.burst, b.tokens+float64(ns-b.last)*k.rate)
		b.last = ns
	}
	if b.tokens >= 1 {
		b.tokens--
		ok = true
	} else {
		strikes = b.strike(sec)
	}
	s.cur[key] = b
	return ok, strikes
}

// Strikes returns key's strikes within the last StrikeWindow without taking
// a token; 0 for a key not held.
func (k *Keyed) Strikes(key uint64, now time.Time) int {
	if k == nil || k.shards == nil {
		return 0
	}
	s := k.shard(key)
	s.mu.Lock()
	defer s.mu.Unlock()
	b, held := s.cur[key]
	if !held {
		if b, held = s.prev[key]; !held {
			return 0
		}
		delete(s.prev, key)
		s.makeRoomLocked(k.perGen)
		s.cur[key] = b
	}
	return b.count(now.Unix())
}

func (k *Keyed) shard(key uint64) *shard {
	return &k.shards[mix(key^k.seed)&uint64(len(k.shards)-1)]
}

// makeRoomLocked makes room for one more key in cur: when cur holds perGen
// keys, prev is dropped and cur becomes prev. The maps keep their memory
// for the next generation, so a full Keyed stops allocating. s.mu must be
// held.
func (s *shard) makeRoomLocked(perGen int) {
	if len(s.cur) < perGen {
		return
	}
	clear(s.prev)
	s.cur, s.prev = s.prev, s.cur
}

// strike counts a refusal in second sec and returns the refusals within
// the window. A sec behind head (a call that was passed by a later one)
// counts in its own second while that is still in the window.
func (b *bucket) strike(sec int64) int {
	if sec > b.head {
		if sec-b.head >= slots {
			b.strikes = [slots]uint16{}
		} else {
			for s := b.head + 1; s <= sec; s++ {
				b.strikes[slot(s)] = 0
			}
		}
		b.head = sec
	}
	if b.head-sec < slots && b.strikes[slot(sec)] < math.MaxUint16 {
		b.strikes[slot(sec)]++
	}
	return b.count(sec)
}

// count returns the refusals within the window that ends in second sec, or
// in head when head is later. The counters hold seconds head-slots+1 to
// head, the window is sec-slots+1 to sec.
func (b *bucket) count(sec int64) int {
	sec = max(sec, b.head)
	n := 0
	for s := sec - slots + 1; s <= b.head; s++ {
		n += int(b.strikes[slot(s)])
	}
	return n
}

func slot(sec int64) int { return int((sec%slots + slots) % slots) }

// ClientKey is the key of the client at ip: its address's, or for an
// IPv6 client the key of the /64 it holds (it can take another address
// of it at will, so it is limited as one).
func ClientKey(ip netip.Addr) uint64 {
	if ip.Is6() && !ip.Is4In6() {
		ip = netip.PrefixFrom(ip, 64).Masked().Addr()
	}
	return IPKey(ip)
}

// IPKey hashes an address into a key. An IPv4 address and its
// IPv4-in-IPv6 form (::ffff:a.b.c.d) give the same key; a zone is ignored.
// An IPv6 client usually holds a whole /64: to limit it as one, pass
// netip.PrefixFrom(ip, 64).Masked().Addr().
func IPKey(ip netip.Addr) uint64 {
	a := ip.As16() // IPv4 comes as ::ffff:a.b.c.d, without a zone
	return mix(binary.BigEndian.Uint64(a[:8]) ^ mix(binary.BigEndian.Uint64(a[8:])))
}

// mix is the finalizer of SplitMix64: a bijection that spreads every input
// bit over the output.
func mix(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
}
