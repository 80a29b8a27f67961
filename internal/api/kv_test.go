package api_test

import (
	"encoding/json"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/surge-platform/surge/internal/eventually"
	"github.com/surge-platform/surge/internal/node"
	"github.com/surge-platform/surge/internal/nodetest"
	"github.com/surge-platform/surge/internal/platform/kv/kvtest"
)

// pullPage is the answer to a POS pull.
type pullPage struct {
	Orders []struct {
		Seq   int64 `json:"seq"`
		Order struct {
			OrderID string `json:"order_id"`
		} `json:"order"`
	} `json:"orders"`
	Cursor string `json:"cursor"`
}

// pullUntil pulls with cursor until the orders returned (over several
// pulls, each from the cursor given back) include every one of want; it
// returns the last cursor.
func pullUntil(t *testing.T, pos *nodetest.Client, cursor string, want ...string) string {
	t.Helper()
	seen := map[string]bool{}
	eventually.True(t, 15*time.Second, "POS pulls get "+strconv.Itoa(len(want))+" orders", func() bool {
		r := pos.Do("GET", "/pos/v1/orders/new?cursor="+cursor, "")
		var p pullPage
		if r.Status != 200 || json.Unmarshal(r.Body, &p) != nil {
			return false
		}
		for _, o := range p.Orders {
			seen[o.Order.OrderID] = true
		}
		cursor = p.Cursor
		for _, w := range want {
			if !seen[w] {
				return false
			}
		}
		return true
	})
	return cursor
}

// A node on Redis: while Redis is frozen only the routes that need it (the
// POS pull) answer 503 unavailable, quickly and with Retry-After; orders,
// menus and POS steps go on, and readyz names kv alone. Redis restarted
// empty: the queue is rebuilt, and the POS's cursor from before the loss
// acknowledges nothing it has not seen.
func TestKVDown(t *testing.T) {
	t.Parallel()
	srv := kvtest.StartRedis(t)
	n := nodetest.Start(t, func(c *node.Config) {
		c.KV = srv.URL("timeout=500ms")
		c.NodeID = 5
	})
	base := n.URL()
	cust := nodetest.Login(t, base, "+8613955557777")
	pos := nodetest.POS(t, base, "1008")
	first := nodetest.PayOrder(t, cust, "1008", "1008010")
	cursor := pullUntil(t, pos, "0", first)

	srv.Freeze()
	t0 := time.Now()
	r := pos.Do("GET", "/pos/v1/orders/new?cursor="+cursor, "")
	if took := time.Since(t0); r.Status != 503 || r.Code() != "unavailable" || r.Header.Get("Retry-After") == "" || took > 3*time.Second {
		t.Fatalf("pull with kv frozen: %d %s Retry-After %q after %v; want a quick 503 unavailable with Retry-After",
			r.Status, r.Body, r.Header.Get("Retry-After"), took)
	}
	if r := cust.Do("GET", "/api/v1/stores/1008/menu", ""); r.Status != 200 {
		t.Fatalf("menu with kv frozen: %d %s", r.Status, r.Body)
	}
	if r := pos.Do("POST", "/pos/v1/orders/"+first+"/accept", ""); r.Status != 200 {
		t.Fatalf("accept with kv frozen: %d %s", r.Status, r.Body)
	}
	second := nodetest.PayOrder(t, cust, "1008", "1008010") // order and payment need no kv
	adm := &nodetest.Client{T: t, Base: base}
	r = adm.Do("GET", "/readyz", "")
	var ready readiness
	json.Unmarshal(r.Body, &ready)
	if r.Status != 503 || !slices.Equal(ready.Failed, []string{"kv"}) || ready.Checks["bus"] != "ok" || ready.Checks["db"] != "ok" {
		t.Fatalf("readyz with kv frozen: %d %s; want kv named alone", r.Status, r.Body)
	}
	srv.Thaw()
	cursor = pullUntil(t, pos, cursor, second)

	// Lost: Redis restarted without persistence. The second order is still
	// new (not accepted); a third is paid after the loss.
	srv.Restart()
	third := nodetest.PayOrder(t, cust, "1008", "1008010")
	cursor = pullUntil(t, pos, cursor, second, third)
	for _, o := range []string{second, third} {
		if r := pos.Do("POST", "/pos/v1/orders/"+o+"/accept", ""); r.Status != 200 {
			t.Fatalf("accept %s: %d %s", o, r.Status, r.Body)
		}
	}
	r = pos.Do("GET", "/pos/v1/orders/new?cursor="+cursor, "")
	var p pullPage
	json.Unmarshal(r.Body, &p)
	if r.Status != 200 {
		t.Fatalf("pull after all were accepted: %d %s", r.Status, r.Body)
	}
	// Nothing new is waiting. An order may be shown once more (docs/pos.md):
	// a rebuild, or the order.paid's own queueing, can read it as new just
	// before the POS accepts it and queue it after; the order's status may
	// still say paid then (the ledger applies the accept asynchronously).
	// It is then one the POS accepted, and accepting it again is a no-op.
	for _, e := range p.Orders {
		if e.Order.OrderID != second && e.Order.OrderID != third {
			t.Fatalf("pull after all were accepted returns order %s, never accepted: %s", e.Order.OrderID, r.Body)
		}
		if r := pos.Do("POST", "/pos/v1/orders/"+e.Order.OrderID+"/accept", ""); r.Status != 200 {
			t.Fatalf("accept %s shown again: %d %s", e.Order.OrderID, r.Status, r.Body)
		}
	}
	eventually.True(t, 10*time.Second, "readyz 200 again", func() bool { return adm.Do("GET", "/readyz", "").Status == 200 })
}
