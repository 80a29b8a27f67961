package paysim_test

import (
	"archive/zip"
	"bytes"
	"context"
	"crypto"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/text/encoding/simplifiedchinese"

	"github.com/surge-platform/surge/internal/eventually"
	"github.com/surge-platform/surge/internal/payment"
	"github.com/surge-platform/surge/internal/payment/alipay"
	"github.com/surge-platform/surge/internal/payment/paysim"
	"github.com/surge-platform/surge/internal/payment/wechatpay"
	"github.com/surge-platform/surge/internal/platform/web"
)

const token = "control-token"

// dev are the keys of the tests' channels "wechatpay" and "alipay", both
// halves.
var dev = sync.OnceValue(func() paysim.Keys { return paysim.DevKeys("paysim test") })

func newServer(t *testing.T, cfg paysim.Config) (*paysim.Server, string) {
	t.Helper()
	if cfg.Channels == nil {
		cfg.Channels = dev().Channels()
	}
	if cfg.ControlToken == "" {
		cfg.ControlToken = token
	}
	if cfg.Backoff == nil {
		cfg.Backoff = []time.Duration{5 * time.Millisecond}
	}
	s := paysim.New(cfg)
	ts := httptest.NewServer(s.Handler())
	t.Cleanup(ts.Close)
	return s, ts.URL
}

// wxChannel is the wechatpay adapter with dev's merchant keys, talking to
// paysim at base.
func wxChannel(t *testing.T, base string) payment.Channel {
	t.Helper()
	m := dev().WeChatMerchant
	c, err := wechatpay.New(wechatpay.Config{BaseURL: base, MchID: m.MchID, AppID: m.AppID, CertSerial: m.CertSerial,
		PrivateKey: m.PrivateKey, PlatformKeyID: m.PlatformKeyID, PlatformKey: m.PlatformKey, APIv3Key: string(m.APIv3Key)})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// aliChannel is the alipay adapter with dev's app keys, talking to
// paysim's channel "alipay" at base.
func aliChannel(t *testing.T, base string) payment.Channel {
	t.Helper()
	a := dev().AlipayApp
	c, err := alipay.New(alipay.Config{Gateway: base + "/paysim/v1/alipay/gateway.do", AppID: a.AppID, PrivateKey: a.PrivateKey,
		AlipayKey: a.AlipayKey})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// channels are both adapters, by their channel's name at paysim.
func channels(t *testing.T, base string) map[string]payment.Channel {
	return map[string]payment.Channel{"wechatpay": wxChannel(t, base), "alipay": aliChannel(t, base)}
}

func create(t *testing.T, ch payment.Channel, id, amount int64, notify string) payment.Created {
	t.Helper()
	c, err := ch.Create(t.Context(), payment.Txn{PaymentID: id, Amount: amount, Subject: "test order", NotifyURL: notify})
	if err != nil {
		t.Fatalf("create %d at %s: %v", id, ch.Name(), err)
	}
	return c
}

// run runs s.Run until the test ends.
func run(t *testing.T, s *paysim.Server) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		<-done
	})
}

// counter is a merchant callback endpoint that counts and answers with ok:
// 200 "success" acknowledges under both schemes.
type counter struct {
	n  atomic.Int64
	ok func(n int64, r *http.Request) bool
}

func (c *counter) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	io.Copy(io.Discard, r.Body) // the request's context ends with the connection only once the body is read
	n := c.n.Add(1)
	if c.ok != nil && !c.ok(n, r) {
		http.Error(w, "no", http.StatusInternalServerError)
		return
	}
	io.WriteString(w, "success")
}

func notifyURL(t *testing.T, h http.Handler) string {
	ts := httptest.NewServer(h)
	t.Cleanup(ts.Close)
	return ts.URL + "/notify"
}

func TestConfigValidate(t *testing.T) {
	t.Parallel()
	small, err := rsa.GenerateKey(nil, 1024) // rand is ignored: crypto/rand is used
	if err != nil {
		t.Fatal(err)
	}
	wx := func(change func(k *paysim.WeChatKeys)) map[string]paysim.ChannelConfig {
		k := *dev().WeChat
		change(&k)
		return map[string]paysim.ChannelConfig{"wechatpay": {Scheme: paysim.WeChatPay, WeChat: &k}}
	}
	ali := func(change func(k *paysim.AlipayKeys)) map[string]paysim.ChannelConfig {
		k := *dev().Alipay
		change(&k)
		return map[string]paysim.ChannelConfig{"alipay": {Scheme: paysim.Alipay, Alipay: &k}}
	}
	ok := dev().Channels()
	cases := []struct {
		name string
		cfg  paysim.Config
		ok   bool
	}{
		{"zero", paysim.Config{}, true},
		{"dev keys", paysim.Config{Channels: paysim.DevKeys("x").Channels()}, true},
		{"bad name", paysim.Config{Channels: map[string]paysim.ChannelConfig{"WX/1": ok["wechatpay"]}}, false},
		{"console is the console's", paysim.Config{Channels: map[string]paysim.ChannelConfig{"console": ok["wechatpay"]}}, false},
		{"unknown scheme", paysim.Config{Channels: map[string]paysim.ChannelConfig{"wechatpay": {Scheme: "hmac-sha256", WeChat: dev().WeChat}}}, false},
		{"WeChatPay without keys", paysim.Config{Channels: map[string]paysim.ChannelConfig{"wechatpay": {Scheme: paysim.WeChatPay}}}, false},
		{"WeChatPay platform key too small", paysim.Config{Channels: wx(func(k *paysim.WeChatKeys) { k.PlatformKey = small })}, false},
		{"WeChatPay without the merchant's key", paysim.Config{Channels: wx(func(k *paysim.WeChatKeys) { k.MerchantKey = nil })}, false},
		{"WeChatPay short APIv3 key", paysim.Config{Channels: wx(func(k *paysim.WeChatKeys) { k.APIv3Key = []byte("short") })}, false},
		{"WeChatPay mchid not digits", paysim.Config{Channels: wx(func(k *paysim.WeChatKeys) { k.MchID = "mch1" })}, false},
		{"WeChatPay without a platform key id", paysim.Config{Channels: wx(func(k *paysim.WeChatKeys) { k.PlatformKeyID = "" })}, false},
		{"WeChatPay", paysim.Config{Channels: wx(func(*paysim.WeChatKeys) {})}, true},
		{"Alipay without keys", paysim.Config{Channels: map[string]paysim.ChannelConfig{"alipay": {Scheme: paysim.Alipay}}}, false},
		{"Alipay key too small", paysim.Config{Channels: ali(func(k *paysim.AlipayKeys) { k.AlipayKey = small })}, false},
		{"Alipay without the app's key", paysim.Config{Channels: ali(func(k *paysim.AlipayKeys) { k.AppKey = nil })}, false},
		{"Alipay app id not digits", paysim.Config{Channels: ali(func(k *paysim.AlipayKeys) { k.AppID = "app" })}, false},
		{"Alipay", paysim.Config{Channels: ali(func(*paysim.AlipayKeys) {})}, true},
		{"zero backoff", paysim.Config{Backoff: []time.Duration{0}}, false},
		{"negative workers", paysim.Config{Workers: -1}, false},
		{"relative public URL", paysim.Config{PublicURL: "paysim:8080"}, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.cfg.Validate(); (err == nil) != tc.ok {
				t.Fatalf("Validate: %v, want ok=%v", err, tc.ok)
			}
		})
	}
}

