package api_test

import (
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/surge-platform/surge/internal/demo"
	"github.com/surge-platform/surge/internal/eventually"
	"github.com/surge-platform/surge/internal/node"
	"github.com/surge-platform/surge/internal/nodetest"
	"github.com/surge-platform/surge/internal/pricing"
	"github.com/surge-platform/surge/internal/promo"
)

// special is the example store's limited item at a special price of 1.00,
// 1 per customer (its list price below).
var special = strconv.Itoa(demo.ExampleStore * 1000)

type refundAnswer struct {
	RefundID string   `json:"refund_id"`
	Amount   int64    `json:"amount"`
	SKUs     []string `json:"sku_ids"`
	State    string   `json:"state"`
	Order    orderView
}

type orderView struct {
	OrderID  string `json:"order_id"`
	Status   string
	Payable  int64
	Refunded int64
	Items    []struct {
		SKU      string `json:"sku_id"`
		Payable  int64
		Refunded int64
		RefundID string `json:"refund_id"`
	}
}

func (o orderView) line(t *testing.T, sku string) (payable, refunded int64) {
	t.Helper()
	for _, l := range o.Items {
		if l.SKU == sku {
			return l.Payable, l.Refunded
		}
	}
	t.Fatalf("no line of sku %s in %+v", sku, o)
	return 0, 0
}

// cartWith is an order of one unit of each sku at the example store, with
// coupon cid.
func cartWith(cid string, skus ...string) string {
	items := make([]string, len(skus))
	for i, sku := range skus {
		items[i] = `{"sku_id":"` + sku + `","qty":1}`
	}
	return `{"store_id":"` + store + `","items":[` + strings.Join(items, ",") + `],"coupon_ids":["` + cid + `"]}`
}

// specialOffered reports whether c would get the special price (1.00 for
// one unit per customer) now: its quota is free.
func specialOffered(t *testing.T, c *nodetest.Client) bool {
	t.Helper()
	pv := decode[breakdown](t, c.Do("POST", "/api/v1/orders/preview", `{"store_id":"`+store+`","items":[{"sku_id":"`+special+`","qty":1}]}`))
	return pv.Payable == 100
}

// placeAndPay places an order of body and pays it; it returns the order id.
func placeAndPay(t *testing.T, c *nodetest.Client, body string) string {
	t.Helper()
	r := c.Do("POST", "/api/v1/orders", body)
	if r.Status != 201 {
		t.Fatalf("order: %d %s", r.Status, r.Body)
	}
	oid := decode[struct {
		OrderID string `json:"order_id"`
	}](t, r).OrderID
	pay(t, c, oid)
	eventually.True(t, 10*time.Second, "the order paid", func() bool { return getOrder(t, c, oid).Status == "paid" })
	return oid
}

func getOrder(t *testing.T, c *nodetest.Client, oid string) orderView {
	t.Helper()
	r := c.Do("GET", "/api/v1/orders/"+oid, "")
	if r.Status != 200 {
		t.Fatalf("get order: %d %s", r.Status, r.Body)
	}
	return decode[orderView](t, r)
}

// mustAccept accepts the order at the POS once fulfilment has it.
func mustAccept(t *testing.T, pos *nodetest.Client, oid string) {
	t.Helper()
	eventually.Saw(t, 10*time.Second, "the store accepts the order", func() (bool, string) {
		r := pos.Do("POST", "/pos/v1/orders/"+oid+"/accept", "")
		return r.Status == 200, string(r.Body)
	})
}

// refundsOf is the operator's list of an order's refunds.
func refundsOf(t *testing.T, base, oid string) []struct {
	RefundID string `json:"refund_id"`
	Kind     string
	Amount   int64
	State    string
} {
	t.Helper()
	a := &nodetest.Client{T: t, Base: base, Token: nodetest.Admin}
	return decode[struct {
		Refunds []struct {
			RefundID string `json:"refund_id"`
			Kind     string
			Amount   int64
			State    string
		}
	}](t, a.Do("GET", "/admin/v1/orders/"+oid+"/refunds", "")).Refunds
}

