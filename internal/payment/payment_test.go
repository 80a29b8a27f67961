package payment_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/surge-platform/surge/internal/demo"
	"github.com/surge-platform/surge/internal/eventually"
	"github.com/surge-platform/surge/internal/node"
	"github.com/surge-platform/surge/internal/order"
	"github.com/surge-platform/surge/internal/payment"
	"github.com/surge-platform/surge/internal/payment/paysim"
	"github.com/surge-platform/surge/internal/platform/edge"
	"github.com/surge-platform/surge/internal/platform/id"
)

// The proofs of the payments centre (issue 3) run a whole node in process:
// the HTTP API, the worker and the payment simulator, with real HTTP between
// the payment service and the simulated channels. Customers act over the
// API; the assertions read the services and the databases.

const adminToken = "payment-test-admin"

// channels are the shipped payment channels the tests run on: WeChat
// Pay's and Alipay's protocols, at the simulator.
var channels = []string{"wechatpay", "alipay"}

// acks are the answers each channel expects for a callback it must not repeat.
var acks = map[string]string{"wechatpay": "", "alipay": "success"}

var httpc = &http.Client{Timeout: 15 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 128}}

// env is one running node.
type env struct {
	tb   testing.TB
	ctx  context.Context
	n    *node.Node
	base string
	// keys are the provider's side of each channel (to sign callbacks as
	// the simulator does); sim queries the simulator as a merchant.
	keys  map[string]paysim.ChannelConfig
	sim   map[string]simView
	phone atomic.Int64
}

type envOpts struct {
	payQuery time.Duration // first active query; 0 = one hour (no active queries in the test)
	orderTTL time.Duration // 0 = 15 min
}

// syncBuf collects the node's warnings, shown when a test fails.
type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// mustStart runs a node with every role on a free port, seeded with the demo
// data, in a fresh data directory.
func mustStart(tb testing.TB, o envOpts) *env {
	tb.Helper()
	if o.payQuery == 0 {
		o.payQuery = time.Hour
	}
	cfg := node.Defaults()
	cfg.Addr, cfg.Data, cfg.AdminToken, cfg.PayQuery = "127.0.0.1:0", tb.TempDir(), adminToken, o.payQuery
	cfg.Edge = edge.Config{} // the fuzzers and races would trip the production limits
	if o.orderTTL > 0 {
		cfg.OrderTTL = o.orderTTL
	}
	logs := &syncBuf{}
	ctx, cancel := context.WithCancel(context.Background())
	n, err := node.New(ctx, cfg, slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelWarn})))
	if err != nil {
		cancel()
		tb.Fatal(err)
	}
	if err := demo.Seed(ctx, n.Catalog, n.Members); err != nil {
		cancel()
		n.Close()
		tb.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- n.Run(ctx) }()
	tb.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			tb.Errorf("node run: %v", err)
		}
		n.Close()
		if tb.Failed() {
			s := logs.String()
			if len(s) > 6000 {
				s = "..." + s[len(s)-6000:]
			}
			tb.Logf("node warnings:\n%s", s)
		}
	})
	e := &env{tb: tb, ctx: ctx, n: n, base: n.URL(), keys: map[string]paysim.ChannelConfig{}, sim: map[string]simView{}}
	for _, name := range channels {
		e.keys[name], e.sim[name] = n.Sim.Config(name), simView{n.Sim, name}
	}
	return e
}

// simView is the simulator's own record of a channel's transactions: the
// truth, whatever the channel's protocol shows (WeChat Pay's queries do
// not say how much is refunded, Alipay's not a refund in part).
type simView struct {
	srv     *paysim.Server
	channel string
}

func (v simView) Query(_ context.Context, pid int64) (payment.Status, error) {
	return v.srv.View(v.channel, pid)
}

// ---- HTTP

type resp struct {
	status int
	ctype  string
	body   []byte
}

// code is the error code of a JSON error answer ("" when there is none).
func (r resp) code() string {
	var e struct {
		Error struct{ Code string } `json:"error"`
	}
	json.Unmarshal(r.body, &e)
	return e.Error.Code
}

