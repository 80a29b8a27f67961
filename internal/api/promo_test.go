package api_test

import (
	"encoding/json"
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/surge-platform/surge/internal/demo"
	"github.com/surge-platform/surge/internal/eventually"
	"github.com/surge-platform/surge/internal/node"
	"github.com/surge-platform/surge/internal/nodetest"
	"github.com/surge-platform/surge/internal/order"
)

// promoNode starts a node with the demo promotions and coupon template.
func promoNode(t *testing.T, edit ...func(*node.Config)) *node.Node {
	t.Helper()
	n := nodetest.Start(t, edit...)
	if err := demo.SeedPromotions(t.Context(), n.Catalog, n.Promo); err != nil {
		t.Fatal(err)
	}
	return n
}

var (
	sku30 = strconv.Itoa(demo.ExampleSKU)
	sku40 = strconv.Itoa(demo.ExampleSKU + 1)
	sku50 = strconv.Itoa(demo.ExampleSKU + 2)
	store = strconv.Itoa(demo.ExampleStore)
)

type breakdown struct {
	Total, Discount, Payable int64
	Discounts                []struct {
		Kind, ID, Name string
		Amount         int64
	}
	Lines []struct {
		SKU       string `json:"sku_id"`
		Price     int64
		Qty       int
		Payable   int64
		GiftOf    string `json:"gift_of"`
		Discounts []struct {
			Kind, ID string
			Amount   int64
		}
	}
	Skipped []struct{ Kind, ID, Reason string }
	Coupons []struct {
		CouponID string `json:"coupon_id"`
		Applies  bool
		Amount   int64
		Reason   string
	}
}

func decode[T any](t *testing.T, r nodetest.Resp) T {
	t.Helper()
	var v T
	if err := json.Unmarshal(r.Body, &v); err != nil {
		t.Fatalf("decode %s: %v", r.Body, err)
	}
	return v
}

func seedsCart(extra string) string {
	return `{"store_id":"` + store + `","items":[{"sku_id":"` + sku30 + `","qty":1},{"sku_id":"` + sku40 + `","qty":1},{"sku_id":"` +
		sku50 + `","qty":1}]` + extra + `}`
}

// The seeds' example through the API: 30 + 40 + 50 with 满99减9 is 111.00,
// the lines 27.75 + 37.00 + 46.25; the tiered 满减 of every store is
// outdone; an order with the wrong expected payable is refused with the
// new breakdown, with the right one it is placed and keeps its breakdown.
func TestPreviewAndOrderSeedsExample(t *testing.T) {
	t.Parallel()
	n := promoNode(t)
	c := nodetest.Login(t, n.URL(), demo.Phone(1))
	r := c.Do("POST", "/api/v1/orders/preview", seedsCart(""))
	if r.Status != 200 {
		t.Fatalf("preview: %d %s", r.Status, r.Body)
	}
	b := decode[breakdown](t, r)
	if b.Total != 12000 || b.Payable != 11100 || b.Discount != 900 || len(b.Discounts) != 1 || b.Discounts[0].Amount != 900 ||
		b.Discounts[0].Kind != "threshold" {
		t.Fatalf("preview: %s", r.Body)
	}
	want := map[string]int64{sku30: 2775, sku40: 3700, sku50: 4625}
	var sum int64
	for _, l := range b.Lines {
		if l.Payable != want[l.SKU] || len(l.Discounts) != 1 {
			t.Errorf("line %s: payable %d, want %d (%+v)", l.SKU, l.Payable, want[l.SKU], l)
		}
		sum += l.Payable
	}
	outdone := false
	for _, s := range b.Skipped {
		outdone = outdone || s.Kind == "threshold" && s.Reason == "outdone"
	}
	if sum != 11100 || !outdone {
		t.Errorf("lines sum to %d, skipped %+v", sum, b.Skipped)
	}

	r = c.Do("POST", "/api/v1/orders", seedsCart(`,"expected_payable":12000`))
	if r.Status != 409 || r.Code() != order.ErrPriceChanged.Code {
		t.Fatalf("order expecting the list price: %d %s", r.Status, r.Body)
	}
	if nb := decode[struct{ Breakdown breakdown }](t, r).Breakdown; nb.Payable != 11100 {
		t.Fatalf("price_changed carries breakdown %+v", nb)
	}
	r = c.Do("POST", "/api/v1/orders", seedsCart(`,"expected_payable":11100`))
	if r.Status != 201 {
		t.Fatalf("order: %d %s", r.Status, r.Body)
	}
	created := decode[struct {
		OrderID        string `json:"order_id"`
		Total, Payable int64
		Discount       int64
	}](t, r)
	if created.Payable != 11100 || created.Total != 12000 || created.Discount != 900 {
		t.Fatalf("created: %s", r.Body)
	}
	got := decode[struct {
		Payable int64
		Items   []struct {
			SKU     string `json:"sku_id"`
			Payable int64
		}
		Discounts []struct{ Amount int64 }
	}](t, c.Do("GET", "/api/v1/orders/"+created.OrderID, ""))
	if got.Payable != 11100 || len(got.Items) != 3 || len(got.Discounts) != 1 {
		t.Fatalf("order as read: %+v", got)
	}
	for _, l := range got.Items {
		if l.Payable != want[l.SKU] {
			t.Errorf("stored line %s: payable %d, want %d", l.SKU, l.Payable, want[l.SKU])
		}
	}
}

