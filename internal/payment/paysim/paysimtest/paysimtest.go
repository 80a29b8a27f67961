// Package paysimtest is the suite every paysim channel adapter must pass
// before it counts as done: it runs paysim and a callback receiver (which
// verifies with the adapter's ParseCallback and answers with its Ack) on
// real HTTP servers, and drives the adapter through the whole protocol and
// every fault.
package paysimtest

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/surge-platform/surge/internal/eventually"
	"github.com/surge-platform/surge/internal/payment"
	"github.com/surge-platform/surge/internal/payment/paysim"
	"github.com/surge-platform/surge/internal/platform/errkind"
)

// Harness describes the adapter under test.
type Harness struct {
	Name      string               // channel name at paysim ("wechatpay")
	Keys      paysim.ChannelConfig // the provider's side of the channel
	OtherKeys paysim.ChannelConfig // same scheme, every key different: its callbacks and requests must be refused
	// New returns the adapter talking to paysim at baseURL with hc (nil =
	// the adapter's default), holding the merchant's side of keys.
	New func(baseURL string, hc *http.Client, keys paysim.ChannelConfig) payment.Channel
	// PerRefundNotices: the protocol notifies each refund on its own
	// (Notice.Refund), a transaction's notice says it paid whatever
	// happened since, and its queries do not say how much is refunded
	// (WeChat Pay). Otherwise a notice and a query say the transaction's
	// state when made, with the fen refunded so far.
	PerRefundNotices bool
	// TxnIDOnPay: the provider names the transaction only once it is paid
	// (WeChat Pay's transaction_id): Created.ChannelTxnID is "".
	TxnIDOnPay bool
	// AckByStatus: any 2xx answer acknowledges a notice (WeChat Pay);
	// otherwise only the adapter's Ack body does.
	AckByStatus bool
	// QueryHidesPartialRefunds: a query says a trade refunded in part is
	// paid (Alipay's; the notices and the bill say the refund).
	QueryHidesPartialRefunds bool
	// Expires: the adapter hands Txn.Expires to the provider, which closes
	// the transaction then (WeChat Pay's and Alipay's time_expire).
	Expires bool
}

// ControlToken is the faults API token of the suite's paysim.
const ControlToken = "paysimtest-control"

// Backoff of the suite's paysim.
var Backoff = []time.Duration{10 * time.Millisecond, 20 * time.Millisecond, 40 * time.Millisecond}

// Run runs the suite; its subtests run in parallel, each with its own
// servers.
func Run(t *testing.T, h Harness) {
	tests := []struct {
		name string
		fn   func(*testing.T, Harness)
	}{
		{"PayAndCallback", testPayAndCallback},
		{"CreateIsIdempotent", testCreateIdempotent},
		{"Query", testQuery},
		{"Refund", testRefund},
		{"RefundNotified", testRefundNotified},
		{"CallbackSaysStateWhenSent", testStateWhenSent},
		{"Statement", testStatement},
		{"RetriedUntilAcked", testRetried},
		{"SlowMerchantDoesNotBlockOthers", testSlowMerchant},
		{"ManyConcurrentPayments", testMany},
		{"FaultDelay", testDelay},
		{"FaultDrop", testDrop},
		{"FaultDuplicate", testDuplicate},
		{"FaultReorder", testReorder},
		{"FaultReorderOffReleasesHeld", testReorderOff},
		{"FaultAPIErrorRate", testErrorRate},
		{"FaultAPILatency", testLatency},
		{"FaultOutage", testOutage},
		{"WrongKeyRefused", testWrongKey},
		{"AlteredBodyRefused", testAltered},
		{"WrongMerchantKey", testMerchantAuth},
		{"Unreachable", testUnreachable},
		{"Cancelled", testCancelled},
		{"ExpiresAtTheProvider", testExpires},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tc.fn(t, h)
		})
	}
}

// ---- environment

type options struct {
	keys        *paysim.ChannelConfig // provider keys; nil = Harness.Keys
	now         func() time.Time
	noRun       bool // the test starts the delivery loop itself
	reorderWait time.Duration
}

type env struct {
	t   *testing.T
	h   Harness
	srv *paysim.Server
	url string
	api payment.Channel // merchant side, with the provider's keys
	rcv *receiver
	ctx context.Context
}