// paymentOf is the order's one payment as operators see it.
func paymentOf(t *testing.T, base, oid string) (amount, refunded int64) {
	t.Helper()
	a := &nodetest.Client{T: t, Base: base, Token: nodetest.Admin}
	ps := decode[struct {
		Payments []struct{ Amount, Refunded int64 }
	}](t, a.Do("GET", "/admin/v1/orders/"+oid+"/payments", ""))
	if len(ps.Payments) != 1 {
		t.Fatalf("payments of order %s: %+v", oid, ps)
	}
	return ps.Payments[0].Amount, ps.Payments[0].Refunded
}

func stockOf(t *testing.T, n *node.Node, sku string) int64 {
	t.Helper()
	x, _ := strconv.ParseInt(sku, 10, 64)
	m, err := n.Stock.Levels(t.Context(), []int64{x})
	if err != nil {
		t.Fatal(err)
	}
	return m[x]
}

// After the store accepted an order with a coupon: the POS refunds one
// line, which gives back exactly its apportioned payable and keeps the
// coupon used; refunding it again, a sku not on the order, another
// store's order and bad input are 4xx with their codes; an operator
// refunds the rest, the order becomes refunded and the coupon comes back.
func TestRefundLinesAfterAccept(t *testing.T) {
	t.Parallel()
	n := promoNode(t)
	base := n.URL()
	c := nodetest.Login(t, base, demo.Phone(30))
	cid := claim(t, c)
	oid := placeAndPay(t, c, seedsCart(`,"coupon_ids":["`+cid+`"]`))
	pos, other := nodetest.POS(t, base, store), nodetest.POS(t, base, "1002")
	admin := &nodetest.Client{T: t, Base: base, Token: nodetest.Admin}
	mustAccept(t, pos, oid)
	eventually.True(t, 10*time.Second, "the order accepted", func() bool { return getOrder(t, c, oid).Status == "accepted" })
	before := getOrder(t, c, oid)
	want, _ := before.line(t, sku40)

	r := pos.Do("POST", "/pos/v1/orders/"+oid+"/refund", `{"sku_ids":["`+sku40+`"],"reason":"spilt"}`)
	if r.Status != 201 {
		t.Fatalf("refund of a line: %d %s", r.Status, r.Body)
	}
	got := decode[refundAnswer](t, r)
	if got.Amount != want || len(got.SKUs) != 1 || got.SKUs[0] != sku40 || got.Order.Status != "accepted" || got.Order.Refunded != want {
		t.Fatalf("refund of sku %s: %s; want %d fen, the order still accepted", sku40, r.Body, want)
	}
	eventually.True(t, 10*time.Second, "the refund made at the channel", func() bool {
		rs := refundsOf(t, base, oid)
		return len(rs) == 1 && rs[0].State == "done" && rs[0].Amount == want
	})
	if _, refunded := paymentOf(t, base, oid); refunded != want {
		t.Fatalf("payment refunded %d, want %d", refunded, want)
	}
	o := getOrder(t, c, oid)
	if p, ref := o.line(t, sku40); ref != p || o.Refunded != want || o.Status != "accepted" {
		t.Fatalf("order after the refund: %+v", o)
	}
	if st := couponState(t, c, cid); st != "used" {
		t.Fatalf("coupon after a refund of one line is %q, want used", st)
	}

	for _, tc := range []struct {
		who        *nodetest.Client
		body       string
		status     int
		code, name string
	}{
		{pos, `{"sku_ids":["` + sku40 + `"]}`, 409, "already_refunded", "the same line again"},
		{pos, `{"sku_ids":["` + sku30 + `","` + sku40 + `"]}`, 409, "already_refunded", "a line refunded among others"},
		{pos, `{"sku_ids":["1001006"]}`, 400, "unknown_sku", "a sku not on the order"},
		{pos, `{"sku_ids":["x"]}`, 400, "invalid_json", "a malformed sku id"},
		{pos, `{"skus":["` + sku30 + `"]}`, 400, "invalid_json", "an unknown field"},
		{other, `{}`, 404, "order_not_found", "another store's order"},
	} {
		if r := tc.who.Do("POST", "/pos/v1/orders/"+oid+"/refund", tc.body); r.Status != tc.status || r.Code() != tc.code {
			t.Errorf("%s: %d %s, want %d %s", tc.name, r.Status, r.Body, tc.status, tc.code)
		}
	}
	if r := pos.Do("GET", "/pos/v1/orders/"+oid, ""); r.Status != 200 || decode[orderView](t, r).Refunded != want {
		t.Fatalf("the POS reads the order: %d %s", r.Status, r.Body)
	}
	if r := other.Do("GET", "/pos/v1/orders/"+oid, ""); r.Status != 404 {
		t.Fatalf("another store reads the order: %d %s", r.Status, r.Body)
	}

	r = admin.Do("POST", "/admin/v1/orders/"+oid+"/refund", "")
	if r.Status != 201 {
		t.Fatalf("operator's refund of the rest: %d %s", r.Status, r.Body)
	}
	rest := decode[refundAnswer](t, r)
	if rest.Amount != before.Payable-want || len(rest.SKUs) != 2 || rest.Order.Status != "refunding" {
		t.Fatalf("refund of the rest: %s; want %d fen, refunding", r.Body, before.Payable-want)
	}
	eventually.True(t, 10*time.Second, "the order refunded", func() bool { return getOrder(t, c, oid).Status == "refunded" })
	if st := couponState(t, c, cid); st != "available" {
		t.Fatalf("coupon of an order refunded in full is %q, want available", st)
	}
	amount, refunded := paymentOf(t, base, oid)
	if o := getOrder(t, c, oid); amount != before.Payable || refunded != amount || o.Refunded != amount {
		t.Fatalf("payment %d refunded %d, order refunded %d", amount, refunded, o.Refunded)
	}
	if r := admin.Do("POST", "/admin/v1/orders/"+oid+"/refund", ""); r.Status != 409 || r.Code() != "nothing_to_refund" {
		t.Fatalf("refund of a refunded order: %d %s", r.Status, r.Body)
	}
	unpaid := decode[struct {
		OrderID string `json:"order_id"`
	}](t, c.Do("POST", "/api/v1/orders", seedsCart(""))).OrderID
	if r := admin.Do("POST", "/admin/v1/orders/"+unpaid+"/refund", ""); r.Status != 409 || r.Code() != "order_not_paid" {
		t.Fatalf("refund of an unpaid order: %d %s", r.Status, r.Body)
	}
	if r := admin.Do("POST", "/admin/v1/orders/"+oid+"/refund", `{"reason":"`+strings.Repeat("x", 201)+`"}`); r.Status != 400 || r.Code() != "invalid_reason" {
		t.Fatalf("a reason too long: %d %s", r.Status, r.Body)
	}
}

