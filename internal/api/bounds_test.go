package api_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/surge-platform/surge/internal/eventually"
	"github.com/surge-platform/surge/internal/node"
	"github.com/surge-platform/surge/internal/nodetest"
	"github.com/surge-platform/surge/internal/platform/sqldb/sqldbtest"
)

// engines starts a node on SQLite and one on PostgreSQL, for what depends
// on how the engine stores it.
var engines = []struct {
	name string
	edit func(t *testing.T) func(*node.Config)
}{
	{"sqlite", func(*testing.T) func(*node.Config) { return func(*node.Config) {} }},
	{"postgres", func(t *testing.T) func(*node.Config) {
		urls := sqldbtest.PostgresURLs(t, 1)
		return func(c *node.Config) { c.DB = urls }
	}},
}

// menuStock returns the stock the menu of store shows for sku (-1: none shown).
func menuStock(t *testing.T, c *nodetest.Client, store, sku string) int64 {
	t.Helper()
	r := c.Do("GET", "/api/v1/stores/"+store+"/menu", "")
	var m struct {
		Categories []struct {
			Items []struct {
				SKU   string `json:"sku_id"`
				Stock *int64 `json:"stock"`
			} `json:"items"`
		} `json:"categories"`
	}
	if err := json.Unmarshal(r.Body, &m); err != nil || r.Status != 200 {
		t.Fatalf("menu of %s: %d %s", store, r.Status, r.Body)
	}
	for _, cat := range m.Categories {
		for _, it := range cat.Items {
			if it.SKU == sku {
				if it.Stock == nil {
					return -1
				}
				return *it.Stock
			}
		}
	}
	t.Fatalf("sku %s not on the menu of %s", sku, store)
	return 0
}