func start(t *testing.T, h Harness, o options) *env {
	t.Helper()
	keys := h.Keys
	if o.keys != nil {
		keys = *o.keys
	}
	rcv := &receiver{ch: h.New("http://unused.invalid", nil, h.Keys)}
	rs := httptest.NewServer(rcv)
	t.Cleanup(rs.Close)
	rcv.url = rs.URL + "/pay/v1/notify/" + h.Name
	srv := paysim.New(paysim.Config{
		Channels:     map[string]paysim.ChannelConfig{h.Name: keys},
		ControlToken: ControlToken,
		Now:          o.now,
		Backoff:      Backoff,
		Workers:      8,
		ReorderWait:  o.reorderWait,
	})
	ps := httptest.NewServer(srv.Handler())
	t.Cleanup(ps.Close)
	e := &env{t: t, h: h, srv: srv, url: ps.URL, api: h.New(ps.URL, nil, keys), rcv: rcv, ctx: t.Context()}
	if !o.noRun {
		e.run()
	}
	return e
}

// run starts the delivery loop; cleanup stops it.
func (e *env) run() {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.srv.Run(ctx) }()
	e.t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			e.t.Errorf("Run: %v", err)
		}
	})
}

func (e *env) create(id, amount int64) payment.Created {
	e.t.Helper()
	c, err := e.api.Create(e.ctx, payment.Txn{PaymentID: id, OrderID: id, Amount: amount, Subject: "test order", NotifyURL: e.rcv.url})
	if err != nil {
		e.t.Fatalf("create %d: %v", id, err)
	}
	return c
}

func (e *env) pay(c payment.Created) {
	e.t.Helper()
	if err := paysim.Pay(e.ctx, nil, c.PayURL); err != nil {
		e.t.Fatalf("pay %s: %v", c.ChannelTxnID, err)
	}
}

// txnID is the provider's id of paid payment id, as its query says.
func (e *env) txnID(id int64) string {
	e.t.Helper()
	st, err := e.api.Query(e.ctx, id)
	if err != nil {
		e.t.Fatalf("query %d: %v", id, err)
	}
	return st.ChannelTxnID
}

func (e *env) faults(f paysim.Faults) {
	e.t.Helper()
	if err := e.srv.SetFaults(e.h.Name, f); err != nil {
		e.t.Fatal(err)
	}
}

func (e *env) stats() paysim.Stats { return e.srv.Stats(e.h.Name) }

// settled waits until no callback is pending.
func (e *env) settled() {
	e.t.Helper()
	eventually.True(e.t, 10*time.Second, "no callback pending", func() bool { return e.stats().Pending == 0 })
}

// ---- the merchant's callback endpoint

// Arrival is one callback delivery as the receiver saw it.
type Arrival struct {
	At     time.Time
	Header http.Header
	Body   []byte
	Notice payment.Notice
	Err    error // of ParseCallback
}

// answerFunc decides the answer to the i-th (0-based) verified delivery;
// ok = answer with the adapter's Ack.
type answerFunc func(i int, n payment.Notice) (status int, body string, ok bool)

type receiver struct {
	ch  payment.Channel
	url string

	mu     sync.Mutex
	got    []Arrival  // guarded by mu
	valid  int        // verified deliveries; guarded by mu
	answer answerFunc // guarded by mu
}

func (rc *receiver) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	n, err := rc.ch.ParseCallback(r.Header, body)
	rc.mu.Lock()
	rc.got = append(rc.got, Arrival{At: time.Now(), Header: r.Header.Clone(), Body: body, Notice: n, Err: err})
	i, answer := rc.valid, rc.answer
	if err == nil {
		rc.valid++
	}
	rc.mu.Unlock()
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	if answer != nil {
		if status, b, ok := answer(i, n); !ok {
			w.WriteHeader(status)
			io.WriteString(w, b)
			return
		}
	}
	ct, b := rc.ch.Ack()
	w.Header().Set("Content-Type", ct)
	w.Write(b)
}

func (rc *receiver) setAnswer(f answerFunc) {
	rc.mu.Lock()
	rc.answer = f
	rc.mu.Unlock()
}

func (rc *receiver) all() []Arrival {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return slices.Clone(rc.got)
}

func (rc *receiver) verified() []Arrival {
	var out []Arrival
	for _, a := range rc.all() {
		if a.Err == nil {
			out = append(out, a)
		}
	}
	return out
}

func (e *env) waitVerified(n int) []Arrival {
	e.t.Helper()
	eventually.True(e.t, 10*time.Second, "verified callbacks", func() bool { return len(e.rcv.verified()) >= n })
	return e.rcv.verified()
}

// ---- tests

