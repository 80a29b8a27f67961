// Package id generates surge's 63-bit, time-ordered, shard-carrying ids.
//
// Layout (most significant first), DESIGN section 4:
//
//	41 bits  milliseconds since 2024-01-01T00:00:00Z
//	 7 bits  node id (0..127, leased so that no two live nodes share one)
//	 5 bits  sequence within the millisecond (32 ids per ms per node)
//	10 bits  shard gene (0..1023) = owning user id mod 1024
//
// An order id, and the payment and refund ids of that order, carry the gene of
// the user, so the logical shard of any of them is Gene(id).
package id

import (
	"fmt"
	"sync"
	"time"

	"github.com/surge-platform/surge/internal/platform/errkind"
)

const (
	geneBits = 10
	seqBits  = 5
	nodeBits = 7
	timeBits = 41

	// Genes is the number of logical shards.
	Genes   = 1 << geneBits
	MaxNode = 1<<nodeBits - 1
	maxSeq  = 1<<seqBits - 1
)

// Epoch is the zero of the id clock.
var Epoch = time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)

// Gene returns the shard gene (logical shard) carried by an id.
func Gene(id int64) int { return int(id & (Genes - 1)) }

// GeneOf returns the gene an id owned by userID must carry.
func GeneOf(userID int64) int { return int(uint64(userID) % Genes) }

// Time returns the millisecond at which id was generated.
func Time(id int64) time.Time {
	return Epoch.Add(time.Duration(id>>(geneBits+seqBits+nodeBits)) * time.Millisecond)
}

// Floor returns the least id that can be generated at t or after it: every
// id made before t's millisecond is below it. Times before Epoch give 0.
func Floor(t time.Time) int64 {
	if !t.After(Epoch) {
		return 0
	}
	return int64(t.Sub(Epoch)/time.Millisecond) << (geneBits + seqBits + nodeBits)
}

// Node returns the node id that generated id.
func Node(id int64) int { return int(id>>(geneBits+seqBits)) & MaxNode }

// ErrNoLease is returned by Next when the generator's node id lease has
// run out (the database that holds it is away, or another process took
// it): issuing ids then could repeat another node's.
var ErrNoLease = errkind.New(errkind.Unavailable, "unavailable", "this node cannot issue ids now (its node id lease lapsed), try again")

// Generator hands out ids for one node. The zero value is not usable; call
// New or NewLeased.
type Generator struct {
	now func() time.Time

	mu     sync.Mutex
	node   int64     // guarded by mu
	leased bool      // ids only until `until` and up to `ceil` (guarded by mu)
	until  time.Time // local monotonic deadline of the node id lease (guarded by mu)
	ceil   int64     // last millisecond (since Epoch) the lease allows (guarded by mu)
	last   int64     // last millisecond used (guarded by mu)
	seq    int64     // sequence within last (guarded by mu)
}

// New returns a generator for node (0..MaxNode) that never stops issuing
// ids: for tests and tools that own their node id.
func New(node int) (*Generator, error) {
	if node < 0 || node > MaxNode {
		return nil, fmt.Errorf("id: node %d out of range 0..%d", node, MaxNode)
	}
	return &Generator{node: int64(node), now: time.Now}, nil
}

// NewLeased returns a generator that issues no id until Lease says which
// node id it may use and until when.
func NewLeased() *Generator { return &Generator{now: time.Now, leased: true} }

// Lease lets a generator made by NewLeased issue ids as node until the
// local deadline until (from time.Now, so its monotonic reading counts: a
// paused process wakes up past it), with times in (floor, ceil] (unix ms
// of this process's clock): floor is the bound the node id's previous
// holder declared, ceil the one this process declared. Ids of two holders
// of one node id, one after the other, then never share a millisecond,
// whatever their clocks say. A zero until stops it at once.
func (g *Generator) Lease(node int, until time.Time, floor, ceil int64) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.node, g.until, g.ceil = int64(node&MaxNode), until, ceil-Epoch.UnixMilli()
	if f := floor - Epoch.UnixMilli(); f > g.last {
		g.last, g.seq = f, maxSeq // the next id in a millisecond after floor
	}
}

// Last returns the last millisecond used, as unix ms (0 before any id).
func (g *Generator) Last() int64 {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.last == 0 {
		return 0
	}
	return g.last + Epoch.UnixMilli()
}

// Node returns the node id the generator issues ids with.
func (g *Generator) Node() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return int(g.node)
}

// Next returns a new id carrying gene (taken mod Genes). Ids from one
// generator are strictly increasing. When the 32 sequence numbers of a
// millisecond are used up, Next takes the next millisecond, up to 20 ms
// ahead of the clock; further ahead, or when the clock stepped back
// further, it waits for the clock instead of repeating an id. A leased generator returns ErrNoLease
// (Unavailable) past its lease's deadline.
func (g *Generator) Next(gene int) (int64, error) {
	const maxAhead = 20 // milliseconds a burst may borrow from the clock (under the 50 a lease taker allows)
	g.mu.Lock()
	defer g.mu.Unlock()
	for {
		now := g.now()
		if g.leased && !now.Before(g.until) {
			return 0, ErrNoLease
		}
		ms := now.Sub(Epoch).Milliseconds()
		if g.leased && max(ms, g.last) > g.ceil {
			return 0, ErrNoLease // past the bound this process declared (a clock stepped forward)
		}
		if g.leased && g.last-ms > 50 {
			// Behind the previous holder's bound (its clock was ahead):
			// refuse rather than hold every caller until ours catches up.
			return 0, ErrNoLease
		}
		switch {
		case ms > g.last:
			g.last, g.seq = ms, 0
		case g.seq < maxSeq:
			g.seq++ // same millisecond, or the clock went back: keep counting on last
		case g.last-ms < maxAhead:
			// The millisecond's 32 are used up: take the next millisecond
			// (DESIGN: a burst borrows from the clock, which catches up).
			// Sleeping instead held every caller for the timer's
			// granularity: flash-sale tickets waited milliseconds for ids.
			g.last, g.seq = g.last+1, 0
		default:
			// Borrowed maxAhead ahead: more than 32 ids a millisecond for
			// that long. Wait for the clock.
			time.Sleep(time.Duration(g.last-ms+1) * 100 * time.Microsecond)
			continue
		}
		return g.last<<(geneBits+seqBits+nodeBits) |
			g.node<<(geneBits+seqBits) |
			g.seq<<geneBits |
			int64(uint(gene)%Genes), nil
	}
}