// TestOperatorInputIsBounded: quantities and amounts an operator sets have
// documented maxima, stock is only for limited items, and text with a NUL
// or over its length is refused, all with a 4xx, on both engines; nothing
// refused is stored, and the store keeps working.
func TestOperatorInputIsBounded(t *testing.T) {
	t.Parallel()
	for _, e := range engines {
		t.Run(e.name, func(t *testing.T) {
			t.Parallel()
			n := nodetest.Start(t, e.edit(t))
			base := n.URL()
			a := &nodetest.Client{T: t, Base: base, Token: admin}
			c := nodetest.Login(t, base, "+8613977770001")
			const limited, plain = "1007000", "1007006"

			// Stock: the documented maximum, and nothing past it.
			for _, tc := range []struct {
				body   string
				status int
				code   string
			}{
				{`{"qty":9223372036854775807}`, 400, "invalid_request"},
				{`{"qty":9223372036854775808}`, 400, "invalid_json"},
				{`{"qty":1000000001}`, 400, "invalid_request"},
				{`{"qty":-1}`, 400, "invalid_request"},
				{`{"qty":1e3}`, 400, "invalid_json"},
				{`{"qty":1000000000}`, 200, ""},
			} {
				if r := a.Do("PUT", "/admin/v1/items/"+limited+"/stock", tc.body); r.Status != tc.status || r.Code() != tc.code {
					t.Fatalf("set stock %s: %d %s; want %d %s", tc.body, r.Status, r.Body, tc.status, tc.code)
				}
			}
			// At the maximum, an order and its cancel give the stock back
			// exactly; menu reads and orders keep working.
			r := c.Do("POST", "/api/v1/orders", `{"store_id":"1007","items":[{"sku_id":"`+limited+`","qty":99}]}`)
			var created struct {
				OrderID string `json:"order_id"`
			}
			json.Unmarshal(r.Body, &created)
			if r.Status != 201 {
				t.Fatalf("order at the maximum stock: %d %s", r.Status, r.Body)
			}
			wantStock := func(what string, want int64) { // the menu shows stock up to a second late
				t.Helper()
				eventually.True(t, 5*time.Second, fmt.Sprintf("menu stock %s: want %d", what, want), func() bool {
					return menuStock(t, c, "1007", limited) == want
				})
			}
			wantStock("after an order of 99", 1_000_000_000-99)
			if r := c.Do("POST", "/api/v1/orders/"+created.OrderID+"/cancel", ""); r.Status != 200 {
				t.Fatalf("cancel: %d %s", r.Status, r.Body)
			}
			wantStock("after the cancel", 1_000_000_000)
			if r := c.Do("POST", "/api/v1/orders", `{"store_id":"1007","items":[{"sku_id":"`+limited+`","qty":1}]}`); r.Status != 201 {
				t.Fatalf("order after the cancel: %d %s", r.Status, r.Body)
			}

			// Stock on an item that is not limited: refused, not stored.
			if r := a.Do("PUT", "/admin/v1/items/"+plain+"/stock", `{"qty":5}`); r.Status != 409 || r.Code() != "item_not_limited" {
				t.Fatalf("stock of an unlimited item: %d %s", r.Status, r.Body)
			}
			if r := a.Do("PUT", "/admin/v1/stores/1007/items/"+plain, `{"category_id":"100701","name":"Tea","price":900,"stock":5}`); r.Status != 409 || r.Code() != "item_not_limited" {
				t.Fatalf("item with stock, not limited: %d %s", r.Status, r.Body)
			}
			if lv, err := n.Stock.Levels(context.Background(), []int64{1007006}); err != nil || len(lv) != 0 {
				t.Fatalf("a refused stock was stored: %v %v", lv, err)
			}
			if r := a.Do("PUT", "/admin/v1/items/1007999/stock", `{"qty":5}`); r.Status != 404 || r.Code() != "sku_not_found" {
				t.Fatalf("stock of an unknown item: %d %s", r.Status, r.Body)
			}

			// Prices, sort keys, stock on an item; text with NUL or too long.
			long := strings.Repeat("x", 201)
			wide := strings.Repeat("茶", 200) // 200 characters, 600 bytes: fits
			for _, tc := range []struct {
				name, method, path, body string
				status                   int
				code                     string
			}{
				{"price over the maximum", "PUT", "/admin/v1/stores/1007/items/" + plain, `{"category_id":"100701","name":"Tea","price":10000001}`, 400, "invalid_request"},
				{"price at the maximum", "PUT", "/admin/v1/stores/1007/items/" + plain, `{"category_id":"100701","name":"Tea","price":10000000}`, 200, ""},
				{"price negative", "PUT", "/admin/v1/stores/1007/items/" + plain, `{"category_id":"100701","name":"Tea","price":-1}`, 400, "invalid_request"},
				{"sort past int32", "PUT", "/admin/v1/stores/1007/items/" + plain, `{"category_id":"100701","name":"Tea","price":900,"sort":4294967296}`, 400, "invalid_request"},
				{"category sort past int32", "POST", "/admin/v1/stores/1007/categories", `{"name":"New","sort":-4294967296}`, 400, "invalid_request"},
				{"item stock over the maximum", "PUT", "/admin/v1/stores/1007/items/1007001", `{"category_id":"100700","name":"Espresso","price":900,"limited":true,"stock":1000000001}`, 400, "invalid_request"},
				{"NUL in a store name", "POST", "/admin/v1/stores", `{"name":"Nul\u0000Cafe"}`, 400, "invalid_text"},
				{"NUL in a city", "PUT", "/admin/v1/stores/1007", `{"name":"Cafe","city":"Hang\u0000zhou"}`, 400, "invalid_text"},
				{"NUL in an address", "POST", "/admin/v1/stores", `{"name":"Cafe","address":"\u0000"}`, 400, "invalid_text"},
				{"NUL in a category name", "POST", "/admin/v1/stores/1007/categories", `{"name":"Tea\u0000s"}`, 400, "invalid_text"},
				{"NUL in an item name", "PUT", "/admin/v1/stores/1007/items/" + plain, `{"category_id":"100701","name":"\u0000","price":900}`, 400, "invalid_text"},
				{"NUL in a phone", "POST", "/api/v1/auth/login", `{"phone":"+86139\u000000000000"}`, 400, "invalid_text"},
				{"NUL in a reconciliation", "POST", "/admin/v1/reconciliations", `{"channel":"wx\u0000sim","date":"2026-01-01"}`, 400, "invalid_text"},
				{"store name too long", "POST", "/admin/v1/stores", `{"name":"` + long + `"}`, 400, "invalid_request"},
				{"blank store name", "POST", "/admin/v1/stores", `{"name":"  "}`, 400, "invalid_request"},
				{"category name too long", "POST", "/admin/v1/stores/1007/categories", `{"name":"` + long + `"}`, 400, "invalid_request"},
				{"item name too long", "PUT", "/admin/v1/stores/1007/items/" + plain, `{"category_id":"100701","name":"` + long + `","price":900}`, 400, "invalid_request"},
				{"city too long", "PUT", "/admin/v1/stores/1007", `{"name":"Cafe","city":"` + long + `"}`, 400, "invalid_request"},
				{"a name of 200 wide characters", "POST", "/admin/v1/stores", `{"name":"` + wide + `"}`, 201, ""},
			} {
				if r := a.Do(tc.method, tc.path, tc.body); r.Status != tc.status || r.Code() != tc.code {
					t.Errorf("%s: %d %s; want %d %s", tc.name, r.Status, r.Body, tc.status, tc.code)
				}
			}
			stores := c.Do("GET", "/api/v1/stores", "")
			if bytes.Contains(stores.Body, []byte(`\u0000`)) || bytes.Contains(stores.Body, []byte("Nul")) || stores.Status != 200 {
				t.Fatalf("stores after refused input: %d %s", stores.Status, stores.Body)
			}
			wantStock("after refused changes", 1_000_000_000-1)
		})
	}
}