// Many refunds of the same line at once: exactly one is made, the others
// are told it is refunded already, and the channel gives back that line's
// payable once.
func TestRefundSameLineRace(t *testing.T) {
	t.Parallel()
	n := promoNode(t)
	base := n.URL()
	c := nodetest.Login(t, base, demo.Phone(31))
	oid := placeAndPay(t, c, seedsCart(""))
	pos := nodetest.POS(t, base, store)
	mustAccept(t, pos, oid)
	want, _ := getOrder(t, c, oid).line(t, sku50)
	var mu sync.Mutex
	codes := map[int]int{}
	var wg sync.WaitGroup
	start := make(chan struct{})
	for range 16 {
		wg.Go(func() {
			<-start
			r := pos.Do("POST", "/pos/v1/orders/"+oid+"/refund", `{"sku_ids":["`+sku50+`"]}`)
			mu.Lock()
			defer mu.Unlock()
			codes[r.Status]++
			if r.Status != 201 && r.Code() != "already_refunded" {
				t.Errorf("refund: %d %s", r.Status, r.Body)
			}
		})
	}
	close(start)
	wg.Wait()
	if codes[201] != 1 || codes[409] != 15 {
		t.Fatalf("16 refunds of one line: %v, want one 201 and 15 409", codes)
	}
	eventually.True(t, 10*time.Second, "the refund made at the channel", func() bool {
		rs := refundsOf(t, base, oid)
		return len(rs) == 1 && rs[0].State == "done"
	})
	if o := getOrder(t, c, oid); o.Refunded != want || o.Status != "accepted" {
		t.Fatalf("order refunded %d (%s), want %d, still accepted", o.Refunded, o.Status, want)
	}
	if _, refunded := paymentOf(t, base, oid); refunded != want {
		t.Fatalf("payment refunded %d, want %d", refunded, want)
	}
}

