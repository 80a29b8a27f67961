package lease

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"time"

	"github.com/surge-platform/surge/internal/platform/id"
)

// NodeTTL is how long a node id stays leased without renewal. A node that
// cannot renew its lease for about this long stops issuing ids.
const NodeTTL = 20 * time.Second

// NodeID keeps this process's node id leased and tells its id generator
// how long it may issue ids with it.
type NodeID struct {
	t     *Table
	owner string
	ttl   time.Duration
	gen   *id.Generator
	log   *slog.Logger
	fixed bool // the operator chose the id: never switch to another

	held *Held
	node int
}

// ErrNodeTaken is returned by LeaseNodeID when the node id asked for is
// held by another live process, or when every node id is.
var ErrNodeTaken = errors.New("node id taken")

// LeaseNodeID leases a node id for owner: want if want >= 0 (an operator's
// choice: the start fails if another live process holds it), otherwise
// the lowest free one. On success the generator (made with id.NewLeased)
// issues ids until the lease's local deadline; Keep renews it. ttl 0 means
// NodeTTL.
func LeaseNodeID(ctx context.Context, t *Table, owner string, want int, ttl time.Duration, gen *id.Generator, log *slog.Logger) (*NodeID, error) {
	if ttl <= 0 {
		ttl = NodeTTL
	}
	n := &NodeID{t: t, owner: owner, ttl: ttl, gen: gen, log: log, fixed: want >= 0}
	if err := n.take(ctx, want); err != nil {
		return nil, err
	}
	return n, nil
}

// Node returns the node id currently leased.
func (n *NodeID) Node() int { return n.node }

func nodeLease(node int) string { return "node:" + strconv.Itoa(node) }

// take leases want, or the lowest free id when want < 0.
func (n *NodeID) take(ctx context.Context, want int) error {
	from, to := 0, id.MaxNode
	if want >= 0 {
		if want > id.MaxNode {
			return fmt.Errorf("node id %d out of range 0..%d", want, id.MaxNode)
		}
		from, to = want, want
	}
	for node := from; node <= to; node++ {
		h := n.t.Hold(nodeLease(node), n.owner, n.ttl)
		mark := n.mark()
		ok, prev, err := h.AcquireMarked(ctx, mark)
		if err != nil {
			return fmt.Errorf("lease node id: %w", err)
		}
		if ok {
			n.held, n.node = h, node
			n.gen.Lease(node, h.Until(), prev, mark)
			return nil
		}
	}
	if want >= 0 {
		holder := "another process"
		if hs, err := n.t.List(ctx, nodeLease(want)); err == nil && len(hs) > 0 {
			holder = hs[0].Owner
		}
		return fmt.Errorf("%w: node id %d is held by %s (its lease lasts %v after it stops): give another --node-id, or none to lease a free one",
			ErrNodeTaken, want, holder, n.ttl)
	}
	return fmt.Errorf("%w: all %d node ids are held by live processes: stop some, or wait %v for the leases of dead ones to expire",
		ErrNodeTaken, id.MaxNode+1, n.ttl)
}

// Keep renews the lease every ttl/5 until ctx is done, then releases it.
// While renewals fail (the database is away) the generator keeps issuing
// ids until the last lease's local deadline, then refuses (Unavailable)
// until a renewal succeeds. A lease found taken by another process (this
// one was paused or cut off longer than the ttl) is replaced by a free
// node id, unless the operator fixed the id: then Keep keeps trying for it
// and the generator stays refused. Keep returns nil.
func (n *NodeID) Keep(ctx context.Context) error {
	t := time.NewTicker(n.ttl / 5)
	defer t.Stop()
	failing := false
	for {
		select {
		case <-ctx.Done():
			c, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
			defer cancel()
			n.Release(c)
			return nil
		case <-t.C:
		}
		c, cancel := context.WithTimeout(ctx, n.ttl/5)
		mark := n.mark()
		ok, prev, err := n.held.AcquireMarked(c, mark)
		if err == nil && !ok {
			n.gen.Lease(n.node, time.Time{}, 0, 0) // another process holds our id: no id from it, at once
			if !n.fixed {
				n.log.Warn("node id lease taken by another process; leasing another", "node_id", n.node)
				err = n.take(c, -1)
				ok = err == nil
			}
		}
		cancel()
		switch {
		case err != nil:
			if !failing && ctx.Err() == nil {
				n.log.Warn("node id lease not renewed; ids stop when it runs out", "node_id", n.node,
					"until", time.Until(n.held.Until()).Round(time.Millisecond), "err", err)
			}
			failing = true
		case !ok:
			if !failing {
				n.log.Error("node id lease taken by another process; this node issues no ids", "node_id", n.node)
			}
			failing = true
		default:
			if failing {
				n.log.Info("node id lease renewed", "node_id", n.node)
			}
			failing = false
			n.gen.Lease(n.node, n.held.Until(), prev, mark) // prev: our own predecessor's (a floor only ever raises)
		}
	}
}

// Release stops the generator and gives the node id up, so that the next
// process may have it at once.
func (n *NodeID) Release(ctx context.Context) error {
	n.gen.Lease(n.node, time.Time{}, 0, 0)
	// The next holder starts above every id this one made.
	return n.held.Release(ctx, max(n.gen.Last(), time.Now().UnixMilli()))
}

// mark is the bound this process declares on the ids it may issue under
// a lease it takes or renews now: its clock plus the lease's ttl (its
// local deadline ends before that).
func (n *NodeID) mark() int64 { return time.Now().Add(n.ttl).UnixMilli() }
