package api_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/surge-platform/surge/internal/eventually"
	"github.com/surge-platform/surge/internal/flashsale"
	"github.com/surge-platform/surge/internal/guard"
	"github.com/surge-platform/surge/internal/node"
	"github.com/surge-platform/surge/internal/nodetest"
	"github.com/surge-platform/surge/internal/platform/kv/kvtest"
)

const flashSKU = "1001001" // the latte of store 1001

// createSale makes a sale of the latte at store 1001 that runs from
// startIn from now for an hour.
func createSale(t *testing.T, admin *nodetest.Client, stock, perUser int, startIn time.Duration, extra string) string {
	t.Helper()
	start := time.Now().Add(startIn).UTC()
	r := admin.Do("POST", "/admin/v1/flash-sales", fmt.Sprintf(`{"store_id":"1001","sku_id":"%s","price":990,"stock":%d,
		"per_user_limit":%d,"starts_at":"%s","ends_at":"%s"%s}`, flashSKU, stock, perUser, start.Format(time.RFC3339Nano),
		start.Add(time.Hour).Format(time.RFC3339Nano), extra))
	var out struct {
		SaleID string `json:"sale_id"`
	}
	if json.Unmarshal(r.Body, &out); r.Status != 201 || out.SaleID == "" {
		t.Fatalf("create sale: %d %s", r.Status, r.Body)
	}
	return out.SaleID
}

type ticketView struct {
	Ticket, State, Reason string
	OrderID               string `json:"order_id"`
}

func pollTicket(t *testing.T, c *nodetest.Client, sale, ticket string) ticketView {
	t.Helper()
	var v ticketView
	eventually.True(t, 15*time.Second, "ticket "+ticket+" resolved", func() bool {
		r := c.Do("GET", "/api/v1/flash-sales/"+sale+"/tickets/"+ticket, "")
		if r.Status == 429 && r.Header.Get("Retry-After") != "" {
			return false // polled too fast: as a client would, poll again later
		}
		if r.Status != 200 {
			t.Fatalf("poll ticket: %d %s", r.Status, r.Body)
		}
		json.Unmarshal(r.Body, &v)
		return v.State != "pending"
	})
	return v
}

type figures struct {
	Attempts, Admitted, Tickets, Orders, Paid, Returned, Failed, Sold int64
	Left                                                              *int64
	Refused                                                           map[string]int64
}

func saleFigures(t *testing.T, admin *nodetest.Client, sale string) figures {
	t.Helper()
	r := admin.Do("GET", "/admin/v1/flash-sales/"+sale, "")
	var f figures
	if json.Unmarshal(r.Body, &f); r.Status != 200 {
		t.Fatalf("figures: %d %s", r.Status, r.Body)
	}
	return f
}