// claim claims the demo template's coupon for c and waits until it is in
// the wallet; it returns the coupon id.
func claim(t *testing.T, c *nodetest.Client) string {
	t.Helper()
	list := decode[struct {
		Templates []struct {
			ID        string `json:"template_id"`
			Remaining *int64
		}
	}](t, c.Do("GET", "/api/v1/coupons", ""))
	if len(list.Templates) != 1 || list.Templates[0].Remaining == nil {
		t.Fatalf("claimable templates: %+v", list)
	}
	r := c.Do("POST", "/api/v1/coupons/"+list.Templates[0].ID+"/claim", "")
	if r.Status != 201 {
		t.Fatalf("claim: %d %s", r.Status, r.Body)
	}
	cid := decode[struct {
		CouponID string `json:"coupon_id"`
	}](t, r).CouponID
	if r := c.Do("POST", "/api/v1/coupons/"+list.Templates[0].ID+"/claim", ""); r.Status != 409 || r.Code() != "claim_limit" {
		t.Fatalf("second claim: %d %s", r.Status, r.Body)
	}
	eventually.True(t, 10*time.Second, "the claimed coupon reaches the wallet", func() bool { return couponState(t, c, cid) == "available" })
	return cid
}

func couponState(t *testing.T, c *nodetest.Client, cid string) string {
	w := decode[struct {
		Coupons []struct {
			ID    string `json:"coupon_id"`
			State string
		}
	}](t, c.Do("GET", "/api/v1/me/coupons", ""))
	for _, x := range w.Coupons {
		if x.ID == cid {
			return x.State
		}
	}
	return ""
}

// The same coupon on several concurrent orders: exactly one order gets
// it, the others are refused; cancelling that order gives it back, paying
// another order with it uses it, and late or repeated events (expiry, a
// cancel once the store accepted it) change nothing. On PostgreSQL too,
// where an order whose price holds nothing is written in one statement
// without the holds (order.insertOne): a coupon order must not be.
func TestCouponLockUseRelease(t *testing.T) {
	t.Parallel()
	for _, e := range engines {
		t.Run(e.name, func(t *testing.T) {
			t.Parallel()
			couponLockUseRelease(t, promoNode(t, e.edit(t)))
		})
	}
}

