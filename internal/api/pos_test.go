package api_test

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/surge-platform/surge/internal/nodetest"
)

func TestPOSFlow(t *testing.T) {
	t.Parallel()
	base := startNode(t)
	c := nodetest.Login(t, base, "+8613955556666")
	oid := nodetest.PayOrder(t, c, "1005", "1005010")
	pos := nodetest.POS(t, base, "1005")
	other := nodetest.POS(t, base, "1006")

	// The paid order reaches the store's queue, and only that store's.
	var pulled pullPage
	deadline := time.Now().Add(10 * time.Second)
	for {
		r := pos.Do("GET", "/pos/v1/orders/new?cursor=0", "")
		json.Unmarshal(r.Body, &pulled)
		if len(pulled.Orders) == 1 && pulled.Orders[0].Order.OrderID == oid {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("paid order not in the store's queue: %d %s", r.Status, r.Body)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if r := other.Do("GET", "/pos/v1/orders/new?cursor=0", ""); strings.Contains(string(r.Body), oid) {
		t.Fatalf("store 1006 sees store 1005's order: %s", r.Body)
	}
	if r := other.Do("POST", "/pos/v1/orders/"+oid+"/accept", ""); r.Status != 404 {
		t.Fatalf("store 1006 accepting store 1005's order: %d %s", r.Status, r.Body)
	}
	if r := (&nodetest.Client{T: t, Base: base, Token: "pos_forged_key_000"}).Do("GET", "/pos/v1/orders/new", ""); r.Status != 401 {
		t.Fatalf("forged pos key: %d", r.Status)
	}
	// A POS restart (cursor 0) gets it again until acknowledged; then never.
	if r := pos.Do("GET", "/pos/v1/orders/new?cursor=0", ""); !strings.Contains(string(r.Body), oid) {
		t.Fatalf("unacknowledged order not returned again: %s", r.Body)
	}
	if r := pos.Do("GET", "/pos/v1/orders/new?cursor="+pulled.Cursor, ""); strings.Contains(string(r.Body), oid) {
		t.Fatalf("acknowledged order returned again: %s", r.Body)
	}
	if r := pos.Do("GET", "/pos/v1/orders/new?cursor=0", ""); strings.Contains(string(r.Body), oid) {
		t.Fatalf("acknowledged order returned after a restart: %s", r.Body)
	}
	// Ready before accept is refused; accept makes a code; the customer sees it.
	if r := pos.Do("POST", "/pos/v1/orders/"+oid+"/ready", ""); r.Status != 409 || r.Code() != "wrong_step" {
		t.Fatalf("ready before accept: %d %s", r.Status, r.Body)
	}
	r := pos.Do("POST", "/pos/v1/orders/"+oid+"/accept", "")
	var acc struct {
		PickupCode string `json:"pickup_code"`
	}
	json.Unmarshal(r.Body, &acc)
	if r.Status != 200 || len(acc.PickupCode) != 4 {
		t.Fatalf("accept: %d %s", r.Status, r.Body)
	}
	if again := pos.Do("POST", "/pos/v1/orders/"+oid+"/accept", ""); again.Status != 200 || !strings.Contains(string(again.Body), acc.PickupCode) {
		t.Fatalf("accept retry: %d %s, want the same code", again.Status, again.Body)
	}
	for _, step := range []string{"ready", "complete"} {
		if r := pos.Do("POST", "/pos/v1/orders/"+oid+"/"+step, ""); r.Status != 200 {
			t.Fatalf("%s: %d %s", step, r.Status, r.Body)
		}
	}
	deadline = time.Now().Add(10 * time.Second)
	for {
		g := c.Do("GET", "/api/v1/orders/"+oid, "")
		if strings.Contains(string(g.Body), `"status":"completed"`) && strings.Contains(string(g.Body), `"pickup_code":"`+acc.PickupCode+`"`) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("customer's order never shows completed with code %s: %s", acc.PickupCode, g.Body)
		}
		time.Sleep(20 * time.Millisecond)
	}
	// A code the POS chooses is kept unique per store per day: the first
	// order gets it, the second is refused.
	oid2 := nodetest.PayOrder(t, c, "1005", "1005011")
	oid3 := nodetest.PayOrder(t, c, "1005", "1005012")
	accept := func(o string) nodetest.Resp { // once the paid order has reached the store
		deadline := time.Now().Add(10 * time.Second)
		for {
			r := pos.Do("POST", "/pos/v1/orders/"+o+"/accept", `{"pickup_code":"A12"}`)
			if r.Status != 404 || time.Now().After(deadline) {
				return r
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	if r := accept(oid2); r.Status != 200 || !strings.Contains(string(r.Body), `"pickup_code":"A12"`) {
		t.Fatalf("accept %s with a free code: %d %s", oid2, r.Status, r.Body)
	}
	if r := accept(oid3); r.Status != 409 || r.Code() != "pickup_code_in_use" {
		t.Fatalf("accept %s with the code of %s: %d %s, want 409 pickup_code_in_use", oid3, oid2, r.Status, r.Body)
	}
}