// A customer cancels a paid order the store has not accepted: all of it is
// refunded, the store can no longer accept it (nor sees it in its queue),
// the limited item's stock and its special price come back, and so does
// the coupon; cancelling again answers the same. A cancel after the store
// accepted is refused.
func TestCancelPaidOrder(t *testing.T) {
	t.Parallel()
	n := promoNode(t)
	base := n.URL()
	c := nodetest.Login(t, base, demo.Phone(32))
	cid := claim(t, c)
	stock0 := stockOf(t, n, special)
	oid := placeAndPay(t, c, cartWith(cid, special, sku30, sku40))
	if got := stockOf(t, n, special); got != stock0-1 {
		t.Fatalf("stock %d after the payment, want %d", got, stock0-1)
	}
	pos := nodetest.POS(t, base, store)
	eventually.True(t, 10*time.Second, "the order in the store's queue", func() bool {
		return decode[pullPage](t, pos.Do("GET", "/pos/v1/orders/new?cursor=0", "")).has(oid)
	})
	payable := getOrder(t, c, oid).Payable

	r := c.Do("POST", "/api/v1/orders/"+oid+"/cancel", "")
	if r.Status != 200 {
		t.Fatalf("cancel of a paid order: %d %s", r.Status, r.Body)
	}
	if o := decode[orderView](t, r); (o.Status != "refunding" && o.Status != "refunded") || o.Refunded != payable {
		t.Fatalf("cancelled paid order: %s", r.Body)
	}
	if r := pos.Do("POST", "/pos/v1/orders/"+oid+"/accept", ""); r.Status != 409 || r.Code() != "order_cancelled" {
		t.Fatalf("accept of a cancelled order: %d %s", r.Status, r.Body)
	}
	if decode[pullPage](t, pos.Do("GET", "/pos/v1/orders/new?cursor=0", "")).has(oid) {
		t.Fatal("the cancelled order is still in the store's queue")
	}
	eventually.True(t, 10*time.Second, "the order refunded", func() bool { return getOrder(t, c, oid).Status == "refunded" })
	if rs := refundsOf(t, base, oid); len(rs) != 1 || rs[0].Amount != payable || rs[0].State != "done" || rs[0].Kind != "order" {
		t.Fatalf("refunds %+v, want one of %d fen, done", rs, payable)
	}
	if _, refunded := paymentOf(t, base, oid); refunded != payable {
		t.Fatalf("payment refunded %d, want %d", refunded, payable)
	}
	if st := couponState(t, c, cid); st != "available" {
		t.Fatalf("coupon of the cancelled paid order is %q, want available", st)
	}
	if got := stockOf(t, n, special); got != stock0 {
		t.Fatalf("stock %d after the cancel, want %d back", got, stock0)
	}
	if !specialOffered(t, c) {
		t.Fatal("the special price is not offered after the cancel: the quota did not come back")
	}
	if r := c.Do("POST", "/api/v1/orders/"+oid+"/cancel", ""); r.Status != 200 || decode[orderView](t, r).Status != "refunded" {
		t.Fatalf("cancel again: %d %s", r.Status, r.Body)
	}
	if rs := refundsOf(t, base, oid); len(rs) != 1 {
		t.Fatalf("refunds after a second cancel: %+v", rs)
	}

	// Accepted first: the customer's cancel is refused, the store refunds.
	oid2 := placeAndPay(t, c, seedsCart(""))
	mustAccept(t, pos, oid2)
	if r := c.Do("POST", "/api/v1/orders/"+oid2+"/cancel", ""); r.Status != 409 || r.Code() != "not_cancellable" {
		t.Fatalf("cancel of an accepted order: %d %s", r.Status, r.Body)
	}
	other := nodetest.Login(t, base, demo.Phone(33))
	if r := other.Do("POST", "/api/v1/orders/"+oid2+"/cancel", ""); r.Status != 404 {
		t.Fatalf("cancel of another customer's order: %d %s", r.Status, r.Body)
	}
}