func couponLockUseRelease(t *testing.T, n *node.Node) {
	c := nodetest.Login(t, n.URL(), demo.Phone(2))
	cid := claim(t, c)
	body := seedsCart(`,"coupon_ids":["` + cid + `"]`)
	pv := decode[breakdown](t, c.Do("POST", "/api/v1/orders/preview", body))
	if pv.Payable != 11100-1000 || len(pv.Coupons) != 1 || !pv.Coupons[0].Applies || pv.Coupons[0].Amount != 1000 {
		t.Fatalf("preview with the coupon: %+v", pv)
	}

	var mu sync.Mutex
	var won []string
	refused := 0
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := c.Do("POST", "/api/v1/orders", body)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case r.Status == 201:
				won = append(won, orderID(t, r))
			case r.Status == 409 && r.Code() == "coupon_unavailable":
				refused++
			default:
				t.Errorf("order with the coupon: %d %s", r.Status, r.Body)
			}
		}()
	}
	wg.Wait()
	if len(won) != 1 || refused != 7 {
		t.Fatalf("8 orders with one coupon: %d placed, %d refused", len(won), refused)
	}
	if st := couponState(t, c, cid); st != "locked" {
		t.Fatalf("coupon of an unpaid order is %q", st)
	}
	if r := c.Do("POST", "/api/v1/orders/"+won[0]+"/cancel", ""); r.Status != 200 {
		t.Fatalf("cancel: %d %s", r.Status, r.Body)
	}
	if st := couponState(t, c, cid); st != "available" {
		t.Fatalf("coupon after the order was cancelled is %q", st)
	}
	// Late events for the cancelled order change nothing.
	oid, _ := strconv.ParseInt(won[0], 10, 64)
	if _, err := n.Orders.Expire(t.Context(), oid); err != nil {
		t.Fatal(err)
	}

	r := c.Do("POST", "/api/v1/orders", body)
	if r.Status != 201 {
		t.Fatalf("order after the release: %d %s", r.Status, r.Body)
	}
	oid2 := orderID(t, r)
	pay(t, c, oid2)
	eventually.True(t, 10*time.Second, "the coupon of a paid order is used", func() bool { return couponState(t, c, cid) == "used" })
	id2, _ := strconv.ParseInt(oid2, 10, 64)
	mustAccept(t, nodetest.POS(t, n.URL(), store), oid2)
	for range 2 { // a late expiry and a cancel attempt, twice
		n.Orders.Expire(t.Context(), id2)
		if r := c.Do("POST", "/api/v1/orders/"+oid2+"/cancel", ""); r.Status != 409 || r.Code() != "not_cancellable" {
			t.Fatalf("cancel of an accepted order: %d %s", r.Status, r.Body)
		}
	}
	if st := couponState(t, c, cid); st != "used" {
		t.Fatalf("coupon of a paid order after late events is %q", st)
	}
	if r := c.Do("POST", "/api/v1/orders", body); r.Status != 409 || r.Code() != "coupon_unavailable" {
		t.Fatalf("order with a used coupon: %d %s", r.Status, r.Body)
	}
}

func pay(t *testing.T, c *nodetest.Client, oid string) {
	t.Helper()
	p := c.Do("POST", "/api/v1/orders/"+oid+"/pay", `{"channel":"wechatpay"}`)
	if p.Status != 201 {
		t.Fatalf("pay: %d %s", p.Status, p.Body)
	}
	url := decode[struct {
		PayURL string `json:"pay_url"`
	}](t, p).PayURL
	payer := &nodetest.Client{T: t}
	if r := payer.Do("POST", url, ""); r.Status != 200 {
		t.Fatalf("payer pays: %d %s", r.Status, r.Body)
	}
}

