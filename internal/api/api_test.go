package api_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/surge-platform/surge/internal/demo"
	"github.com/surge-platform/surge/internal/node"
)

const admin = "test-admin-token"

// startNode runs a whole embedded node (api + worker) on a free port.
func startNode(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	cfg := node.Defaults()
	cfg.Addr, cfg.Data, cfg.AdminToken = "127.0.0.1:0", dir, admin
	cfg.DB = []string{"sqlite:" + dir + "/db?shards=2"}
	ctx, cancel := context.WithCancel(context.Background())
	n, err := node.New(ctx, cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	if err := demo.Seed(ctx, n.Catalog, n.Members); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- n.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("node run: %v", err)
		}
		n.Close()
	})
	return n.URL()
}

type client struct {
	t     *testing.T
	base  string
	token string
}

type resp struct {
	status int
	header http.Header
	body   []byte
}

func (r resp) code() string {
	var e struct {
		Error struct{ Code string } `json:"error"`
	}
	json.Unmarshal(r.body, &e)
	return e.Error.Code
}

func (c *client) do(method, path, body string, hdr ...string) resp {
	c.t.Helper()
	req, err := http.NewRequest(method, c.base+path, strings.NewReader(body))
	if err != nil {
		c.t.Fatal(err)
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		c.t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return resp{res.StatusCode, res.Header, b}
}

func login(t *testing.T, base, phone string) *client {
	t.Helper()
	c := &client{t: t, base: base}
	r := c.do("POST", "/api/v1/auth/login", `{"phone":"`+phone+`"}`)
	var out struct{ Token string }
	if err := json.Unmarshal(r.body, &out); err != nil || r.status != 200 || out.Token == "" {
		t.Fatalf("login: %d %s", r.status, r.body)
	}
	c.token = out.Token
	return c
}

func TestMenuETagAndCache(t *testing.T) {
	t.Parallel()
	base := startNode(t)
	c := &client{t: t, base: base}
	r := c.do("GET", "/api/v1/stores/1001/menu", "")
	if r.status != 200 || r.header.Get("ETag") == "" || !strings.Contains(r.header.Get("Cache-Control"), "max-age") {
		t.Fatalf("menu: %d etag=%q cc=%q", r.status, r.header.Get("ETag"), r.header.Get("Cache-Control"))
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
	if err := json.Unmarshal(r.body, &m); err != nil {
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
	r2 := c.do("GET", "/api/v1/stores/1001/menu", "", "If-None-Match", r.header.Get("ETag"))
	if r2.status != http.StatusNotModified || len(r2.body) != 0 {
		t.Fatalf("If-None-Match: %d %q, want 304", r2.status, r2.body)
	}
	// An operator's change shows at once and changes the ETag.
	a := &client{t: t, base: base, token: admin}
	sku := m.Categories[1].Items[0].SKU
	if r := a.do("PUT", "/admin/v1/stores/1001/items/"+sku, `{"category_id":"100101","name":"New Tea","price":1234}`); r.status != 200 {
		t.Fatalf("admin put item: %d %s", r.status, r.body)
	}
	r3 := c.do("GET", "/api/v1/stores/1001/menu", "", "If-None-Match", r.header.Get("ETag"))
	if r3.status != 200 || !bytes.Contains(r3.body, []byte(`"New Tea"`)) || r3.header.Get("ETag") == r.header.Get("ETag") {
		t.Fatalf("after change: %d etag %q (was %q)", r3.status, r3.header.Get("ETag"), r.header.Get("ETag"))
	}
}

func TestOrderLifecycleOverHTTP(t *testing.T) {
	t.Parallel()
	base := startNode(t)
	c := login(t, base, "+8613911112222")
	r := c.do("POST", "/api/v1/orders", `{"store_id":"1001","items":[{"sku_id":"1001006","qty":2},{"sku_id":"1001000","qty":1}]}`,
		"Idempotency-Key", "k1")
	if r.status != 201 {
		t.Fatalf("create: %d %s", r.status, r.body)
	}
	var created struct {
		OrderID string `json:"order_id"`
		Status  string
		Total   int64
		Payable int64
	}
	json.Unmarshal(r.body, &created)
	if created.Status != "pending_payment" || created.Total <= 0 || created.Payable != created.Total {
		t.Fatalf("created: %s", r.body)
	}
	if g := c.do("GET", "/api/v1/orders/"+created.OrderID, ""); g.status != 200 || !bytes.Contains(g.body, []byte(`"sku_id":"1001006"`)) {
		t.Fatalf("get: %d %s", g.status, g.body)
	}
	other := login(t, base, "+8613911113333")
	if g := other.do("GET", "/api/v1/orders/"+created.OrderID, ""); g.status != 404 {
		t.Fatalf("another user's order: %d, want 404", g.status)
	}
	if g := other.do("POST", "/api/v1/orders/"+created.OrderID+"/cancel", ""); g.status != 404 {
		t.Fatalf("cancel of another user's order: %d, want 404", g.status)
	}
	l := c.do("GET", "/api/v1/orders?limit=1", "")
	if l.status != 200 || !bytes.Contains(l.body, []byte(created.OrderID)) || !bytes.Contains(l.body, []byte(`"next_cursor":"`+created.OrderID)) {
		t.Fatalf("list: %d %s", l.status, l.body)
	}
	if x := c.do("POST", "/api/v1/orders/"+created.OrderID+"/cancel", ""); x.status != 200 || !bytes.Contains(x.body, []byte(`"cancelled"`)) {
		t.Fatalf("cancel: %d %s", x.status, x.body)
	}
	if x := c.do("POST", "/api/v1/orders/"+created.OrderID+"/cancel", ""); x.status != 409 || x.code() != "not_cancellable" {
		t.Fatalf("second cancel: %d %s", x.status, x.body)
	}
	// The worker's consumer sees both events.
	a := &client{t: t, base: base, token: admin}
	deadline := time.Now().Add(10 * time.Second)
	for {
		e := a.do("GET", "/admin/v1/events?order_id="+created.OrderID, "")
		if bytes.Contains(e.body, []byte("order.created")) && bytes.Contains(e.body, []byte("order.cancelled")) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("events not seen: %s", e.body)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestIdempotencyKeyFiftyAtOnce(t *testing.T) {
	t.Parallel()
	base := startNode(t)
	c := login(t, base, "+8613911114444")
	body := `{"store_id":"1002","items":[{"sku_id":"1002000","qty":1}]}`
	var wg sync.WaitGroup
	start := make(chan struct{})
	out := make([]resp, 50)
	for i := range out {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			out[i] = c.do("POST", "/api/v1/orders", body, "Idempotency-Key", "same-key")
		}()
	}
	close(start)
	wg.Wait()
	for i, r := range out {
		if r.status != 201 || !bytes.Equal(r.body, out[0].body) {
			t.Fatalf("response %d: %d %s; first was %s", i, r.status, r.body, out[0].body)
		}
	}
	l := c.do("GET", "/api/v1/orders", "")
	if n := strings.Count(string(l.body), `"order_id"`); n != 1 {
		t.Fatalf("user has %d orders, want 1: %s", n, l.body)
	}
	if r := c.do("POST", "/api/v1/orders", `{"store_id":"1002","items":[{"sku_id":"1002000","qty":2}]}`, "Idempotency-Key", "same-key"); r.status != 409 || r.code() != "idempotency_key_reused" {
		t.Fatalf("key reused with another body: %d %s", r.status, r.body)
	}
}

func TestBadInputGetsJSON4xx(t *testing.T) {
	t.Parallel()
	base := startNode(t)
	c := login(t, base, "+8613911115555")
	anon := &client{t: t, base: base}
	forged := &client{t: t, base: base, token: "1.99999999999.00"}
	mine := c.do("POST", "/api/v1/orders", `{"store_id":"1003","items":[{"sku_id":"1003010","qty":1}]}`)
	var created struct {
		OrderID string `json:"order_id"`
	}
	json.Unmarshal(mine.body, &created)
	lines51 := strings.TrimSuffix(strings.Repeat(`{"sku_id":"1003010","qty":1},`, 51), ",")
	big := `{"store_id":"1003","items":[{"sku_id":"1003010","qty":1}],"pad":"` + strings.Repeat("x", 70<<10) + `"}`
	cases := []struct {
		name, method, path, body string
		c                        *client
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
		{"bad cursor", "GET", "/api/v1/orders?cursor=-5", ``, c, 400, "invalid_request"},
		{"bad phone", "POST", "/api/v1/auth/login", `{"phone":"abc"}`, anon, 400, "invalid_phone"},
		{"unknown route", "GET", "/api/v1/nope", ``, anon, 404, "not_found"},
		{"wrong method", "DELETE", "/api/v1/stores", ``, anon, 405, "method_not_allowed"},
		{"admin without token", "GET", "/admin/v1/stores/1001", ``, c, 401, "unauthorized"},
		{"admin bad price", "POST", "/admin/v1/stores/1001/items", `{"category_id":"100100","name":"x","price":-1}`, &client{t: t, base: base, token: admin}, 400, "invalid_request"},
		{"store not found", "GET", "/api/v1/stores/42/menu", ``, anon, 404, "store_not_found"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tc.c.t = t
			var hdr []string
			if tc.name == "bad idempotency key" {
				hdr = []string{"Idempotency-Key", strings.Repeat("k", 200)}
			}
			r := tc.c.do(tc.method, tc.path, tc.body, hdr...)
			if r.status != tc.status || r.code() != tc.code || r.header.Get("Content-Type") != "application/json" {
				t.Fatalf("%s %s: %d %q %s; want %d %q", tc.method, tc.path, r.status, r.header.Get("Content-Type"), r.body, tc.status, tc.code)
			}
			if r.header.Get("X-Trace-Id") == "" {
				t.Fatal("no X-Trace-Id")
			}
		})
	}
	c.t = t
	// Cancel of a cancelled order is a 409 with a clear code (paid orders: issue 3).
	c.do("POST", "/api/v1/orders/"+created.OrderID+"/cancel", "")
	if r := c.do("POST", "/api/v1/orders/"+created.OrderID+"/cancel", ""); r.status != 409 || r.code() != "not_cancellable" {
		t.Fatalf("cancel cancelled: %d %s", r.status, r.body)
	}
}

func TestTraceparentIsKept(t *testing.T) {
	t.Parallel()
	base := startNode(t)
	c := &client{t: t, base: base}
	r := c.do("GET", "/healthz", "", "traceparent", "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01")
	if got := r.header.Get("X-Trace-Id"); got != "4bf92f3577b34da6a3ce929d0e0e4736" {
		t.Fatalf("X-Trace-Id %q, want the traceparent's trace id", got)
	}
	if r := c.do("GET", "/readyz", ""); r.status != 200 || !bytes.Contains(r.body, []byte(`"ready":true`)) {
		t.Fatalf("readyz: %d %s", r.status, r.body)
	}
}
