package demo

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"slices"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
)

// Report is what a simulation did.
type Report struct {
	Duration time.Duration
	Ops      map[string]*Op
	Orders   int // orders created (201)
	Cancels  int // orders cancelled (200)
	Paid     int // orders paid at the simulated channel
	SoldOut  int // 409 sold_out answers
	// Promotions and coupons.
	Claimed      int   // coupons claimed (201)
	CouponOrders int   // orders placed with a coupon
	Discounted   int   // orders with any discount
	Discounts    int64 // fen taken off the orders placed
	// The flash sale: purchase attempts, tickets handed out, their orders
	// (the ticket's outcome), of which paid.
	FlashAttempts, FlashTickets, FlashOrders, FlashPaid int
}

// Op counts one kind of request.
type Op struct {
	Count, Errors int
	hist          *hdrhistogram.Histogram
}

// Quantile returns the q-th latency percentile.
func (o *Op) Quantile(q float64) time.Duration {
	return time.Duration(o.hist.ValueAtQuantile(q)) * time.Microsecond
}

// Simulate runs `customers` simulated customers against base for d: each
// logs in, browses stores and menus, places orders (with an
// Idempotency-Key), pays most of them at the simulated channels, cancels
// some of the others and reads them back. With a flash sale (sale != ""),
// each first waits for it on its page's countdown, tries to buy, and pays
// the order its ticket becomes.
func Simulate(ctx context.Context, base string, customers int, d time.Duration, sale string) (*Report, error) {
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: customers}}
	parent := ctx
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	rep := &Report{Ops: map[string]*Op{}}
	var mu sync.Mutex
	record := func(op string, start time.Time, status int, err error) {
		mu.Lock()
		defer mu.Unlock()
		o := rep.Ops[op]
		if o == nil {
			o = &Op{hist: hdrhistogram.New(1, 60_000_000, 3)}
			rep.Ops[op] = o
		}
		o.Count++
		if err != nil || status >= 500 {
			o.Errors++
		}
		o.hist.RecordValue(time.Since(start).Microseconds())
	}
	do := func(ctx context.Context, op, method, path, token string, body any, out any, hdr ...string) int {
		var rd io.Reader
		if body != nil {
			b, _ := json.Marshal(body)
			rd = bytes.NewReader(b)
		}
		req, err := http.NewRequestWithContext(ctx, method, base+path, rd)
		if err != nil {
			return 0
		}
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		for i := 0; i+1 < len(hdr); i += 2 {
			req.Header.Set(hdr[i], hdr[i+1])
		}
		start := time.Now()
		resp, err := client.Do(req)
		if err != nil {
			if ctx.Err() == nil {
				record(op, start, 0, err)
			}
			return 0
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		record(op, start, resp.StatusCode, nil)
		if out != nil && resp.StatusCode < 300 {
			json.Unmarshal(b, out)
		}
		return resp.StatusCode
	}
	on := func(ctx context.Context) caller { // the request helper bound to ctx
		return func(op, method, path, token string, body any, out any, hdr ...string) int {
			return do(ctx, op, method, path, token, body, out, hdr...)
		}
	}
	call := on(ctx)
	// A customer who got a flash-sale ticket follows it to its order and
	// pays it even when the load's time is up (a busy machine makes the
	// ticket's order late), for a while: the report then counts every
	// ticket's fate.
	fctx, fcancel := context.WithTimeout(parent, d+30*time.Second)
	defer fcancel()
	started := time.Now()
	var wg sync.WaitGroup
	for c := range customers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(c), uint64(started.UnixNano())))
			var login struct{ Token string }
			if call("login", "POST", "/api/v1/auth/login", "", map[string]string{"phone": Phone(c % Users)}, &login) != 200 {
				return
			}
			if sale != "" {
				flash(fctx, ctx, on(fctx), login.Token, sale, client, rep, &mu)
			}
			coupon := claimCoupon(call, login.Token)
			if coupon != "" {
				mu.Lock()
				rep.Claimed++
				mu.Unlock()
			}
			for n := 0; ctx.Err() == nil; n++ {
				if n%10 == 0 {
					call("stores", "GET", "/api/v1/stores", "", nil, nil)
				}
				store := StoreIDs()[rng.IntN(Stores)]
				var m struct {
					Categories []struct {
						Items []struct {
							SKU       string `json:"sku_id"`
							Available bool   `json:"available"`
						} `json:"items"`
					} `json:"categories"`
				}
				if call("menu", "GET", "/api/v1/stores/"+strconv.FormatInt(store, 10)+"/menu", "", nil, &m) != 200 {
					continue
				}
				var skus []string
				for _, cat := range m.Categories {
					for _, it := range cat.Items {
						if it.Available {
							skus = append(skus, it.SKU)
						}
					}
				}
				if len(skus) == 0 || rng.IntN(3) > 0 { // two of three visits only browse
					continue
				}
				type line struct {
					SKU string `json:"sku_id"`
					Qty int    `json:"qty"`
				}
				var lines []line
				for range 1 + rng.IntN(3) {
					lines = append(lines, line{skus[rng.IntN(len(skus))], 1 + rng.IntN(2)})
				}
				var created struct {
					OrderID string `json:"order_id"`
					Total   int64  `json:"total"`
					Payable int64  `json:"payable"`
				}
				body := map[string]any{"store_id": strconv.FormatInt(store, 10), "items": lines}
				withCoupon := false
				if coupon != "" { // shown the price with the coupon, the customer orders at that price
					body["coupon_ids"] = []string{coupon}
					var pv struct {
						Payable   int64 `json:"payable"`
						Discounts []struct {
							ID string `json:"id"`
						} `json:"discounts"`
					}
					if call("preview", "POST", "/api/v1/orders/preview", login.Token, body, &pv) == 200 && slices.ContainsFunc(pv.Discounts,
						func(d struct {
							ID string `json:"id"`
						}) bool {
							return d.ID == coupon
						}) {
						body["expected_payable"], withCoupon = pv.Payable, true
					} else {
						delete(body, "coupon_ids")
					}
				}
				key := fmt.Sprintf("sim-%d-%d-%d", c, started.UnixNano(), n)
				switch call("create order", "POST", "/api/v1/orders", login.Token, body, &created, "Idempotency-Key", key) {
				case 201:
					mu.Lock()
					rep.Orders++
					if withCoupon {
						rep.CouponOrders++
						coupon = ""
					}
					if created.Payable < created.Total {
						rep.Discounted++
						rep.Discounts += created.Total - created.Payable
					}
					mu.Unlock()
				case 409:
					mu.Lock()
					rep.SoldOut++
					mu.Unlock()
					continue
				default:
					continue
				}
				if rng.IntN(10) < 6 { // most customers pay, at either channel
					var st struct {
						PayURL string `json:"pay_url"`
					}
					ch := []string{"wechatpay", "alipay"}[rng.IntN(2)]
					if call("pay order", "POST", "/api/v1/orders/"+created.OrderID+"/pay", login.Token, map[string]string{"channel": ch}, &st) == 201 {
						if req, err := http.NewRequestWithContext(ctx, "POST", st.PayURL, nil); err == nil {
							if res, err := client.Do(req); err == nil {
								io.Copy(io.Discard, res.Body)
								res.Body.Close()
								mu.Lock()
								rep.Paid++
								mu.Unlock()
							}
						}
					}
					call("get order", "GET", "/api/v1/orders/"+created.OrderID, login.Token, nil, nil)
					continue
				}
				call("get order", "GET", "/api/v1/orders/"+created.OrderID, login.Token, nil, nil)
				if rng.IntN(3) == 0 && call("cancel order", "POST", "/api/v1/orders/"+created.OrderID+"/cancel", login.Token, nil, nil) == 200 {
					mu.Lock()
					rep.Cancels++
					mu.Unlock()
				}
				if n%5 == 0 {
					call("list orders", "GET", "/api/v1/orders?limit=10", login.Token, nil, nil)
				}
			}
		}()
	}
	wg.Wait()
	rep.Duration = time.Since(started)
	return rep, nil
}