func testPayAndCallback(t *testing.T, h Harness) {
	e := start(t, h, options{})
	c := e.create(42, 1234)
	if (c.ChannelTxnID == "") != h.TxnIDOnPay || !strings.HasPrefix(c.PayURL, e.url+"/paysim/v1/"+h.Name+"/pay/") {
		t.Fatalf("created %+v", c)
	}
	before := time.Now().Add(-2 * time.Second)
	e.pay(c)
	e.settled()
	got := e.rcv.all()
	if len(got) != 1 || got[0].Err != nil {
		t.Fatalf("arrivals %+v", got)
	}
	n := got[0].Notice
	if n.PaymentID != 42 || n.Amount != 1234 || n.ChannelTxnID != e.txnID(42) || n.ChannelTxnID == "" || n.State != payment.Paid ||
		n.NoticeID == "" || n.PaidAt.IsZero() || n.Timestamp.Before(before) || n.Timestamp.After(time.Now().Add(2*time.Second)) {
		t.Fatalf("notice %+v", n)
	}
	e.pay(c) // paying twice is a no-op
	if st := e.stats(); st.Paid != 1 || st.Acked != 1 || st.Attempts != 1 || st.Pending != 0 {
		t.Fatalf("stats %+v", st)
	}
	if len(e.rcv.all()) != 1 {
		t.Fatalf("paying twice sent another callback")
	}
}

func testCreateIdempotent(t *testing.T, h Harness) {
	e := start(t, h, options{})
	a, b := e.create(7, 500), e.create(7, 500)
	if a.ChannelTxnID != b.ChannelTxnID || a.PayURL != b.PayURL {
		t.Fatalf("created twice: %+v then %+v", a, b)
	}
	_, err := e.api.Create(e.ctx, payment.Txn{PaymentID: 7, Amount: 501, NotifyURL: e.rcv.url})
	if !errors.Is(err, paysim.ErrRejected) || errkind.Of(err).Kind != errkind.Conflict {
		t.Fatalf("same id, other amount: %v", err)
	}
	for _, tx := range []payment.Txn{
		{PaymentID: 0, Amount: 1, NotifyURL: e.rcv.url},
		{PaymentID: 8, Amount: 0, NotifyURL: e.rcv.url},
		{PaymentID: 8, Amount: 1, NotifyURL: "ftp://x/y"},
	} {
		if _, err := e.api.Create(e.ctx, tx); !errors.Is(err, paysim.ErrRejected) {
			t.Errorf("create %+v: %v, want ErrRejected", tx, err)
		}
	}
	if st := e.stats(); st.Transactions != 1 {
		t.Fatalf("stats %+v", st)
	}
}

func testQuery(t *testing.T, h Harness) {
	e := start(t, h, options{})
	if _, err := e.api.Query(e.ctx, 99); !errors.Is(err, payment.ErrUnknownTxn) {
		t.Fatalf("unknown: %v", err)
	}
	c := e.create(5, 250)
	st, err := e.api.Query(e.ctx, 5)
	if h.TxnIDOnPay {
		st.ChannelTxnID = "" // some name it before it is paid, some do not
	}
	if err != nil || st != (payment.Status{PaymentID: 5, ChannelTxnID: c.ChannelTxnID, State: payment.Pending, Amount: 250}) {
		t.Fatalf("pending: %+v %v", st, err)
	}
	e.pay(c)
	n := e.waitVerified(1)[0].Notice
	st, err = e.api.Query(e.ctx, 5)
	if err != nil || st.State != payment.Paid || st.Amount != 250 || st.ChannelTxnID != n.ChannelTxnID || !st.PaidAt.Equal(n.PaidAt) {
		t.Fatalf("paid: %+v %v (callback said paid at %v)", st, err, n.PaidAt)
	}
}

