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

// Node returns the node id that generated id.
func Node(id int64) int { return int(id>>(geneBits+seqBits)) & MaxNode }

// Generator hands out ids for one node. The zero value is not usable; call New.
type Generator struct {
	node int64
	now  func() time.Time

	mu   sync.Mutex
	last int64 // last millisecond used (guarded by mu)
	seq  int64 // sequence within last (guarded by mu)
}

// New returns a generator for node (0..MaxNode).
func New(node int) (*Generator, error) {
	if node < 0 || node > MaxNode {
		return nil, fmt.Errorf("id: node %d out of range 0..%d", node, MaxNode)
	}
	return &Generator{node: int64(node), now: time.Now}, nil
}

// Next returns a new id carrying gene (taken mod Genes). Ids from one
// generator are strictly increasing. When the 32 sequence numbers of a
// millisecond are used up, or the clock stepped back, Next waits for the
// clock instead of repeating an id.
func (g *Generator) Next(gene int) int64 {
	g.mu.Lock()
	defer g.mu.Unlock()
	for {
		ms := g.now().Sub(Epoch).Milliseconds()
		switch {
		case ms > g.last:
			g.last, g.seq = ms, 0
		case g.seq < maxSeq:
			g.seq++ // same millisecond, or the clock went back: keep counting on last
		default:
			time.Sleep(time.Duration(g.last-ms+1) * 100 * time.Microsecond)
			continue
		}
		return g.last<<(geneBits+seqBits+nodeBits) |
			g.node<<(geneBits+seqBits) |
			g.seq<<geneBits |
			int64(uint(gene)%Genes)
	}
}