func (e *env) do(method, path, token string, hdr http.Header, body []byte) resp {
	e.tb.Helper()
	req, err := http.NewRequestWithContext(e.ctx, method, e.base+path, bytes.NewReader(body))
	if err != nil {
		e.tb.Fatal(err)
	}
	for k, v := range hdr {
		req.Header[k] = v
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if len(body) > 0 && req.Header.Get("Content-Type") == "" {
		req.Header.Set("Content-Type", "application/json")
	}
	res, err := httpc.Do(req)
	if err != nil {
		e.tb.Fatalf("%s %s: %v", method, path, err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		e.tb.Fatalf("%s %s: read: %v", method, path, err)
	}
	return resp{status: res.StatusCode, ctype: res.Header.Get("Content-Type"), body: b}
}

// customer is a logged-in customer.
type customer struct {
	e     *env
	token string
}

// mustCustomer logs a new customer in.
func (e *env) mustCustomer() *customer {
	e.tb.Helper()
	phone := fmt.Sprintf("+86137%08d", e.phone.Add(1))
	r := e.do("POST", "/api/v1/auth/login", "", nil, []byte(`{"phone":"`+phone+`"}`))
	var out struct{ Token string }
	if json.Unmarshal(r.body, &out); r.status != 200 || out.Token == "" {
		e.tb.Fatalf("login: %d %s", r.status, r.body)
	}
	return &customer{e: e, token: out.Token}
}

// mustOrder places an order of one unlimited item and returns its id.
func (c *customer) mustOrder() int64 {
	c.e.tb.Helper()
	return c.mustPlace(`{"store_id":"1001","items":[{"sku_id":"1001006","qty":1}]}`)
}

// mustPlace places the order body describes and returns its id.
func (c *customer) mustPlace(body string) int64 {
	c.e.tb.Helper()
	r := c.e.do("POST", "/api/v1/orders", c.token, nil, []byte(body))
	var out struct {
		OrderID string `json:"order_id"`
	}
	json.Unmarshal(r.body, &out)
	oid, err := strconv.ParseInt(out.OrderID, 10, 64)
	if r.status != 201 || err != nil {
		c.e.tb.Fatalf("order: %d %s", r.status, r.body)
	}
	return oid
}

// started is the answer to POST /api/v1/orders/{id}/pay.
type started struct {
	PaymentID int64  `json:"payment_id,string"`
	Channel   string `json:"channel"`
	PayURL    string `json:"pay_url"`
}

// pay asks to pay order oid at channel ("" = routed).
func (c *customer) pay(oid int64, channel string) (started, resp) {
	c.e.tb.Helper()
	body := []byte(`{}`)
	if channel != "" {
		body = []byte(`{"channel":"` + channel + `"}`)
	}
	r := c.e.do("POST", "/api/v1/orders/"+strconv.FormatInt(oid, 10)+"/pay", c.token, nil, body)
	var st started
	if r.status == 201 {
		if err := json.Unmarshal(r.body, &st); err != nil || st.PaymentID == 0 || st.PayURL == "" {
			c.e.tb.Fatalf("pay answer: %s", r.body)
		}
	}
	return st, r
}

// mustPay is pay that must succeed (on channel, when one is given).
func (c *customer) mustPay(oid int64, channel string) started {
	c.e.tb.Helper()
	st, r := c.pay(oid, channel)
	if r.status != 201 || (channel != "" && st.Channel != channel) {
		c.e.tb.Fatalf("pay order %d at %q: %d %s", oid, channel, r.status, r.body)
	}
	return st
}

// mustPayAtChannel is the payer paying at the simulator (POST pay_url).
func (e *env) mustPayAtChannel(st started) {
	e.tb.Helper()
	if err := paysim.Pay(e.ctx, httpc, st.PayURL); err != nil {
		e.tb.Fatalf("pay at channel: %v", err)
	}
}

// getOrder is the customer's GET /api/v1/orders/{id}.
func (c *customer) getOrder(oid int64) order.Order {
	c.e.tb.Helper()
	r := c.e.do("GET", "/api/v1/orders/"+strconv.FormatInt(oid, 10), c.token, nil, nil)
	var o order.Order
	if r.status != 200 || json.Unmarshal(r.body, &o) != nil {
		c.e.tb.Fatalf("get order %d: %d %s", oid, r.status, r.body)
	}
	return o
}

// warmUp opens n keep-alive connections to the node, so that n requests
// sent at once reach the server at once rather than one handshake apart.
func (e *env) warmUp(n int) {
	e.tb.Helper()
	var wg sync.WaitGroup
	gate := make(chan struct{})
	for range n {
		wg.Go(func() {
			<-gate
			if r := e.do("GET", "/healthz", "", nil, nil); r.status != 200 {
				e.tb.Errorf("healthz: %d", r.status)
			}
		})
	}
	close(gate)
	wg.Wait()
}

// ---- callbacks

// notice is what channel would notify now about payment pid, from the
// channel's own view of it (its transaction id, amount and paid time);
// for a payment not paid at the channel it claims paid now.
func (e *env) notice(channel string, pid int64) payment.Notice {
	e.tb.Helper()
	st, err := e.sim[channel].Query(e.ctx, pid)
	if err != nil {
		e.tb.Fatalf("query %s payment %d: %v", channel, pid, err)
	}
	if st.State != payment.Paid {
		st.State, st.PaidAt = payment.Paid, time.Now().UTC().Truncate(time.Second)
	}
	return payment.Notice{Status: st, NoticeID: "test" + strconv.FormatInt(time.Now().UnixNano(), 36), Timestamp: time.Now()}
}

// mustEncode signs n as channel's provider does.
func (e *env) mustEncode(channel string, n payment.Notice) (http.Header, []byte) {
	e.tb.Helper()
	h, body, err := paysim.EncodeCallback(e.keys[channel], n)
	if err != nil {
		e.tb.Fatal(err)
	}
	return h, body
}

// notify posts a callback to our notify endpoint of channel.
func (e *env) notify(channel string, h http.Header, body []byte) resp {
	e.tb.Helper()
	return e.do("POST", "/pay/v1/notify/"+channel, "", h, body)
}

// ---- waiting and reading state

func (e *env) peek(oid int64) *order.Order {
	e.tb.Helper()
	o, err := e.n.Orders.Peek(e.ctx, oid)
	if err != nil {
		e.tb.Fatal(err)
	}
	return o
}

func (e *env) payments(oid int64) []*payment.Payment {
	e.tb.Helper()
	ps, err := e.n.Payments.OfOrder(e.ctx, oid)
	if err != nil {
		e.tb.Fatal(err)
	}
	return ps
}

func (e *env) payment(oid, pid int64) *payment.Payment {
	e.tb.Helper()
	for _, p := range e.payments(oid) {
		if p.ID == pid {
			return p
		}
	}
	e.tb.Fatalf("order %d has no payment %d", oid, pid)
	return nil
}

// waitPaid waits until order oid is paid (as stored; reading it over the
// API would query the channel).
func (e *env) waitPaid(oid int64, timeout time.Duration) {
	e.tb.Helper()
	eventually.Saw(e.tb, timeout, fmt.Sprintf("order %d paid", oid), func() (bool, string) {
		o := e.peek(oid)
		return o.Status == order.Paid, string(o.Status)
	})
}

// waitStats waits until channel's simulator counters satisfy cond.
func (e *env) waitStats(channel, what string, cond func(paysim.Stats) bool) {
	e.tb.Helper()
	eventually.Saw(e.tb, 10*time.Second, channel+" "+what, func() (bool, string) {
		s := e.n.Sim.Stats(channel)
		return cond(s), fmt.Sprintf("%+v", s)
	})
}

func (e *env) mustFaults(channel string, f paysim.Faults) {
	e.tb.Helper()
	if err := e.n.Sim.SetFaults(channel, f); err != nil {
		e.tb.Fatal(err)
	}
}

// events counts the events of order oid of type typ: those still in its
// shard's outbox and those the worker's consumer recorded.
func (e *env) events(oid int64, typ string) (inOutbox, seen int) {
	e.tb.Helper()
	rows, err := e.n.DB.ForID(oid).W.QueryContext(e.ctx, `SELECT type, payload FROM outbox`)
	if err != nil {
		e.tb.Fatal(err)
	}
	for rows.Next() {
		var t, payload string
		if err := rows.Scan(&t, &payload); err != nil {
			rows.Close()
			e.tb.Fatal(err)
		}
		var ev order.Event
		if t == typ && json.Unmarshal([]byte(payload), &ev) == nil && ev.OrderID == oid {
			inOutbox++
		}
	}
	rows.Close()
	list, err := e.n.Orders.SeenEvents(e.ctx, oid)
	if err != nil {
		e.tb.Fatal(err)
	}
	for _, s := range list {
		if s.Type == typ {
			seen++
		}
	}
	return inOutbox, seen
}

// mustSettledOnce asserts that payment pid paid order oid by exactly one
// state change: version 1 -> 2, exactly one order.paid event, the payment
// settled, the order pointing at it.
func (e *env) mustSettledOnce(oid, pid int64) {
	e.tb.Helper()
	e.waitPaid(oid, 10*time.Second)
	eventually.Saw(e.tb, 10*time.Second, fmt.Sprintf("order.paid of order %d published and consumed", oid), func() (bool, string) {
		out, seen := e.events(oid, order.EvPaid)
		return out == 0 && seen >= 1, fmt.Sprintf("%d in the outbox, %d seen", out, seen)
	})
	o := e.peek(oid)
	if o.Status != order.Paid || o.Version != 2 || o.PaymentID != pid {
		e.tb.Errorf("order %d: %s version %d paid by %d; want paid version 2 by payment %d", oid, o.Status, o.Version, o.PaymentID, pid)
	}
	if out, seen := e.events(oid, order.EvPaid); out+seen != 1 {
		e.tb.Errorf("order %d has %d order.paid events (%d in the outbox), want exactly 1", oid, out+seen, out)
	}
	if p := e.payment(oid, pid); p.State != "settled" || p.PaidAt.IsZero() {
		e.tb.Errorf("payment %d: state %s paid_at %v; want settled with paid_at", pid, p.State, p.PaidAt)
	}
}

// anomaliesOf lists the recorded anomalies of order oid.
func (e *env) anomaliesOf(oid int64) []payment.Anomaly {
	e.tb.Helper()
	all, err := e.n.Payments.Anomalies(e.ctx, 10000)
	if err != nil {
		e.tb.Fatal(err)
	}
	var out []payment.Anomaly
	for _, a := range all {
		if a.OrderID == oid {
			out = append(out, a)
		}
	}
	return out
}

// ---- the proofs

// The same valid callback 100 times at once changes the order once: version
// 1 -> 2, one order.paid event, the payment settled, no anomaly; every copy
// is answered with the channel's ack (so the channel stops repeating it).
// Once over HTTP, and once straight into the service, where the copies
// collide harder (the compare-and-set of the order is what keeps it to one
// change there).
func TestSameCallback100TimesChangesStateOnce(t *testing.T) {
	t.Parallel()
	e := mustStart(t, envOpts{})
	const copies = 100
	for _, ch := range channels {
		t.Run(ch, func(t *testing.T) {
			t.Parallel()
			e.mustFaults(ch, paysim.Faults{DropCallbacks: true}) // only our copies arrive
			c := e.mustCustomer()
			for round, via := range []string{"http", "in process"} {
				oid := c.mustOrder()
				if o := e.peek(oid); o.Version != 1 || o.Status != order.PendingPayment {
					t.Fatalf("new order: %s version %d", o.Status, o.Version)
				}
				st := c.mustPay(oid, ch)
				e.mustPayAtChannel(st)
				e.waitStats(ch, "dropped the callback", func(s paysim.Stats) bool { return s.Dropped == int64(round+1) })
				h, body := e.mustEncode(ch, e.notice(ch, st.PaymentID))
				if via == "http" {
					e.warmUp(copies) // connections open: the copies arrive together
				}
				answers := make([]resp, copies)
				var wg sync.WaitGroup
				gate := make(chan struct{})
				for i := range copies {
					wg.Go(func() {
						<-gate
						if via == "http" {
							answers[i] = e.notify(ch, h.Clone(), body)
							return
						}
						ct, ack, err := e.n.Payments.Callback(e.ctx, ch, h.Clone(), bytes.NewReader(body))
						answers[i] = resp{status: 200, ctype: ct, body: ack}
						if err != nil {
							answers[i] = resp{status: 500, body: []byte(err.Error())}
						}
					})
				}
				close(gate)
				wg.Wait()
				for i, a := range answers {
					if a.status != 200 || string(a.body) != acks[ch] {
						t.Errorf("%s: copy %d answered %d %q, want 200 %q", via, i, a.status, a.body, acks[ch])
					}
				}
				e.mustSettledOnce(oid, st.PaymentID)
				if an := e.anomaliesOf(oid); len(an) != 0 {
					t.Errorf("%s: anomalies %+v, want none", via, an)
				}
				if s, _ := e.sim[ch].Query(e.ctx, st.PaymentID); s.State != payment.Paid {
					t.Errorf("%s: channel says %s, want paid (nothing refunded)", via, s.State)
				}
			}
		})
	}
	t.Cleanup(func() {
		if f, r := e.n.Payments.Forged.Load(), e.n.Payments.Replayed.Load(); f != 0 || r != 0 {
			t.Errorf("forged %d replayed %d, want 0", f, r)
		}
		if got := e.n.Payments.CallbackCounts(); got != (payment.CallbackCounts{Callbacks: 2 * copies * int64(len(channels))}) {
			t.Errorf("counted %+v, want %d callbacks, none refused", got, 2*copies*len(channels))
		}
		// Of each payment's copies, one applies it the common way (the
		// order's update picks it through the payment); the others find it
		// applied and take the full way.
		if q := payment.Quick(e.n.Payments); q != 2*int64(len(channels)) {
			t.Errorf("%d notices applied the common way, want %d (one per payment)", q, 2*len(channels))
		}
	})
}

// Forged callbacks (another key, a body altered after signing, no or a
// malformed signature) are refused with a 4xx JSON error, counted as
// forged, and change nothing; the genuine callback then is accepted.
func TestForgedCallbacksRefused(t *testing.T) {
	t.Parallel()
	e := mustStart(t, envOpts{})
	otherKey := mustOtherRSA(t)
	tamperForm := func(body []byte, key, value string) []byte {
		v, err := url.ParseQuery(string(body))
		if err != nil {
			t.Fatal(err)
		}
		v.Set(key, value)
		return []byte(v.Encode())
	}
	signedBy := func(cc paysim.ChannelConfig, n payment.Notice) (http.Header, []byte) {
		h, b, err := paysim.EncodeCallback(cc, n)
		if err != nil {
			t.Fatal(err)
		}
		return h, b
	}
	otherWX, otherAli := *e.keys["wechatpay"].WeChat, *e.keys["alipay"].Alipay
	otherWX.PlatformKey, otherAli.AlipayKey = otherKey, otherKey
	type forgery struct {
		name  string
		forge func(n payment.Notice) (http.Header, []byte)
	}
	cases := map[string][]forgery{
		"wechatpay": {
			{"another platform key", func(n payment.Notice) (http.Header, []byte) {
				return signedBy(paysim.ChannelConfig{Scheme: paysim.WeChatPay, WeChat: &otherWX}, n)
			}},
			{"notice id altered after signing", func(n payment.Notice) (http.Header, []byte) {
				h, b := e.mustEncode("wechatpay", n)
				return h, bytes.Replace(b, []byte(`"id":"`+n.NoticeID), []byte(`"id":"x`+n.NoticeID), 1)
			}},
			{"resource swapped after signing", func(n payment.Notice) (http.Header, []byte) {
				h, b := e.mustEncode("wechatpay", n)
				_, other := e.mustEncode("wechatpay", n) // another nonce: another ciphertext
				var ev, ov paysim.WXEvent
				if json.Unmarshal(b, &ev) != nil || json.Unmarshal(other, &ov) != nil {
					t.Fatal("notice is not JSON")
				}
				ev.Resource = ov.Resource
				b, _ = json.Marshal(ev)
				return h, b
			}},
			{"timestamp header altered", func(n payment.Notice) (http.Header, []byte) {
				h, b := e.mustEncode("wechatpay", n)
				h.Set("Wechatpay-Timestamp", strconv.FormatInt(n.Timestamp.Unix()+1, 10))
				return h, b
			}},
			{"nonce altered", func(n payment.Notice) (http.Header, []byte) {
				h, b := e.mustEncode("wechatpay", n)
				h.Set("Wechatpay-Nonce", h.Get("Wechatpay-Nonce")+"x")
				return h, b
			}},
			{"another key's serial", func(n payment.Notice) (http.Header, []byte) {
				h, b := e.mustEncode("wechatpay", n)
				h.Set("Wechatpay-Serial", "PUB_KEY_ID_0000000000000000000000000000")
				return h, b
			}},
			{"no signature", func(n payment.Notice) (http.Header, []byte) {
				h, b := e.mustEncode("wechatpay", n)
				h.Del("Wechatpay-Signature")
				return h, b
			}},
			{"garbage signature", func(n payment.Notice) (http.Header, []byte) {
				h, b := e.mustEncode("wechatpay", n)
				h.Set("Wechatpay-Signature", strings.Repeat("AB", 172))
				return h, b
			}},
		},
		"alipay": {
			{"another Alipay key", func(n payment.Notice) (http.Header, []byte) {
				return signedBy(paysim.ChannelConfig{Scheme: paysim.Alipay, Alipay: &otherAli}, n)
			}},
			{"amount altered after signing", func(n payment.Notice) (http.Header, []byte) {
				h, b := e.mustEncode("alipay", n)
				return h, tamperForm(b, "total_amount", "0.01")
			}},
			{"payment id altered after signing", func(n payment.Notice) (http.Header, []byte) {
				h, b := e.mustEncode("alipay", n)
				return h, tamperForm(b, "out_trade_no", strconv.FormatInt(n.PaymentID+1, 10))
			}},
			{"no signature", func(n payment.Notice) (http.Header, []byte) {
				h, b := e.mustEncode("alipay", n)
				v, _ := url.ParseQuery(string(b))
				v.Del("sign")
				return h, []byte(v.Encode())
			}},
			{"sign_type downgraded", func(n payment.Notice) (http.Header, []byte) {
				h, b := e.mustEncode("alipay", n)
				return h, tamperForm(b, "sign_type", "RSA")
			}},
		},
	}
	forged := int64(0)
	for _, ch := range channels {
		c := e.mustCustomer()
		oid := c.mustOrder()
		st := c.mustPay(oid, ch) // created at the channel, not paid: the forger claims it was
		n := e.notice(ch, st.PaymentID)
		for _, f := range cases[ch] {
			t.Run(ch+"/"+f.name, func(t *testing.T) {
				h, b := f.forge(n)
				r := e.notify(ch, h, b)
				forged++
				if r.status < 400 || r.status > 499 || r.code() == "" || !strings.HasPrefix(r.ctype, "application/json") {
					t.Errorf("answered %d %s %q, want a 4xx JSON error", r.status, r.ctype, r.body)
				}
				if r.code() != payment.ErrBadSignature.Code {
					t.Errorf("error code %q, want %q", r.code(), payment.ErrBadSignature.Code)
				}
				if got := e.n.Payments.Forged.Load(); got != forged {
					t.Errorf("forged counter %d, want %d", got, forged)
				}
				if o := e.peek(oid); o.Status != order.PendingPayment || o.Version != 1 {
					t.Errorf("order %s version %d after a forged callback, want pending_payment version 1", o.Status, o.Version)
				}
				if p := e.payment(oid, st.PaymentID); p.State != "pending" || !p.PaidAt.IsZero() {
					t.Errorf("payment %s paid_at %v after a forged callback, want pending", p.State, p.PaidAt)
				}
			})
		}
		// The control: the genuine callback of the same notice is taken.
		h, b := e.mustEncode(ch, n)
		if r := e.notify(ch, h, b); r.status != 200 || string(r.body) != acks[ch] {
			t.Errorf("%s genuine callback: %d %s", ch, r.status, r.body)
		}
		e.mustSettledOnce(oid, st.PaymentID)
	}
	if r := e.n.Payments.Replayed.Load(); r != 0 {
		t.Errorf("replayed %d, want 0", r)
	}
	if c := e.n.Payments.CallbackCounts(); c.Refused != forged || c.Callbacks != forged+int64(len(channels)) {
		t.Errorf("counted %+v; want %d refused of %d", c, forged, forged+int64(len(channels)))
	}
}

// Every refused callback is counted, by reason and in all, whatever
// refuses it: a body over the size limit, a channel surge does not have, a
// forged or stale one, one about a payment surge never made; and GET
// /admin/v1/payments/anomalies shows the counters.
func TestRefusedCallbacksCounted(t *testing.T) {
	t.Parallel()
	e := mustStart(t, envOpts{})
	c := e.mustCustomer()
	oid := c.mustOrder()
	st := c.mustPay(oid, "wechatpay")
	n := e.notice("wechatpay", st.PaymentID)
	h, b := e.mustEncode("wechatpay", n)
	stale := n
	stale.Timestamp = time.Now().Add(-time.Hour)
	hs, bs := e.mustEncode("wechatpay", stale)
	otherWX := *e.keys["wechatpay"].WeChat
	otherWX.PlatformKey = mustOtherRSA(t)
	hso, bso, err := paysim.EncodeCallback(paysim.ChannelConfig{Scheme: paysim.WeChatPay, WeChat: &otherWX}, stale)
	if err != nil {
		t.Fatal(err)
	}
	ha, ba := e.mustEncode("alipay", n) // genuine, but the payment was made at WeChat Pay
	never := n
	never.PaymentID++ // no such payment
	hn, bn := e.mustEncode("wechatpay", never)
	big := append([]byte(`{"pad":"`), bytes.Repeat([]byte("x"), payment.MaxCallbackBody)...)
	cases := []struct {
		name    string
		channel string
		h       http.Header
		body    []byte
		status  int
		want    payment.CallbackCounts // added by this one
	}{
		{"over the size limit", "wechatpay", h, big, 413, payment.CallbackCounts{Oversized: 1}},
		{"unknown channel", "paypal", h, b, 400, payment.CallbackCounts{UnknownChannel: 1}},
		{"unknown channel, over the size limit", "paypal", h, big, 400, payment.CallbackCounts{UnknownChannel: 1}},
		{"forged", "wechatpay", with(h, "Wechatpay-Signature", strings.Repeat("AA", 172)), b, 401, payment.CallbackCounts{Forged: 1}},
		{"another channel's callback", "alipay", h, b, 401, payment.CallbackCounts{Forged: 1}},
		{"another channel's payment", "alipay", ha, ba, 400, payment.CallbackCounts{Forged: 1}},
		{"stale", "wechatpay", hs, bs, 401, payment.CallbackCounts{Replayed: 1}},
		{"stale and signed by another key", "wechatpay", hso, bso, 401, payment.CallbackCounts{Forged: 1}},
		{"payment never made", "wechatpay", hn, bn, 404, payment.CallbackCounts{}},
		{"genuine", "wechatpay", h, b, 200, payment.CallbackCounts{}},
	}
	var want payment.CallbackCounts
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := e.notify(tc.channel, tc.h.Clone(), tc.body)
			if r.status != tc.status {
				t.Errorf("answered %d %s, want %d", r.status, r.body, tc.status)
			}
			want.Callbacks++
			if tc.status != 200 {
				want.Refused++
			}
			want.Oversized += tc.want.Oversized
			want.UnknownChannel += tc.want.UnknownChannel
			want.Forged += tc.want.Forged
			want.Replayed += tc.want.Replayed
			if got := e.n.Payments.CallbackCounts(); got != want {
				t.Errorf("counted %+v, want %+v", got, want)
			}
		})
	}
	r := e.do("GET", "/admin/v1/payments/anomalies", adminToken, nil, nil)
	var got payment.CallbackCounts
	if err := json.Unmarshal(r.body, &got); r.status != 200 || err != nil || got != want {
		t.Errorf("anomalies answer %d %s; want the counters %+v", r.status, r.body, want)
	}
}

