package fulfil

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"sync"
	"testing"

	"github.com/surge-platform/surge/internal/order"
	"github.com/surge-platform/surge/internal/platform/id"
	"github.com/surge-platform/surge/internal/platform/outbox"
)

// events returns the order events a store's steps wrote to the outbox of
// the store's database, oldest first.
func events(t *testing.T, s *Service, storeID, orderID int64) []order.Event {
	t.Helper()
	rows, err := s.forStore(storeID).R.QueryContext(t.Context(), `SELECT payload FROM outbox ORDER BY id`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var out []order.Event
	for rows.Next() {
		var p []byte
		if err := rows.Scan(&p); err != nil {
			t.Fatal(err)
		}
		var ev order.Event
		if err := json.Unmarshal(p, &ev); err != nil {
			t.Fatal(err)
		}
		if ev.OrderID == orderID {
			out = append(out, ev)
		}
	}
	return out
}

// An order goes new -> accepted (a code made here) -> ready -> completed;
// each step writes its event with the pickup code, a repeated step answers
// the same and writes nothing, and a step out of turn is ErrStep.
func TestStepsInTurn(t *testing.T) {
	t.Parallel()
	s := newQueueService(t)
	ctx := t.Context()
	oid := int64(id.GeneOf(7)) | 1<<20 // an id with the gene of user 7, as order ids have
	mustTake(t, s, oid, 1001)
	if _, err := s.Step(ctx, 1001, oid, Ready, ""); !errors.Is(err, ErrStep) {
		t.Fatalf("ready before accept: %v, want ErrStep", err)
	}
	code, err := s.Step(ctx, 1001, oid, Accepted, "")
	if err != nil || len(code) != 4 || code[0] == '0' {
		t.Fatalf("accept: code %q, %v; want four digits not starting with 0", code, err)
	}
	if again, err := s.Step(ctx, 1001, oid, Accepted, ""); err != nil || again != code {
		t.Fatalf("accept again: %q %v, want the same code %q", again, err, code)
	}
	if _, err := s.Step(ctx, 1001, oid, Completed, ""); !errors.Is(err, ErrStep) {
		t.Fatalf("complete before ready: %v, want ErrStep", err)
	}
	for _, to := range []string{Ready, Completed} {
		if got, err := s.Step(ctx, 1001, oid, to, ""); err != nil || got != code {
			t.Fatalf("%s: %q %v, want the pickup code %q", to, got, err, code)
		}
	}
	evs := events(t, s, 1001, oid)
	want := []string{order.EvAccepted, order.EvReady, order.EvCompleted}
	if len(evs) != len(want) {
		t.Fatalf("events %+v, want one each of %v", evs, want)
	}
	for i, ev := range evs {
		if ev.Type != want[i] || ev.PickupCode != code || ev.StoreID != 1001 || ev.UserID != 7 || id.Gene(ev.EventID) != id.Gene(oid) {
			t.Fatalf("event %d: %+v, want %s with code %s for store 1001, user 7, on the order's shard", i, ev, want[i], code)
		}
	}
	if _, err := s.Step(ctx, 1001, oid, "refunded", ""); err == nil {
		t.Fatal("an unknown step was taken")
	}
}

// A store can act only on its own orders; an unknown order is not found.
func TestStepWrongStore(t *testing.T) {
	t.Parallel()
	s := newQueueService(t)
	ctx := t.Context()
	mustTake(t, s, 41, 1001)
	if _, err := s.Step(ctx, 1002, 41, Accepted, ""); !errors.Is(err, ErrNotFound) {
		t.Fatalf("accept by another store: %v, want ErrNotFound", err)
	}
	// A store whose records share 1001's database: only the store id
	// tells its orders apart.
	other := int64(1002)
	for s.forStore(other) != s.forStore(1001) {
		other++
	}
	if _, err := s.Step(ctx, other, 41, Accepted, ""); !errors.Is(err, ErrNotFound) {
		t.Fatalf("accept by store %d, on the same database: %v, want ErrNotFound", other, err)
	}
	if _, err := s.Step(ctx, 1001, 42, Accepted, ""); !errors.Is(err, ErrNotFound) {
		t.Fatalf("accept of an order never taken: %v, want ErrNotFound", err)
	}
	if len(events(t, s, 1001, 41)) != 0 {
		t.Fatal("a refused step wrote an event")
	}
	if _, err := s.Step(ctx, 1001, 41, Accepted, ""); err != nil {
		t.Fatalf("accept by its own store after the refusals: %v", err)
	}
}

// A code the POS gives is used as given, unique per store and day: the
// same code for a second order of the store is ErrCodeInUse, for another
// store it is fine; a malformed code is ErrPickupCode.
func TestPOSCodes(t *testing.T) {
	t.Parallel()
	s := newQueueService(t)
	ctx := t.Context()
	for _, o := range []struct{ order, store int64 }{{51, 1001}, {52, 1001}, {53, 1002}} {
		mustTake(t, s, o.order, o.store)
	}
	for _, bad := range []string{"toolongcode", "A-1", "数字", " 12"} {
		if _, err := s.Step(ctx, 1001, 51, Accepted, bad); !errors.Is(err, ErrPickupCode) {
			t.Fatalf("code %q: %v, want ErrPickupCode", bad, err)
		}
	}
	if code, err := s.Step(ctx, 1001, 51, Accepted, "A12"); err != nil || code != "A12" {
		t.Fatalf("accept with code A12: %q %v", code, err)
	}
	if _, err := s.Step(ctx, 1001, 52, Accepted, "A12"); !errors.Is(err, ErrCodeInUse) {
		t.Fatalf("second order of the store with A12: %v, want ErrCodeInUse", err)
	}
	if code, err := s.Step(ctx, 1002, 53, Accepted, "A12"); err != nil || code != "A12" {
		t.Fatalf("another store's order with A12: %q %v", code, err)
	}
	if code, err := s.Step(ctx, 1001, 52, Accepted, ""); err != nil || code == "A12" {
		t.Fatalf("accept without a code after the collision: %q %v", code, err)
	}
}

// Codes made here never repeat within a store's day, even when many orders
// are accepted at once and the four-digit space makes collisions likely.
func TestMadeCodesUnique(t *testing.T) {
	t.Parallel()
	s := newQueueService(t)
	ctx := t.Context()
	const orders = 300 // about 5 collisions expected among 9,000 codes
	for o := range int64(orders) {
		mustTake(t, s, 1000+o, 1003)
	}
	var mu sync.Mutex
	codes := map[string]int64{}
	var wg sync.WaitGroup
	for o := range int64(orders) {
		wg.Go(func() {
			code, err := s.Step(ctx, 1003, 1000+o, Accepted, "")
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				t.Error(err)
				return
			}
			if other, dup := codes[code]; dup {
				t.Errorf("code %s given to orders %d and %d", code, other, 1000+o)
			}
			codes[code] = 1000 + o
		})
	}
	wg.Wait()
	if len(codes) != orders {
		t.Fatal(fmt.Sprintf("%d codes for %d orders", len(codes), orders))
	}
}

