package fulfil

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"maps"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/surge-platform/surge/internal/platform/id"
	"github.com/surge-platform/surge/internal/platform/kv"
	"github.com/surge-platform/surge/internal/platform/kv/kvtest"
	"github.com/surge-platform/surge/internal/platform/sqldb"
)

// news records what the service announced.
type news struct {
	mu   sync.Mutex
	seqs map[int64]int64 // order -> last seq announced
}

func (n *news) Announce(_ context.Context, _, seq, orderID int64) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.seqs[orderID] = seq
}

// newQueueService returns a service on two SQLite shards with stores 1001
// to 1003 and an in-memory kv store; its queue steps need no orders (a
// pull's Peek does, so these tests read the queues from kv).
func newQueueService(t *testing.T) *Service {
	t.Helper()
	ctx := t.Context()
	c, err := sqldb.Open(ctx, []string{"sqlite:" + t.TempDir() + "?shards=2"}, sqldb.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if err := c.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	for st := 1001; st <= 1003; st++ {
		if _, err := c.Main().W.ExecContext(ctx, `INSERT INTO stores (id, name, updated_at) VALUES ($1, $2, 0)`, st, "s"); err != nil {
			t.Fatal(err)
		}
	}
	ids, err := id.New(1)
	if err != nil {
		t.Fatal(err)
	}
	s := New(c, nil, ids, nil, nil, &news{seqs: map[int64]int64{}}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	loseKV(t, s)
	return s
}

// loseKV replaces the service's kv store with an empty one: Redis restarted
// without persistence, or flushed.
func loseKV(t *testing.T, s *Service) {
	m := kv.NewMemory()
	t.Cleanup(func() { m.Close() })
	s.kv = m
}

func mustTake(t *testing.T, s *Service, orderID, storeID int64) {
	t.Helper()
	if err := s.Take(t.Context(), orderID, storeID, 7); err != nil {
		t.Fatalf("take order %d: %v", orderID, err)
	}
}

// queued returns the store's queue after cursor as order -> seq, and the
// orders in queue order.
func queued(t *testing.T, s *Service, storeID, after int64) (map[int64]int64, []int64) {
	t.Helper()
	es, err := s.kv.ZAfter(t.Context(), queueKey(storeID), after, 1000)
	if err != nil {
		t.Fatal(err)
	}
	seqs, order := map[int64]int64{}, []int64{}
	for _, e := range es {
		o, _ := strconv.ParseInt(e.Member, 10, 64)
		seqs[o] = e.Score
		order = append(order, o)
	}
	return seqs, order
}

func mustAck(t *testing.T, s *Service, storeID, cursor, wantFrom int64) {
	t.Helper()
	from, err := s.Ack(t.Context(), storeID, cursor)
	if err != nil || from != wantFrom {
		t.Fatalf("Ack(store %d, cursor %d) = %d, %v; want %d", storeID, cursor, from, err, wantFrom)
	}
}

// TestRebuild: after kv lost the queues, Rebuild queues again every order
// still new (not the accepted one), each store's in order, above every
// seq handed out before; a second rebuild (another node's, or the same
// one's) and a redelivered order.paid change nothing.
func TestRebuild(t *testing.T) {
	t.Parallel()
	s := newQueueService(t)
	ctx := t.Context()
	for _, o := range []struct{ order, store int64 }{{13, 1001}, {11, 1001}, {12, 1001}, {21, 1002}, {31, 1003}} {
		mustTake(t, s, o.order, o.store)
	}
	if _, err := s.Step(ctx, 1003, 31, Accepted, ""); err != nil {
		t.Fatal(err)
	}
	before, _ := queued(t, s, 1001, 0)
	highest := slices.Max(slices.Collect(maps.Values(before)))

	loseKV(t, s)
	if err := s.Rebuild(ctx); err != nil {
		t.Fatal(err)
	}
	seqs, order := queued(t, s, 1001, 0)
	if !slices.Equal(order, []int64{11, 12, 13}) {
		t.Fatalf("store 1001's queue after the rebuild: %v, want orders 11, 12, 13 (by id)", order)
	}
	if seqs[11] <= highest {
		t.Fatalf("rebuilt seq %d not above %d, the highest before the loss", seqs[11], highest)
	}
	if _, order := queued(t, s, 1002, 0); !slices.Equal(order, []int64{21}) {
		t.Fatalf("store 1002's queue: %v, want 21", order)
	}
	if _, order := queued(t, s, 1003, 0); len(order) != 0 {
		t.Fatalf("store 1003's queue: %v, want empty (its order was accepted)", order)
	}
	if got := s.news.(*news).seqs[12]; got != seqs[12] {
		t.Fatalf("order 12 announced at seq %d, queued at %d", got, seqs[12])
	}

	if err := s.Rebuild(ctx); err != nil {
		t.Fatal(err)
	}
	mustTake(t, s, 12, 1001) // order.paid delivered again
	again, order := queued(t, s, 1001, 0)
	if !slices.Equal(order, []int64{11, 12, 13}) || !maps.Equal(again, seqs) {
		t.Fatalf("after a second rebuild and a redelivery: %v %v, want %v unchanged", order, again, seqs)
	}
}

// TestCursorFromBeforeTheLoss: a POS that read the queue before kv lost it
// comes back with its cursor. It acknowledges nothing it has not seen: the
// orders paid since and the rebuilt ones are all after its cursor.
func TestCursorFromBeforeTheLoss(t *testing.T) {
	t.Parallel()
	s := newQueueService(t)
	ctx := t.Context()
	for o := int64(1); o <= 3; o++ {
		mustTake(t, s, o, 1001)
	}
	seqs, _ := queued(t, s, 1001, 0)
	cursor := seqs[3] // the POS has read all three, accepted none

	loseKV(t, s)
	mustTake(t, s, 4, 1001) // paid after the loss, before the rebuild
	if err := s.Rebuild(ctx); err != nil {
		t.Fatal(err)
	}
	mustTake(t, s, 5, 1001)
	mustAck(t, s, 1001, cursor, cursor)
	_, order := queued(t, s, 1001, cursor)
	if !slices.Equal(order, []int64{4, 1, 2, 3, 5}) {
		t.Fatalf("after the POS's old cursor: %v, want 4, then the rebuilt 1, 2, 3, then 5", order)
	}
}

// TestCursorFromBeforeTheLossSkewedClock: the orders before the loss were
// queued by a node whose clock was an hour ahead, so the seqs after the
// loss lie below the POS's cursor. That cursor is above the counter:
// it acknowledges nothing and the POS reads from the start.
func TestCursorFromBeforeTheLossSkewedClock(t *testing.T) {
	t.Parallel()
	s := newQueueService(t)
	ahead := time.Now().Add(time.Hour)
	s.now = func() time.Time { return ahead }
	for o := int64(1); o <= 2; o++ {
		mustTake(t, s, o, 1001)
	}
	seqs, _ := queued(t, s, 1001, 0)
	cursor := seqs[2]

	loseKV(t, s)
	s.now = time.Now
	mustTake(t, s, 3, 1001)
	now, _ := queued(t, s, 1001, 0)
	if now[3] >= cursor {
		t.Fatalf("seq %d after the loss is not below the old cursor %d; the test proves nothing", now[3], cursor)
	}
	mustAck(t, s, 1001, cursor, 0)
	if _, order := queued(t, s, 1001, 0); !slices.Equal(order, []int64{3}) {
		t.Fatalf("queue after the old cursor's ack: %v, want order 3 still there", order)
	}
	// Once the POS has read it, its cursor acknowledges it.
	mustAck(t, s, 1001, now[3], now[3])
	if _, order := queued(t, s, 1001, 0); len(order) != 0 {
		t.Fatalf("queue after acknowledging order 3: %v, want empty", order)
	}
}

// TestAckUnavailable: a kv store that does not answer makes an
// acknowledgement fail with ErrUnavailable (503 at the edge), not succeed.
func TestAckUnavailable(t *testing.T) {
	t.Parallel()
	s := newQueueService(t)
	mustTake(t, s, 1, 1001)
	srv := kvtest.StartRedis(t)
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	r, err := kv.Open(ctx, srv.URL("timeout=200ms"))
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	s.kv = r
	srv.Freeze()
	defer srv.Thaw()
	if _, err := s.Ack(ctx, 1001, 5); !errors.Is(err, kv.ErrUnavailable) {
		t.Fatalf("Ack with kv frozen: %v, want ErrUnavailable", err)
	}
	if err := s.Take(ctx, 2, 1001, 7); !errors.Is(err, kv.ErrUnavailable) {
		t.Fatalf("Take with kv frozen: %v, want ErrUnavailable", err)
	}
}

// TestCursorFromBeforeTheLossClockAhead: the orders before the loss were
// queued by a node whose clock ran 5 s ahead; after the loss another node
// queues with its own clock and the counter moves on well past the POS's
// old cursor before the POS comes back. The old cursor must still
// acknowledge nothing it was not shown: a lost counter starts a minute
// ahead (freshGap), above anything a clock that far off handed out.
func TestCursorFromBeforeTheLossClockAhead(t *testing.T) {
	t.Parallel()
	s := newQueueService(t)
	ctx := t.Context()
	// The store's queue was started long ago (a fresh counter starts a
	// gap ahead, so a loss within the gap of that start is not covered).
	long := time.Now().Add(-10 * time.Minute)
	s.now = func() time.Time { return long }
	mustTake(t, s, 100, 1001)
	mustAck(t, s, 1001, queuedSeq(t, s, 1001, 100), queuedSeq(t, s, 1001, 100))
	ahead := time.Now().Add(5 * time.Second)
	s.now = func() time.Time { return ahead }
	mustTake(t, s, 1, 1001)
	cursor := queuedSeq(t, s, 1001, 1) // the POS has seen order 1

	loseKV(t, s)
	s.now = time.Now
	mustTake(t, s, 2, 1001) // paid after the loss, on a node with the right time
	if err := s.Rebuild(ctx); err != nil {
		t.Fatal(err)
	}
	for o := int64(3); o <= 20; o++ { // the counter moves on
		mustTake(t, s, o, 1001)
	}
	now, _ := queued(t, s, 1001, 0)
	if now[2] <= cursor {
		t.Fatalf("seq %d of an order paid after the loss is not above the old cursor %d", now[2], cursor)
	}
	mustAck(t, s, 1001, cursor, cursor)
	_, order := queued(t, s, 1001, cursor)
	// 2, the rebuilt 1 and 100 (seen, not accepted: shown again), 3..20.
	if len(order) != 21 || order[0] != 2 {
		t.Fatalf("after the old cursor's ack: %v, want order 2 first and all 21 still queued", order)
	}
}

func queuedSeq(t *testing.T, s *Service, storeID, orderID int64) int64 {
	t.Helper()
	seqs, _ := queued(t, s, storeID, 0)
	seq, ok := seqs[orderID]
	if !ok {
		t.Fatalf("order %d not queued", orderID)
	}
	return seq
}