func testRefund(t *testing.T, h Harness) {
	e := start(t, h, options{})
	c := e.create(10, 1000)
	err := e.api.Refund(e.ctx, payment.Refund{RefundID: 100, PaymentID: 10, Amount: 100, Total: 1000})
	if !errors.Is(err, paysim.ErrRejected) || errors.Is(err, payment.ErrChannelDown) {
		t.Fatalf("refund of an unpaid payment: %v", err)
	}
	if err := e.api.Refund(e.ctx, payment.Refund{RefundID: 101, PaymentID: 11, Amount: 100, Total: 100}); !errors.Is(err, payment.ErrUnknownTxn) {
		t.Fatalf("refund of an unknown payment: %v", err)
	}
	e.pay(c)
	for range 3 { // idempotent by refund id
		if err := e.api.Refund(e.ctx, payment.Refund{RefundID: 102, PaymentID: 10, Amount: 600, Total: 1000, Reason: "duplicate payment"}); err != nil {
			t.Fatalf("refund: %v", err)
		}
	}
	st, err := e.api.Query(e.ctx, 10)
	if h.QueryHidesPartialRefunds && st.State == payment.Paid {
		st.State = payment.Refunded
	}
	if err != nil || st.State != payment.Refunded || st.PaidAt.IsZero() || st.Amount != 1000 {
		t.Fatalf("after refund: %+v %v", st, err)
	}
	for _, r := range []payment.Refund{
		{RefundID: 102, PaymentID: 10, Amount: 601, Total: 1000}, // same refund id, other amount
		{RefundID: 103, PaymentID: 10, Amount: 401, Total: 1000}, // over what is left
	} {
		if err := e.api.Refund(e.ctx, r); !errors.Is(err, paysim.ErrRejected) {
			t.Errorf("refund %+v: %v, want ErrRejected", r, err)
		}
	}
	if err := e.api.Refund(e.ctx, payment.Refund{RefundID: 104, PaymentID: 10, Amount: 400, Total: 1000}); err != nil {
		t.Fatalf("refund of the rest: %v", err)
	}
	if st := e.stats(); st.Refunds != 2 {
		t.Fatalf("stats %+v", st)
	}
}

// Every refund, the merchant's and the console's, is notified with the
// transaction's state after it: refunded, with the fen refunded so far, the
// amount and paid time of the payment; a query says the same. Under
// PerRefundNotices each refund is notified on its own, with its id and
// amount, and a query says refunded, not how much.
func testRefundNotified(t *testing.T, h Harness) {
	e := start(t, h, options{})
	c := e.create(20, 1000)
	e.pay(c)
	paid := e.waitVerified(1)[0].Notice
	if err := e.api.Refund(e.ctx, payment.Refund{RefundID: 200, PaymentID: 20, Amount: 300, Total: 1000, NotifyURL: e.rcv.url}); err != nil {
		t.Fatal(err)
	}
	n := e.waitVerified(2)[1].Notice
	want := payment.Status{PaymentID: 20, ChannelTxnID: paid.ChannelTxnID, State: payment.Refunded, Amount: 1000, Refunded: 300, PaidAt: paid.PaidAt}
	if h.PerRefundNotices {
		want.Refunded, want.PaidAt = 0, time.Time{}
	}
	if n.Status != want || n.NoticeID == paid.NoticeID {
		t.Fatalf("refund notice %+v, want %+v with a notice id of its own", n, want)
	}
	if h.PerRefundNotices {
		if r := n.Refund; r == nil || r.OutRefundNo != "200" || r.ChannelRefundID == "" || r.Amount != 300 || !r.Succeeded || r.At.IsZero() {
			t.Fatalf("refund notice's refund %+v, want refund 200 of 300 fen, done", r)
		}
	}
	cr, err := e.srv.ConsoleRefund("", 20, 0, "")
	if err != nil || cr.Channel != h.Name || cr.Amount != 700 || cr.Refunded != 1000 || cr.RefundID < paysim.ConsoleRefundID {
		t.Fatalf("console refund of the rest: %+v %v", cr, err)
	}
	n = e.waitVerified(3)[2].Notice
	if h.PerRefundNotices {
		if r := n.Refund; n.Status != want || r == nil || r.OutRefundNo != strconv.FormatInt(cr.RefundID, 10) || r.Amount != 700 || !r.Succeeded {
			t.Fatalf("notice of the console refund %+v, refund %+v", n.Status, r)
		}
		want.PaidAt = paid.PaidAt
	} else {
		want.Refunded = 1000
		if n.Status != want {
			t.Fatalf("notice of the console refund %+v, want %+v", n.Status, want)
		}
	}
	if st, err := e.api.Query(e.ctx, 20); err != nil || st != want {
		t.Fatalf("query %+v %v, want %+v", st, err, want)
	}
	e.settled()
}

