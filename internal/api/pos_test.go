package api_test

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"
)

// payOrder places an order and pays it at the simulated channel.
func payOrder(t *testing.T, c *client, store, sku string) string {
	t.Helper()
	r := c.do("POST", "/api/v1/orders", `{"store_id":"`+store+`","items":[{"sku_id":"`+sku+`","qty":1}]}`)
	var created struct {
		OrderID string `json:"order_id"`
	}
	json.Unmarshal(r.body, &created)
	if r.status != 201 {
		t.Fatalf("order: %d %s", r.status, r.body)
	}
	p := c.do("POST", "/api/v1/orders/"+created.OrderID+"/pay", `{"channel":"wxsim"}`)
	var st struct {
		PayURL string `json:"pay_url"`
	}
	json.Unmarshal(p.body, &st)
	if p.status != 201 {
		t.Fatalf("pay: %d %s", p.status, p.body)
	}
	res, err := http.Post(st.PayURL, "", nil)
	if err != nil || res.StatusCode != 200 {
		t.Fatalf("payer pays: %v %v", res, err)
	}
	res.Body.Close()
	return created.OrderID
}

func posKey(t *testing.T, base, store string) *client {
	t.Helper()
	a := &client{t: t, base: base, token: admin}
	r := a.do("GET", "/admin/v1/stores/"+store, "")
	var st struct {
		POSKey string `json:"pos_key"`
	}
	json.Unmarshal(r.body, &st)
	if st.POSKey == "" {
		t.Fatalf("no pos key: %s", r.body)
	}
	return &client{t: t, base: base, token: st.POSKey}
}

func TestPOSFlow(t *testing.T) {
	t.Parallel()
	base := startNode(t)
	c := login(t, base, "+8613955556666")
	oid := payOrder(t, c, "1005", "1005010")
	pos := posKey(t, base, "1005")
	other := posKey(t, base, "1006")

	// The paid order reaches the store's queue, and only that store's.
	var pulled struct {
		Orders []struct {
			Seq   int64 `json:"seq"`
			Order struct {
				OrderID string `json:"order_id"`
			} `json:"order"`
		} `json:"orders"`
		Cursor string `json:"cursor"`
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		r := pos.do("GET", "/pos/v1/orders/new?cursor=0", "")
		json.Unmarshal(r.body, &pulled)
		if len(pulled.Orders) == 1 && pulled.Orders[0].Order.OrderID == oid {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("paid order not in the store's queue: %d %s", r.status, r.body)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if r := other.do("GET", "/pos/v1/orders/new?cursor=0", ""); strings.Contains(string(r.body), oid) {
		t.Fatalf("store 1006 sees store 1005's order: %s", r.body)
	}
	if r := other.do("POST", "/pos/v1/orders/"+oid+"/accept", ""); r.status != 404 {
		t.Fatalf("store 1006 accepting store 1005's order: %d %s", r.status, r.body)
	}
	if r := (&client{t: t, base: base, token: "pos_forged_key_000"}).do("GET", "/pos/v1/orders/new", ""); r.status != 401 {
		t.Fatalf("forged pos key: %d", r.status)
	}
	// A POS restart (cursor 0) gets it again until acknowledged; then never.
	if r := pos.do("GET", "/pos/v1/orders/new?cursor=0", ""); !strings.Contains(string(r.body), oid) {
		t.Fatalf("unacknowledged order not returned again: %s", r.body)
	}
	if r := pos.do("GET", "/pos/v1/orders/new?cursor="+pulled.Cursor, ""); strings.Contains(string(r.body), oid) {
		t.Fatalf("acknowledged order returned again: %s", r.body)
	}
	if r := pos.do("GET", "/pos/v1/orders/new?cursor=0", ""); strings.Contains(string(r.body), oid) {
		t.Fatalf("acknowledged order returned after a restart: %s", r.body)
	}
	// Ready before accept is refused; accept makes a code; the customer sees it.
	if r := pos.do("POST", "/pos/v1/orders/"+oid+"/ready", ""); r.status != 409 || r.code() != "wrong_step" {
		t.Fatalf("ready before accept: %d %s", r.status, r.body)
	}
	r := pos.do("POST", "/pos/v1/orders/"+oid+"/accept", "")
	var acc struct {
		PickupCode string `json:"pickup_code"`
	}
	json.Unmarshal(r.body, &acc)
	if r.status != 200 || len(acc.PickupCode) != 4 {
		t.Fatalf("accept: %d %s", r.status, r.body)
	}
	if again := pos.do("POST", "/pos/v1/orders/"+oid+"/accept", ""); again.status != 200 || !strings.Contains(string(again.body), acc.PickupCode) {
		t.Fatalf("accept retry: %d %s, want the same code", again.status, again.body)
	}
	for _, step := range []string{"ready", "complete"} {
		if r := pos.do("POST", "/pos/v1/orders/"+oid+"/"+step, ""); r.status != 200 {
			t.Fatalf("%s: %d %s", step, r.status, r.body)
		}
	}
	deadline = time.Now().Add(10 * time.Second)
	for {
		g := c.do("GET", "/api/v1/orders/"+oid, "")
		if strings.Contains(string(g.body), `"status":"completed"`) && strings.Contains(string(g.body), `"pickup_code":"`+acc.PickupCode+`"`) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("customer's order never shows completed with code %s: %s", acc.PickupCode, g.body)
		}
		time.Sleep(20 * time.Millisecond)
	}
	// A code the POS chooses is kept unique per store per day.
	oid2 := payOrder(t, c, "1005", "1005011")
	oid3 := payOrder(t, c, "1005", "1005012")
	for _, o := range []string{oid2, oid3} {
		deadline := time.Now().Add(10 * time.Second)
		for {
			r := pos.do("POST", "/pos/v1/orders/"+o+"/accept", `{"pickup_code":"A12"}`)
			if r.status == 200 || r.status == 409 && r.code() == "pickup_code_in_use" {
				if o == oid3 && r.code() != "pickup_code_in_use" {
					t.Fatalf("second order got code A12 too: %d %s", r.status, r.body)
				}
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("accept %s: %d %s", o, r.status, r.body)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}