// Cancel and payment racing on orders holding a coupon: whichever wins,
// the coupon ends in the state its order's status says (paid: used;
// cancelled: available; paid first, then cancelled before the store
// accepted it: refunded in full, available), never both and never lost.
func TestCouponCancelPayRace(t *testing.T) {
	t.Parallel()
	n := promoNode(t)
	for i := range 6 {
		c := nodetest.Login(t, n.URL(), demo.Phone(10+i))
		cid := claim(t, c)
		r := c.Do("POST", "/api/v1/orders", seedsCart(`,"coupon_ids":["`+cid+`"]`))
		if r.Status != 201 {
			t.Fatalf("order: %d %s", r.Status, r.Body)
		}
		oid := decode[struct {
			OrderID string `json:"order_id"`
		}](t, r).OrderID
		p := c.Do("POST", "/api/v1/orders/"+oid+"/pay", `{"channel":"wechatpay"}`)
		url := decode[struct {
			PayURL string `json:"pay_url"`
		}](t, p).PayURL
		var wg sync.WaitGroup
		wg.Add(2)
		go func() { defer wg.Done(); (&nodetest.Client{T: t}).Do("POST", url, "") }()
		go func() { defer wg.Done(); c.Do("POST", "/api/v1/orders/"+oid+"/cancel", "") }()
		wg.Wait()
		id, _ := strconv.ParseInt(oid, 10, 64)
		o, err := n.Orders.Peek(t.Context(), id)
		if err != nil {
			t.Fatal(err)
		}
		if o.Status == order.Refunding || o.Status == order.Refunded {
			eventually.True(t, 10*time.Second, "the cancelled paid order refunded", func() bool {
				o, err = n.Orders.Peek(t.Context(), id)
				return err == nil && o.Status == order.Refunded
			})
		}
		want := map[order.Status]string{order.Paid: "used", order.Cancelled: "available", order.Refunded: "available"}[o.Status]
		if want == "" {
			t.Fatalf("order %s is %s after the race", oid, o.Status)
		}
		if st := couponState(t, c, cid); st != want {
			t.Errorf("round %d: order %s, coupon %s (want %s)", i, o.Status, st, want)
		}
	}
}

// The special price is limited to 1 per customer: of several orders
// raced by one customer, the special price goes to exactly one unit; a
// cancelled order gives it back.
func TestSpecialPriceLimitRace(t *testing.T) {
	t.Parallel()
	n := promoNode(t)
	c := nodetest.Login(t, n.URL(), demo.Phone(3))
	special := strconv.Itoa(demo.ExampleStore * 1000) // the store's first item, 1.00 for one unit per customer
	body := `{"store_id":"` + store + `","items":[{"sku_id":"` + special + `","qty":2}]}`
	var mu sync.Mutex
	var placed []string
	units := int64(0)
	var wg sync.WaitGroup
	for range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := c.Do("POST", "/api/v1/orders", body)
			if r.Status == 409 && (r.Code() == "price_changed" || r.Code() == "sold_out") {
				return
			}
			if r.Status != 201 {
				t.Errorf("order: %d %s", r.Status, r.Body)
				return
			}
			oid := orderID(t, r)
			got := decode[struct {
				Items []struct {
					Price     int64
					Discounts []struct {
						Kind   string
						Amount int64
					}
				}
			}](t, c.Do("GET", "/api/v1/orders/"+oid, ""))
			mu.Lock()
			defer mu.Unlock()
			placed = append(placed, oid)
			for _, l := range got.Items {
				for _, d := range l.Discounts {
					if d.Kind == "special_price" {
						units += d.Amount / (l.Price - 100)
					}
				}
			}
		}()
	}
	wg.Wait()
	if units != 1 || len(placed) == 0 {
		t.Fatalf("%d orders placed, %d units at the special price; want 1 unit", len(placed), units)
	}
	for _, oid := range placed {
		c.Do("POST", "/api/v1/orders/"+oid+"/cancel", "")
	}
	pv := decode[breakdown](t, c.Do("POST", "/api/v1/orders/preview", body))
	found := false
	for _, d := range pv.Discounts {
		found = found || d.Kind == "special_price"
	}
	if !found {
		t.Fatalf("after cancelling, the special price is not offered again: %+v", pv)
	}
}

// A preview names why a promotion does not apply, and bad input is a 4xx
// with a message.
func TestPreviewInput(t *testing.T) {
	t.Parallel()
	n := promoNode(t)
	c := nodetest.Login(t, n.URL(), demo.Phone(4))
	for _, tc := range []struct {
		body string
		code int
	}{
		{`{"store_id":"` + store + `","items":[]}`, 400},
		{`{"store_id":"` + store + `","items":[{"sku_id":"1","qty":1}]}`, 400},
		{seedsCart(`,"coupon_ids":["12345"]`), 409},
		{seedsCart(`,"coupon_ids":["1","2","3"]`), 400},
		{seedsCart(`,"coupon_ids":["x"]`), 400},
		{seedsCart(`,"expected_payable":-1`), 400},
	} {
		if r := c.Do("POST", "/api/v1/orders/preview", tc.body); r.Status != tc.code {
			t.Errorf("preview %s: %d %s, want %d", tc.body, r.Status, r.Body, tc.code)
		}
	}
	small := `{"store_id":"` + store + `","items":[{"sku_id":"` + sku30 + `","qty":1}]}`
	b := decode[breakdown](t, c.Do("POST", "/api/v1/orders/preview", small))
	below := false
	for _, s := range b.Skipped {
		below = below || s.Kind == "threshold" && s.Reason == "below_threshold"
	}
	if b.Payable != 3000-300 || !below {
		t.Errorf("30.00 with 满30减3 (满99减9 below its threshold): payable %d, skipped %v", b.Payable, fmt.Sprint(b.Skipped))
	}
}

