package e2etest

import (
	"encoding/json"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/surge-platform/surge/internal/platform/bus/bustest"
)

// TestFulfilCatchesUp: the fulfilment role is slower than the front (the
// seed's reason for the queue). With it stopped, orders keep being placed
// and paid; when it comes back it catches up and the store's POS gets every
// one of them, nothing lost, none twice.
func TestFulfilCatchesUp(t *testing.T) {
	t.Parallel()
	const admin = "e2e-admin"
	dbs := pgURLs(t, 2)
	frontAddr, fulfilAddr := freeAddr(t), freeAddr(t)
	common := []string{"--admin-token", admin, "--db", dbs[0], "--db", dbs[1], "--db-max-conns", "6", "--kv", redisURL(t),
		"--bus", bustest.Namespaced(t, bustest.ExternalURL(t))}
	front := start(t, frontAddr, append([]string{"serve", "--roles", "api,worker,paysim", "--addr", frontAddr, "--seed-demo",
		"--data", t.TempDir()}, common...)...)
	fulfilArgs := append([]string{"serve", "--roles", "fulfil", "--addr", fulfilAddr, "--data", t.TempDir()}, common...)
	f := start(t, fulfilAddr, fulfilArgs...)
	if err := f.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := f.wait(30 * time.Second); err != nil {
		t.Fatalf("fulfil exit: %v", err)
	}

	tok := mustLogin(t, front.base, "+8613900000111")
	paid := map[string]bool{}
	for range 20 {
		status, b, err := call(front.base, "POST", "/api/v1/orders", tok, `{"store_id":"1007","items":[{"sku_id":"1007010","qty":1}]}`)
		var c struct {
			OrderID string `json:"order_id"`
		}
		json.Unmarshal(b, &c)
		if err != nil || status != 201 {
			t.Fatalf("order: %d %s %v", status, b, err)
		}
		status, b, err = call(front.base, "POST", "/api/v1/orders/"+c.OrderID+"/pay", tok, `{"channel":"alipay"}`)
		var st struct {
			PayURL string `json:"pay_url"`
		}
		json.Unmarshal(b, &st)
		if err != nil || status != 201 {
			t.Fatalf("pay: %d %s %v", status, b, err)
		}
		if res, err := http.Post(st.PayURL, "", nil); err != nil || res.StatusCode != 200 {
			t.Fatalf("payer pays: %v %v", res, err)
		} else {
			res.Body.Close()
		}
		paid[c.OrderID] = true
	}
	// The fulfilment role comes back and catches up.
	f2 := start(t, fulfilAddr, fulfilArgs...)
	_, b, _ := call(front.base, "GET", "/admin/v1/stores/1007", admin, "")
	var store struct {
		POSKey string `json:"pos_key"`
	}
	json.Unmarshal(b, &store)
	seen := map[string]int{}
	cursor := "0"
	deadline := time.Now().Add(30 * time.Second)
	for len(seen) < len(paid) {
		status, b, err := call(f2.base, "GET", "/pos/v1/orders/new?cursor="+cursor, store.POSKey, "")
		if err != nil || status != 200 {
			t.Fatalf("pull: %d %s %v", status, b, err)
		}
		var page struct {
			Orders []struct {
				Order struct {
					OrderID string `json:"order_id"`
				} `json:"order"`
			} `json:"orders"`
			Cursor string `json:"cursor"`
		}
		json.Unmarshal(b, &page)
		for _, o := range page.Orders {
			seen[o.Order.OrderID]++
		}
		cursor = page.Cursor
		if time.Now().After(deadline) {
			t.Fatalf("POS got %d of %d paid orders", len(seen), len(paid))
		}
		if len(page.Orders) == 0 {
			time.Sleep(50 * time.Millisecond)
		}
	}
	for oid, n := range seen {
		if !paid[oid] || n != 1 {
			t.Fatalf("order %s pulled %d times (paid here: %v); want each paid order exactly once", oid, n, paid[oid])
		}
	}
	if _, b, _ := call(f2.base, "GET", "/pos/v1/orders/new?cursor="+cursor, store.POSKey, ""); strings.Contains(string(b), `"order_id"`) {
		t.Fatalf("more orders after all were acknowledged: %s", b)
	}
}