// TestFlashSaleFlow follows one buyer through a sale: the countdown page,
// 425 before the start, a ticket, its order at the sale's price with the
// sale's own time to pay (by polling and on the buyer's socket), the
// limit, a cancel that gives the unit back, sell-out, and the figures.
func TestFlashSaleFlow(t *testing.T) {
	n := nodetest.Start(t)
	admin := &nodetest.Client{T: t, Base: n.URL(), Token: nodetest.Admin}
	buyer := nodetest.Login(t, n.URL(), "13900000001")
	other := nodetest.Login(t, n.URL(), "13900000002")

	// Before the start: the page counts down, a purchase is 425.
	early := createSale(t, admin, 5, 1, time.Hour, "")
	r := buyer.Do("GET", "/api/v1/flash-sales/"+early, "")
	var pg struct {
		State    string
		InStock  bool `json:"in_stock"`
		Now      time.Time
		StartsAt time.Time `json:"starts_at"`
	}
	if json.Unmarshal(r.Body, &pg); r.Status != 200 || pg.State != "upcoming" || !pg.InStock || pg.Now.IsZero() ||
		pg.StartsAt.Sub(pg.Now) < 59*time.Minute || r.Header.Get("ETag") == "" || r.Header.Get("Cache-Control") != "public, max-age=1" {
		t.Fatalf("page before the start: %d %+v %v", r.Status, pg, r.Header)
	}
	// Within the second the page is the same: 304. A request that lands in
	// the next second gets the new second's page (another ETag): ask again
	// with that one.
	for etag, i := r.Header.Get("ETag"), 0; ; i++ {
		r2 := buyer.Do("GET", "/api/v1/flash-sales/"+early, "", "If-None-Match", etag)
		if r2.Status == 304 {
			break
		}
		if r2.Status != 200 || r2.Header.Get("ETag") == etag || i == 3 {
			t.Fatalf("same page, If-None-Match %s: %d, ETag %s", etag, r2.Status, r2.Header.Get("ETag"))
		}
		etag = r2.Header.Get("ETag")
	}
	r = buyer.Do("POST", "/api/v1/flash-sales/"+early+"/purchase", "")
	var tooEarly struct {
		StartsAt time.Time `json:"starts_at"`
	}
	if json.Unmarshal(r.Body, &tooEarly); r.Status != 425 || r.Code() != "sale_not_started" || tooEarly.StartsAt.IsZero() ||
		r.Header.Get("Retry-After") == "" {
		t.Fatalf("purchase before the start: %d %s %v", r.Status, r.Body, r.Header)
	}

	sale := createSale(t, admin, 2, 1, -time.Second, `,"pay_seconds":120`)
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	ws, _, err := websocket.Dial(ctx, "ws"+n.URL()[4:]+"/api/v1/ws?access_token="+buyer.Token, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.CloseNow()
	time.Sleep(200 * time.Millisecond) // let the socket follow the buyer

	r = buyer.Do("POST", "/api/v1/flash-sales/"+sale+"/purchase", "")
	var tk struct{ Ticket, State string }
	if json.Unmarshal(r.Body, &tk); r.Status != 202 || tk.Ticket == "" || tk.State != "pending" {
		t.Fatalf("purchase: %d %s", r.Status, r.Body)
	}
	v := pollTicket(t, buyer, sale, tk.Ticket)
	if v.State != "ordered" || v.OrderID != tk.Ticket {
		t.Fatalf("ticket: %+v", v)
	}
	for {
		_, data, err := ws.Read(ctx)
		if err != nil {
			t.Fatalf("no ticket outcome on the socket: %v", err)
		}
		var ev struct{ Type, Ticket, Result string }
		json.Unmarshal(data, &ev)
		if ev.Type == flashsale.ResultType {
			if ev.Ticket != tk.Ticket || ev.Result != "ordered" {
				t.Fatalf("socket: %s", data)
			}
			break
		}
	}
	r = buyer.Do("GET", "/api/v1/orders/"+v.OrderID, "")
	var o struct {
		Status      string
		Payable     int64
		ExpiresAt   time.Time `json:"expires_at"`
		Created     time.Time `json:"created_at"`
		FlashSaleID string    `json:"flash_sale_id"`
		Items       []struct{ Price int64 }
	}
	if json.Unmarshal(r.Body, &o); r.Status != 200 || o.Status != "pending_payment" || o.Payable != 990 || o.FlashSaleID != sale ||
		len(o.Items) != 1 || o.Items[0].Price != 990 || o.ExpiresAt.Sub(o.Created) != 120*time.Second {
		t.Fatalf("the sale's order: %d %s", r.Status, r.Body)
	}
	if r := buyer.Do("POST", "/api/v1/flash-sales/"+sale+"/purchase", ""); r.Status != 409 || r.Code() != "purchase_limit" {
		t.Fatalf("second purchase over the limit of 1: %d %s", r.Status, r.Body)
	}
	// The other buyer takes the last unit; then it is sold out.
	r = other.Do("POST", "/api/v1/flash-sales/"+sale+"/purchase", "")
	if json.Unmarshal(r.Body, &tk); r.Status != 202 {
		t.Fatalf("other purchase: %d %s", r.Status, r.Body)
	}
	third := nodetest.Login(t, n.URL(), "13900000003")
	if r := third.Do("POST", "/api/v1/flash-sales/"+sale+"/purchase", ""); r.Status != 409 || r.Code() != "sold_out" {
		t.Fatalf("purchase after sell-out: %d %s", r.Status, r.Body)
	}
	// Cancelling the unpaid order gives the unit back, to the sale and to
	// the buyer's limit.
	if r := buyer.Do("POST", "/api/v1/orders/"+v.OrderID+"/cancel", ""); r.Status != 200 {
		t.Fatalf("cancel: %d %s", r.Status, r.Body)
	}
	eventually.True(t, 10*time.Second, "the unit is back", func() bool {
		return third.Do("POST", "/api/v1/flash-sales/"+sale+"/purchase", "").Status == 202
	})
	pollTicket(t, other, sale, tk.Ticket)
	var f figures
	eventually.True(t, 10*time.Second, "figures flushed", func() bool {
		f = saleFigures(t, admin, sale)
		return f.Attempts >= 5 && f.Tickets == 3
	})
	if f.Admitted != 3 || f.Refused["limit"] != 1 || f.Refused["sold_out"] < 1 || f.Orders != 3 || f.Returned != 1 ||
		f.Sold != 2 || f.Left == nil || *f.Left != 0 {
		t.Fatalf("figures: %+v", f)
	}
}

// TestFlashSaleInput: operators' and buyers' bad input is a 4xx.
func TestFlashSaleInput(t *testing.T) {
	n := nodetest.Start(t)
	admin := &nodetest.Client{T: t, Base: n.URL(), Token: nodetest.Admin}
	buyer := nodetest.Login(t, n.URL(), "13900000001")
	now := time.Now().UTC()
	at := func(d time.Duration) string { return now.Add(d).Format(time.RFC3339) }
	for _, tc := range []struct{ body, code string }{
		{`{}`, "invalid_id"},
		{`{"store_id":"1001","sku_id":"1001001","price":0,"stock":1,"per_user_limit":1,"starts_at":"` + at(0) + `","ends_at":"` + at(time.Hour) + `"}`, "invalid_flash_sale"},
		{`{"store_id":"1001","sku_id":"1001001","price":1,"stock":0,"per_user_limit":1,"starts_at":"` + at(0) + `","ends_at":"` + at(time.Hour) + `"}`, "invalid_flash_sale"},
		{`{"store_id":"1001","sku_id":"1001001","price":1,"stock":1,"per_user_limit":0,"starts_at":"` + at(0) + `","ends_at":"` + at(time.Hour) + `"}`, "invalid_flash_sale"},
		{`{"store_id":"1001","sku_id":"1001001","price":1,"stock":1,"per_user_limit":1,"starts_at":"` + at(time.Hour) + `","ends_at":"` + at(0) + `"}`, "invalid_flash_sale"},
		{`{"store_id":"1001","sku_id":"1001001","price":1,"stock":1,"per_user_limit":1,"ends_at":"` + at(time.Hour) + `"}`, "invalid_flash_sale"},
		{`{"store_id":"1001","sku_id":"1001001","price":1,"stock":1,"per_user_limit":1,"starts_at":"` + at(-2*time.Hour) + `","ends_at":"` + at(-time.Hour) + `"}`, "invalid_flash_sale"},
		{`{"store_id":"1001","sku_id":"1001001","price":1,"stock":1,"per_user_limit":1,"starts_at":"yesterday","ends_at":"` + at(time.Hour) + `"}`, "invalid_json"},
	} {
		if r := admin.Do("POST", "/admin/v1/flash-sales", tc.body); r.Status != 400 || r.Code() != tc.code {
			t.Errorf("%s: %d %s, want 400 %s", tc.body, r.Status, r.Body, tc.code)
		}
	}
	for _, tc := range []struct {
		c            *nodetest.Client
		method, path string
		status       int
	}{
		{buyer, "GET", "/api/v1/flash-sales/999", 404},
		{buyer, "GET", "/api/v1/flash-sales/abc", 400},
		{buyer, "POST", "/api/v1/flash-sales/999/purchase", 404},
		{buyer, "GET", "/api/v1/flash-sales/999/tickets/5", 404},
		{admin, "GET", "/admin/v1/flash-sales/999", 404},
		{&nodetest.Client{T: t, Base: n.URL()}, "POST", "/api/v1/flash-sales/999/purchase", 401},
		{buyer, "POST", "/admin/v1/flash-sales", 401},
	} {
		if r := tc.c.Do(tc.method, tc.path, `{}`); r.Status != tc.status {
			t.Errorf("%s %s: %d %s, want %d", tc.method, tc.path, r.Status, r.Body, tc.status)
		}
	}
}

// TestFlashSaleRace races many buyers at a small stock, on memory and on
// Redis, and on Redis restarted empty mid-sale: exactly the stock is
// sold, nobody over the limit, every ticket becomes an order.
func TestFlashSaleRace(t *testing.T) {
	for _, tc := range []struct {
		name    string
		restart bool
	}{{"memory", false}, {"redis", false}, {"redis restarted", true}} {
		t.Run(tc.name, func(t *testing.T) {
			url := "mem:"
			var redis *kvtest.Server
			if tc.name != "memory" {
				redis = kvtest.StartRedis(t)
				url = redis.URL("")
			}
			n := nodetest.Start(t, func(c *node.Config) {
				c.KV = url
				c.Flash = flashsale.Config{UserRate: 1000, IPRate: -1}
			})
			admin := &nodetest.Client{T: t, Base: n.URL(), Token: nodetest.Admin}
			const stock, users, tries = 60, 300, 4
			sale := createSale(t, admin, stock, 1, -time.Second, "")
			buyers := make([]*nodetest.Client, users)
			for i := range buyers {
				buyers[i] = nodetest.Login(t, n.URL(), fmt.Sprintf("1370000%04d", i))
			}
			var (
				mu      sync.Mutex
				tickets = map[string]string{} // ticket -> buyer token
				perUser = map[string]int{}
				paused  atomic.Int64
				sent    atomic.Int64
			)
			// race sends `tries` purchases from each of the buyers.
			race := func(buyers []*nodetest.Client) {
				var wg sync.WaitGroup
				sem := make(chan struct{}, 64)
				for i := range len(buyers) * tries {
					wg.Add(1)
					sem <- struct{}{}
					go func() {
						defer wg.Done()
						defer func() { <-sem }()
						c := buyers[i%len(buyers)]
						for try := 0; ; try++ {
							r := c.Do("POST", "/api/v1/flash-sales/"+sale+"/purchase", "")
							sent.Add(1)
							switch {
							case r.Status == 202:
								var tk struct{ Ticket string }
								json.Unmarshal(r.Body, &tk)
								mu.Lock()
								tickets[tk.Ticket] = c.Token
								perUser[c.Token]++
								mu.Unlock()
							case r.Status == 409 && (r.Code() == "sold_out" || r.Code() == "purchase_limit"):
							case r.Status == 503 && try < 400:
								paused.Add(1)
								time.Sleep(25 * time.Millisecond) // as a client would
								continue
							default:
								t.Errorf("purchase: %d %s", r.Status, r.Body)
							}
							return
						}
					}()
				}
				wg.Wait()
			}
			if tc.restart {
				// A third of the stock sold, then Redis restarts empty (no
				// persistence): the sale must pause, count its tickets
				// again, and go on selling exactly the rest, with the
				// first buyers' limits intact.
				race(buyers[:stock/3])
				if len(tickets) != stock/3 {
					t.Fatalf("%d tickets before the restart, want %d", len(tickets), stock/3)
				}
				redis.Restart()
			}
			race(buyers)
			if tc.restart {
				t.Logf("%d answers were 503 while the sale recounted", paused.Load())
			}
			if len(tickets) != stock {
				t.Fatalf("%d tickets for a stock of %d", len(tickets), stock)
			}
			for tok, k := range perUser {
				if k > 1 {
					t.Fatalf("buyer %s holds %d tickets, limit 1", tok[:8], k)
				}
			}
			for tk, tok := range tickets {
				v := pollTicket(t, &nodetest.Client{T: t, Base: n.URL(), Token: tok}, sale, tk)
				if v.State != "ordered" {
					t.Fatalf("ticket %s: %+v", tk, v)
				}
			}
			var f figures
			eventually.True(t, 15*time.Second, "every attempt in the figures", func() bool {
				f = saleFigures(t, admin, sale)
				return f.Left != nil && f.Attempts == sent.Load()
			})
			if f.Orders != stock || f.Sold != stock || *f.Left != 0 || f.Admitted != stock {
				t.Fatalf("figures: %+v", f)
			}
		})
	}
}

// TestFlashSaleGuards: a buyer over the rate gets 429, then must solve a
// challenge (428), and is blacklisted (403) if they keep on; operators
// see and clear the entry.
func TestFlashSaleGuards(t *testing.T) {
	n := nodetest.Start(t, func(c *node.Config) {
		c.Flash = flashsale.Config{UserRate: 1, IPRate: -1, Risky: 3, Ban: 12}
	})
	admin := &nodetest.Client{T: t, Base: n.URL(), Token: nodetest.Admin}
	buyer := nodetest.Login(t, n.URL(), "13900000009")
	sale := createSale(t, admin, 100, 100, -time.Second, "")
	codes := map[int]int{}
	for range 8 {
		r := buyer.Do("POST", "/api/v1/flash-sales/"+sale+"/purchase", "")
		codes[r.Status]++
		if r.Status == 429 && r.Header.Get("Retry-After") == "" {
			t.Fatal("429 without Retry-After")
		}
	}
	if codes[202] != 2 || codes[429] != 6 {
		t.Fatalf("answers at 1/s, burst 2: %v", codes)
	}
	// Refused 6 times: the next attempt the rate allows needs a challenge.
	time.Sleep(1100 * time.Millisecond)
	r := buyer.Do("POST", "/api/v1/flash-sales/"+sale+"/purchase", "")
	var body struct{ Challenge map[string]any }
	if json.Unmarshal(r.Body, &body); r.Status != 428 || r.Code() != "challenge_required" || body.Challenge["kind"] != "pow" {
		t.Fatalf("a risky buyer: %d %s", r.Status, r.Body)
	}
	time.Sleep(1100 * time.Millisecond)
	uid := buyerID(t, n.URL(), "13900000009")
	if r := buyer.Do("POST", "/api/v1/flash-sales/"+sale+"/purchase", "", "X-Challenge", "1:2"); r.Status != 428 {
		t.Fatalf("a wrong answer: %d %s", r.Status, r.Body)
	}
	time.Sleep(1100 * time.Millisecond)
	tok := guard.Solve(uid, sale, int(body.Challenge["bits"].(float64)), time.Now())
	if r := buyer.Do("POST", "/api/v1/flash-sales/"+sale+"/purchase", "", "X-Challenge", tok); r.Status != 202 {
		t.Fatalf("with a solved challenge: %d %s", r.Status, r.Body)
	}
	// Keeping on gets the buyer blacklisted, cluster-wide, for a while.
	eventually.True(t, 10*time.Second, "blacklisted", func() bool {
		return buyer.Do("POST", "/api/v1/flash-sales/"+sale+"/purchase", "").Status == 403
	})
	r = admin.Do("GET", "/admin/v1/blacklist", "")
	var list struct {
		Entries []struct{ Kind, Value string }
	}
	if json.Unmarshal(r.Body, &list); r.Status != 200 || len(list.Entries) != 1 || list.Entries[0].Value != strconv.FormatInt(uid, 10) {
		t.Fatalf("blacklist: %d %s", r.Status, r.Body)
	}
	if r := admin.Do("DELETE", "/admin/v1/blacklist/user/"+list.Entries[0].Value, ""); r.Status != 204 {
		t.Fatalf("clear: %d %s", r.Status, r.Body)
	}
	if r := admin.Do("DELETE", "/admin/v1/blacklist/user/"+list.Entries[0].Value, ""); r.Status != 404 {
		t.Fatalf("clear again: %d %s", r.Status, r.Body)
	}
	// A blacklisted buyer is refused at the edge of the node, before the
	// sale: the edge counts those; the sale's figures the rest.
	r = admin.Do("GET", "/admin/v1/edge", "")
	var edge struct {
		Classes map[string]struct{ Banned int64 }
	}
	if json.Unmarshal(r.Body, &edge); r.Status != 200 || edge.Classes["app"].Banned < 1 {
		t.Fatalf("edge: %d %s", r.Status, r.Body)
	}
	f := saleFigures(t, admin, sale)
	eventually.True(t, 10*time.Second, "figures flushed", func() bool {
		f = saleFigures(t, admin, sale)
		return f.Refused["rate"] >= 3 && f.Refused["challenge"] >= 1
	})
}

// buyerID is the user id of the customer with this phone.
func buyerID(t *testing.T, base, phone string) int64 {
	t.Helper()
	r := (&nodetest.Client{T: t, Base: base}).Do("POST", "/api/v1/auth/login", `{"phone":"`+phone+`"}`)
	var out struct {
		UserID string `json:"user_id"`
	}
	json.Unmarshal(r.Body, &out)
	uid, err := strconv.ParseInt(out.UserID, 10, 64)
	if err != nil {
		t.Fatalf("user id: %s", r.Body)
	}
	return uid
}

// TestFlashSaleFailedTicket: a ticket whose order cannot be made (the
// store closed after the sale began) fails, and its unit goes back to the
// sale and to the buyer's limit; an operator's recount agrees.
func TestFlashSaleFailedTicket(t *testing.T) {
	n := nodetest.Start(t)
	admin := &nodetest.Client{T: t, Base: n.URL(), Token: nodetest.Admin}
	buyer := nodetest.Login(t, n.URL(), "13900000011")
	start := time.Now().Add(-time.Second).UTC()
	r := admin.Do("POST", "/admin/v1/flash-sales", `{"store_id":"1002","sku_id":"1002004","price":500,"stock":3,"per_user_limit":1,
		"starts_at":"`+start.Format(time.RFC3339Nano)+`","ends_at":"`+start.Add(time.Hour).Format(time.RFC3339Nano)+`"}`)
	var s struct {
		SaleID string `json:"sale_id"`
	}
	if json.Unmarshal(r.Body, &s); r.Status != 201 {
		t.Fatalf("create: %d %s", r.Status, r.Body)
	}
	if r := admin.Do("PUT", "/admin/v1/stores/1002", `{"name":"closed for the day","open":false}`); r.Status != 200 {
		t.Fatalf("close the store: %d %s", r.Status, r.Body)
	}
	r = buyer.Do("POST", "/api/v1/flash-sales/"+s.SaleID+"/purchase", "")
	var tk struct{ Ticket string }
	if json.Unmarshal(r.Body, &tk); r.Status != 202 {
		t.Fatalf("purchase: %d %s", r.Status, r.Body)
	}
	if v := pollTicket(t, buyer, s.SaleID, tk.Ticket); v.State != "failed" || v.Reason == "" || v.OrderID != "" {
		t.Fatalf("ticket of a closed store: %+v", v)
	}
	// The unit goes back to the database with the ticket's state, then to
	// kv's live counter, which Left reads: a moment later (a loaded make
	// test read 2 left right after the ticket failed).
	var f figures
	eventually.True(t, 5*time.Second, "the failed ticket's unit back in the figures", func() bool {
		f = saleFigures(t, admin, s.SaleID)
		return f.Left != nil && *f.Left == 3
	})
	if f.Failed != 1 || f.Sold != 0 || f.Orders != 0 || f.Left == nil || *f.Left != 3 {
		t.Fatalf("figures after a failed ticket: %+v (left %v)", f, f.Left)
	}
	// The buyer's limit came back too: the store reopens, they buy.
	if r := admin.Do("PUT", "/admin/v1/stores/1002", `{"name":"open again","open":true}`); r.Status != 200 {
		t.Fatalf("reopen: %d %s", r.Status, r.Body)
	}
	r = buyer.Do("POST", "/api/v1/flash-sales/"+s.SaleID+"/purchase", "")
	if json.Unmarshal(r.Body, &tk); r.Status != 202 {
		t.Fatalf("purchase after the unit came back: %d %s", r.Status, r.Body)
	}
	if v := pollTicket(t, buyer, s.SaleID, tk.Ticket); v.State != "ordered" {
		t.Fatalf("ticket: %+v", v)
	}
	r = admin.Do("POST", "/admin/v1/flash-sales/"+s.SaleID+"/recount", "")
	var after figures
	if json.Unmarshal(r.Body, &after); r.Status != 200 || after.Left == nil || *after.Left != 2 || after.Sold != 1 {
		t.Fatalf("recount: %d %s", r.Status, r.Body)
	}
}

// TestFlashSaleRefundKeepsStoreStock: a paid sale order refunded before
// the store accepts it gives nothing back to the store's own stock of the
// sku (the sale's stock was its own).
func TestFlashSaleRefundKeepsStoreStock(t *testing.T) {
	n := nodetest.Start(t)
	admin := &nodetest.Client{T: t, Base: n.URL(), Token: nodetest.Admin}
	buyer := nodetest.Login(t, n.URL(), "13900000012")
	stockOf := func() int64 {
		r := buyer.Do("GET", "/api/v1/stores/1001/menu", "")
		var m struct {
			Categories []struct {
				Items []struct {
					SKU   string `json:"sku_id"`
					Stock *int64
				}
			}
		}
		json.Unmarshal(r.Body, &m)
		for _, c := range m.Categories {
			for _, it := range c.Items {
				if it.SKU == flashSKU && it.Stock != nil {
					return *it.Stock
				}
			}
		}
		t.Fatalf("no stock shown for the latte: %s", r.Body)
		return 0
	}
	before := stockOf()
	sale := createSale(t, admin, 5, 1, -time.Second, "")
	r := buyer.Do("POST", "/api/v1/flash-sales/"+sale+"/purchase", "")
	var tk struct{ Ticket string }
	if json.Unmarshal(r.Body, &tk); r.Status != 202 {
		t.Fatalf("purchase: %d %s", r.Status, r.Body)
	}
	oid := pollTicket(t, buyer, sale, tk.Ticket).OrderID
	p := buyer.Do("POST", "/api/v1/orders/"+oid+"/pay", `{"channel":"wechatpay"}`)
	var st struct {
		PayURL string `json:"pay_url"`
	}
	if json.Unmarshal(p.Body, &st); p.Status != 201 {
		t.Fatalf("pay: %d %s", p.Status, p.Body)
	}
	if r := (&nodetest.Client{T: t}).Do("POST", st.PayURL, ""); r.Status != 200 {
		t.Fatalf("payer pays: %d %s", r.Status, r.Body)
	}
	eventually.True(t, 10*time.Second, "order paid", func() bool {
		var o struct{ Status string }
		json.Unmarshal(buyer.Do("GET", "/api/v1/orders/"+oid, "").Body, &o)
		return o.Status == "paid"
	})
	if r := admin.Do("POST", "/admin/v1/orders/"+oid+"/refund", `{"reason":"test"}`); r.Status != 201 {
		t.Fatalf("refund: %d %s", r.Status, r.Body)
	}
	eventually.True(t, 10*time.Second, "paid ticket counted", func() bool { return saleFigures(t, admin, sale).Paid == 1 })
	time.Sleep(1500 * time.Millisecond) // menus showing stock are cached for a second
	if after := stockOf(); after != before {
		t.Fatalf("the store's stock of the latte went from %d to %d after refunding a sale order", before, after)
	}
}

// TestFlashSaleIPv6PerNet: the sale's per-address limit takes an IPv6
// client's whole /64, as its ban does: buyers behind addresses of one /64
// share it, another /64 has its own.
func TestFlashSaleIPv6PerNet(t *testing.T) {
	n := nodetest.Start(t, func(c *node.Config) {
		c.Flash = flashsale.Config{UserRate: -1, IPRate: 1}
		c.Proxies = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}
	})
	admin := &nodetest.Client{T: t, Base: n.URL(), Token: nodetest.Admin}
	sale := createSale(t, admin, 100, 100, -time.Second, "")
	codes := map[int]int{}
	for i := range 6 {
		buyer := nodetest.Login(t, n.URL(), "1390000010"+strconv.Itoa(i))
		ip := "2001:db8:5:5:" + strconv.Itoa(i+1) + "::1" // one /64, a new address each
		codes[buyer.Do("POST", "/api/v1/flash-sales/"+sale+"/purchase", "", "X-Forwarded-For", ip).Status]++
	}
	if codes[202] < 1 || codes[202] > 3 || codes[429] < 3 {
		t.Fatalf("six buyers of one /64 at 1/s: %v; want them limited as one client", codes)
	}
	other := nodetest.Login(t, n.URL(), "13900000199")
	if r := other.Do("POST", "/api/v1/flash-sales/"+sale+"/purchase", "", "X-Forwarded-For", "2001:db8:5:6::1"); r.Status != 202 {
		t.Fatalf("a buyer of another /64: %d %s", r.Status, r.Body)
	}
}