// A callback says what the transaction is when it is sent: a payment
// refunded before its callback went out is notified as refunded. Under
// PerRefundNotices the payment's notice says it paid, and the refund's
// comes on its own.
func testStateWhenSent(t *testing.T, h Harness) {
	e := start(t, h, options{noRun: true})
	c := e.create(30, 500)
	e.pay(c) // its callback waits: the delivery loop is not running
	if _, err := e.srv.ConsoleRefund(h.Name, 30, 200, "a partial refund in the console"); err != nil {
		t.Fatal(err)
	}
	e.run()
	e.settled()
	got := e.rcv.verified()
	if len(got) != 2 {
		t.Fatalf("%d callbacks, want 2 (the payment's and the refund's)", len(got))
	}
	var payments, refunds int
	for _, a := range got {
		n := a.Notice
		switch {
		case !h.PerRefundNotices:
			if n.State != payment.Refunded || n.Refunded != 200 || n.Amount != 500 || n.PaidAt.IsZero() {
				t.Errorf("callback %+v, want refunded 200 of 500", n)
			}
		case n.Refund == nil:
			payments++
			if n.State != payment.Paid || n.Amount != 500 || n.PaidAt.IsZero() {
				t.Errorf("payment's notice %+v, want paid 500", n)
			}
		default:
			refunds++
			if n.State != payment.Refunded || n.Refund.Amount != 200 || n.Amount != 500 {
				t.Errorf("refund's notice %+v (%+v), want 200 of 500 refunded", n, n.Refund)
			}
		}
	}
	if h.PerRefundNotices && (payments != 1 || refunds != 1) {
		t.Errorf("%d payment notices and %d refund notices, want one each", payments, refunds)
	}
}

type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) set(t time.Time) {
	c.mu.Lock()
	c.t = t
	c.mu.Unlock()
}

func testStatement(t *testing.T, h Harness) {
	d1 := time.Date(2026, 11, 23, 10, 0, 0, 0, time.UTC)
	d2 := time.Date(2026, 11, 24, 1, 30, 0, 0, time.UTC)
	clk := &clock{t: d1}
	e := start(t, h, options{now: clk.now})
	a, b, c := e.create(1, 1000), e.create(2, 2000), e.create(3, 3000)
	e.pay(a)
	e.pay(b)
	clk.set(d1.Add(2 * time.Hour))
	if err := e.api.Refund(e.ctx, payment.Refund{RefundID: 11, PaymentID: 1, Amount: 400, Total: 1000}); err != nil {
		t.Fatal(err)
	}
	clk.set(d2)
	e.pay(c)
	if err := e.api.Refund(e.ctx, payment.Refund{RefundID: 12, PaymentID: 2, Amount: 2000, Total: 2000}); err != nil {
		t.Fatal(err)
	}
	a.ChannelTxnID, b.ChannelTxnID, c.ChannelTxnID = e.txnID(1), e.txnID(2), e.txnID(3)
	cases := []struct {
		name string
		day  time.Time
		want []payment.Line
	}{
		{"first day", d1, []payment.Line{
			{Kind: "payment", PaymentID: 1, ChannelTxnID: a.ChannelTxnID, Amount: 1000, At: d1},
			{Kind: "payment", PaymentID: 2, ChannelTxnID: b.ChannelTxnID, Amount: 2000, At: d1},
			{Kind: "refund", PaymentID: 1, ChannelTxnID: a.ChannelTxnID, RefundID: 11, Amount: 400, At: d1.Add(2 * time.Hour)},
		}},
		{"second day", d2, []payment.Line{
			{Kind: "payment", PaymentID: 3, ChannelTxnID: c.ChannelTxnID, Amount: 3000, At: d2},
			{Kind: "refund", PaymentID: 2, ChannelTxnID: b.ChannelTxnID, RefundID: 12, Amount: 2000, At: d2},
		}},
		{"day given in another zone is its UTC date", time.Date(2026, 11, 24, 7, 0, 0, 0, paysim.CST), nil}, // 23:00 UTC on d1
		{"empty day", d2.AddDate(0, 0, 1), nil},
	}
	cases[2].want = cases[0].want
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := e.api.Statement(e.ctx, tc.day)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.EqualFunc(got, tc.want, func(x, y payment.Line) bool { return x.At.Equal(y.At) && eqLine(x, y) }) {
				t.Fatalf("statement:\n got  %+v\n want %+v", got, tc.want)
			}
		})
	}
}

func eqLine(x, y payment.Line) bool {
	x.At, y.At = time.Time{}, time.Time{}
	return x == y
}