func do(t *testing.T, method, url, auth string, body string) (int, web.ErrBody, []byte) {
	t.Helper()
	req, _ := http.NewRequest(method, url, strings.NewReader(body))
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var e web.ErrBody
	json.Unmarshal(b, &e)
	return resp.StatusCode, e, b
}

func TestFaultsAPI(t *testing.T) {
	t.Parallel()
	s, base := newServer(t, paysim.Config{})
	url := base + "/paysim/v1/wechatpay/faults"
	cases := []struct {
		name, method, url, auth, body string
		status                        int
		code                          string
	}{
		{"no token", "GET", url, "", "", 401, "bad_control_token"},
		{"wrong token", "GET", url, "Bearer nope", "", 401, "bad_control_token"},
		{"not bearer", "GET", url, token, "", 401, "bad_control_token"},
		{"unknown channel", "GET", base + "/paysim/v1/nope/faults", "Bearer " + token, "", 404, "unknown_channel"},
		{"rate over 1", "PUT", url, "Bearer " + token, `{"api_error_rate":1.5}`, 400, "invalid_request"},
		{"negative delay", "PUT", url, "Bearer " + token, `{"callback_delay_ms":-1}`, 400, "invalid_request"},
		{"unknown field", "PUT", url, "Bearer " + token, `{"explode":true}`, 400, "invalid_json"},
		{"set", "PUT", url, "Bearer " + token, `{"callback_delay_ms":5,"drop_callbacks":true,"duplicate_callbacks":true,"reorder":true,"api_latency_ms":7,"api_error_rate":0.25,"outage":true}`, 200, ""},
	}
	for _, tc := range cases {
		status, e, _ := do(t, tc.method, tc.url, tc.auth, tc.body)
		if status != tc.status || e.Error.Code != tc.code {
			t.Errorf("%s: %d %q, want %d %q", tc.name, status, e.Error.Code, tc.status, tc.code)
		}
	}
	want := paysim.Faults{CallbackDelayMS: 5, DropCallbacks: true, DuplicateCallbacks: true, Reorder: true, APILatencyMS: 7, APIErrorRate: 0.25, Outage: true}
	if got := s.Faults("wechatpay"); got != want {
		t.Fatalf("faults %+v", got)
	}
	if got := s.Faults("alipay"); got != (paysim.Faults{}) {
		t.Fatalf("faults of the other channel %+v", got)
	}
	got, err := paysim.Control{BaseURL: base, Token: token}.Faults(t.Context(), "wechatpay")
	if err != nil || got != want {
		t.Fatalf("GET faults: %+v %v", got, err)
	}
	if err := s.SetFaults("nope", paysim.Faults{}); err == nil {
		t.Fatal("SetFaults of an unknown channel")
	}
	if err := s.SetFaults("wechatpay", paysim.Faults{APIErrorRate: -0.1}); err == nil {
		t.Fatal("SetFaults with a negative rate")
	}
}

func TestFaultsAPIDisabledWithoutToken(t *testing.T) {
	t.Parallel()
	s := paysim.New(paysim.Config{Channels: dev().Channels()})
	ts := httptest.NewServer(s.Handler())
	defer ts.Close()
	if status, e, _ := do(t, "GET", ts.URL+"/paysim/v1/wechatpay/faults", "Bearer ", ""); status != 403 || e.Error.Code != "control_disabled" {
		t.Fatalf("%d %s", status, e.Error.Code)
	}
}

// The pay URL a create answers (WeChat Pay's h5_url, Alipay's qr_code) is
// under Config.PublicURL, and paying there pays, once however often.
func TestPayEndpoint(t *testing.T) {
	t.Parallel()
	for _, name := range []string{"wechatpay", "alipay"} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			s, base := newServer(t, paysim.Config{PublicURL: "https://pay.example/"})
			c := create(t, channels(t, base)[name], 1, 100, "http://127.0.0.1:1/n")
			prefix := "https://pay.example/paysim/v1/" + name + "/pay/"
			id, ok := strings.CutPrefix(c.PayURL, prefix)
			if !ok || id == "" || strings.Contains(id, "/") {
				t.Fatalf("pay url %s, want %s<id>", c.PayURL, prefix)
			}
			payURL := base + "/paysim/v1/" + name + "/pay/" + id
			for range 2 {
				if err := paysim.Pay(t.Context(), nil, payURL); err != nil {
					t.Fatal(err)
				}
			}
			if err := paysim.Pay(t.Context(), nil, payURL+"x"); !errors.Is(err, payment.ErrUnknownTxn) {
				t.Fatalf("unknown txn: %v", err)
			}
			if err := s.Pay("nope", id); !errors.Is(err, paysim.ErrUnknownChannel) {
				t.Fatalf("unknown channel: %v", err)
			}
			if st := s.Stats(name); st.Paid != 1 || st.Pending != 1 {
				t.Fatalf("stats %+v", st)
			}
		})
	}
}

func TestRefundLimit(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ name, refusal string }{
		{"wechatpay", fmt.Sprintf("INVALID_REQUEST: an order takes at most %d refunds", paysim.MaxRefunds)},
		{"alipay", "ACQ.REFUND_CHARGE_ERROR"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			s, base := newServer(t, paysim.Config{})
			ch := channels(t, base)[tc.name]
			if err := paysim.Pay(t.Context(), nil, create(t, ch, 1, 100, "http://127.0.0.1:1/n").PayURL); err != nil {
				t.Fatal(err)
			}
			for i := range int64(paysim.MaxRefunds) {
				if err := ch.Refund(t.Context(), payment.Refund{RefundID: i + 1, PaymentID: 1, Amount: 1, Total: 100}); err != nil {
					t.Fatal(err)
				}
			}
			err := ch.Refund(t.Context(), payment.Refund{RefundID: 1000, PaymentID: 1, Amount: 1, Total: 100})
			if !errors.Is(err, paysim.ErrRejected) || !strings.Contains(err.Error(), tc.refusal) {
				t.Fatalf("refund %d: %v, want a refusal saying %q", paysim.MaxRefunds+1, err, tc.refusal)
			}
			if st, _ := s.View(tc.name, 1); s.Stats(tc.name).Refunds != paysim.MaxRefunds || st.Refunded != paysim.MaxRefunds {
				t.Fatalf("stats %+v, view %+v", s.Stats(tc.name), st)
			}
		})
	}
}