// A genuine notice that names another amount than the payment's pays
// nothing: it is answered (the channel's word is recorded), the order stays
// unpaid, and an amount_mismatch anomaly tells the operator. The notice of
// the right amount then pays it.
func TestNoticeOfAnotherAmount(t *testing.T) {
	t.Parallel()
	e := mustStart(t, envOpts{})
	c := e.mustCustomer()
	oid := c.mustOrder()
	st := c.mustPay(oid, "wechatpay")
	n := e.notice("wechatpay", st.PaymentID)
	wrong := n
	wrong.Amount++
	hw, bw := e.mustEncode("wechatpay", wrong)
	if r := e.notify("wechatpay", hw, bw); r.status != 200 {
		t.Fatalf("notice of another amount answered %d %s, want 200", r.status, r.body)
	}
	if o := e.peek(oid); o.Status != order.PendingPayment {
		t.Fatalf("after a notice of another amount the order is %s, want pending_payment", o.Status)
	}
	if an := e.anomaliesOf(oid); len(an) != 1 || an[0].Kind != "amount_mismatch" || an[0].PaymentID != st.PaymentID {
		t.Fatalf("anomalies %+v, want one amount_mismatch of payment %d", an, st.PaymentID)
	}
	h, b := e.mustEncode("wechatpay", n)
	if r := e.notify("wechatpay", h, b); r.status != 200 {
		t.Fatalf("the right notice answered %d %s, want 200", r.status, r.body)
	}
	e.mustSettledOnce(oid, st.PaymentID)
}