// A customer's cancel and the store's accept race on one fulfilment record:
// of many rounds, each ends with exactly one of them: accepted (the cancel
// is told the store accepted first) or withdrawn (the accept is refused
// with ErrWithdrawn, the order is out of the queue, and order.withdrawn is
// written once however often the cancel is asked).
func TestWithdrawAcceptRace(t *testing.T) {
	t.Parallel()
	s := newQueueService(t)
	ctx := t.Context()
	var withdrawn, accepted int
	for i := range int64(40) {
		oid := int64(id.GeneOf(7)) | (2000+i)<<20
		mustTake(t, s, oid, 1001)
		var wg sync.WaitGroup
		var wOK [3]bool
		var wErr [3]error
		var code string
		var aErr error
		for k := range 3 { // the customer taps cancel three times
			wg.Go(func() { wOK[k], wErr[k] = s.Withdraw(ctx, oid, 1001, 7, order.ByCustomer) })
		}
		wg.Go(func() { code, aErr = s.Step(ctx, 1001, oid, Accepted, "") })
		wg.Wait()
		for k := range 3 {
			if wErr[k] != nil {
				t.Fatal(wErr[k])
			}
			if wOK[k] != wOK[0] {
				t.Fatalf("round %d: withdraws disagree: %v", i, wOK)
			}
		}
		var types []string
		for _, ev := range events(t, s, 1001, oid) {
			types = append(types, ev.Type)
		}
		seqs, _ := queued(t, s, 1001, 0)
		_, inQueue := seqs[oid]
		switch {
		case wOK[0] && errors.Is(aErr, ErrWithdrawn) && code == "":
			withdrawn++
			if len(types) != 1 || types[0] != order.EvWithdrawn || inQueue {
				t.Fatalf("round %d withdrawn: events %v, in queue %v; want one order.withdrawn, out of the queue", i, types, inQueue)
			}
			if ok, err := s.Accepted(ctx, oid, 1001); err != nil || ok {
				t.Fatalf("round %d: a withdrawn order counts as accepted: %v %v", i, ok, err)
			}
		case !wOK[0] && aErr == nil && code != "":
			accepted++
			if len(types) != 1 || types[0] != order.EvAccepted {
				t.Fatalf("round %d accepted: events %v; want one order.accepted", i, types)
			}
			if ok, err := s.Accepted(ctx, oid, 1001); err != nil || !ok {
				t.Fatalf("round %d: an accepted order does not count as accepted: %v %v", i, ok, err)
			}
		default:
			t.Fatalf("round %d: withdrawn %v, accept %q %v: not exactly one", i, wOK, code, aErr)
		}
	}
	t.Logf("40 rounds: %d withdrawn, %d accepted", withdrawn, accepted)
}

