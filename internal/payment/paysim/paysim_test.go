package paysim_test

import (
	"bytes"
	"context"
	"crypto/rsa"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/surge-platform/surge/internal/eventually"
	"github.com/surge-platform/surge/internal/payment"
	"github.com/surge-platform/surge/internal/payment/paysim"
	"github.com/surge-platform/surge/internal/platform/web"
)

const token = "control-token"

var wx = paysim.ChannelConfig{Scheme: paysim.HMAC, Secret: []byte("0123456789abcdef0123456789abcdef")}

func newServer(t *testing.T, cfg paysim.Config) (*paysim.Server, string) {
	t.Helper()
	if cfg.Channels == nil {
		cfg.Channels = map[string]paysim.ChannelConfig{"wxsim": wx}
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

func client(base string) *paysim.Client {
	return paysim.NewClient(paysim.ClientConfig{BaseURL: base, Channel: "wxsim", Secret: wx.Secret})
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

// counter is a merchant callback endpoint that counts and answers with ok.
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
	io.WriteString(w, `{"code":"SUCCESS"}`)
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
	rsaOK := paysim.DevKeys("").Channels()["alisim"]
	cases := []struct {
		name string
		cfg  paysim.Config
		ok   bool
	}{
		{"zero", paysim.Config{}, true},
		{"dev keys", paysim.Config{Channels: paysim.DevKeys("x").Channels()}, true},
		{"bad name", paysim.Config{Channels: map[string]paysim.ChannelConfig{"WX/1": wx}}, false},
		{"console is the console's", paysim.Config{Channels: map[string]paysim.ChannelConfig{"console": wx}}, false},
		{"short secret", paysim.Config{Channels: map[string]paysim.ChannelConfig{"wxsim": {Scheme: paysim.HMAC, Secret: []byte("short")}}}, false},
		{"unknown scheme", paysim.Config{Channels: map[string]paysim.ChannelConfig{"wxsim": {Scheme: "md5", Secret: wx.Secret}}}, false},
		{"RSA without key", paysim.Config{Channels: map[string]paysim.ChannelConfig{"alisim": {Scheme: paysim.RSA, Secret: wx.Secret}}}, false},
		{"RSA key too small", paysim.Config{Channels: map[string]paysim.ChannelConfig{"alisim": {Scheme: paysim.RSA, Secret: wx.Secret, PrivateKey: small}}}, false},
		{"RSA", paysim.Config{Channels: map[string]paysim.ChannelConfig{"alisim": rsaOK}}, true},
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
	url := base + "/paysim/v1/wxsim/faults"
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
	if got := s.Faults("wxsim"); got != want {
		t.Fatalf("faults %+v", got)
	}
	got, err := paysim.Control{BaseURL: base, Token: token}.Faults(t.Context(), "wxsim")
	if err != nil || got != want {
		t.Fatalf("GET faults: %+v %v", got, err)
	}
	if err := s.SetFaults("nope", paysim.Faults{}); err == nil {
		t.Fatal("SetFaults of an unknown channel")
	}
	if err := s.SetFaults("wxsim", paysim.Faults{APIErrorRate: -0.1}); err == nil {
		t.Fatal("SetFaults with a negative rate")
	}
}

func TestFaultsAPIDisabledWithoutToken(t *testing.T) {
	t.Parallel()
	s := paysim.New(paysim.Config{Channels: map[string]paysim.ChannelConfig{"wxsim": wx}})
	ts := httptest.NewServer(s.Handler())
	defer ts.Close()
	if status, e, _ := do(t, "GET", ts.URL+"/paysim/v1/wxsim/faults", "Bearer ", ""); status != 403 || e.Error.Code != "control_disabled" {
		t.Fatalf("%d %s", status, e.Error.Code)
	}
}

func TestMerchantAuth(t *testing.T) {
	t.Parallel()
	_, base := newServer(t, paysim.Config{})
	body := []byte(`{"merchant_txn_id":"1","amount":100,"subject":"x","notify_url":"http://127.0.0.1:1/n"}`)
	path := "/paysim/v1/wxsim/transactions"
	sign := func(secret []byte, method, uri string, b []byte) http.Header {
		h := http.Header{}
		h.Set(paysim.HeaderTimestamp, "1795428000")
		h.Set(paysim.HeaderNonce, "n1")
		h.Set(paysim.HeaderSignature, paysim.SignRequest(secret, method, uri, "1795428000", "n1", b))
		return h
	}
	cases := []struct {
		name   string
		h      http.Header
		body   []byte
		status int
	}{
		{"no headers", http.Header{}, body, 401},
		{"other secret", sign([]byte("another secret of 32 bytes......"), "POST", path, body), body, 401},
		{"signed for another path", sign(wx.Secret, "POST", "/paysim/v1/wxsim/refunds", body), body, 401},
		{"signed for another method", sign(wx.Secret, "PUT", path, body), body, 401},
		{"body altered", sign(wx.Secret, "POST", path, body), bytes.Replace(body, []byte("100"), []byte("1"), 1), 401},
		{"signed", sign(wx.Secret, "POST", path, body), body, 200},
	}
	for _, tc := range cases {
		req, _ := http.NewRequest("POST", base+path, bytes.NewReader(tc.body))
		req.Header = tc.h
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != tc.status {
			t.Errorf("%s: %d, want %d", tc.name, resp.StatusCode, tc.status)
		}
	}
}

func TestPayEndpoint(t *testing.T) {
	t.Parallel()
	s, base := newServer(t, paysim.Config{PublicURL: "https://pay.example/"})
	c, err := client(base).Create(t.Context(), payment.Txn{PaymentID: 1, Amount: 100, NotifyURL: "http://127.0.0.1:1/n"})
	if err != nil {
		t.Fatal(err)
	}
	if want := "https://pay.example/paysim/v1/wxsim/pay/" + c.ChannelTxnID; c.PayURL != want {
		t.Fatalf("pay url %s, want %s", c.PayURL, want)
	}
	payURL := base + "/paysim/v1/wxsim/pay/" + c.ChannelTxnID
	for range 2 {
		if err := paysim.Pay(t.Context(), nil, payURL); err != nil {
			t.Fatal(err)
		}
	}
	if err := paysim.Pay(t.Context(), nil, payURL+"x"); !errors.Is(err, payment.ErrUnknownTxn) {
		t.Fatalf("unknown txn: %v", err)
	}
	if err := s.Pay("nope", c.ChannelTxnID); !errors.Is(err, paysim.ErrUnknownChannel) {
		t.Fatalf("unknown channel: %v", err)
	}
	if st := s.Stats("wxsim"); st.Paid != 1 || st.Pending != 1 {
		t.Fatalf("stats %+v", st)
	}
}

func TestRefundLimit(t *testing.T) {
	t.Parallel()
	s, base := newServer(t, paysim.Config{})
	cl := client(base)
	c, err := cl.Create(t.Context(), payment.Txn{PaymentID: 1, Amount: 100, NotifyURL: "http://127.0.0.1:1/n"})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Pay("wxsim", c.ChannelTxnID); err != nil {
		t.Fatal(err)
	}
	for i := range int64(paysim.MaxRefunds) {
		if err := cl.Refund(t.Context(), payment.Refund{RefundID: i + 1, PaymentID: 1, Amount: 1}); err != nil {
			t.Fatal(err)
		}
	}
	err = cl.Refund(t.Context(), payment.Refund{RefundID: 1000, PaymentID: 1, Amount: 1})
	if !errors.Is(err, paysim.ErrRejected) || !strings.Contains(err.Error(), "too_many_refunds") {
		t.Fatalf("refund %d: %v", paysim.MaxRefunds+1, err)
	}
}

func TestBadRequests(t *testing.T) {
	t.Parallel()
	_, base := newServer(t, paysim.Config{})
	cl := client(base)
	cases := []struct {
		name string
		txn  payment.Txn
	}{
		{"amount too large", payment.Txn{PaymentID: 1, Amount: paysim.MaxAmount + 1, NotifyURL: "http://x/n"}},
		{"subject too long", payment.Txn{PaymentID: 1, Amount: 1, Subject: strings.Repeat("x", paysim.MaxSubject+1), NotifyURL: "http://x/n"}},
		{"notify url relative", payment.Txn{PaymentID: 1, Amount: 1, NotifyURL: "/n"}},
		{"notify url with user", payment.Txn{PaymentID: 1, Amount: 1, NotifyURL: "http://u:p@x/n"}},
		{"negative id", payment.Txn{PaymentID: -1, Amount: 1, NotifyURL: "http://x/n"}},
	}
	for _, tc := range cases {
		if _, err := cl.Create(t.Context(), tc.txn); !errors.Is(err, paysim.ErrRejected) {
			t.Errorf("%s: %v, want ErrRejected", tc.name, err)
		}
	}
	if _, err := cl.Query(t.Context(), -5); !errors.Is(err, paysim.ErrRejected) {
		t.Errorf("query of a negative id: %v", err)
	}
}

func TestRunOnlyOnce(t *testing.T) {
	t.Parallel()
	s, base := newServer(t, paysim.Config{})
	c, err := client(base).Create(t.Context(), payment.Txn{PaymentID: 1, Amount: 100, NotifyURL: notifyURL(t, &counter{})})
	if err != nil {
		t.Fatal(err)
	}
	s.Pay("wxsim", c.ChannelTxnID)
	run(t, s)
	eventually.True(t, 10*time.Second, "first Run delivering", func() bool { return s.Stats("wxsim").Acked == 1 })
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
	c, err := client(base).Create(t.Context(), payment.Txn{PaymentID: 1, Amount: 100, NotifyURL: notifyURL(t, rcv)})
	if err != nil {
		t.Fatal(err)
	}
	s.Pay("wxsim", c.ChannelTxnID)
	run(t, s)
	eventually.True(t, 10*time.Second, "gave up", func() bool { return s.Stats("wxsim").GaveUp == 1 })
	if st := s.Stats("wxsim"); st.Attempts != 3 || st.Failed != 3 || st.Pending != 0 || rcv.n.Load() != 3 {
		t.Fatalf("stats %+v, %d deliveries", st, rcv.n.Load())
	}
}

// A delivery cut short by the end of Run is not a failed attempt: the next
// Run delivers it.
func TestShutdownKeepsCallbacks(t *testing.T) {
	t.Parallel()
	s, base := newServer(t, paysim.Config{})
	entered := make(chan struct{}, 1)
	rcv := &counter{ok: func(n int64, r *http.Request) bool {
		if n == 1 {
			entered <- struct{}{}
			<-r.Context().Done() // hang until paysim gives up on this request
		}
		return true
	}}
	c, err := client(base).Create(t.Context(), payment.Txn{PaymentID: 1, Amount: 100, NotifyURL: notifyURL(t, rcv)})
	if err != nil {
		t.Fatal(err)
	}
	s.Pay("wxsim", c.ChannelTxnID)
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	<-entered
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if st := s.Stats("wxsim"); st.Pending != 1 || st.Failed != 0 || st.Acked != 0 {
		t.Fatalf("after Run: %+v", st)
	}
	run(t, s)
	eventually.True(t, 10*time.Second, "delivered by the next Run", func() bool { return s.Stats("wxsim").Acked == 1 })
}

func TestEncodeCallback(t *testing.T) {
	t.Parallel()
	n := payment.Notice{Status: payment.Status{PaymentID: 1, ChannelTxnID: "T", State: payment.Refunded, Amount: 100, Refunded: 40,
		PaidAt: time.Unix(1795428000, 0)}, NoticeID: "N", Timestamp: time.Now()}
	ali := paysim.DevKeys("").Channels()["alisim"]
	for _, tc := range []struct {
		refunded    int64
		status, fee string
	}{{40, "TRADE_SUCCESS", "0.40"}, {100, "TRADE_CLOSED", "1.00"}} {
		n.Refunded = tc.refunded
		_, b, err := paysim.EncodeCallback(ali, n)
		v, _ := url.ParseQuery(string(b))
		if err != nil || v.Get("trade_status") != tc.status || v.Get("refund_fee") != tc.fee || v.Get("gmt_payment") == "" {
			t.Errorf("RSA callback of %d refunded: %v %s; want %s refund_fee %s", tc.refunded, err, b, tc.status, tc.fee)
		}
	}
	if _, _, err := paysim.EncodeCallback(paysim.ChannelConfig{Scheme: paysim.RSA}, n); err == nil {
		t.Error("RSA without a key")
	}
	if _, _, err := paysim.EncodeCallback(paysim.ChannelConfig{Scheme: "md5"}, n); err == nil {
		t.Error("unknown scheme")
	}
	h, b, err := paysim.EncodeCallback(wx, n)
	if err != nil || h.Get(paysim.HeaderCallbackSignature) != paysim.SignCallback(wx.Secret, h.Get(paysim.HeaderCallbackTimestamp), h.Get(paysim.HeaderCallbackNonce), b) {
		t.Fatalf("HMAC callback: %v %v %s", err, h, b)
	}
	if ts := h.Get(paysim.HeaderCallbackTimestamp); ts != strconv.FormatInt(n.Timestamp.Unix(), 10) {
		t.Fatalf("timestamp %s", ts)
	}
	var wn paysim.WXNotice
	if json.Unmarshal(b, &wn) != nil || wn.State != "refunded" || wn.Refunded != 100 {
		t.Fatalf("HMAC callback body %s, want state refunded, refunded 100", b)
	}
}

// The merchant console refunds a payment without the merchant asking:
// only with the control token; the refund shows in queries and the
// statement under a console refund id, and is notified.
func TestConsoleRefund(t *testing.T) {
	t.Parallel()
	ali := paysim.DevKeys("").Channels()["alisim"]
	ali.Secret = wx.Secret
	s, base := newServer(t, paysim.Config{Channels: map[string]paysim.ChannelConfig{"wxsim": wx, "alisim": ali}})
	rcv := &counter{}
	hook := notifyURL(t, rcv)
	wxc := client(base)
	alic := paysim.NewClient(paysim.ClientConfig{BaseURL: base, Channel: "alisim", Secret: wx.Secret})
	for _, tx := range []struct {
		cl  *paysim.Client
		ch  string
		id  int64
		pay bool
	}{{wxc, "wxsim", 1, true}, {wxc, "wxsim", 2, false}, {wxc, "wxsim", 3, true}, {alic, "alisim", 3, true}} {
		c, err := tx.cl.Create(t.Context(), payment.Txn{PaymentID: tx.id, Amount: 1000, NotifyURL: hook})
		if err != nil {
			t.Fatal(err)
		}
		if tx.pay {
			if err := s.Pay(tx.ch, c.ChannelTxnID); err != nil {
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
		{"named channel", auth, `{"payment_id":"3","amount":100,"channel":"alisim","reason":"goodwill"}`, 200, ""},
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
	if a := answers[0]; a.Channel != "wxsim" || a.PaymentID != 1 || a.Amount != 300 || a.Refunded != 300 || a.State != payment.Refunded ||
		a.RefundID < paysim.ConsoleRefundID || a.TxnID == "" || a.RefundedAt == "" {
		t.Errorf("partial: %+v", a)
	}
	if a := answers[1]; a.Amount != 700 || a.Refunded != 1000 || a.RefundID == answers[0].RefundID {
		t.Errorf("the rest: %+v", a)
	}
	if a := answers[2]; a.Channel != "alisim" || a.Amount != 100 {
		t.Errorf("named channel: %+v", a)
	}
	if st, err := wxc.Query(t.Context(), 1); err != nil || st.State != payment.Refunded || st.Refunded != 1000 {
		t.Errorf("query after the console: %+v %v", st, err)
	}
	lines, err := wxc.Statement(t.Context(), time.Now())
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
		t.Errorf("statement refunds %v, want the console's %d and %d", refunds, answers[0].RefundID, answers[1].RefundID)
	}
	// The Go client of the console, and the outage.
	ctl := paysim.Control{BaseURL: base, Token: token}
	if v, err := ctl.Refund(t.Context(), "wxsim", 3, 50); err != nil || v.Amount != 50 || v.Refunded != 50 {
		t.Errorf("Control.Refund: %+v %v", v, err)
	}
	if _, err := ctl.Refund(t.Context(), "", 99, 1); !errors.Is(err, payment.ErrUnknownTxn) {
		t.Errorf("Control.Refund of an unknown payment: %v", err)
	}
	s.SetFaults("wxsim", paysim.Faults{Outage: true})
	if _, err := ctl.Refund(t.Context(), "wxsim", 3, 1); !errors.Is(err, payment.ErrChannelDown) {
		t.Errorf("Control.Refund during an outage: %v", err)
	}
	s.SetFaults("wxsim", paysim.Faults{})
	if st := s.Stats("wxsim"); st.Refunds != 3 || st.Pending != 2+3 {
		t.Errorf("wxsim stats %+v: want 3 refunds, 5 callbacks queued (2 payments, 3 refunds)", st)
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

func TestParseStatement(t *testing.T) {
	t.Parallel()
	const head = "kind,merchant_txn_id,txn_id,refund_id,amount,time\n"
	good, err := paysim.ParseStatement(strings.NewReader(head +
		"payment,1,T1,,100,2026-11-23T10:00:00Z\nrefund,1,T1,9,40,2026-11-23T11:00:00Z\n"))
	if err != nil || len(good) != 2 || good[1] != (payment.Line{Kind: "refund", PaymentID: 1, ChannelTxnID: "T1", RefundID: 9, Amount: 40,
		At: time.Date(2026, 11, 23, 11, 0, 0, 0, time.UTC)}) {
		t.Fatalf("good: %+v %v", good, err)
	}
	for _, bad := range []string{
		"",
		"kind,id\n",
		head + "payment,1,T1,,100\n",
		head + "payment,0,T1,,100,2026-11-23T10:00:00Z\n",
		head + "payment,1,,,100,2026-11-23T10:00:00Z\n",
		head + "payment,1,T1,5,100,2026-11-23T10:00:00Z\n",
		head + "refund,1,T1,,100,2026-11-23T10:00:00Z\n",
		head + "chargeback,1,T1,,100,2026-11-23T10:00:00Z\n",
		head + "payment,1,T1,,1.00,2026-11-23T10:00:00Z\n",
		head + "payment,1,T1,,-100,2026-11-23T10:00:00Z\n",
		head + "payment,1,T1,,100,yesterday\n",
		head + "payment,1,\"T1,,100,2026-11-23T10:00:00Z\n",
	} {
		if _, err := paysim.ParseStatement(strings.NewReader(bad)); !errors.Is(err, paysim.ErrBadStatement) {
			t.Errorf("%q: %v, want ErrBadStatement", bad, err)
		}
	}
}

func TestStatementBadDay(t *testing.T) {
	t.Parallel()
	_, base := newServer(t, paysim.Config{})
	path := "/paysim/v1/wxsim/statements/2026-13-01"
	req, _ := http.NewRequest("GET", base+path, nil)
	req.Header.Set(paysim.HeaderTimestamp, "1")
	req.Header.Set(paysim.HeaderNonce, "n")
	req.Header.Set(paysim.HeaderSignature, paysim.SignRequest(wx.Secret, "GET", path, "1", "n", nil))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 400 {
		t.Fatalf("status %d", resp.StatusCode)
	}
}

func TestDevKeys(t *testing.T) {
	t.Parallel()
	a, b, c := paysim.DevKeys("a"), paysim.DevKeys("a"), paysim.DevKeys("b")
	if !bytes.Equal(a.WXSecret, b.WXSecret) || !bytes.Equal(a.AliSecret, b.AliSecret) || bytes.Equal(a.WXSecret, c.WXSecret) ||
		bytes.Equal(a.WXSecret, a.AliSecret) || a.AliPrivateKey.N.BitLen() != 2048 || a.AliPrivateKey != c.AliPrivateKey {
		t.Fatal("dev keys are not what they claim")
	}
	if err := (paysim.Config{Channels: a.Channels()}).Validate(); err != nil {
		t.Fatal(err)
	}
}
