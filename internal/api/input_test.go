package api_test

import (
	"bytes"
	"fmt"
	"strings"
	"testing"

	"github.com/surge-platform/surge/internal/nodetest"
)

// TestQtyBoundIsPerSKU: lines of one sku add up against the 1..99 bound.
func TestQtyBoundIsPerSKU(t *testing.T) {
	t.Parallel()
	base := startNode(t)
	c := nodetest.Login(t, base, "+8613977770002")
	lines := func(k, qty int) string {
		l := make([]string, k)
		for i := range l {
			l[i] = fmt.Sprintf(`{"sku_id":"1008006","qty":%d}`, qty)
		}
		return `{"store_id":"1008","items":[` + strings.Join(l, ",") + `]}`
	}
	for _, tc := range []struct {
		name   string
		body   string
		status int
		code   string
	}{
		{"50 lines of 99", lines(50, 99), 400, "invalid_qty"},
		{"two lines of 50", lines(2, 50), 400, "invalid_qty"},
		{"two lines that make 99", `{"store_id":"1008","items":[{"sku_id":"1008006","qty":49},{"sku_id":"1008007","qty":99},{"sku_id":"1008006","qty":50}]}`, 201, ""},
		{"99 lines of 1", lines(99, 1), 400, "no_items"},
	} {
		r := c.Do("POST", "/api/v1/orders", tc.body)
		if r.Status != tc.status || r.Code() != tc.code {
			t.Errorf("%s: %d %s; want %d %s", tc.name, r.Status, r.Body, tc.status, tc.code)
		}
		if tc.code == "invalid_qty" && !bytes.Contains(r.Body, []byte("per order")) {
			t.Errorf("%s: %s does not say the bound is per sku per order", tc.name, r.Body)
		}
	}
}

// TestErrorsSpeakTheAPI: error answers use the API's words and the codes
// the docs give, on every surface.
func TestErrorsSpeakTheAPI(t *testing.T) {
	t.Parallel()
	base := startNode(t)
	c := nodetest.Login(t, base, "+8613977770003")
	pos := nodetest.POS(t, base, "1009")
	anon := &nodetest.Client{T: t, Base: base}
	for _, tc := range []struct {
		name, method, path, body string
		c                        *nodetest.Client
		status                   int
		code, msg                string
	}{
		{"store_id as a number", "POST", "/api/v1/orders", `{"store_id":1009,"items":[{"sku_id":"1009006","qty":1}]}`, c, 400, "invalid_json", `store_id must be a decimal string such as \"42\"`},
		{"sku_id as a number", "POST", "/api/v1/orders", `{"store_id":"1009","items":[{"sku_id":1009006,"qty":1}]}`, c, 400, "invalid_json", `items[0].sku_id must be a decimal string`},
		{"negative store_id", "POST", "/api/v1/orders", `{"store_id":"-1","items":[{"sku_id":"1009006","qty":1}]}`, c, 400, "invalid_id", `store_id \"-1\" is not a valid id`},
		{"missing store_id", "POST", "/api/v1/orders", `{"items":[{"sku_id":"1009006","qty":1}]}`, c, 400, "invalid_request", `store_id is required`},
		{"negative sku_id", "POST", "/api/v1/orders", `{"store_id":"1009","items":[{"sku_id":"-7","qty":1}]}`, c, 400, "invalid_id", `items[0]: sku_id \"-7\" is not a valid id`},
		{"qty as a string", "POST", "/api/v1/orders", `{"store_id":"1009","items":[{"sku_id":"1009006","qty":"1"}]}`, c, 400, "invalid_json", `items.qty must be an integer, got string`},
		{"bad POS cursor", "GET", "/pos/v1/orders/new?cursor=abc", ``, pos, 400, "invalid_cursor", `cursor`},
		{"negative POS cursor", "GET", "/pos/v1/orders/new?cursor=-1", ``, pos, 400, "invalid_cursor", `cursor`},
		{"bad order list cursor", "GET", "/api/v1/orders?cursor=x", ``, c, 400, "invalid_cursor", `cursor`},
		{"customer socket without a token", "GET", "/api/v1/ws", ``, anon, 401, "invalid_token", `Bearer`},
		{"customer socket with a forged token", "GET", "/api/v1/ws?access_token=forged", ``, anon, 401, "invalid_token", ``},
		{"REST without a token", "GET", "/api/v1/orders", ``, anon, 401, "invalid_token", ``},
	} {
		r := tc.c.Do(tc.method, tc.path, tc.body)
		if r.Status != tc.status || r.Code() != tc.code || !bytes.Contains(r.Body, []byte(tc.msg)) {
			t.Errorf("%s: %d %s; want %d %s saying %s", tc.name, r.Status, r.Body, tc.status, tc.code, tc.msg)
		}
		if bytes.Contains(r.Body, []byte("struct")) || bytes.Contains(r.Body, []byte("Go ")) {
			t.Errorf("%s: Go's words in %s", tc.name, r.Body)
		}
	}
	// Headers over the documented 64 KiB: the JSON 431, not net/http's text.
	r := anon.Do("GET", "/api/v1/stores", "", "X-Big", strings.Repeat("a", 100<<10))
	if r.Status != 431 || r.Code() != "header_too_large" || r.Header.Get("X-Trace-Id") == "" {
		t.Fatalf("oversize header: %d %q %s", r.Status, r.Header.Get("Content-Type"), r.Body)
	}
}