// An order withdrawn before order.paid reached fulfilment is recorded as
// withdrawn; the late order.paid queues nothing, and a rebuilt queue leaves
// it out.
func TestWithdrawBeforeTake(t *testing.T) {
	t.Parallel()
	s := newQueueService(t)
	ctx := t.Context()
	oid := int64(id.GeneOf(7)) | 3000<<20
	if ok, err := s.Withdraw(ctx, oid, 1002, 7, order.ByCustomer); err != nil || !ok {
		t.Fatalf("withdraw before take: %v %v", ok, err)
	}
	mustTake(t, s, oid, 1002)
	if err := s.Rebuild(ctx); err != nil {
		t.Fatal(err)
	}
	if seqs, _ := queued(t, s, 1002, 0); len(seqs) != 0 {
		t.Fatalf("a withdrawn order was queued: %v", seqs)
	}
	if _, err := s.Step(ctx, 1002, oid, Accepted, ""); !errors.Is(err, ErrWithdrawn) {
		t.Fatalf("accept of a withdrawn order: %v, want ErrWithdrawn", err)
	}
	if ok, err := s.Withdraw(ctx, oid, 1002, 7, order.ByCustomer); err != nil || !ok {
		t.Fatalf("withdraw again: %v %v", ok, err)
	}
	if evs := events(t, s, 1002, oid); len(evs) != 1 || evs[0].Type != order.EvWithdrawn || evs[0].By != order.ByCustomer ||
		evs[0].UserID != 7 || evs[0].StoreID != 1002 {
		t.Fatalf("events %+v, want one order.withdrawn by the customer", evs)
	}
}

// handed records what the service hands its relay (outbox.Committed).
type handed struct {
	mu  sync.Mutex
	evs []outbox.Event
}

func (h *handed) Wake(int) {}

func (h *handed) Handoff(_ context.Context, _ int, evs ...outbox.Event) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.evs = append(h.evs, evs...)
}

// Each step and a withdrawal hand their relay the event they committed,
// once; a repeated step hands nothing.
func TestStepsHandOverTheirEvents(t *testing.T) {
	t.Parallel()
	s := newQueueService(t)
	h := &handed{}
	s.wake = h
	ctx := t.Context()
	oid := int64(id.GeneOf(7)) | 1<<20
	mustTake(t, s, oid, 1001)
	for _, to := range []string{Accepted, Accepted, Ready, Completed} {
		if _, err := s.Step(ctx, 1001, oid, to, ""); err != nil {
			t.Fatalf("%s: %v", to, err)
		}
	}
	other := int64(id.GeneOf(7)) | 2<<20
	mustTake(t, s, other, 1001)
	if _, err := s.Withdraw(ctx, other, 1001, 7, order.ByCustomer); err != nil {
		t.Fatal(err)
	}
	want := append(events(t, s, 1001, oid), events(t, s, 1001, other)...)
	if len(h.evs) != len(want) || len(want) != 4 {
		t.Fatalf("%d events handed, %d committed; want 4 of each", len(h.evs), len(want))
	}
	for i, ev := range h.evs {
		var got order.Event
		if err := json.Unmarshal(ev.Payload, &got); err != nil {
			t.Fatal(err)
		}
		if ev.ID != want[i].EventID || ev.Type != want[i].Type || !reflect.DeepEqual(got, want[i]) {
			t.Fatalf("handed %d: %s %+v; committed %+v", i, ev.Type, got, want[i])
		}
	}
}