func TestRunOnlyOnce(t *testing.T) {
	t.Parallel()
	s, base := newServer(t, paysim.Config{})
	c := create(t, wxChannel(t, base), 1, 100, notifyURL(t, &counter{}))
	if err := paysim.Pay(t.Context(), nil, c.PayURL); err != nil {
		t.Fatal(err)
	}
	run(t, s)
	eventually.True(t, 10*time.Second, "first Run delivering", func() bool { return s.Stats("wechatpay").Acked == 1 })
	ctx, cancel := context.WithCancel(t.Context())
	cancel() // should the second Run start after all, it returns at once
	if err := s.Run(ctx); err == nil {
		t.Fatal("a second Run started while the first runs")
	}
}

func TestMaxAttempts(t *testing.T) {
	t.Parallel()
	s, base := newServer(t, paysim.Config{MaxAttempts: 3})
	rcv := &counter{ok: func(int64, *http.Request) bool { return false }}
	c := create(t, wxChannel(t, base), 1, 100, notifyURL(t, rcv))
	if err := paysim.Pay(t.Context(), nil, c.PayURL); err != nil {
		t.Fatal(err)
	}
	run(t, s)
	eventually.True(t, 10*time.Second, "gave up", func() bool { return s.Stats("wechatpay").GaveUp == 1 })
	if st := s.Stats("wechatpay"); st.Attempts != 3 || st.Failed != 3 || st.Pending != 0 || rcv.n.Load() != 3 {
		t.Fatalf("stats %+v, %d deliveries", st, rcv.n.Load())
	}
}

// A delivery cut short by the end of Run is not a failed attempt (with one
// attempt allowed, it would be abandoned): the next Run delivers it.
func TestShutdownKeepsCallbacks(t *testing.T) {
	t.Parallel()
	s, base := newServer(t, paysim.Config{MaxAttempts: 1})
	entered := make(chan struct{}, 1)
	rcv := &counter{ok: func(n int64, r *http.Request) bool {
		if n == 1 {
			entered <- struct{}{}
			<-r.Context().Done() // hang until paysim gives up on this request
		}
		return true
	}}
	c := create(t, aliChannel(t, base), 1, 100, notifyURL(t, rcv))
	if err := paysim.Pay(t.Context(), nil, c.PayURL); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	<-entered
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if st := s.Stats("alipay"); st.Pending != 1 || st.Failed != 0 || st.Acked != 0 {
		t.Fatalf("after Run: %+v", st)
	}
	run(t, s)
	eventually.True(t, 10*time.Second, "delivered by the next Run", func() bool { return s.Stats("alipay").Acked == 1 })
}

// EncodeCallback makes the notices each protocol sends, signed so that the
// adapters (on the providers' SDKs) take them and read what was encoded;
// it refuses what the protocol cannot say.
func TestEncodeCallback(t *testing.T) {
	t.Parallel()
	paidAt := time.Unix(1795428000, 0).UTC()
	now := time.Now().Truncate(time.Second)
	n := payment.Notice{Status: payment.Status{PaymentID: 1, ChannelTxnID: "T", State: payment.Refunded, Amount: 100, Refunded: 40,
		PaidAt: paidAt}, NoticeID: "N", Timestamp: now}
	chans := channels(t, "http://127.0.0.1:1")
	keys := dev().Channels()

	// Alipay: the trade's state when sent, refund_fee all refunded so far.
	ali := keys["alipay"]
	for _, tc := range []struct {
		refunded    int64
		status, fee string
	}{{40, "TRADE_SUCCESS", "0.40"}, {100, "TRADE_CLOSED", "1.00"}} {
		n.Refunded = tc.refunded
		h, b, err := paysim.EncodeCallback(ali, n)
		v, _ := url.ParseQuery(string(b))
		if err != nil || v.Get("trade_status") != tc.status || v.Get("refund_fee") != tc.fee || v.Get("gmt_payment") == "" ||
			!strings.HasPrefix(h.Get("Content-Type"), "application/x-www-form-urlencoded") {
			t.Errorf("Alipay callback of %d refunded: %v %s; want %s refund_fee %s", tc.refunded, err, b, tc.status, tc.fee)
		}
		got, err := chans["alipay"].ParseCallback(h, b)
		if err != nil || got.Status != n.Status || got.NoticeID != "N" || !got.Timestamp.Equal(now) {
			t.Errorf("Alipay callback of %d refunded parsed as %+v %v, want %+v", tc.refunded, got, err, n)
		}
	}
	n.State, n.Refunded = payment.Pending, 0
	if _, _, err := paysim.EncodeCallback(ali, n); err == nil {
		t.Error("Alipay notified a pending trade")
	}

	// WeChat Pay: a paid transaction, a refund that succeeded, one closed.
	wx := keys["wechatpay"]
	refund := &payment.RefundNote{OutRefundNo: "7", ChannelRefundID: "R7", Amount: 40, Succeeded: true, At: paidAt.Add(time.Hour)}
	for _, tc := range []struct {
		name  string
		n     payment.Notice
		event string
		want  payment.Notice
	}{
		{"paid", payment.Notice{Status: payment.Status{PaymentID: 1, ChannelTxnID: "T", State: payment.Paid, Amount: 100, PaidAt: paidAt}},
			"TRANSACTION.SUCCESS", payment.Notice{Status: payment.Status{PaymentID: 1, ChannelTxnID: "T", State: payment.Paid, Amount: 100, PaidAt: paidAt}}},
		{"refund", payment.Notice{Status: payment.Status{PaymentID: 1, ChannelTxnID: "T", State: payment.Refunded, Amount: 100, Refunded: 40, PaidAt: paidAt}, Refund: refund},
			"REFUND.SUCCESS", payment.Notice{Status: payment.Status{PaymentID: 1, ChannelTxnID: "T", State: payment.Refunded, Amount: 100}, Refund: refund}},
		{"refund closed", payment.Notice{Status: payment.Status{PaymentID: 1, ChannelTxnID: "T", State: payment.Paid, Amount: 100, PaidAt: paidAt},
			Refund: &payment.RefundNote{OutRefundNo: "8", ChannelRefundID: "R8", Amount: 30}},
			"REFUND.CLOSED", payment.Notice{Status: payment.Status{PaymentID: 1, ChannelTxnID: "T", State: payment.Paid, Amount: 100},
				Refund: &payment.RefundNote{OutRefundNo: "8", ChannelRefundID: "R8", Amount: 30}}},
	} {
		tc.n.NoticeID, tc.n.Timestamp = "N", now
		h, b, err := paysim.EncodeCallback(wx, tc.n)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if ts := h.Get("Wechatpay-Timestamp"); ts != strconv.FormatInt(now.Unix(), 10) || h.Get("Wechatpay-Serial") != wx.WeChat.PlatformKeyID {
			t.Errorf("%s: headers %v", tc.name, h)
		}
		var ev paysim.WXEvent
		if json.Unmarshal(b, &ev) != nil || ev.EventType != tc.event || ev.ID != "N" {
			t.Errorf("%s: body %s, want %s", tc.name, b, tc.event)
		}
		got, err := chans["wechatpay"].ParseCallback(h, b)
		if err != nil || got.Status != tc.want.Status || got.NoticeID != "N" || !got.Timestamp.Equal(now) ||
			(got.Refund == nil) != (tc.want.Refund == nil) || got.Refund != nil && *got.Refund != *tc.want.Refund {
			t.Errorf("%s: parsed as %+v (refund %+v) %v, want %+v (refund %+v)", tc.name, got, got.Refund, err, tc.want, tc.want.Refund)
		}
	}
	n.State = payment.Closed
	if _, _, err := paysim.EncodeCallback(wx, n); err == nil {
		t.Error("WeChat Pay notified a closed transaction")
	}

	n.State = payment.Paid
	for _, cc := range []paysim.ChannelConfig{{Scheme: paysim.WeChatPay}, {Scheme: paysim.Alipay}, {Scheme: "hmac-sha256", WeChat: wx.WeChat}} {
		if _, _, err := paysim.EncodeCallback(cc, n); err == nil {
			t.Errorf("scheme %q without its keys", cc.Scheme)
		}
	}
}

