package api_test

import (
	"bytes"
	"encoding/json"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/surge-platform/surge/internal/nodetest"
)

const admin = nodetest.Admin

func startNode(t *testing.T) string { return nodetest.Start(t).URL() }

func TestMenuETagAndCache(t *testing.T) {
	t.Parallel()
	base := startNode(t)
	c := &nodetest.Client{T: t, Base: base}
	r := c.Do("GET", "/api/v1/stores/1001/menu", "")
	if r.Status != 200 || r.Header.Get("ETag") == "" || !strings.Contains(r.Header.Get("Cache-Control"), "max-age") {
		t.Fatalf("menu: %d etag=%q cc=%q", r.Status, r.Header.Get("ETag"), r.Header.Get("Cache-Control"))
	}
	var m struct {
		Categories []struct {
			Items []struct {
				SKU     string `json:"sku_id"`
				Price   int64  `json:"price"`
				Limited bool   `json:"limited"`
				Stock   *int64 `json:"stock"`
			} `json:"items"`
		} `json:"categories"`
	}
	if err := json.Unmarshal(r.Body, &m); err != nil {
		t.Fatal(err)
	}
	items, limited := 0, 0
	for _, cat := range m.Categories {
		for _, it := range cat.Items {
			items++
			if it.SKU == "" || it.Price <= 0 {
				t.Fatalf("item without sku or price: %+v", it)
			}
			if it.Limited {
				limited++
				if it.Stock == nil || *it.Stock < 20 || *it.Stock > 100 {
					t.Fatalf("limited item %s stock %v, want 20..100", it.SKU, it.Stock)
				}
			} else if it.Stock != nil {
				t.Fatalf("unlimited item %s shows stock", it.SKU)
			}
		}
	}
	if items != 30 || limited != 3 || len(m.Categories) != 5 {
		t.Fatalf("menu has %d items (%d limited) in %d categories, want 30 (3) in 5", items, limited, len(m.Categories))
	}
	r2 := c.Do("GET", "/api/v1/stores/1001/menu", "", "If-None-Match", r.Header.Get("ETag"))
	if r2.Status != http.StatusNotModified || len(r2.Body) != 0 {
		t.Fatalf("If-None-Match: %d %q, want 304", r2.Status, r2.Body)
	}
	// An operator's change shows at once and changes the ETag.
	a := &nodetest.Client{T: t, Base: base, Token: admin}
	sku := m.Categories[1].Items[0].SKU
	if r := a.Do("PUT", "/admin/v1/stores/1001/items/"+sku, `{"category_id":"100101","name":"New Tea","price":1234}`); r.Status != 200 {
		t.Fatalf("admin put item: %d %s", r.Status, r.Body)
	}
	r3 := c.Do("GET", "/api/v1/stores/1001/menu", "", "If-None-Match", r.Header.Get("ETag"))
	if r3.Status != 200 || !bytes.Contains(r3.Body, []byte(`"New Tea"`)) || r3.Header.Get("ETag") == r.Header.Get("ETag") {
		t.Fatalf("after change: %d etag %q (was %q)", r3.Status, r3.Header.Get("ETag"), r.Header.Get("ETag"))
	}
}