// A store refunds a line of a paid order before accepting it (it is out of
// that item): the item's stock and its special price come back at once,
// the coupon stays used, and the store accepts the rest.
func TestRefundLineBeforeAccept(t *testing.T) {
	t.Parallel()
	n := promoNode(t)
	base := n.URL()
	c := nodetest.Login(t, base, demo.Phone(34))
	cid := claim(t, c)
	stock0 := stockOf(t, n, special)
	oid := placeAndPay(t, c, cartWith(cid, special, sku50, sku40))
	pos := nodetest.POS(t, base, store)
	want, _ := getOrder(t, c, oid).line(t, special)
	r := pos.Do("POST", "/pos/v1/orders/"+oid+"/refund", `{"sku_ids":["`+special+`"],"reason":"out of it"}`)
	if r.Status != 201 || decode[refundAnswer](t, r).Amount != want {
		t.Fatalf("refund of the special line before accepting: %d %s (want %d fen)", r.Status, r.Body, want)
	}
	if got := stockOf(t, n, special); got != stock0 {
		t.Fatalf("stock %d after the line was refunded before acceptance, want %d", got, stock0)
	}
	eventually.True(t, 10*time.Second, "the special price offered again", func() bool { return specialOffered(t, c) })
	if st := couponState(t, c, cid); st != "used" {
		t.Fatalf("coupon after a refund of one line is %q, want used", st)
	}
	mustAccept(t, pos, oid)
	eventually.True(t, 10*time.Second, "the order accepted", func() bool { return getOrder(t, c, oid).Status == "accepted" })
}

// The customer's cancel and the store's accept, raced: exactly one of them
// wins every round, and the order ends as that one says.
func TestCancelAcceptRace(t *testing.T) {
	t.Parallel()
	n := promoNode(t)
	base := n.URL()
	c := nodetest.Login(t, base, demo.Phone(35))
	pos := nodetest.POS(t, base, store)
	var cancelled, accepted int
	for round := range 6 {
		oid := placeAndPay(t, c, seedsCart(""))
		eventually.True(t, 10*time.Second, "the order in the store's queue", func() bool {
			return decode[pullPage](t, pos.Do("GET", "/pos/v1/orders/new?cursor=0", "")).has(oid)
		})
		var cr, ar nodetest.Resp
		var wg sync.WaitGroup
		wg.Go(func() { cr = c.Do("POST", "/api/v1/orders/"+oid+"/cancel", "") })
		wg.Go(func() { ar = pos.Do("POST", "/pos/v1/orders/"+oid+"/accept", "") })
		wg.Wait()
		switch {
		case cr.Status == 200 && ar.Status == 409 && ar.Code() == "order_cancelled":
			cancelled++
			eventually.True(t, 10*time.Second, "the cancelled order refunded", func() bool { return getOrder(t, c, oid).Status == "refunded" })
		case ar.Status == 200 && cr.Status == 409 && cr.Code() == "not_cancellable":
			accepted++
			eventually.True(t, 10*time.Second, "the order accepted", func() bool { return getOrder(t, c, oid).Status == "accepted" })
			if rs := refundsOf(t, base, oid); len(rs) != 0 {
				t.Fatalf("round %d: an accepted order has refunds %+v", round, rs)
			}
		default:
			t.Fatalf("round %d: cancel %d %s, accept %d %s: not exactly one", round, cr.Status, cr.Body, ar.Status, ar.Body)
		}
	}
	t.Logf("6 rounds: %d cancelled, %d accepted", cancelled, accepted)
}

