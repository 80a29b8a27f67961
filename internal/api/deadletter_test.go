package api_test

import (
	"context"
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/surge-platform/surge/internal/eventually"
	"github.com/surge-platform/surge/internal/node"
	"github.com/surge-platform/surge/internal/nodetest"
	"github.com/surge-platform/surge/internal/order"
)

// deadLetterPage is an answer of GET /admin/v1/dead-letters.
type deadLetterPage struct {
	DeadLetters []struct {
		ID       string            `json:"id"`
		Stream   string            `json:"stream"`
		Consumer string            `json:"consumer"`
		Subject  string            `json:"subject"`
		Headers  map[string]string `json:"headers"`
		Payload  struct {
			OrderID string `json:"order_id"`
		} `json:"payload"`
		Error      string `json:"error"`
		Deliveries int    `json:"deliveries"`
		Resolution string `json:"resolution"`
		Reason     string `json:"reason"`
	} `json:"dead_letters"`
	NextCursor string `json:"next_cursor"`
}

func deadLetters(t *testing.T, adm *nodetest.Client, query string) deadLetterPage {
	t.Helper()
	r := adm.Do("GET", "/admin/v1/dead-letters"+query, "")
	var p deadLetterPage
	if err := json.Unmarshal(r.Body, &p); err != nil || r.Status != 200 {
		t.Fatalf("dead letters%s: %d %s", query, r.Status, r.Body)
	}
	return p
}

// fulfilFault makes every new fulfilment record fail to be written (on
// SQLite, a trigger on every database), or clears that.
func fulfilFault(t *testing.T, n *node.Node, on bool) {
	t.Helper()
	q := `DROP TRIGGER IF EXISTS test_fault`
	if on {
		q = `CREATE TRIGGER test_fault BEFORE INSERT ON fulfilments BEGIN SELECT RAISE(ABORT, 'fulfilment database unavailable (test fault)'); END`
	}
	for _, d := range n.DB.Shards() {
		if _, err := d.W.ExecContext(t.Context(), q); err != nil {
			t.Fatal(err)
		}
	}
}

// posOrders pulls a store's new orders from cursor 0 until the queue is
// empty, acknowledging as it goes, and counts each order it got.
func posOrders(t *testing.T, pos *nodetest.Client, got map[string]int) {
	t.Helper()
	cursor := "0"
	for {
		r := pos.Do("GET", "/pos/v1/orders/new?cursor="+cursor, "")
		var page struct {
			Orders []struct {
				Order struct {
					OrderID string `json:"order_id"`
				} `json:"order"`
			} `json:"orders"`
			Cursor string `json:"cursor"`
		}
		if err := json.Unmarshal(r.Body, &page); err != nil || r.Status != 200 {
			t.Fatalf("pos pull: %d %s", r.Status, r.Body)
		}
		if len(page.Orders) == 0 {
			return
		}
		for _, o := range page.Orders {
			got[o.Order.OrderID]++
		}
		cursor = page.Cursor
	}
}

