package api_test

import (
	"encoding/json"
	"net/url"
	"os"
	"testing"
	"time"

	"github.com/surge-platform/surge/internal/eventually"
	"github.com/surge-platform/surge/internal/node"
	"github.com/surge-platform/surge/internal/nodetest"
	"github.com/surge-platform/surge/internal/platform/faultnet"
)

// TestKVStallBreaker: Redis freezes under a node. Menu reads keep being
// served (from the database: the catalog's own fallback) while the node's
// kv circuit breaker opens, and stay quick while it is open; when Redis
// answers again the breaker closes. (That an open breaker refuses calls
// without waiting on the store is TestBreakerOpensOnStall's, in kv.)
func TestKVStallBreaker(t *testing.T) {
	raw := os.Getenv("SURGE_TEST_REDIS")
	if raw == "" {
		raw = "redis://127.0.0.1:6379/0"
	}
	u, _ := url.Parse(raw)
	px := faultnet.Start(t, u.Host)
	u.Host = px.Addr()
	q := u.Query()
	q.Set("prefix", "breaker"+time.Now().Format("150405.000000")+":")
	q.Set("timeout", "300ms")
	u.RawQuery = q.Encode()
	n := nodetest.Start(t, func(c *node.Config) { c.KV = u.String() })
	admin := &nodetest.Client{T: t, Base: n.URL(), Token: nodetest.Admin}
	c := &nodetest.Client{T: t, Base: n.URL()}
	breaker := func() string {
		r := admin.Do("GET", "/admin/v1/cluster", "")
		var v struct{ Breakers map[string]string }
		json.Unmarshal(r.Body, &v)
		return v.Breakers["kv"]
	}
	if b := breaker(); b != "closed" {
		t.Fatalf("breaker at start: %q", b)
	}
	stores := []string{"1001", "1002", "1003"}
	for _, s := range stores {
		if r := c.Do("GET", "/api/v1/stores/"+s+"/menu", ""); r.Status != 200 {
			t.Fatalf("menu %s: %d %s", s, r.Status, r.Body)
		}
	}

	px.Stall()
	admin.Do("PUT", "/admin/v1/stores/1001/items/1001000", `{"category_id":"100101","name":"Americano","price":1200}`) // a change: the menus' next reads miss
	for _, s := range stores {
		n.Catalog.Invalidate(0)
		if r := c.Do("GET", "/api/v1/stores/"+s+"/menu", ""); r.Status != 200 {
			t.Fatalf("menu %s with Redis frozen: %d %s", s, r.Status, r.Body)
		}
	}
	eventually.True(t, 15*time.Second, "kv breaker open", func() bool {
		n.Catalog.Invalidate(0)
		c.Do("GET", "/api/v1/stores/1002/menu", "")
		return breaker() == "open"
	})
	var slowest time.Duration
	for range 20 {
		n.Catalog.Invalidate(0) // every read misses the local cache: kv would be asked
		t0 := time.Now()
		r := c.Do("GET", "/api/v1/stores/1001/menu", "")
		slowest = max(slowest, time.Since(t0))
		if r.Status != 200 {
			t.Fatalf("menu with the breaker open: %d %s", r.Status, r.Body)
		}
	}
	if slowest > 250*time.Millisecond {
		t.Fatalf("with the breaker open a read took %v: it waited on the frozen store", slowest)
	}
	px.Resume()
	eventually.True(t, 15*time.Second, "kv breaker closed", func() bool {
		n.Catalog.Invalidate(0)
		c.Do("GET", "/api/v1/stores/1002/menu", "")
		return breaker() == "closed"
	})
}