func testRetried(t *testing.T, h Harness) {
	e := start(t, h, options{})
	e.rcv.setAnswer(func(i int, _ payment.Notice) (int, string, bool) {
		switch i {
		case 0:
			return http.StatusInternalServerError, "boom", false
		case 1:
			if h.AckByStatus {
				return http.StatusBadRequest, `{"code":"FAIL","message":"失败"}`, false
			}
			return http.StatusOK, "FAIL", false // any other answer is no success either
		}
		return 0, "", true
	})
	e.pay(e.create(1, 100))
	e.settled()
	got := e.rcv.all()
	if len(got) != 3 {
		t.Fatalf("%d deliveries, want 3", len(got))
	}
	for i, a := range got {
		if a.Err != nil || a.Notice.NoticeID != got[0].Notice.NoticeID || a.Notice.PaymentID != 1 {
			t.Fatalf("delivery %d: %+v (first notice id %s)", i, a, got[0].Notice.NoticeID)
		}
		if i > 0 && a.At.Sub(got[i-1].At) < Backoff[i-1] {
			t.Errorf("retry %d came %v after the previous, back-off is %v", i, a.At.Sub(got[i-1].At), Backoff[i-1])
		}
	}
	if st := e.stats(); st.Attempts != 3 || st.Failed != 2 || st.Acked != 1 {
		t.Fatalf("stats %+v", st)
	}
}

func testSlowMerchant(t *testing.T, h Harness) {
	e := start(t, h, options{})
	release := make(chan struct{})
	defer close(release)
	e.rcv.setAnswer(func(_ int, n payment.Notice) (int, string, bool) {
		if n.PaymentID == 1 {
			<-release
		}
		return 0, "", true
	})
	e.pay(e.create(1, 100))
	e.waitVerified(1) // payment 1's callback hangs in the merchant
	e.pay(e.create(2, 200))
	eventually.True(t, 10*time.Second, "payment 2 acknowledged while payment 1 hangs", func() bool { return e.stats().Acked == 1 })
	if got := e.rcv.verified(); len(got) != 2 || got[1].Notice.PaymentID != 2 {
		t.Fatalf("arrivals %+v", got)
	}
}

