package order_test

import (
	"context"
	"encoding/json"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/surge-platform/surge/internal/eventually"
	"github.com/surge-platform/surge/internal/node"
	"github.com/surge-platform/surge/internal/nodetest"
	"github.com/surge-platform/surge/internal/order"
	"github.com/surge-platform/surge/internal/platform/bus"
	"github.com/surge-platform/surge/internal/platform/id"
)

// ledger drives a node's order ledger with events published by hand, as
// the store's relay would publish them, in an order the test chooses.
type ledger struct {
	t    *testing.T
	n    *node.Node
	ctx  context.Context
	user *nodetest.Client
}

func newLedger(t *testing.T, edit ...func(*node.Config)) *ledger {
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	t.Cleanup(cancel)
	n := nodetest.Start(t, edit...)
	return &ledger{t: t, n: n, ctx: ctx, user: nodetest.Login(t, n.URL(), "+8613912370001")}
}

// place places an order of store 1013 and leaves it unpaid.
func (l *ledger) place() *order.Order {
	l.t.Helper()
	r := l.user.Do("POST", "/api/v1/orders", `{"store_id":"1013","items":[{"sku_id":"1013010","qty":1}]}`)
	var c struct {
		OrderID string `json:"order_id"`
	}
	json.Unmarshal(r.Body, &c)
	oid, _ := strconv.ParseInt(c.OrderID, 10, 64)
	if r.Status != 201 || oid == 0 {
		l.t.Fatalf("order: %d %s", r.Status, r.Body)
	}
	return l.order(oid)
}

func (l *ledger) order(oid int64) *order.Order {
	l.t.Helper()
	o, err := l.n.Orders.Peek(l.ctx, oid)
	if err != nil {
		l.t.Fatal(err)
	}
	return o
}

func (l *ledger) pay(o *order.Order) {
	l.t.Helper()
	if res, err := l.n.Orders.MarkPaid(l.ctx, o.ID, o.ID+1); err != nil || res != order.PaidNow {
		l.t.Fatalf("pay order %d: %v, %v", o.ID, res, err)
	}
}

// step publishes a store's step of o and returns its stream sequence.
func (l *ledger) step(o *order.Order, typ, code string) uint64 {
	l.t.Helper()
	gene := id.Gene(o.ID)
	evID, err := l.n.IDs.Next(gene)
	if err != nil {
		l.t.Fatal(err)
	}
	ev := order.Event{EventID: evID, Type: typ, OrderID: o.ID, UserID: o.UserID, StoreID: o.StoreID,
		PickupCode: code, At: time.Now().UTC()}
	data, _ := json.Marshal(ev)
	seq, err := l.n.Bus.Publish(l.ctx, bus.Msg{Subject: order.Subject(gene, typ), ID: strconv.FormatInt(ev.EventID, 10),
		Data: data, Header: map[string]string{"Surge-Type": typ}})
	if err != nil {
		l.t.Fatal(err)
	}
	return seq
}

// handedBack waits until the ledger has been given the message of seq and
// has not acknowledged it: it saw the step and asked for it again.
func (l *ledger) handedBack(seq uint64) {
	l.t.Helper()
	eventually.True(l.t, 10*time.Second, "the ledger handed the step back", func() bool {
		c, err := l.n.Bus.JetStream().Consumer(l.ctx, order.Stream.Name, "order-ledger")
		if err != nil {
			return false
		}
		ci := c.CachedInfo()
		return ci.Delivered.Stream >= seq && ci.AckFloor.Stream < seq && ci.NumRedelivered > 0
	})
}

// ends waits until o has status and pickup code.
func (l *ledger) ends(o *order.Order, status order.Status, code string) {
	l.t.Helper()
	var got *order.Order
	eventually.True(l.t, 20*time.Second, "order "+strconv.FormatInt(o.ID, 10)+" "+string(status), func() bool {
		got = l.order(o.ID)
		return got.Status == status && got.PickupCode == code
	})
}

// The events of one order come from two outboxes and are handled by
// parallel workers, so the ledger can see a store's step before the step
// it follows; it must end in the right state all the same, and a step
// that waits longer than the ledger retries is parked, not lost.
func TestLedgerStepsOutOfOrder(t *testing.T) {
	t.Parallel()
	t.Run("accepted before paid", func(t *testing.T) {
		t.Parallel()
		l := newLedger(t)
		// Earlier than anything real can be: before the payment itself.
		o := l.place()
		seq := l.step(o, order.EvAccepted, "A7")
		l.handedBack(seq)
		if got := l.order(o.ID); got.Status != order.PendingPayment || got.PickupCode != "" {
			t.Fatalf("an order.accepted before the payment moved the order to %s %q", got.Status, got.PickupCode)
		}
		l.pay(o) // its order.paid goes out after the order.accepted
		l.ends(o, order.Accepted, "A7")
		eventually.True(t, 10*time.Second, "both events recorded", func() bool {
			seen, err := l.n.Orders.SeenEvents(l.ctx, o.ID)
			types := map[string]bool{}
			for _, e := range seen {
				types[e.Type] = true
			}
			return err == nil && types[order.EvPaid] && types[order.EvAccepted]
		})
		if got := l.order(o.ID); got.Status != order.Accepted { // the late order.paid did not take it back
			t.Fatalf("after its order.paid the order is %s", got.Status)
		}

		// ready before accepted, on a paid order
		o = l.place()
		l.pay(o)
		l.handedBack(l.step(o, order.EvReady, "B8"))
		l.step(o, order.EvAccepted, "B8")
		l.ends(o, order.Ready, "B8")
	})
	t.Run("waited past the retries", func(t *testing.T) {
		t.Parallel()
		l := newLedger(t, func(c *node.Config) { c.Bus = "embedded:" + filepath.Join(c.Data, "nats") + "?max_deliver=3" })
		o := l.place()
		l.step(o, order.EvAccepted, "C9")
		var dl bus.DeadLetter
		eventually.True(t, 10*time.Second, "the order.accepted among the ledger's dead letters", func() bool {
			list, _, err := l.n.Bus.DeadLetters(l.ctx, bus.DeadLetterQuery{Consumer: "order-ledger"})
			if err != nil {
				t.Fatal(err)
			}
			if len(list) > 0 {
				dl = list[0]
			}
			return len(list) > 0
		})
		if !strings.HasSuffix(dl.Subject, order.EvAccepted) || !strings.Contains(dl.Error, "waits for paid") {
			t.Fatalf("dead letter %+v; want the order.accepted, waiting for paid", dl)
		}
		l.pay(o)
		if got := l.order(o.ID); got.Status != order.Paid {
			t.Fatalf("paid order is %s", got.Status)
		}
		if _, err := l.n.Bus.ReplayDeadLetter(l.ctx, dl.ID); err != nil {
			t.Fatal(err)
		}
		l.ends(o, order.Accepted, "C9")
	})
}