// Print writes the report as a table.
func (r *Report) Print(w io.Writer) {
	names := make([]string, 0, len(r.Ops))
	total := 0
	for k, o := range r.Ops {
		names = append(names, k)
		total += o.Count
	}
	sort.Strings(names)
	fmt.Fprintf(w, "\nsimulation: %d requests in %.1fs (%.0f req/s), %d orders placed, %d paid, %d cancelled, %d sold-out answers\n",
		total, r.Duration.Seconds(), float64(total)/r.Duration.Seconds(), r.Orders, r.Paid, r.Cancels, r.SoldOut)
	fmt.Fprintf(w, "discounts: %d orders discounted, %.2f yuan taken off; %d coupons claimed, %d orders with a coupon\n",
		r.Discounted, float64(r.Discounts)/100, r.Claimed, r.CouponOrders)
	if r.FlashAttempts > 0 {
		fmt.Fprintf(w, "flash sale: %d attempts, %d tickets, %d orders, %d paid\n", r.FlashAttempts, r.FlashTickets, r.FlashOrders, r.FlashPaid)
	}
	fmt.Fprintf(w, "%-14s %8s %7s %9s %9s %9s\n", "request", "count", "errors", "p50", "p99", "max")
	for _, k := range names {
		o := r.Ops[k]
		fmt.Fprintf(w, "%-14s %8d %7d %9s %9s %9s\n", k, o.Count, o.Errors,
			o.Quantile(50).Round(10*time.Microsecond), o.Quantile(99).Round(10*time.Microsecond), o.Quantile(100).Round(10*time.Microsecond))
	}
}