func TestOrderLifecycleOverHTTP(t *testing.T) {
	t.Parallel()
	base := startNode(t)
	c := nodetest.Login(t, base, "+8613911112222")
	r := c.Do("POST", "/api/v1/orders", `{"store_id":"1001","items":[{"sku_id":"1001006","qty":2},{"sku_id":"1001000","qty":1}]}`,
		"Idempotency-Key", "k1")
	if r.Status != 201 {
		t.Fatalf("create: %d %s", r.Status, r.Body)
	}
	var created struct {
		OrderID string `json:"order_id"`
		Status  string
		Total   int64
		Payable int64
	}
	json.Unmarshal(r.Body, &created)
	if created.Status != "pending_payment" || created.Total <= 0 || created.Payable != created.Total {
		t.Fatalf("created: %s", r.Body)
	}
	if g := c.Do("GET", "/api/v1/orders/"+created.OrderID, ""); g.Status != 200 || !bytes.Contains(g.Body, []byte(`"sku_id":"1001006"`)) {
		t.Fatalf("get: %d %s", g.Status, g.Body)
	}
	other := nodetest.Login(t, base, "+8613911113333")
	if g := other.Do("GET", "/api/v1/orders/"+created.OrderID, ""); g.Status != 404 {
		t.Fatalf("another user's order: %d, want 404", g.Status)
	}
	if g := other.Do("POST", "/api/v1/orders/"+created.OrderID+"/cancel", ""); g.Status != 404 {
		t.Fatalf("cancel of another user's order: %d, want 404", g.Status)
	}
	l := c.Do("GET", "/api/v1/orders?limit=1", "")
	if l.Status != 200 || !bytes.Contains(l.Body, []byte(created.OrderID)) || !bytes.Contains(l.Body, []byte(`"next_cursor":"`+created.OrderID)) {
		t.Fatalf("list: %d %s", l.Status, l.Body)
	}
	if x := c.Do("POST", "/api/v1/orders/"+created.OrderID+"/cancel", ""); x.Status != 200 || !bytes.Contains(x.Body, []byte(`"cancelled"`)) {
		t.Fatalf("cancel: %d %s", x.Status, x.Body)
	}
	if x := c.Do("POST", "/api/v1/orders/"+created.OrderID+"/cancel", ""); x.Status != 409 || x.Code() != "not_cancellable" {
		t.Fatalf("second cancel: %d %s", x.Status, x.Body)
	}
	// The worker's consumer sees both events.
	a := &nodetest.Client{T: t, Base: base, Token: admin}
	deadline := time.Now().Add(10 * time.Second)
	for {
		e := a.Do("GET", "/admin/v1/events?order_id="+created.OrderID, "")
		if bytes.Contains(e.Body, []byte("order.created")) && bytes.Contains(e.Body, []byte("order.cancelled")) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("events not seen: %s", e.Body)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestIdempotencyKeyFiftyAtOnce(t *testing.T) {
	t.Parallel()
	base := startNode(t)
	c := nodetest.Login(t, base, "+8613911114444")
	body := `{"store_id":"1002","items":[{"sku_id":"1002000","qty":1}]}`
	var wg sync.WaitGroup
	start := make(chan struct{})
	out := make([]nodetest.Resp, 50)
	for i := range out {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			out[i] = c.Do("POST", "/api/v1/orders", body, "Idempotency-Key", "same-key")
		}()
	}
	close(start)
	wg.Wait()
	for i, r := range out {
		if r.Status != 201 || !bytes.Equal(r.Body, out[0].Body) {
			t.Fatalf("response %d: %d %s; first was %s", i, r.Status, r.Body, out[0].Body)
		}
	}
	l := c.Do("GET", "/api/v1/orders", "")
	if n := strings.Count(string(l.Body), `"order_id"`); n != 1 {
		t.Fatalf("user has %d orders, want 1: %s", n, l.Body)
	}
	if r := c.Do("POST", "/api/v1/orders", `{"store_id":"1002","items":[{"sku_id":"1002000","qty":2}]}`, "Idempotency-Key", "same-key"); r.Status != 409 || r.Code() != "idempotency_key_reused" {
		t.Fatalf("key reused with another body: %d %s", r.Status, r.Body)
	}
}

func TestBadInputGetsJSON4xx(t *testing.T) {
	t.Parallel()
	base := startNode(t)
	c := nodetest.Login(t, base, "+8613911115555")
	anon := &nodetest.Client{T: t, Base: base}
	forged := &nodetest.Client{T: t, Base: base, Token: "1.99999999999.00"}
	mine := c.Do("POST", "/api/v1/orders", `{"store_id":"1003","items":[{"sku_id":"1003010","qty":1}]}`)
	var created struct {
		OrderID string `json:"order_id"`
	}
	json.Unmarshal(mine.Body, &created)
	lines51 := strings.TrimSuffix(strings.Repeat(`{"sku_id":"1003010","qty":1},`, 51), ",")
	big := `{"store_id":"1003","items":[{"sku_id":"1003010","qty":1}],"pad":"` + strings.Repeat("x", 70<<10) + `"}`
	cases := []struct {
		name, method, path, body string
		c                        *nodetest.Client
		status                   int
		code                     string
	}{
		{"malformed json", "POST", "/api/v1/orders", `{"store_id":`, c, 400, "invalid_json"},
		{"unknown field", "POST", "/api/v1/orders", `{"store_id":"1003","items":[],"coupon":"x"}`, c, 400, "invalid_json"},
		{"trailing data", "POST", "/api/v1/orders", `{"store_id":"1003","items":[{"sku_id":"1003010","qty":1}]} {}`, c, 400, "invalid_json"},
		{"number id", "POST", "/api/v1/orders", `{"store_id":1003,"items":[{"sku_id":"1003010","qty":1}]}`, c, 400, "invalid_json"},
		{"unknown store", "POST", "/api/v1/orders", `{"store_id":"999","items":[{"sku_id":"1003010","qty":1}]}`, c, 404, "store_not_found"},
		{"unknown sku", "POST", "/api/v1/orders", `{"store_id":"1003","items":[{"sku_id":"1004010","qty":1}]}`, c, 400, "unknown_sku"},
		{"qty zero", "POST", "/api/v1/orders", `{"store_id":"1003","items":[{"sku_id":"1003010","qty":0}]}`, c, 400, "invalid_qty"},
		{"qty negative", "POST", "/api/v1/orders", `{"store_id":"1003","items":[{"sku_id":"1003010","qty":-1}]}`, c, 400, "invalid_qty"},
		{"qty 100", "POST", "/api/v1/orders", `{"store_id":"1003","items":[{"sku_id":"1003010","qty":100}]}`, c, 400, "invalid_qty"},
		{"no lines", "POST", "/api/v1/orders", `{"store_id":"1003","items":[]}`, c, 400, "no_items"},
		{"51 lines", "POST", "/api/v1/orders", `{"store_id":"1003","items":[` + lines51 + `]}`, c, 400, "no_items"},
		{"body over 64 KiB", "POST", "/api/v1/orders", big, c, 413, "body_too_large"},
		{"bad idempotency key", "POST", "/api/v1/orders", `{"store_id":"1003","items":[{"sku_id":"1003010","qty":1}]}`, c, 400, "invalid_idempotency_key"},
		{"missing token", "POST", "/api/v1/orders", `{}`, anon, 401, "invalid_token"},
		{"forged token", "GET", "/api/v1/orders", ``, forged, 401, "invalid_token"},
		{"bad order id", "GET", "/api/v1/orders/abc", ``, c, 400, "invalid_id"},
		{"unknown order", "GET", "/api/v1/orders/12345", ``, c, 404, "order_not_found"},
		{"bad cursor", "GET", "/api/v1/orders?cursor=-5", ``, c, 400, "invalid_cursor"},
		{"bad phone", "POST", "/api/v1/auth/login", `{"phone":"abc"}`, anon, 400, "invalid_phone"},
		{"unknown route", "GET", "/api/v1/nope", ``, anon, 404, "not_found"},
		{"wrong method", "DELETE", "/api/v1/stores", ``, anon, 405, "method_not_allowed"},
		{"admin without token", "GET", "/admin/v1/stores/1001", ``, c, 401, "unauthorized"},
		{"admin bad price", "POST", "/admin/v1/stores/1001/items", `{"category_id":"100100","name":"x","price":-1}`, &nodetest.Client{T: t, Base: base, Token: admin}, 400, "invalid_request"},
		{"store not found", "GET", "/api/v1/stores/42/menu", ``, anon, 404, "store_not_found"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tc.c.T = t
			var hdr []string
			if tc.name == "bad idempotency key" {
				hdr = []string{"Idempotency-Key", strings.Repeat("k", 200)}
			}
			r := tc.c.Do(tc.method, tc.path, tc.body, hdr...)
			if r.Status != tc.status || r.Code() != tc.code || r.Header.Get("Content-Type") != "application/json" {
				t.Fatalf("%s %s: %d %q %s; want %d %q", tc.method, tc.path, r.Status, r.Header.Get("Content-Type"), r.Body, tc.status, tc.code)
			}
			if r.Header.Get("X-Trace-Id") == "" {
				t.Fatal("no X-Trace-Id")
			}
		})
	}
	c.T = t
	// Cancel of a cancelled order is a 409 with a clear code (paid orders: issue 3).
	c.Do("POST", "/api/v1/orders/"+created.OrderID+"/cancel", "")
	if r := c.Do("POST", "/api/v1/orders/"+created.OrderID+"/cancel", ""); r.Status != 409 || r.Code() != "not_cancellable" {
		t.Fatalf("cancel cancelled: %d %s", r.Status, r.Body)
	}
}