func with(h http.Header, key, value string) http.Header {
	h = h.Clone()
	h.Set(key, value)
	return h
}

// mustOtherRSA is a key the channel does not hold.
func mustOtherRSA(tb testing.TB) *rsa.PrivateKey {
	tb.Helper()
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		tb.Fatal(err)
	}
	return k
}

// Replayed callbacks: validly signed, but signed outside the 5 minute window
// (in the past or the future) -> 4xx, counted as replayed, nothing changes.
// One signed inside the window is then taken.
func TestReplayedCallbacksRefused(t *testing.T) {
	t.Parallel()
	e := mustStart(t, envOpts{})
	var replayed int64
	for _, ch := range channels {
		e.mustFaults(ch, paysim.Faults{DropCallbacks: true})
		c := e.mustCustomer()
		oid := c.mustOrder()
		st := c.mustPay(oid, ch)
		e.mustPayAtChannel(st) // paid for real: the replay carries true news, only late
		e.waitStats(ch, "dropped the callback", func(s paysim.Stats) bool { return s.Dropped == 1 })
		for _, age := range []time.Duration{6 * time.Minute, time.Hour, 30 * 24 * time.Hour, -6 * time.Minute} {
			t.Run(fmt.Sprintf("%s/signed %v ago", ch, age), func(t *testing.T) {
				n := e.notice(ch, st.PaymentID)
				n.Timestamp = time.Now().Add(-age)
				h, b := e.mustEncode(ch, n)
				r := e.notify(ch, h, b)
				replayed++
				if r.status < 400 || r.status > 499 || r.code() != payment.ErrReplay.Code {
					t.Errorf("answered %d %q, want 4xx %s", r.status, r.body, payment.ErrReplay.Code)
				}
				if got := e.n.Payments.Replayed.Load(); got != replayed {
					t.Errorf("replayed counter %d, want %d", got, replayed)
				}
				if o := e.peek(oid); o.Status != order.PendingPayment || o.Version != 1 {
					t.Errorf("order %s version %d after a replay, want pending_payment version 1", o.Status, o.Version)
				}
				if p := e.payment(oid, st.PaymentID); p.State != "pending" {
					t.Errorf("payment %s after a replay, want pending", p.State)
				}
			})
		}
		// Inside the window (a late retry): taken.
		n := e.notice(ch, st.PaymentID)
		n.Timestamp = time.Now().Add(-4 * time.Minute)
		h, b := e.mustEncode(ch, n)
		if r := e.notify(ch, h, b); r.status != 200 || string(r.body) != acks[ch] {
			t.Errorf("%s callback signed 4 min ago: %d %s, want the ack", ch, r.status, r.body)
		}
		e.mustSettledOnce(oid, st.PaymentID)
	}
	if f := e.n.Payments.Forged.Load(); f != 0 {
		t.Errorf("forged %d, want 0 (replays are counted apart)", f)
	}
}