// A buy-2-get-1 gift created by an operator shows as its own line at
// price 0 in the preview and on the order (and so to the POS).
func TestGiftLine(t *testing.T) {
	t.Parallel()
	n := promoNode(t)
	op := &nodetest.Client{T: t, Base: n.URL(), Token: admin}
	latte, tart := "1002001", "1002024" // store 1002: a coffee and a dessert
	if r := op.Do("POST", "/admin/v1/promotions", `{"store_id":"1002","kind":"gift","name":"buy 2 get a tart",
		"sku_ids":["`+latte+`"],"buy_qty":2,"gift_sku_id":"`+tart+`","gift_qty":1}`); r.Status != 201 {
		t.Fatalf("create gift promotion: %d %s", r.Status, r.Body)
	}
	c := nodetest.Login(t, n.URL(), demo.Phone(5))
	body := `{"store_id":"1002","items":[{"sku_id":"` + latte + `","qty":4}]}`
	b := decode[breakdown](t, c.Do("POST", "/api/v1/orders/preview", body))
	if len(b.Lines) != 2 || b.Lines[1].SKU != tart || b.Lines[1].Qty != 2 || b.Lines[1].Price != 0 || b.Lines[1].Payable != 0 || b.Lines[1].GiftOf == "" {
		t.Fatalf("preview with a gift: %+v", b)
	}
	r := c.Do("POST", "/api/v1/orders", body)
	if r.Status != 201 {
		t.Fatalf("order: %d %s", r.Status, r.Body)
	}
	oid := orderID(t, r)
	got := decode[struct {
		Items []struct {
			SKU    string `json:"sku_id"`
			Name   string
			Price  int64
			Qty    int
			GiftOf string `json:"gift_of"`
		}
	}](t, c.Do("GET", "/api/v1/orders/"+oid, ""))
	if len(got.Items) != 2 || got.Items[1].SKU != tart || got.Items[1].GiftOf == "" || got.Items[1].Price != 0 || got.Items[1].Name == "gift" {
		t.Fatalf("order with a gift: %+v", got)
	}
}