func TestTraceparentIsKept(t *testing.T) {
	t.Parallel()
	base := startNode(t)
	c := &nodetest.Client{T: t, Base: base}
	r := c.Do("GET", "/healthz", "", "traceparent", "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01")
	if got := r.Header.Get("X-Trace-Id"); got != "4bf92f3577b34da6a3ce929d0e0e4736" {
		t.Fatalf("X-Trace-Id %q, want the traceparent's trace id", got)
	}
	if r := c.Do("GET", "/readyz", ""); r.Status != 200 || !bytes.Contains(r.Body, []byte(`"ready":true`)) {
		t.Fatalf("readyz: %d %s", r.Status, r.Body)
	}
}

// TestCatalogPrewarm: an operator pre-warms the menus of every store and
// gets the counts; a customer cannot.
func TestCatalogPrewarm(t *testing.T) {
	t.Parallel()
	base := startNode(t)
	a := &nodetest.Client{T: t, Base: base, Token: admin}
	r := a.Do("POST", "/admin/v1/catalog/prewarm", "")
	var got struct{ Stores, Built, Failed int }
	if r.Status != 200 || json.Unmarshal(r.Body, &got) != nil || got.Stores == 0 || got.Built != got.Stores || got.Failed != 0 {
		t.Fatalf("prewarm: %d %s", r.Status, r.Body)
	}
	if r := (&nodetest.Client{T: t, Base: base}).Do("POST", "/admin/v1/catalog/prewarm", ""); r.Status != http.StatusUnauthorized {
		t.Fatalf("prewarm without the admin token: %d, want 401", r.Status)
	}
}