// A notice of the common case pays in the transaction that reads the
// payment; one that is not (here: a second payment of an order already
// paid) changes nothing there and is refunded, with its anomaly, before
// it is answered. And paying an order of a limited item turns its stock
// reservation into a sale at once (the order says it holds one).
func TestNoticesTheCommonWayAndNot(t *testing.T) {
	t.Parallel()
	e := mustStart(t, envOpts{})
	e.mustFaults("wechatpay", paysim.Faults{DropCallbacks: true}) // only our notices arrive
	c := e.mustCustomer()
	oid := c.mustPlace(`{"store_id":"1001","items":[{"sku_id":"1001000","qty":1}]}`) // a limited item
	p1 := c.mustPay(oid, "wechatpay")
	p2 := c.mustPay(oid, "wechatpay")
	e.mustPayAtChannel(p1)
	e.mustPayAtChannel(p2)
	held := func() int64 {
		var n int64
		if err := e.n.DB.Main().R.QueryRowContext(e.ctx, `SELECT COUNT(*) FROM stock_reservations WHERE order_id = $1`, oid).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	if n := held(); n != 1 {
		t.Fatalf("before payment the order holds %d reservation rows, want 1", n)
	}
	q0 := payment.Quick(e.n.Payments)
	for _, st := range []started{p1, p2} {
		h, b := e.mustEncode("wechatpay", e.notice("wechatpay", st.PaymentID))
		if r := e.notify("wechatpay", h, b); r.status != 200 {
			t.Fatalf("notice of payment %d: %d %s", st.PaymentID, r.status, r.body)
		}
		if st == p1 {
			if n := held(); n != 0 {
				t.Errorf("after the paying notice the order still holds %d reservation rows, want 0 (a sale)", n)
			}
		}
	}
	if q := payment.Quick(e.n.Payments) - q0; q != 1 {
		t.Errorf("%d notices applied the common way, want 1 (the first payment's)", q)
	}
	if p := e.payment(oid, p2.PaymentID); p.State != "refund" {
		t.Errorf("the second payment is %s once its notice is answered, want refund", p.State)
	}
	if an := e.anomaliesOf(oid); len(an) != 1 || an[0].Kind != "duplicate_payment" || an[0].PaymentID != p2.PaymentID {
		t.Errorf("anomalies %+v, want one duplicate_payment of payment %d", an, p2.PaymentID)
	}
	e.mustSettledOnce(oid, p1.PaymentID)
}

// A payment row that names an order of another gene (not made by Pay,
// which gives a payment its order's gene) pays nothing: the common way of
// a notice, whose update picks the order through the payment, would find
// the order where both genes share a database, and must roll back; the
// full way refuses the payment. Neither order is paid.
func TestNoticeOfAPaymentOnAnotherGenePaysNothing(t *testing.T) {
	t.Parallel()
	e := mustStart(t, envOpts{})
	e.mustFaults("wechatpay", paysim.Faults{DropCallbacks: true}) // only our notice arrives
	var a, b int64
	var cb *customer // b's
	// Two orders on one database, of different genes.
	for range 64 {
		c := e.mustCustomer()
		o := c.mustOrder()
		if a == 0 {
			a = o
		} else if id.Gene(o) != id.Gene(a) && e.n.DB.Physical(id.Gene(o)) == e.n.DB.Physical(id.Gene(a)) {
			b, cb = o, c
			break
		}
	}
	if b == 0 {
		t.Fatal("no two orders of different genes on one database in 64")
	}
	st := cb.mustPay(b, "wechatpay")
	e.mustPayAtChannel(st)
	if _, err := e.n.DB.ForID(st.PaymentID).W.ExecContext(e.ctx, `UPDATE payments SET order_id = $1 WHERE id = $2`, a, st.PaymentID); err != nil {
		t.Fatal(err)
	}
	q0 := payment.Quick(e.n.Payments)
	h, body := e.mustEncode("wechatpay", e.notice("wechatpay", st.PaymentID))
	if r := e.notify("wechatpay", h, body); r.status == 200 {
		t.Errorf("the notice of a payment whose order is on another gene was acknowledged: %d %s", r.status, r.body)
	}
	if q := payment.Quick(e.n.Payments) - q0; q != 0 {
		t.Errorf("%d notices applied the common way, want 0", q)
	}
	for _, oid := range []int64{a, b} {
		if o := e.peek(oid); o.Status != order.PendingPayment || o.PaymentID != 0 {
			t.Errorf("order %d is %s, paid by %d; want pending_payment, unpaid", oid, o.Status, o.PaymentID)
		}
	}
}