// The merchant console refunds a payment without the merchant asking:
// only with the control token; the refund shows in queries and the
// bill under a console refund id, and is notified.
func TestConsoleRefund(t *testing.T) {
	t.Parallel()
	s, base := newServer(t, paysim.Config{})
	rcv := &counter{}
	hook := notifyURL(t, rcv)
	chans := channels(t, base)
	for _, tx := range []struct {
		ch  string
		id  int64
		pay bool
	}{{"wechatpay", 1, true}, {"wechatpay", 2, false}, {"wechatpay", 3, true}, {"alipay", 3, true}} {
		c := create(t, chans[tx.ch], tx.id, 1000, hook)
		if tx.pay {
			if err := paysim.Pay(t.Context(), nil, c.PayURL); err != nil {
				t.Fatal(err)
			}
		}
	}
	url := base + "/paysim/v1/console/refunds"
	auth := "Bearer " + token
	cases := []struct {
		name, auth, body string
		status           int
		code             string
	}{
		{"no token", "", `{"payment_id":"1","amount":100}`, 401, "bad_control_token"},
		{"wrong token", "Bearer nope", `{"payment_id":"1","amount":100}`, 401, "bad_control_token"},
		{"unknown payment", auth, `{"payment_id":"99","amount":100}`, 404, "unknown_transaction"},
		{"unknown channel", auth, `{"payment_id":"1","amount":100,"channel":"nope"}`, 404, "unknown_channel"},
		{"unpaid", auth, `{"payment_id":"2","amount":100}`, 409, "not_paid"},
		{"unpaid, all of it", auth, `{"payment_id":"2"}`, 409, "not_paid"},
		{"over the amount", auth, `{"payment_id":"1","amount":1001}`, 409, "refund_exceeds_amount"},
		{"on two channels", auth, `{"payment_id":"3","amount":100}`, 409, "ambiguous_payment"},
		{"negative", auth, `{"payment_id":"1","amount":-1}`, 400, "invalid_request"},
		{"not a decimal string", auth, `{"payment_id":1,"amount":100}`, 400, "invalid_json"},
		{"partial", auth, `{"payment_id":"1","amount":300}`, 200, ""},
		{"the rest", auth, `{"payment_id":"1"}`, 200, ""},
		{"nothing left", auth, `{"payment_id":"1"}`, 409, "refund_exceeds_amount"},
		{"named channel", auth, `{"payment_id":"3","amount":100,"channel":"alipay","reason":"goodwill"}`, 200, ""},
	}
	var answers []paysim.ConsoleRefund
	for _, tc := range cases {
		status, e, b := do(t, "POST", url, tc.auth, tc.body)
		if status != tc.status || e.Error.Code != tc.code {
			t.Errorf("%s: %d %q, want %d %q", tc.name, status, e.Error.Code, tc.status, tc.code)
		}
		if status == 200 {
			var v paysim.ConsoleRefund
			if err := json.Unmarshal(b, &v); err != nil {
				t.Fatal(err)
			}
			answers = append(answers, v)
		}
	}
	if len(answers) != 3 {
		t.Fatalf("answers %+v", answers)
	}
	if a := answers[0]; a.Channel != "wechatpay" || a.PaymentID != 1 || a.Amount != 300 || a.Refunded != 300 || a.State != payment.Refunded ||
		a.RefundID < paysim.ConsoleRefundID || a.TxnID == "" || a.RefundedAt == "" {
		t.Errorf("partial: %+v", a)
	}
	if a := answers[1]; a.Amount != 700 || a.Refunded != 1000 || a.RefundID == answers[0].RefundID {
		t.Errorf("the rest: %+v", a)
	}
	if a := answers[2]; a.Channel != "alipay" || a.Amount != 100 {
		t.Errorf("named channel: %+v", a)
	}
	// WeChat Pay's query says refunded, not how much: the provider's own record does.
	if st, err := chans["wechatpay"].Query(t.Context(), 1); err != nil || st.State != payment.Refunded {
		t.Errorf("query after the console: %+v %v", st, err)
	}
	if st, err := s.View("wechatpay", 1); err != nil || st.State != payment.Refunded || st.Refunded != 1000 {
		t.Errorf("view after the console: %+v %v", st, err)
	}
	lines, err := chans["wechatpay"].Statement(t.Context(), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	var refunds []int64
	for _, l := range lines {
		if l.Kind == "refund" {
			refunds = append(refunds, l.RefundID)
		}
	}
	if len(refunds) != 2 || refunds[0] != answers[0].RefundID || refunds[1] != answers[1].RefundID {
		t.Errorf("bill refunds %v, want the console's %d and %d", refunds, answers[0].RefundID, answers[1].RefundID)
	}
	// The Go client of the console, and the outage.
	ctl := paysim.Control{BaseURL: base, Token: token}
	if v, err := ctl.Refund(t.Context(), "wechatpay", 3, 50); err != nil || v.Amount != 50 || v.Refunded != 50 {
		t.Errorf("Control.Refund: %+v %v", v, err)
	}
	if _, err := ctl.Refund(t.Context(), "", 99, 1); !errors.Is(err, payment.ErrUnknownTxn) {
		t.Errorf("Control.Refund of an unknown payment: %v", err)
	}
	s.SetFaults("wechatpay", paysim.Faults{Outage: true})
	if _, err := ctl.Refund(t.Context(), "wechatpay", 3, 1); !errors.Is(err, payment.ErrChannelDown) {
		t.Errorf("Control.Refund during an outage: %v", err)
	}
	s.SetFaults("wechatpay", paysim.Faults{})
	if st := s.Stats("wechatpay"); st.Refunds != 3 || st.Pending != 2+3 {
		t.Errorf("wechatpay stats %+v: want 3 refunds, 5 callbacks queued (2 payments, 3 refunds)", st)
	}
}

func TestFormatYuan(t *testing.T) {
	t.Parallel()
	for fen, want := range map[int64]string{0: "0.00", 1: "0.01", 10: "0.10", 1234: "12.34", 100: "1.00", -5: "-0.05"} {
		if got := paysim.FormatYuan(fen); got != want {
			t.Errorf("FormatYuan(%d) = %s, want %s", fen, got, want)
		}
	}
}

// DevKeys are WeChatFrom(seed, DevRSA(0), DevRSA(1)) and AlipayFrom(DevRSA(2),
// DevRSA(3)): the same for a seed, the seed's secrets differing by seed,
// the merchant's halves those of the provider's, and a zero Config serves
// exactly their two channels.
func TestDevKeys(t *testing.T) {
	t.Parallel()
	a, b, c := paysim.DevKeys("a"), paysim.DevKeys("a"), paysim.DevKeys("b")
	if !sameWeChat(a.WeChat, b.WeChat) || *a.Alipay != *b.Alipay || a.WeChatMerchant.CertSerial != b.WeChatMerchant.CertSerial ||
		string(a.WeChatMerchant.APIv3Key) != string(b.WeChatMerchant.APIv3Key) || a.AlipayApp != b.AlipayApp {
		t.Fatal("DevKeys differ for one seed")
	}
	if string(a.WeChat.APIv3Key) == string(c.WeChat.APIv3Key) || a.WeChat.MerchantSerial == c.WeChat.MerchantSerial ||
		a.WeChat.PlatformKeyID == c.WeChat.PlatformKeyID {
		t.Fatal("DevKeys' secrets do not depend on the seed")
	}
	rsas := []*rsa.PrivateKey{paysim.DevRSA(0), paysim.DevRSA(1), paysim.DevRSA(2), paysim.DevRSA(3)}
	for i, k := range rsas {
		if k.N.BitLen() != 2048 || slices.IndexFunc(rsas, func(o *rsa.PrivateKey) bool { return o.Equal(k) }) != i {
			t.Fatalf("DevRSA(%d): %d bits, or the same as another", i, k.N.BitLen())
		}
	}
	m, app := a.WeChatMerchant, a.AlipayApp
	switch {
	case m.PrivateKey != rsas[0] || !a.WeChat.MerchantKey.Equal(&rsas[0].PublicKey):
		t.Fatal("the WeChat Pay merchant's key is not DevRSA(0)")
	case a.WeChat.PlatformKey != rsas[1] || !m.PlatformKey.Equal(&rsas[1].PublicKey) || m.PlatformKeyID != a.WeChat.PlatformKeyID:
		t.Fatal("the WeChat Pay platform's key is not DevRSA(1)")
	case m.MchID != a.WeChat.MchID || m.AppID != a.WeChat.AppID || m.CertSerial != a.WeChat.MerchantSerial || string(m.APIv3Key) != string(a.WeChat.APIv3Key):
		t.Fatalf("the WeChat Pay merchant %+v is not the platform's %+v", m, a.WeChat)
	case app.PrivateKey != rsas[2] || !a.Alipay.AppKey.Equal(&rsas[2].PublicKey) || app.AppID != a.Alipay.AppID:
		t.Fatal("the Alipay app's key is not DevRSA(2)")
	case a.Alipay.AlipayKey != rsas[3] || !app.AlipayKey.Equal(&rsas[3].PublicKey):
		t.Fatal("Alipay's key is not DevRSA(3)")
	}
	chans := a.Channels()
	if names := slices.Sorted(maps.Keys(chans)); !slices.Equal(names, []string{"alipay", "wechatpay"}) ||
		chans["wechatpay"] != (paysim.ChannelConfig{Scheme: paysim.WeChatPay, WeChat: a.WeChat}) ||
		chans["alipay"] != (paysim.ChannelConfig{Scheme: paysim.Alipay, Alipay: a.Alipay}) {
		t.Fatalf("channels %+v", chans)
	}
	if err := (paysim.Config{Channels: chans}).Validate(); err != nil {
		t.Fatal(err)
	}
	zero, def := paysim.New(paysim.Config{}), paysim.DevKeys("")
	if wx := zero.Config("wechatpay"); wx.Scheme != paysim.WeChatPay || !sameWeChat(wx.WeChat, def.WeChat) {
		t.Fatalf("a zero Config's wechatpay: %+v", wx)
	}
	if ali := zero.Config("alipay"); ali.Scheme != paysim.Alipay || *ali.Alipay != *def.Alipay {
		t.Fatalf("a zero Config's alipay: %+v", ali)
	}
}

func sameWeChat(x, y *paysim.WeChatKeys) bool {
	return x.MchID == y.MchID && x.AppID == y.AppID && x.MerchantSerial == y.MerchantSerial && x.MerchantKey == y.MerchantKey &&
		x.PlatformKeyID == y.PlatformKeyID && x.PlatformKey == y.PlatformKey && string(x.APIv3Key) == string(y.APIv3Key)
}

// ---- the protocols' refusals, by raw HTTP

// wxAuth is the Authorization of a WeChat Pay v3 request of merchant m:
// key signs method, uri and body at ts.
func wxAuth(m paysim.WeChatMerchant, key *rsa.PrivateKey, ts time.Time, method, uri, body string) string {
	t, nonce := strconv.FormatInt(ts.Unix(), 10), strconv.FormatInt(ts.UnixNano(), 36)
	sum := sha256.Sum256([]byte(method + "\n" + uri + "\n" + t + "\n" + nonce + "\n" + body + "\n"))
	sig, err := rsa.SignPKCS1v15(nil, key, crypto.SHA256, sum[:])
	if err != nil {
		panic(err)
	}
	return fmt.Sprintf(`WECHATPAY2-SHA256-RSA2048 mchid="%s",nonce_str="%s",timestamp="%s",serial_no="%s",signature="%s"`,
		m.MchID, nonce, t, m.CertSerial, base64.StdEncoding.EncodeToString(sig))
}

// wxCall sends a WeChat Pay v3 request and returns the answer's status,
// its error code ("" for none) and body.
func wxCall(t *testing.T, base, method, uri, body, auth string) (int, string, []byte) {
	t.Helper()
	status, _, b := do(t, method, base+uri, auth, body)
	var e struct{ Code string }
	json.Unmarshal(b, &e)
	return status, e.Code, b
}

// wxSigned is wxCall of a request signed by dev's merchant now.
func wxSigned(t *testing.T, base, method, uri, body string) (int, string, []byte) {
	t.Helper()
	m := dev().WeChatMerchant
	return wxCall(t, base, method, uri, body, wxAuth(m, m.PrivateKey, time.Now(), method, uri, body))
}

// aliForm is a gateway request of app a for method with biz_content biz,
// signed by key.
func aliForm(a paysim.AlipayMerchant, key *rsa.PrivateKey, method, biz string) url.Values {
	v := url.Values{"app_id": {a.AppID}, "method": {method}, "format": {"JSON"}, "charset": {"utf-8"}, "sign_type": {"RSA2"},
		"timestamp": {time.Now().In(paysim.CST).Format(paysim.AliTimeLayout)}, "version": {"1.0"}, "biz_content": {biz}}
	aliSign(v, key)
	return v
}

// aliSign signs v as a request's sign: over every parameter but sign.
func aliSign(v url.Values, key *rsa.PrivateKey) {
	sum := sha256.Sum256([]byte(paysim.AliContent(v)))
	sig, err := rsa.SignPKCS1v15(nil, key, crypto.SHA256, sum[:])
	if err != nil {
		panic(err)
	}
	v.Set("sign", base64.StdEncoding.EncodeToString(sig))
}

// aliAnswer is the response object of a gateway answer.
type aliAnswer struct {
	Code, SubCode string
	Fields        map[string]any
	Signed        bool
}

// aliCall posts form v to paysim's Alipay gateway.
func aliCall(t *testing.T, base string, v url.Values) aliAnswer {
	t.Helper()
	resp, err := http.PostForm(base+"/paysim/v1/alipay/gateway.do", v)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(b, &raw); err != nil {
		t.Fatalf("answer %d %s: %v", resp.StatusCode, b, err)
	}
	var a aliAnswer
	_, a.Signed = raw["sign"]
	for k, r := range raw {
		if strings.HasSuffix(k, "_response") {
			json.Unmarshal(r, &a.Fields)
		}
	}
	a.Code, _ = a.Fields["code"].(string)
	a.SubCode, _ = a.Fields["sub_code"].(string)
	return a
}

// A merchant request is refused unless signed by the merchant's key over
// what it asks, now: 401 SIGN_ERROR (WeChat Pay), 40002 unsigned
// (Alipay); a refused one changes nothing.
func TestMerchantAuth(t *testing.T) {
	t.Parallel()
	t.Run("wechatpay", func(t *testing.T) {
		t.Parallel()
		s, base := newServer(t, paysim.Config{})
		m := dev().WeChatMerchant
		const uri = "/v3/pay/transactions/h5"
		body := `{"appid":"` + m.AppID + `","mchid":"` + m.MchID + `","description":"x","out_trade_no":"1","notify_url":"http://127.0.0.1:1/n",` +
			`"amount":{"total":100},"scene_info":{"payer_client_ip":"127.0.0.1","h5_info":{"type":"Wap"}}}`
		now := time.Now()
		otherSerial, otherMch := m, m
		otherSerial.CertSerial, otherMch.MchID = "0123456789ABCDEF", "1900000001"
		cases := []struct {
			name, auth, body string
			status           int
			code             string
		}{
			{"no authorization", "", body, 401, "SIGN_ERROR"},
			{"not WECHATPAY2", "Bearer x", body, 401, "SIGN_ERROR"},
			{"other key", wxAuth(m, dev().AlipayApp.PrivateKey, now, "POST", uri, body), body, 401, "SIGN_ERROR"},
			{"signed for another path", wxAuth(m, m.PrivateKey, now, "POST", "/v3/pay/transactions/jsapi", body), body, 401, "SIGN_ERROR"},
			{"signed for another method", wxAuth(m, m.PrivateKey, now, "PUT", uri, body), body, 401, "SIGN_ERROR"},
			{"body altered", wxAuth(m, m.PrivateKey, now, "POST", uri, body), strings.Replace(body, "100", "1", 1), 401, "SIGN_ERROR"},
			{"six minutes old", wxAuth(m, m.PrivateKey, now.Add(-6*time.Minute), "POST", uri, body), body, 401, "SIGN_ERROR"},
			{"another certificate serial", wxAuth(otherSerial, m.PrivateKey, now, "POST", uri, body), body, 401, "SIGN_ERROR"},
			{"unknown mchid", wxAuth(otherMch, m.PrivateKey, now, "POST", uri, body), body, 401, "SIGN_ERROR"},
			{"signed", wxAuth(m, m.PrivateKey, now, "POST", uri, body), body, 200, ""},
		}
		for _, tc := range cases {
			if status, code, b := wxCall(t, base, "POST", uri, tc.body, tc.auth); status != tc.status || code != tc.code {
				t.Errorf("%s: %d %s, want %d %q", tc.name, status, b, tc.status, tc.code)
			}
		}
		if n := s.Stats("wechatpay").Transactions; n != 1 {
			t.Fatalf("%d transactions, want the signed request's only", n)
		}
	})
	t.Run("alipay", func(t *testing.T) {
		t.Parallel()
		s, base := newServer(t, paysim.Config{})
		a := dev().AlipayApp
		const biz = `{"out_trade_no":"1","total_amount":"1.00","subject":"x"}`
		form := func(change func(v url.Values)) url.Values {
			v := aliForm(a, a.PrivateKey, "alipay.trade.precreate", biz)
			v.Set("notify_url", "http://127.0.0.1:1/n")
			aliSign(v, a.PrivateKey)
			if change != nil {
				change(v)
			}
			return v
		}
		cases := []struct {
			name, code, subCode string
			v                   url.Values
		}{
			{"no sign", "40002", "isv.invalid-signature", form(func(v url.Values) { v.Del("sign") })},
			{"other key", "40002", "isv.invalid-signature", form(func(v url.Values) { aliSign(v, dev().WeChatMerchant.PrivateKey) })},
			{"biz_content altered", "40002", "isv.invalid-signature", form(func(v url.Values) { v.Set("biz_content", strings.Replace(biz, "1.00", "0.01", 1)) })},
			{"signed for another method", "40002", "isv.invalid-signature", form(func(v url.Values) { v.Set("method", "alipay.trade.query") })},
			{"notify_url altered", "40002", "isv.invalid-signature", form(func(v url.Values) { v.Set("notify_url", "http://127.0.0.1:2/n") })},
			{"sign_type RSA", "40002", "isv.invalid-sign-type", form(func(v url.Values) { v.Set("sign_type", "RSA"); aliSign(v, a.PrivateKey) })},
			{"another app", "40002", "isv.invalid-app-id", form(func(v url.Values) { v.Set("app_id", "2021000000000000"); aliSign(v, a.PrivateKey) })},
			{"signed", "10000", "", form(nil)},
		}
		for _, tc := range cases {
			got := aliCall(t, base, tc.v)
			if got.Code != tc.code || got.SubCode != tc.subCode || got.Signed != (tc.code == "10000") {
				t.Errorf("%s: %+v, want %s %q (signed only if done)", tc.name, got, tc.code, tc.subCode)
			}
		}
		if n := s.Stats("alipay").Transactions; n != 1 {
			t.Fatalf("%d transactions, want the signed request's only", n)
		}
	})
}

// A request that is signed but wrong is refused in the protocol's error
// format: a 4xx {"code":"PARAM_ERROR",...} (WeChat Pay), a signed answer
// with code 40004 or 40001 and a sub_code (Alipay); the adapters read
// such a refusal as ErrRejected. Nothing is created.
func TestBadRequests(t *testing.T) {
	t.Parallel()
	s, base := newServer(t, paysim.Config{})
	chans := channels(t, base)
	for _, tc := range []struct {
		name string
		txn  payment.Txn
	}{
		{"amount too large", payment.Txn{PaymentID: 1, Amount: paysim.MaxAmount + 1, NotifyURL: "http://x/n"}},
		{"notify url relative", payment.Txn{PaymentID: 1, Amount: 1, NotifyURL: "/n"}},
		{"notify url with user", payment.Txn{PaymentID: 1, Amount: 1, NotifyURL: "http://u:p@x/n"}},
		{"notify url too long", payment.Txn{PaymentID: 1, Amount: 1, NotifyURL: "http://x/" + strings.Repeat("n", paysim.MaxURL)}},
		{"negative id", payment.Txn{PaymentID: -1, Amount: 1, NotifyURL: "http://x/n"}},
	} {
		for name, ch := range chans {
			if _, err := ch.Create(t.Context(), tc.txn); !errors.Is(err, paysim.ErrRejected) {
				t.Errorf("%s: %s: %v, want ErrRejected", name, tc.name, err)
			}
		}
	}
	// A query of an id that cannot be a payment's: WeChat Pay says it is
	// malformed; Alipay that there is no such trade.
	if _, err := chans["wechatpay"].Query(t.Context(), -5); !errors.Is(err, paysim.ErrRejected) {
		t.Errorf("wechatpay: query of a negative id: %v, want ErrRejected", err)
	}
	if _, err := chans["alipay"].Query(t.Context(), -5); !errors.Is(err, payment.ErrUnknownTxn) {
		t.Errorf("alipay: query of a negative id: %v, want ErrUnknownTxn", err)
	}

	// What the adapters never send: a subject too long, a body that is not JSON.
	m := dev().WeChatMerchant
	prepay := func(desc string) string {
		return `{"appid":"` + m.AppID + `","mchid":"` + m.MchID + `","description":"` + desc + `","out_trade_no":"1",` +
			`"notify_url":"http://127.0.0.1:1/n","amount":{"total":100},"scene_info":{"payer_client_ip":"127.0.0.1","h5_info":{"type":"Wap"}}}`
	}
	for _, tc := range []struct{ name, body, code string }{
		{"description too long", prepay(strings.Repeat("x", 128)), "PARAM_ERROR"},
		{"no description", prepay(""), "PARAM_ERROR"},
		{"not JSON", "{", "PARAM_ERROR"},
		{"out_trade_no not an id", strings.Replace(prepay("x"), `"out_trade_no":"1"`, `"out_trade_no":"01"`, 1), "PARAM_ERROR"},
		{"another appid", strings.Replace(prepay("x"), m.AppID, "wx0000000000000000", 1), "APPID_MCHID_NOT_MATCH"},
	} {
		if status, code, b := wxSigned(t, base, "POST", "/v3/pay/transactions/h5", tc.body); status != 400 || code != tc.code {
			t.Errorf("wechatpay: %s: %d %s, want 400 %s", tc.name, status, b, tc.code)
		}
	}
	a := dev().AlipayApp
	precreate := func(subject string) url.Values {
		v := aliForm(a, a.PrivateKey, "alipay.trade.precreate", `{"out_trade_no":"1","total_amount":"1.00","subject":"`+subject+`"}`)
		v.Set("notify_url", "http://127.0.0.1:1/n")
		aliSign(v, a.PrivateKey)
		return v
	}
	for _, tc := range []struct {
		name, code, subCode string
		v                   url.Values
	}{
		{"subject too long", "40004", "ACQ.INVALID_PARAMETER", precreate(strings.Repeat("x", paysim.MaxSubject+1))},
		{"no subject", "40004", "ACQ.INVALID_PARAMETER", precreate("")},
		{"biz_content not JSON", "40001", "isv.missing-biz-content", aliForm(a, a.PrivateKey, "alipay.trade.precreate", "{")},
		{"unknown method", "40004", "isv.invalid-method", aliForm(a, a.PrivateKey, "alipay.trade.pay", "{}")},
	} {
		// Alipay signs a business answer (40004), not a refusal of the request itself (40001).
		if got := aliCall(t, base, tc.v); got.Code != tc.code || got.SubCode != tc.subCode || got.Signed != (tc.code == "40004") {
			t.Errorf("alipay: %s: %+v, want %s %s, signed if 40004", tc.name, got, tc.code, tc.subCode)
		}
	}
	for name := range chans {
		if n := s.Stats(name).Transactions; n != 0 {
			t.Errorf("%s: %d transactions made by bad requests", name, n)
		}
	}
}

// A bill of a day that is not a date, or that is not over yet, is
// refused; so is a download the bill API did not give.
func TestBillBadDay(t *testing.T) {
	t.Parallel()
	_, base := newServer(t, paysim.Config{})
	for _, tc := range []struct{ name, uri, code string }{
		{"not a date", "/v3/bill/tradebill?bill_date=2026-13-01&bill_type=ALL", "PARAM_ERROR"},
		{"far ahead", "/v3/bill/tradebill?bill_date=2999-01-01&bill_type=ALL", "NO_STATEMENT_EXIST"},
		{"another bill type", "/v3/bill/tradebill?bill_date=2026-11-23&bill_type=REFUND", "PARAM_ERROR"},
		{"download of no bill", "/v3/billdownload/file?token=2026-13-01.0", "PARAM_ERROR"},
	} {
		if status, code, b := wxSigned(t, base, "GET", tc.uri, ""); status != 400 || code != tc.code {
			t.Errorf("wechatpay: %s: %d %s, want 400 %s", tc.name, status, b, tc.code)
		}
	}
	a := dev().AlipayApp
	for _, tc := range []struct{ name, biz, subCode string }{
		{"not a date", `{"bill_type":"trade","bill_date":"2026-13-01"}`, "isv.invalid-parameter"},
		{"a month", `{"bill_type":"trade","bill_date":"2026-11"}`, "isv.invalid-parameter"},
		{"far ahead", `{"bill_type":"trade","bill_date":"2999-01-01"}`, "isp.bill_not_exist"},
	} {
		got := aliCall(t, base, aliForm(a, a.PrivateKey, "alipay.data.dataservice.bill.downloadurl.query", tc.biz))
		if got.Code != "40004" || got.SubCode != tc.subCode || !got.Signed {
			t.Errorf("alipay: %s: %+v, want a signed 40004 %s", tc.name, got, tc.subCode)
		}
	}
	if status, _, _ := do(t, "GET", base+"/paysim/v1/alipay/bills/2026-13-01.0", "", ""); status != 404 {
		t.Errorf("alipay: download of no bill: %d, want 404", status)
	}
}

// The bills paysim serves read as the payments and refunds made, with the
// adapters' parsers; a bill changed into something malformed is refused
// with ErrBadStatement, not read wrong.
func TestBills(t *testing.T) {
	t.Parallel()
	day := time.Date(2026, 11, 23, 2, 0, 0, 0, time.UTC) // 10:00 in China
	s, base := newServer(t, paysim.Config{Now: func() time.Time { return day }})
	chans := channels(t, base)
	for _, ch := range chans {
		if err := paysim.Pay(t.Context(), nil, create(t, ch, 1, 1000, "http://127.0.0.1:1/n").PayURL); err != nil {
			t.Fatal(err)
		}
		if err := ch.Refund(t.Context(), payment.Refund{RefundID: 11, PaymentID: 1, Amount: 400, Total: 1000}); err != nil {
			t.Fatal(err)
		}
	}
	want := func(name string) []payment.Line {
		st, _ := s.View(name, 1)
		return []payment.Line{{Kind: "payment", PaymentID: 1, ChannelTxnID: st.ChannelTxnID, Amount: 1000, At: day},
			{Kind: "refund", PaymentID: 1, ChannelTxnID: st.ChannelTxnID, RefundID: 11, Amount: 400, At: day}}
	}

	t.Run("wechatpay", func(t *testing.T) {
		_, _, b := wxSigned(t, base, "GET", "/v3/bill/tradebill?bill_date=2026-11-23&bill_type=ALL", "")
		var meta struct {
			DownloadURL string `json:"download_url"`
		}
		json.Unmarshal(b, &meta)
		u, err := url.Parse(meta.DownloadURL)
		if err != nil {
			t.Fatalf("bill API answered %s", b)
		}
		_, _, bill := wxSigned(t, base, "GET", u.RequestURI(), "")
		if got, err := wechatpay.ParseBill(bill); err != nil || !slices.Equal(got, want("wechatpay")) {
			t.Fatalf("bill:\n%s\nread as %+v %v, want %+v", bill, got, err, want("wechatpay"))
		}
		rows := strings.Split(string(bill), "\r\n")
		header := strings.Split(rows[0], ",")
		// set sets column col of row i (1: the payment's, 2: the refund's).
		set := func(i int, col, value string) string {
			out := slices.Clone(rows)
			f := strings.Split(out[i], ",")
			f[slices.Index(header, col)] = value
			out[i] = strings.Join(f, ",")
			return strings.Join(out, "\r\n")
		}
		short := slices.Clone(rows)
		short[1] = strings.Join(strings.Split(short[1], ",")[:5], ",")
		for _, tc := range []struct{ name, bill string }{
			{"empty", ""},
			{"no 商户订单号 column", strings.Replace(string(bill), "商户订单号", "订单号", 1)},
			{"a row cut short", strings.Join(short, "\r\n")},
			{"no totals", strings.Join(rows[:3], "\r\n")},
			{"bad time", set(1, "交易时间", "`yesterday")},
			{"payment id 0", set(1, "商户订单号", "`0")},
			{"payment id not decimal", set(1, "商户订单号", "`1x")},
			{"amount not yuan", set(1, "订单金额", "`1.2.3")},
			{"amount zero", set(1, "订单金额", "`0.00")},
			{"refund amount not yuan", set(2, "申请退款金额", "`-")},
		} {
			if got, err := wechatpay.ParseBill([]byte(tc.bill)); !errors.Is(err, paysim.ErrBadStatement) {
				t.Errorf("%s: %+v %v, want ErrBadStatement", tc.name, got, err)
			}
		}
	})

	t.Run("alipay", func(t *testing.T) {
		a := dev().AlipayApp
		got := aliCall(t, base, aliForm(a, a.PrivateKey, "alipay.data.dataservice.bill.downloadurl.query", `{"bill_type":"trade","bill_date":"2026-11-23"}`))
		u, _ := got.Fields["bill_download_url"].(string)
		_, _, zipped := do(t, "GET", u, "", "")
		if lines, err := alipay.ParseBill(zipped); err != nil || !slices.Equal(lines, want("alipay")) {
			t.Fatalf("bill read as %+v %v, want %+v", lines, err, want("alipay"))
		}
		files := unzipGBK(t, zipped)
		var detail string
		for name := range files {
			if strings.HasSuffix(name, "_业务明细.csv") {
				detail = name
			}
		}
		text := files[detail]
		var rows []int // the indexes of the header and data lines
		lines := strings.Split(text, "\r\n")
		for i, l := range lines {
			if l != "" && !strings.HasPrefix(l, "#") {
				rows = append(rows, i)
			}
		}
		header := strings.Split(lines[rows[0]], ",")
		// set sets column col of data row i (1: the payment's, 2: the refund's).
		set := func(i int, col, value string) map[string]string {
			out := slices.Clone(lines)
			f := strings.Split(out[rows[i]], ",")
			f[slices.Index(header, col)] = value
			out[rows[i]] = strings.Join(f, ",")
			return map[string]string{detail: strings.Join(out, "\r\n")}
		}
		replace := func(old, new string) map[string]string {
			return map[string]string{detail: strings.Replace(text, old, new, 1)}
		}
		cut := slices.Clone(lines)
		cut[rows[1]] = strings.Join(strings.Split(cut[rows[1]], ",")[:5], ",")
		for _, tc := range []struct {
			name  string
			files map[string]string
		}{
			{"no detail file", map[string]string{"x_业务明细(汇总).csv": "#\r\n"}},
			{"no header", map[string]string{detail: "#支付宝业务明细查询\r\n"}},
			{"no 商户订单号 column", replace("商户订单号", "订单号")},
			{"a row cut short", map[string]string{detail: strings.Join(cut, "\r\n")}},
			{"bad time", set(1, "完成时间", "yesterday")},
			{"payment id not decimal", set(1, "商户订单号", "1x\t")},
			{"amount not yuan", set(1, "订单金额（元）", "1.2.3")},
			{"refund amount zero", set(2, "订单金额（元）", "-0.00")},
			{"a bare quote", set(1, "商品名称", `te"st`)},
		} {
			if got, err := alipay.ParseBill(zipGBK(t, tc.files)); !errors.Is(err, paysim.ErrBadStatement) {
				t.Errorf("%s: %+v %v, want ErrBadStatement", tc.name, got, err)
			}
		}
		if got, err := alipay.ParseBill([]byte("PK not a zip")); !errors.Is(err, paysim.ErrBadStatement) {
			t.Errorf("not a zip: %+v %v, want ErrBadStatement", got, err)
		}
	})
}

// unzipGBK returns the files of zip b, decoded from GBK.
func unzipGBK(t *testing.T, b []byte) map[string]string {
	t.Helper()
	zr, err := zip.NewReader(bytes.NewReader(b), int64(len(b)))
	if err != nil {
		t.Fatal(err)
	}
	files := map[string]string{}
	for _, f := range zr.File {
		rc, err := f.Open()
		if err != nil {
			t.Fatal(err)
		}
		raw, _ := io.ReadAll(rc)
		rc.Close()
		text, err := simplifiedchinese.GBK.NewDecoder().Bytes(raw)
		if err != nil {
			t.Fatal(err)
		}
		files[f.Name] = string(text)
	}
	return files
}

// zipGBK zips files, encoded in GBK.
func zipGBK(t *testing.T, files map[string]string) []byte {
	t.Helper()
	var b bytes.Buffer
	zw := zip.NewWriter(&b)
	for name, text := range files {
		gbk, err := simplifiedchinese.GBK.NewEncoder().Bytes([]byte(text))
		if err != nil {
			t.Fatal(err)
		}
		fw, _ := zw.Create(name)
		fw.Write(gbk)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}