// has reports whether the page holds the order.
func (p pullPage) has(oid string) bool {
	for _, o := range p.Orders {
		if o.Order.OrderID == oid {
			return true
		}
	}
	return false
}

// Refunding the lines that cost nothing (a gift) moves no money and needs
// no channel (which refuses a refund of 0): when it is the last refund the
// order still ends refunded. An order that would cost nothing is refused
// at once (no channel takes a payment of 0), never left unpayable.
func TestZeroFenRefundAndOrder(t *testing.T) {
	t.Parallel()
	n := promoNode(t)
	base := n.URL()
	op := &nodetest.Client{T: t, Base: base, Token: admin}
	latte, tart := "1002001", "1002024"
	if r := op.Do("POST", "/admin/v1/promotions", `{"store_id":"1002","kind":"gift","name":"buy 1 get a tart",
		"sku_ids":["`+latte+`"],"buy_qty":1,"gift_sku_id":"`+tart+`","gift_qty":1}`); r.Status != 201 {
		t.Fatalf("create gift promotion: %d %s", r.Status, r.Body)
	}
	c := nodetest.Login(t, base, demo.Phone(40))
	oid := placeAndPay(t, c, `{"store_id":"1002","items":[{"sku_id":"`+latte+`","qty":1}]}`)
	pos := nodetest.POS(t, base, "1002")
	mustAccept(t, pos, oid)
	if r := pos.Do("POST", "/pos/v1/orders/"+oid+"/refund", `{"sku_ids":["`+latte+`"]}`); r.Status != 201 {
		t.Fatalf("refund of the paid line: %d %s", r.Status, r.Body)
	}
	r := pos.Do("POST", "/pos/v1/orders/"+oid+"/refund", `{}`) // what is left: the gift, 0 fen
	if r.Status != 201 || decode[refundAnswer](t, r).Amount != 0 {
		t.Fatalf("refund of the gift: %d %s", r.Status, r.Body)
	}
	eventually.Saw(t, 10*time.Second, "the order refunded", func() (bool, string) {
		o := getOrder(t, c, oid)
		return o.Status == "refunded" && o.Refunded == o.Payable, fmt.Sprintf("%+v", o)
	})

	free, err := n.Promo.CreateTemplate(t.Context(), promo.Template{Terms: promo.Terms{Name: "all on us", Kind: pricing.AmountOff, Off: 1_000_000},
		Quantity: 10, PerUser: 1})
	if err != nil {
		t.Fatal(err)
	}
	if r := c.Do("POST", "/api/v1/coupons/"+strconv.FormatInt(free.ID, 10)+"/claim", ""); r.Status != 201 {
		t.Fatalf("claim: %d %s", r.Status, r.Body)
	}
	var cid string
	eventually.True(t, 10*time.Second, "the coupon in the wallet", func() bool {
		w := decode[struct {
			Coupons []struct {
				ID         string `json:"coupon_id"`
				TemplateID string `json:"template_id"`
			}
		}](t, c.Do("GET", "/api/v1/me/coupons", ""))
		for _, x := range w.Coupons {
			if x.TemplateID == strconv.FormatInt(free.ID, 10) {
				cid = x.ID
			}
		}
		return cid != ""
	})
	body := `{"store_id":"1002","items":[{"sku_id":"1002005","qty":1}],"coupon_ids":["` + cid + `"]}`
	if r := c.Do("POST", "/api/v1/orders", body); r.Status != 409 || r.Code() != "nothing_to_pay" {
		t.Fatalf("an order that costs nothing: %d %s", r.Status, r.Body)
	}
	if st := couponState(t, c, cid); st != "available" {
		t.Fatalf("the coupon of a refused order is %q", st)
	}
}