// A first-order offer goes to one of a new customer's racing orders; once
// an order is paid the customer is no longer new there.
func TestFirstOrderOffer(t *testing.T) {
	t.Parallel()
	n := promoNode(t)
	op := &nodetest.Client{T: t, Base: n.URL(), Token: admin}
	if r := op.Do("POST", "/admin/v1/promotions", `{"store_id":"1003","kind":"first_order","name":"new here: 5.00 off","off":500}`); r.Status != 201 {
		t.Fatalf("create first-order promotion: %d %s", r.Status, r.Body)
	}
	c := nodetest.Login(t, n.URL(), demo.Phone(6))
	body := `{"store_id":"1003","items":[{"sku_id":"1003010","qty":1}]}`
	hasFirst := func(ds []struct {
		Kind, ID, Name string
		Amount         int64
	}) bool {
		for _, d := range ds {
			if d.Kind == "first_order" {
				return true
			}
		}
		return false
	}
	if b := decode[breakdown](t, c.Do("POST", "/api/v1/orders/preview", body)); !hasFirst(b.Discounts) {
		t.Fatalf("a new customer's preview has no first-order offer: %+v", b)
	}
	var mu sync.Mutex
	var with []string
	var wg sync.WaitGroup
	for range 5 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := c.Do("POST", "/api/v1/orders", body)
			if r.Status == 409 && r.Code() == "price_changed" {
				return
			}
			if r.Status != 201 {
				t.Errorf("order: %d %s", r.Status, r.Body)
				return
			}
			oid := orderID(t, r)
			o := decode[breakdown](t, c.Do("GET", "/api/v1/orders/"+oid, ""))
			if hasFirst(o.Discounts) {
				mu.Lock()
				with = append(with, oid)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if len(with) != 1 {
		t.Fatalf("%d racing orders got the first-order offer, want 1", len(with))
	}
	pay(t, c, with[0])
	eventually.True(t, 10*time.Second, "the order is paid", func() bool {
		id, _ := strconv.ParseInt(with[0], 10, 64)
		o, err := n.Orders.Peek(t.Context(), id)
		return err == nil && o.Status == order.Paid
	})
	b := decode[breakdown](t, c.Do("POST", "/api/v1/orders/preview", body))
	notFirst := false
	for _, s := range b.Skipped {
		notFirst = notFirst || s.Kind == "first_order" && s.Reason == "not_first_order"
	}
	if hasFirst(b.Discounts) || !notFirst {
		t.Fatalf("after a paid order the offer still applies: %+v", b)
	}
}

// orderID is the id in a 201 answer to an order.
func orderID(t *testing.T, r nodetest.Resp) string {
	t.Helper()
	return decode[struct {
		OrderID string `json:"order_id"`
	}](t, r).OrderID
}

// Operators' bad input is a 4xx with a message, never a 500.
func TestPromotionAdminInput(t *testing.T) {
	t.Parallel()
	n := promoNode(t)
	op := &nodetest.Client{T: t, Base: n.URL(), Token: admin}
	for _, tc := range []struct {
		path, body, code string
		status           int
	}{
		{"/admin/v1/promotions", `{"kind":"bogus","name":"x"}`, "invalid_promotion", 400},
		{"/admin/v1/promotions", `{"kind":"threshold","name":""}`, "invalid_name", 400},
		{"/admin/v1/promotions", `{"kind":"threshold","name":"t","tiers":[]}`, "invalid_promotion", 400},
		{"/admin/v1/promotions", `{"kind":"percent","name":"p","sku_ids":["1001001"],"percent":101}`, "invalid_promotion", 400},
		{"/admin/v1/promotions", `{"kind":"threshold","name":"t","tiers":[{"min":100,"off":10}],"starts_at":"2030-01-02T00:00:00Z","ends_at":"2030-01-01T00:00:00Z"}`, "invalid_promotion", 400},
		{"/admin/v1/promotions", `{"kind":"threshold","name":"t","sku_ids":["x"]}`, "", 400},
		{"/admin/v1/coupon-templates", `{"name":"c","kind":"amount","off":100,"quantity":0,"per_user":1}`, "invalid_coupon_template", 400},
		{"/admin/v1/coupon-templates", `{"name":"c","kind":"amount","off":100,"quantity":10,"per_user":0}`, "invalid_coupon_template", 400},
		{"/admin/v1/coupon-templates", `{"name":"c","kind":"percent","percent":0,"quantity":10,"per_user":1}`, "invalid_coupon", 400},
		{"/admin/v1/promotions/123/disable", ``, "promotion_not_found", 404},
	} {
		r := op.Do("POST", tc.path, tc.body)
		if r.Status != tc.status || tc.code != "" && r.Code() != tc.code {
			t.Errorf("POST %s %s: %d %s, want %d %s", tc.path, tc.body, r.Status, r.Body, tc.status, tc.code)
		}
	}
	if r := op.Do("GET", "/admin/v1/coupon-templates/999", ""); r.Status != 404 || r.Code() != "coupon_template_not_found" {
		t.Errorf("unknown template: %d %s", r.Status, r.Body)
	}
	c := nodetest.Login(t, n.URL(), demo.Phone(7))
	if r := c.Do("POST", "/api/v1/coupons/999/claim", ""); r.Status != 404 {
		t.Errorf("claim of an unknown template: %d %s", r.Status, r.Body)
	}
}
