package api_test

import (
	"encoding/json"
	"strconv"
	"testing"
	"time"

	"github.com/surge-platform/surge/internal/eventually"
	"github.com/surge-platform/surge/internal/node"
	"github.com/surge-platform/surge/internal/nodetest"
	"github.com/surge-platform/surge/internal/platform/sqldb/sqldbtest"
)

// A node whose PostgreSQL goes away answers customers' reads and writes
// that need it with a quick 503 unavailable and Retry-After, never a 500,
// and serves them again once the database is back.
func TestDatabaseDownIsUnavailable(t *testing.T) {
	t.Parallel()
	u, proxy := sqldbtest.PostgresViaProxy(t)
	n := nodetest.Start(t, func(c *node.Config) { c.DB = []string{u} })
	base := n.URL()
	cust := nodetest.Login(t, base, "+8613966660001")
	const placeOrder = `{"store_id":"1003","items":[{"sku_id":"1003000","qty":1}]}`
	r := cust.Do("POST", "/api/v1/orders", placeOrder, "Idempotency-Key", "before")
	if r.Status != 201 {
		t.Fatalf("order before the cut: %d %s", r.Status, r.Body)
	}
	var created struct {
		OrderID string `json:"order_id"`
	}
	if err := json.Unmarshal(r.Body, &created); err != nil || created.OrderID == "" {
		t.Fatalf("order before the cut: %s", r.Body)
	}

	// A store made just now: no cache holds its menu (the node's menu
	// pre-warm has filled the caches with the demo stores' at start).
	admin := &nodetest.Client{T: t, Base: base, Token: nodetest.Admin}
	r = admin.Do("POST", "/admin/v1/stores", `{"name":"Cut Off Cafe"}`)
	var store struct {
		StoreID string `json:"store_id"`
	}
	if json.Unmarshal(r.Body, &store); r.Status != 201 || store.StoreID == "" {
		t.Fatalf("new store: %d %s", r.Status, r.Body)
	}
	requests := []struct {
		name, method, path, body string
		ok                       int
	}{
		{"read an order", "GET", "/api/v1/orders/" + created.OrderID, "", 200},
		{"list orders", "GET", "/api/v1/orders?limit=5", "", 200},
		{"place an order", "POST", "/api/v1/orders", placeOrder, 201},
		{"a menu never read", "GET", "/api/v1/stores/" + store.StoreID + "/menu", "", 200},
	}
	proxy.Cut()
	for i, req := range requests {
		t0 := time.Now()
		r := cust.Do(req.method, req.path, req.body, "Idempotency-Key", "cut-"+strconv.Itoa(i))
		took := time.Since(t0)
		if r.Status != 503 || r.Code() != "unavailable" || r.Header.Get("Retry-After") == "" || took > 5*time.Second {
			t.Errorf("%s with the database cut off: %d %s Retry-After %q after %v; want a quick 503 unavailable with Retry-After",
				req.name, r.Status, r.Body, r.Header.Get("Retry-After"), took)
		}
	}
	proxy.Resume()
	for i, req := range requests {
		eventually.True(t, 15*time.Second, req.name+" after the database is back", func() bool {
			r := cust.Do(req.method, req.path, req.body, "Idempotency-Key", "back-"+strconv.Itoa(i))
			if r.Status >= 500 && r.Status != 503 {
				t.Fatalf("%s after the database is back: %d %s", req.name, r.Status, r.Body)
			}
			return r.Status == req.ok
		})
	}
}