// TestDeadLettersOfFulfilment: while the fulfilment records cannot be
// written, the fulfil consumer gives up on an order.paid; the event waits
// in the dead letters (listed, counted) instead of being lost, and a
// replay once the fault is cleared brings the order to its store's POS
// exactly once, without the other consumers of the event handling it again.
// Discarding records the reason; replaying all takes what is waiting.
func TestDeadLettersOfFulfilment(t *testing.T) {
	t.Parallel()
	n := nodetest.Start(t, func(c *node.Config) { c.Bus = "embedded:" + filepath.Join(c.Data, "nats") + "?max_deliver=3" })
	base := n.URL()
	adm := &nodetest.Client{T: t, Base: base, Token: admin}
	alice := nodetest.Login(t, base, "+8613912360001")
	pos := nodetest.POS(t, base, "1011")

	fulfilFault(t, n, true)
	oid := nodetest.PayOrder(t, alice, "1011", "1011010")
	var page deadLetterPage
	eventually.True(t, 20*time.Second, "order.paid of "+oid+" in the dead letters of fulfil", func() bool {
		page = deadLetters(t, adm, "?consumer=fulfil")
		return len(page.DeadLetters) == 1
	})
	dl := page.DeadLetters[0]
	if dl.Stream != "ORDERS" || dl.Consumer != "fulfil" || !strings.HasSuffix(dl.Subject, "."+order.EvPaid) ||
		dl.Payload.OrderID != oid || dl.Headers["Surge-Type"] != order.EvPaid || dl.Deliveries != 3 ||
		!strings.Contains(dl.Error, "test fault") {
		t.Fatalf("dead letter %+v; want order.paid of order %s on ORDERS for fulfil, its error, 3 deliveries", dl, oid)
	}
	var stats map[string]int64
	json.Unmarshal(adm.Do("GET", "/admin/v1/events/stats", "").Body, &stats)
	if stats["dead_letters"] != 1 || stats["dead_letters.fulfil"] != 1 {
		t.Errorf("stats %v; want dead_letters 1, dead_letters.fulfil 1", stats)
	}
	got := map[string]int{}
	if posOrders(t, pos, got); len(got) != 0 {
		t.Fatalf("the POS got %v while its order's event was a dead letter", got)
	}

	fulfilFault(t, n, false)
	r := adm.Do("POST", "/admin/v1/dead-letters/"+dl.ID+"/replay", "")
	if r.Status != 200 || !strings.Contains(string(r.Body), `"resolution":"replayed"`) {
		t.Fatalf("replay: %d %s", r.Status, r.Body)
	}
	eventually.True(t, 10*time.Second, "the replayed order at the POS", func() bool {
		posOrders(t, pos, got)
		return got[oid] > 0
	})
	// The other consumers of order.paid let the replay pass: the ledger has
	// acknowledged everything in the stream, and saw the event once.
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	_, last, err := n.Bus.StreamInfo(ctx, order.Stream.Name)
	if err != nil {
		t.Fatal(err)
	}
	eventually.True(t, 10*time.Second, "the ledger past the replay", func() bool {
		c, err := n.Bus.JetStream().Consumer(ctx, order.Stream.Name, "order-ledger")
		return err == nil && c.CachedInfo().AckFloor.Stream >= last
	})
	var seen struct {
		Events []struct {
			Type       string `json:"type"`
			Deliveries int    `json:"deliveries"`
		} `json:"events"`
	}
	json.Unmarshal(adm.Do("GET", "/admin/v1/events?order_id="+oid, "").Body, &seen)
	for _, e := range seen.Events {
		if e.Type == order.EvPaid && e.Deliveries != 1 {
			t.Errorf("the ledger handled order.paid %d times; want once (the replay is for fulfil only)", e.Deliveries)
		}
	}
	if posOrders(t, pos, got); got[oid] != 1 || len(got) != 1 {
		t.Errorf("the POS got %v; want order %s exactly once", got, oid)
	}
	if p := deadLetters(t, adm, "?consumer=fulfil"); len(p.DeadLetters) != 0 {
		t.Errorf("still waiting after the replay: %+v", p.DeadLetters)
	}
	if p := deadLetters(t, adm, "?consumer=fulfil&resolved=true"); len(p.DeadLetters) != 1 || p.DeadLetters[0].Resolution != "replayed" {
		t.Errorf("resolved dead letters %+v; want the replayed one", p.DeadLetters)
	}
	if r := adm.Do("POST", "/admin/v1/dead-letters/"+dl.ID+"/replay", ""); r.Status != 404 || r.Code() != "dead_letter_not_found" {
		t.Errorf("replaying it again: %d %s; want 404 dead_letter_not_found", r.Status, r.Body)
	}

	// Two more fail: one is discarded with a reason, the other replayed with "all".
	fulfilFault(t, n, true)
	drop := nodetest.PayOrder(t, alice, "1011", "1011011")
	keep := nodetest.PayOrder(t, alice, "1011", "1011012")
	eventually.True(t, 20*time.Second, "two more dead letters", func() bool {
		page = deadLetters(t, adm, "")
		return len(page.DeadLetters) == 2
	})
	fulfilFault(t, n, false)
	var dropID string
	for _, d := range page.DeadLetters {
		if d.Payload.OrderID == drop {
			dropID = d.ID
		}
	}
	for _, tc := range []struct {
		name, path, body string
		status           int
		code             string
	}{
		{"no reason", "/admin/v1/dead-letters/" + dropID + "/discard", `{}`, 400, "invalid_request"},
		{"blank reason", "/admin/v1/dead-letters/" + dropID + "/discard", `{"reason":"  "}`, 400, "invalid_request"},
		{"unknown id", "/admin/v1/dead-letters/999999999/discard", `{"reason":"x"}`, 404, "dead_letter_not_found"},
		{"bad id", "/admin/v1/dead-letters/abc/replay", ``, 400, "invalid_id"},
		{"bad consumer", "/admin/v1/dead-letters/replay?consumer=a.b", ``, 400, "invalid_request"},
	} {
		if r := adm.Do("POST", tc.path, tc.body); r.Status != tc.status || r.Code() != tc.code {
			t.Errorf("%s: %d %s; want %d %s", tc.name, r.Status, r.Body, tc.status, tc.code)
		}
	}
	if r := (&nodetest.Client{T: t, Base: base}).Do("GET", "/admin/v1/dead-letters", ""); r.Status != 401 {
		t.Errorf("without the admin token: %d", r.Status)
	}
	if r := adm.Do("GET", "/admin/v1/dead-letters?consumer=a*", ""); r.Status != 400 {
		t.Errorf("list of consumer a*: %d %s", r.Status, r.Body)
	}
	r = adm.Do("POST", "/admin/v1/dead-letters/"+dropID+"/discard", `{"reason":"refunded by phone"}`)
	if r.Status != 200 || !strings.Contains(string(r.Body), `"reason":"refunded by phone"`) {
		t.Fatalf("discard: %d %s", r.Status, r.Body)
	}
	r = adm.Do("POST", "/admin/v1/dead-letters/replay?consumer=fulfil", "")
	if r.Status != 200 || string(r.Body) != `{"replayed":1}` {
		t.Fatalf("replay all: %d %s; want 1 replayed", r.Status, r.Body)
	}
	eventually.True(t, 10*time.Second, "the kept order at the POS", func() bool {
		posOrders(t, pos, got)
		return got[keep] > 0
	})
	if got[keep] != 1 || got[drop] != 0 || got[oid] != 1 {
		t.Errorf("the POS got %v; want %s and %s once, never the discarded %s", got, oid, keep, drop)
	}
	json.Unmarshal(adm.Do("GET", "/admin/v1/events/stats", "").Body, &stats)
	if stats["dead_letters"] != 0 {
		t.Errorf("stats %v; want no dead letters waiting", stats)
	}
	if p := deadLetters(t, adm, "?resolved=true&limit=1"); len(p.DeadLetters) != 1 || p.NextCursor == "" {
		t.Errorf("first page of one resolved: %+v", p)
	} else if p2 := deadLetters(t, adm, "?resolved=true&cursor="+p.NextCursor); len(p2.DeadLetters) != 2 {
		t.Errorf("after the first resolved: %+v; want the discarded and the replayed", p2)
	}
}
