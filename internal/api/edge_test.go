package api_test

import (
	"encoding/json"
	"net/netip"
	"testing"
	"time"

	"github.com/surge-platform/surge/internal/eventually"
	"github.com/surge-platform/surge/internal/node"
	"github.com/surge-platform/surge/internal/nodetest"
	"github.com/surge-platform/surge/internal/platform/edge"
)

// TestEdgeLimits runs a node with the production defaults of the edge
// (as `surge serve` has them) and nginx in front (loopback trusted):
// per-IP and per-route limits answer 429 with Retry-After; a client that
// keeps tripping them is blacklisted cluster-wide, listed and cleared by
// operators; a wrong token is refused once, by the chain.
func TestEdgeLimits(t *testing.T) {
	d := node.Defaults()
	n := nodetest.Start(t, func(c *node.Config) {
		c.Edge, c.MaxConns = d.Edge, d.MaxConns
		c.Edge.IPRPS, c.Edge.Ban = 20, 30
		c.Edge.RouteRPS = map[string]float64{edge.RouteOrder: 2}
		c.Edge.Shed = edge.ShedOff // it reads the process's CPU, and this test process runs many nodes at once (shedding: edge's tests, the overload bench)
		c.Proxies = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}
	})
	admin := &nodetest.Client{T: t, Base: n.URL(), Token: nodetest.Admin}
	anon := &nodetest.Client{T: t, Base: n.URL()}

	// Per IP: the burst of 40, then 429 with Retry-After; another address
	// is not held back.
	codes := map[int]int{}
	start := time.Now()
	for range 60 {
		r := anon.Do("GET", "/api/v1/stores", "", "X-Forwarded-For", "198.51.100.1")
		codes[r.Status]++
		if r.Status == 429 && (r.Code() != "rate_limited" || r.Header.Get("Retry-After") == "") {
			t.Fatalf("refusal: %s %v", r.Body, r.Header)
		}
	}
	if most := 40 + int(time.Since(start).Seconds()*20) + 1; codes[200] < 40 || codes[200] > most || codes[429] < 60-most { // tokens come back during the loop
		t.Fatalf("one address at 20/s, burst 40: %v", codes)
	}
	if r := anon.Do("GET", "/api/v1/stores", "", "X-Forwarded-For", "198.51.100.2"); r.Status != 200 {
		t.Fatalf("another address: %d", r.Status)
	}

	// Per route and customer: order creation at 2/s, burst 4.
	buyer := nodetest.Login(t, n.URL(), "13900000001")
	order := `{"store_id":"1001","items":[{"sku_id":"1001000","qty":1}]}`
	codes = map[int]int{}
	start = time.Now()
	for range 8 {
		codes[buyer.Do("POST", "/api/v1/orders", order, "X-Forwarded-For", "198.51.100.3").Status]++
	}
	if most := 4 + int(time.Since(start).Seconds()*2) + 1; codes[201] < 4 || codes[201] > most || codes[429] < 8-most {
		t.Fatalf("orders at 2/s, burst 4: %v", codes)
	}
	// The customer's reads are not the route's.
	if r := buyer.Do("GET", "/api/v1/orders", "", "X-Forwarded-For", "198.51.100.3"); r.Status != 200 {
		t.Fatalf("a read after the route's limit: %d %s", r.Status, r.Body)
	}

	// The first address keeps hammering: blacklisted (30 strikes in 10 s).
	eventually.True(t, 10*time.Second, "address blacklisted", func() bool {
		return anon.Do("GET", "/api/v1/stores", "", "X-Forwarded-For", "198.51.100.1").Status == 403
	})
	r := admin.Do("GET", "/admin/v1/blacklist", "", "X-Forwarded-For", "198.51.100.1") // an operator at a banned address still reaches it
	var list struct {
		Entries []struct{ Kind, Value, Reason string }
	}
	if json.Unmarshal(r.Body, &list); r.Status != 200 || len(list.Entries) != 1 || list.Entries[0].Value != "198.51.100.1" {
		t.Fatalf("blacklist: %d %s", r.Status, r.Body)
	}
	if r := admin.Do("DELETE", "/admin/v1/blacklist/ip/198.51.100.1", ""); r.Status != 204 {
		t.Fatalf("clear: %d %s", r.Status, r.Body)
	}
	time.Sleep(2100 * time.Millisecond) // the bucket refills (40 tokens at 20/s)
	if r := anon.Do("GET", "/api/v1/stores", "", "X-Forwarded-For", "198.51.100.1"); r.Status != 200 {
		t.Fatalf("after the operator cleared it: %d %s", r.Status, r.Body)
	}

	// An IPv6 client that trips the limits is banned with its /64: another
	// address of it is refused too, another /64 is not; the operator
	// clears the /64.
	eventually.True(t, 10*time.Second, "an IPv6 /64 blacklisted", func() bool {
		return anon.Do("GET", "/api/v1/stores", "", "X-Forwarded-For", "2001:db8:7:7::1").Status == 403
	})
	if r := anon.Do("GET", "/api/v1/stores", "", "X-Forwarded-For", "2001:db8:7:7:abcd::9"); r.Status != 403 {
		t.Fatalf("another address of the banned /64: %d", r.Status)
	}
	if r := anon.Do("GET", "/api/v1/stores", "", "X-Forwarded-For", "2001:db8:7:8::1"); r.Status != 200 {
		t.Fatalf("another /64: %d", r.Status)
	}
	if r := admin.Do("DELETE", "/admin/v1/blacklist/ip/2001:db8:7:7::/64", ""); r.Status != 204 {
		t.Fatalf("clear the /64: %d %s", r.Status, r.Body)
	}

	// A forged token is refused by the chain's one check, with the same
	// answer as before the chain did it.
	forged := &nodetest.Client{T: t, Base: n.URL(), Token: buyer.Token + "x"}
	if r := forged.Do("GET", "/api/v1/orders", ""); r.Status != 401 || r.Code() != "invalid_token" {
		t.Fatalf("forged token: %d %s", r.Status, r.Body)
	}
	if r := (&nodetest.Client{T: t, Base: n.URL()}).Do("GET", "/api/v1/orders", ""); r.Status != 401 || r.Code() != "invalid_token" {
		t.Fatalf("no token: %d %s", r.Status, r.Body)
	}
	if r := (&nodetest.Client{T: t, Base: n.URL(), Token: "wrong"}).Do("GET", "/admin/v1/edge", ""); r.Status != 401 {
		t.Fatalf("admin route without the admin token: %d", r.Status)
	}

	// The counters say what happened, per class.
	r = admin.Do("GET", "/admin/v1/edge", "")
	var st struct {
		Classes     map[string]edge.ClassStats
		Connections map[string]int64
	}
	if json.Unmarshal(r.Body, &st); r.Status != 200 || st.Classes["app"].Limited < 21 || st.Classes["app"].Banned < 1 ||
		st.Classes["admin"].Passed < 2 || st.Connections["max"] != int64(d.MaxConns) {
		t.Fatalf("edge stats: %d %s", r.Status, r.Body)
	}
}