// claimCoupon claims a coupon of the first claimable template and returns
// its id once it is in the wallet ("" when none could be had).
func claimCoupon(call func(op, method, path, token string, body any, out any, hdr ...string) int, token string) string {
	var list struct {
		Templates []struct {
			ID string `json:"template_id"`
		} `json:"templates"`
	}
	if call("coupons", "GET", "/api/v1/coupons", "", nil, &list) != 200 || len(list.Templates) == 0 {
		return ""
	}
	var claimed struct {
		CouponID string `json:"coupon_id"`
	}
	for range 5 { // 503 while the counters load
		switch call("claim coupon", "POST", "/api/v1/coupons/"+list.Templates[0].ID+"/claim", token, nil, &claimed) {
		case 201:
			for range 50 { // written to the wallet from the bus: a moment later
				var w struct {
					Coupons []struct {
						ID string `json:"coupon_id"`
					} `json:"coupons"`
				}
				call("wallet", "GET", "/api/v1/me/coupons", token, nil, &w)
				for _, c := range w.Coupons {
					if c.ID == claimed.CouponID {
						return c.ID
					}
				}
				time.Sleep(20 * time.Millisecond)
			}
			return ""
		case 503:
			time.Sleep(time.Second)
		default:
			return ""
		}
	}
	return ""
}

// caller is Simulate's request helper.
type caller func(op, method, path, token string, body any, out any, hdr ...string) int

// flash waits for the sale to start (by its page's countdown, as the app
// lights its button), tries to buy once or twice while load lasts, follows
// the ticket and pays its order until ctx ends.
func flash(ctx, load context.Context, call caller, token, sale string, client *http.Client, rep *Report, mu *sync.Mutex) {
	var page struct {
		Now      time.Time `json:"now"`
		StartsAt time.Time `json:"starts_at"`
	}
	if call("sale page", "GET", "/api/v1/flash-sales/"+sale, "", nil, &page) != 200 {
		return
	}
	select {
	case <-load.Done():
		return
	case <-time.After(page.StartsAt.Sub(page.Now) + time.Second): // the page's now is whole seconds
	}
	for range 2 {
		if load.Err() != nil {
			return
		}
		var tk struct {
			Ticket string `json:"ticket"`
		}
		status := call("flash purchase", "POST", "/api/v1/flash-sales/"+sale+"/purchase", token, nil, &tk)
		mu.Lock()
		rep.FlashAttempts++
		mu.Unlock()
		if status == 425 {
			time.Sleep(200 * time.Millisecond)
			continue
		}
		if status != 202 {
			return
		}
		mu.Lock()
		rep.FlashTickets++
		mu.Unlock()
		for ctx.Err() == nil {
			var v struct {
				State   string `json:"state"`
				OrderID string `json:"order_id"`
			}
			if s := call("flash ticket", "GET", "/api/v1/flash-sales/"+sale+"/tickets/"+tk.Ticket, token, nil, &v); s == 200 && v.State != "pending" {
				if v.State != "ordered" {
					return
				}
				mu.Lock()
				rep.FlashOrders++
				mu.Unlock()
				if payFlash(ctx, call, client, token, v.OrderID) {
					mu.Lock()
					rep.FlashPaid++
					mu.Unlock()
				}
				return
			}
			time.Sleep(500 * time.Millisecond)
		}
		return
	}
}

// payFlash pays a flash-sale order as an app would, until ctx ends: a busy
// node's 503 or 429, or a request cut, is tried again after a moment; then
// the payer pays at the channel. It reports whether the payer paid.
func payFlash(ctx context.Context, call caller, client *http.Client, token, orderID string) bool {
	var st struct {
		PayURL string `json:"pay_url"`
	}
	for paying := true; paying; {
		switch call("pay order", "POST", "/api/v1/orders/"+orderID+"/pay", token, map[string]string{"channel": "wechatpay"}, &st) {
		case 201:
			paying = false
		case 0, 429, 503:
			if ctx.Err() != nil {
				return false
			}
			time.Sleep(200 * time.Millisecond)
		default:
			return false
		}
	}
	for ctx.Err() == nil {
		req, err := http.NewRequestWithContext(ctx, "POST", st.PayURL, nil)
		if err != nil {
			return false
		}
		if res, err := client.Do(req); err == nil {
			io.Copy(io.Discard, res.Body)
			res.Body.Close()
			return true
		}
		time.Sleep(200 * time.Millisecond)
	}
	return false
}