func testMany(t *testing.T, h Harness) {
	e := start(t, h, options{})
	const n = 40
	var wg sync.WaitGroup
	for i := range int64(n) {
		wg.Go(func() {
			c, err := e.api.Create(e.ctx, payment.Txn{PaymentID: i + 1, Amount: 100 + i, NotifyURL: e.rcv.url})
			if err == nil {
				err = paysim.Pay(e.ctx, nil, c.PayURL)
			}
			if err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	e.settled()
	seen := map[int64]bool{}
	for _, a := range e.rcv.all() {
		if a.Err != nil || seen[a.Notice.PaymentID] || a.Notice.Amount != 99+a.Notice.PaymentID {
			t.Fatalf("arrival %+v (seen before: %v)", a, seen[a.Notice.PaymentID])
		}
		seen[a.Notice.PaymentID] = true
	}
	if len(seen) != n {
		t.Fatalf("%d callbacks, want %d", len(seen), n)
	}
}

func testDelay(t *testing.T, h Harness) {
	e := start(t, h, options{})
	const delay = 150 * time.Millisecond
	e.faults(paysim.Faults{CallbackDelayMS: delay.Milliseconds()})
	c := e.create(1, 100)
	t0 := time.Now()
	e.pay(c)
	if got := e.waitVerified(1)[0].At.Sub(t0); got < delay {
		t.Fatalf("callback after %v, want >= %v", got, delay)
	}
}

func testDrop(t *testing.T, h Harness) {
	e := start(t, h, options{})
	e.faults(paysim.Faults{DropCallbacks: true})
	e.pay(e.create(1, 100))
	eventually.True(t, 10*time.Second, "callback dropped", func() bool { return e.stats().Dropped == 1 })
	if st := e.stats(); st.Pending != 0 || st.Attempts != 0 || len(e.rcv.all()) != 0 {
		t.Fatalf("stats %+v, %d arrivals", st, len(e.rcv.all()))
	}
	if st, err := e.api.Query(e.ctx, 1); err != nil || st.State != payment.Paid {
		t.Fatalf("the payment is paid even though its callback was lost: %+v %v", st, err)
	}
}

func testDuplicate(t *testing.T, h Harness) {
	e := start(t, h, options{})
	e.faults(paysim.Faults{DuplicateCallbacks: true})
	second := make(chan struct{})
	e.rcv.setAnswer(func(i int, _ payment.Notice) (int, string, bool) {
		if i == 1 {
			close(second)
			return 0, "", true
		}
		select { // sent one after the other, the second would not come while the first waits
		case <-second:
			return 0, "", true
		case <-time.After(3 * time.Second):
			return http.StatusServiceUnavailable, "the twin never came", false
		}
	})
	e.pay(e.create(1, 100))
	e.settled()
	got := e.rcv.all()
	if len(got) != 2 || got[0].Err != nil || got[1].Err != nil {
		t.Fatalf("arrivals %+v", got)
	}
	a, b := got[0].Notice, got[1].Notice
	if a.PaymentID != 1 || b.PaymentID != 1 || a.NoticeID == b.NoticeID || a.ChannelTxnID != b.ChannelTxnID {
		t.Fatalf("duplicates %+v and %+v", a, b)
	}
}

func testReorder(t *testing.T, h Harness) {
	e := start(t, h, options{reorderWait: 10 * time.Second})
	e.faults(paysim.Faults{Reorder: true})
	for i := range int64(4) { // the default batch
		e.pay(e.create(i+1, 100))
	}
	var ids []int64
	for _, a := range e.waitVerified(4) {
		ids = append(ids, a.Notice.PaymentID)
	}
	if !slices.Equal(ids, []int64{4, 3, 2, 1}) {
		t.Fatalf("callbacks came for %v, want 4 3 2 1", ids)
	}
}

func testReorderOff(t *testing.T, h Harness) {
	e := start(t, h, options{reorderWait: 10 * time.Second})
	e.faults(paysim.Faults{Reorder: true})
	e.pay(e.create(1, 100))
	eventually.True(t, 10*time.Second, "callback held", func() bool { return e.stats().Held == 1 })
	if len(e.rcv.all()) != 0 {
		t.Fatal("a held callback was sent")
	}
	e.faults(paysim.Faults{})
	e.waitVerified(1)
}

func testErrorRate(t *testing.T, h Harness) {
	e := start(t, h, options{})
	c := e.create(1, 100)
	ctl := paysim.Control{BaseURL: e.url, Token: ControlToken}
	if err := ctl.SetFaults(e.ctx, h.Name, paysim.Faults{APIErrorRate: 1}); err != nil {
		t.Fatal(err)
	}
	if f, err := ctl.Faults(e.ctx, h.Name); err != nil || f.APIErrorRate != 1 {
		t.Fatalf("faults: %+v %v", f, err)
	}
	mustDown(t, e.api, e.ctx, e.rcv.url)
	e.pay(c) // the payer's side is not the merchant API
	if err := ctl.SetFaults(e.ctx, h.Name, paysim.Faults{}); err != nil {
		t.Fatal(err)
	}
	if st, err := e.api.Query(e.ctx, 1); err != nil || st.State != payment.Paid {
		t.Fatalf("after the fault: %+v %v", st, err)
	}
}

// mustDown checks that every merchant call fails with ErrChannelDown.
func mustDown(t *testing.T, ch payment.Channel, ctx context.Context, notify string) {
	t.Helper()
	_, err1 := ch.Create(ctx, payment.Txn{PaymentID: 1000, Amount: 100, NotifyURL: notify})
	_, err2 := ch.Query(ctx, 1)
	err3 := ch.Refund(ctx, payment.Refund{RefundID: 2000, PaymentID: 1, Amount: 1, Total: 100})
	_, err4 := ch.Statement(ctx, time.Now())
	for i, err := range []error{err1, err2, err3, err4} {
		if !errors.Is(err, payment.ErrChannelDown) {
			t.Errorf("call %d (create, query, refund, statement): %v, want ErrChannelDown", i+1, err)
		}
	}
}

func testLatency(t *testing.T, h Harness) {
	e := start(t, h, options{})
	e.create(1, 100)
	const latency = 200 * time.Millisecond
	e.faults(paysim.Faults{APILatencyMS: latency.Milliseconds()})
	t0 := time.Now()
	if _, err := e.api.Query(e.ctx, 1); err != nil || time.Since(t0) < latency {
		t.Fatalf("slow query: %v after %v", err, time.Since(t0))
	}
	impatient := h.New(e.url, &http.Client{Timeout: 50 * time.Millisecond}, h.Keys)
	if _, err := impatient.Query(e.ctx, 1); !errors.Is(err, payment.ErrChannelDown) {
		t.Fatalf("query timing out: %v, want ErrChannelDown", err)
	}
}

func testOutage(t *testing.T, h Harness) {
	e := start(t, h, options{noRun: true})
	a, b := e.create(1, 100), e.create(2, 200)
	e.pay(a) // its callback waits in the queue: the delivery loop is not running
	e.faults(paysim.Faults{Outage: true})
	mustDown(t, e.api, e.ctx, e.rcv.url)
	if err := paysim.Pay(e.ctx, nil, b.PayURL); !errors.Is(err, payment.ErrChannelDown) {
		t.Fatalf("pay during the outage: %v", err)
	}
	e.run()
	eventually.True(t, 10*time.Second, "callback parked", func() bool { return e.stats().Parked == 1 })
	if len(e.rcv.all()) != 0 {
		t.Fatal("a callback was sent during the outage")
	}
	e.faults(paysim.Faults{})
	if n := e.waitVerified(1)[0].Notice; n.PaymentID != 1 {
		t.Fatalf("after the outage: %+v", n)
	}
	e.pay(b)
	e.waitVerified(2)
	e.settled()
}

func testWrongKey(t *testing.T, h Harness) {
	e := start(t, h, options{keys: &h.OtherKeys})
	e.pay(e.create(1, 100))
	eventually.True(t, 10*time.Second, "two refused deliveries", func() bool { return len(e.rcv.all()) >= 2 })
	for _, a := range e.rcv.all() {
		if !errors.Is(a.Err, payment.ErrBadSignature) {
			t.Fatalf("callback signed with another key: %v, want ErrBadSignature", a.Err)
		}
	}
	if st := e.stats(); st.Acked != 0 {
		t.Fatalf("stats %+v", st)
	}
}

func testAltered(t *testing.T, h Harness) {
	e := start(t, h, options{})
	e.pay(e.create(123456789, 4321))
	a := e.waitVerified(1)[0]
	if n, err := e.rcv.ch.ParseCallback(a.Header, a.Body); err != nil || n != a.Notice {
		t.Fatalf("parsing again: %+v %v", n, err)
	}
	for i := range a.Body {
		b := slices.Clone(a.Body)
		b[i] ^= 1
		if _, err := e.rcv.ch.ParseCallback(a.Header, b); !errors.Is(err, payment.ErrBadSignature) {
			t.Fatalf("byte %d altered (%q): %v, want ErrBadSignature", i, b, err)
		}
	}
	for _, b := range [][]byte{nil, a.Body[:len(a.Body)-1], append(slices.Clone(a.Body), ' ')} {
		if _, err := e.rcv.ch.ParseCallback(a.Header, b); !errors.Is(err, payment.ErrBadSignature) {
			t.Fatalf("body %q: %v, want ErrBadSignature", b, err)
		}
	}
}

func testMerchantAuth(t *testing.T, h Harness) {
	e := start(t, h, options{})
	other := h.New(e.url, nil, h.OtherKeys)
	_, err := other.Create(e.ctx, payment.Txn{PaymentID: 1, Amount: 100, NotifyURL: e.rcv.url})
	if !errors.Is(err, paysim.ErrMerchantAuth) || errors.Is(err, payment.ErrChannelDown) {
		t.Fatalf("create with another key: %v, want ErrMerchantAuth", err)
	}
	if e.stats().Transactions != 0 {
		t.Fatal("an unauthenticated request created a transaction")
	}
}

func testUnreachable(t *testing.T, h Harness) {
	ts := httptest.NewServer(http.NotFoundHandler())
	url := ts.URL
	ts.Close()
	mustDown(t, h.New(url, nil, h.Keys), t.Context(), "http://127.0.0.1:1/notify")
}

func testCancelled(t *testing.T, h Harness) {
	e := start(t, h, options{})
	e.faults(paysim.Faults{APILatencyMS: 5000})
	ctx, cancel := context.WithCancel(e.ctx)
	time.AfterFunc(20*time.Millisecond, cancel) // the caller gives up while paysim is slow
	_, err := e.api.Query(ctx, 1)
	if !errors.Is(err, context.Canceled) || errors.Is(err, payment.ErrChannelDown) {
		t.Fatalf("cancelled query: %v, want context.Canceled and not ErrChannelDown", err)
	}
	e.faults(paysim.Faults{})
}

// A transaction created with an expiry the payer lets pass can no longer
// be paid: the provider closed it.
func testExpires(t *testing.T, h Harness) {
	if !h.Expires {
		t.Skip("this adapter does not hand the expiry to its provider")
	}
	e := start(t, h, options{})
	late, err := e.api.Create(e.ctx, payment.Txn{PaymentID: 1, Amount: 100, Subject: "test order", NotifyURL: e.rcv.url,
		Expires: time.Now().Add(-time.Second)})
	if err != nil {
		t.Fatal(err)
	}
	if err := paysim.Pay(e.ctx, nil, late.PayURL); !errors.Is(err, paysim.ErrRejected) {
		t.Fatalf("paying past the expiry: %v, want refused", err)
	}
	if st, err := e.api.Query(e.ctx, 1); err != nil || st.State != payment.Closed {
		t.Fatalf("query: %+v %v, want closed", st, err)
	}
	inTime := e.create(2, 100)
	e.pay(inTime)
}
