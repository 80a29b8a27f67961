// Package paysim is an in-memory payment provider simulator that speaks
// the protocols of the real ones, so that surge's adapters built on the
// providers' own SDKs (internal/payment/wechatpay, internal/payment/alipay)
// pay against it unchanged. Each channel speaks one protocol (its Scheme):
//
//   - WeChatPay: WeChat Pay's API v3 at the paths of api.mch.weixin.qq.com
//     (/v3/...), requests and answers signed as WeChat Pay's, notices'
//     resources sealed with the APIv3 key; see wechat.go.
//   - Alipay: Alipay's open API at one gateway,
//     POST /paysim/v1/{channel}/gateway.do, requests and answers signed
//     RSA2, and trade_status_sync notices; see alipay.go.
//
// The provider sends a notice (callback) when a transaction is paid and
// after each refund, signed as the protocol says, and retries it with
// back-off until the merchant acknowledges it; it serves each day's bill.
// Faults (delayed, dropped, duplicated and reordered callbacks, a slow or
// failing merchant API, a full outage) are switched per channel at run
// time. State lives in the process: run one paysim per deployment.
//
// Besides the protocols' routes, paysim serves:
//
//	POST /paysim/v1/{channel}/pay/{id}  the payer pays, without authentication, at the
//	                                    pay URL a create answered (h5_url, qr_code) -> txn
//	GET|PUT /paysim/v1/{channel}/faults Authorization: Bearer <ControlToken>    -> Faults
//	POST /paysim/v1/console/refunds     Authorization: Bearer <ControlToken>
//	     {payment_id, amount, channel?, reason?}                                -> ConsoleRefund
//
// where txn is {merchant_txn_id, txn_id, state, amount, refunded, paid_at}.
// These answer JSON; errors are {"error":{"code","message"}} with a
// fitting status. Pay is the payer's client, Control the operator's (the
// faults API and the merchant console, see ConsoleRefund); in process,
// Server.Pay, Server.SetFaults and Server.ConsoleRefund do the same.
// Callbacks are described at EncodeCallback.
package paysim

import (
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	mrand "math/rand/v2"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/surge-platform/surge/internal/payment"
	"github.com/surge-platform/surge/internal/platform/errkind"
	"github.com/surge-platform/surge/internal/platform/web"
)

// Scheme is the protocol a channel speaks.
type Scheme string

const (
	// WeChatPay is WeChat Pay's API v3 (wechat.go): the merchant's
	// requests signed WECHATPAY2-SHA256-RSA2048, answers and notices signed
	// by the platform key, notices' resources sealed with the APIv3 key.
	// Its keys are ChannelConfig.WeChat.
	WeChatPay Scheme = "wechatpay-v3"
	// Alipay is Alipay's open API (alipay.go): one gateway, requests
	// signed RSA2 by the app's key, answers and notices by Alipay's. Its
	// keys are ChannelConfig.Alipay.
	Alipay Scheme = "alipay"
)

// ChannelConfig is one channel's scheme and keys, as the provider holds them.
type ChannelConfig struct {
	Scheme Scheme
	// WeChat holds a WeChatPay channel's merchant and keys.
	WeChat *WeChatKeys
	// Alipay holds an Alipay channel's app and keys.
	Alipay *AlipayKeys
}

// Config of a Server. The zero value serves DevKeys("") channels with the
// default back-off and no control token.
type Config struct {
	// Channels by name ([a-z0-9]{1,32}, e.g. "wechatpay", "alipay").
	// Empty = DevKeys("").Channels().
	Channels map[string]ChannelConfig
	// ControlToken is the bearer token of the HTTP faults API; "" disables
	// that API (403). SetFaults works regardless.
	ControlToken string
	// Now stamps payments, refunds and callbacks (the provider's business
	// clock); nil = time.Now. Callback scheduling uses the real clock.
	Now func() time.Time
	// Backoff before the n-th retry of a callback (the last value repeats);
	// empty = 1s, 5s, 30s, 60s.
	Backoff []time.Duration
	// MaxAttempts ends the retries of one callback; 0 = retry until acked.
	MaxAttempts int
	// Workers is the number of concurrent callback senders; 0 = 64.
	Workers int
	// Client posts callbacks; nil = a client with a 5 s timeout.
	Client *http.Client
	// PublicURL is the base of pay URLs ("http://paysim.example:8080"); "" =
	// the scheme and Host of each create request.
	PublicURL string
	// ReorderBatch and ReorderWait shape the reorder fault: callbacks are
	// held until ReorderBatch are waiting or the oldest waited ReorderWait,
	// then sent in reverse order, one after the other. 0 = 4 and 1 s.
	ReorderBatch int
	ReorderWait  time.Duration
	// Log receives callback failures (debug) and abandoned callbacks
	// (warn); nil = discard.
	Log *slog.Logger
}

// Faults of one channel, switchable at run time (PUT /paysim/v1/{channel}/faults
// or SetFaults). The zero value is a healthy channel.
type Faults struct {
	CallbackDelayMS    int64   `json:"callback_delay_ms"`   // first delivery of each callback waits this long
	DropCallbacks      bool    `json:"drop_callbacks"`      // callbacks are discarded, never sent
	DuplicateCallbacks bool    `json:"duplicate_callbacks"` // each payment sends two notices (different ids), concurrently
	Reorder            bool    `json:"reorder"`             // callbacks are held and sent in reverse order in small batches
	APILatencyMS       int64   `json:"api_latency_ms"`      // every merchant API call waits this long first
	APIErrorRate       float64 `json:"api_error_rate"`      // 0..1: fraction of merchant API calls answering 500
	Outage             bool    `json:"outage"`              // merchant API and pay answer 503, callbacks wait until lifted
}

// Limits.
const (
	MaxAmount  = 1_000_000_000_000 // fen per transaction
	MaxSubject = 256               // bytes
	MaxURL     = 1024              // bytes of a notify_url
	MaxRefunds = 50                // refunds per transaction, as WeChat Pay
	maxFaultMS = 3_600_000
)

// CST is China Standard Time (UTC+8), the zone of both providers' times
// and bill days.
var CST = time.FixedZone("CST", 8*3600)

// FormatYuan writes fen as yuan with two decimals ("12.34").
var FormatYuan = payment.FormatYuan

// Errors the provider answers with (besides payment.ErrUnknownTxn).
var (
	ErrUnknownChannel = errkind.New(errkind.NotFound, "unknown_channel", "paysim has no such channel")
	ErrControlAuth    = errkind.New(errkind.Unauthorized, "bad_control_token", "missing or wrong control token")
	ErrControlOff     = errkind.New(errkind.Forbidden, "control_disabled", "the faults API is disabled (no control token configured)")
	ErrOutage         = errkind.New(errkind.Unavailable, "outage", "the provider is down (simulated outage)")
	ErrTxnConflict    = errkind.New(errkind.Conflict, "txn_conflict", "merchant_txn_id already used with another amount or notify_url")
	ErrNotPaid        = errkind.New(errkind.Conflict, "not_paid", "only a paid transaction can be refunded")
	ErrClosed         = errkind.New(errkind.Conflict, "txn_closed", "the transaction is closed: it can no longer be paid")
	ErrAlreadyPaid    = errkind.New(errkind.Conflict, "txn_paid", "the transaction is paid: refund it instead of closing it")
	ErrRefundExceeds  = errkind.New(errkind.Conflict, "refund_exceeds_amount", "refunds would exceed the paid amount")
	ErrRefundConflict = errkind.New(errkind.Conflict, "refund_conflict", "refund_id already used for another transaction or amount")
	ErrTooManyRefunds = errkind.New(errkind.Conflict, "too_many_refunds", "a transaction takes at most 50 refunds")
	ErrAmbiguous      = errkind.New(errkind.Conflict, "ambiguous_payment", "more than one channel has this payment_id: name the channel")
)

// Server is the simulated provider. It is safe for concurrent use; callbacks
// are queued by the HTTP handlers and sent by Run.
type Server struct {
	cfg         Config
	chans       map[string]*channel // read-only after New
	order       []*channel          // chans in name order
	instance    string              // random, part of txn ids: ids never repeat across restarts
	instanceNum int64               // the same as a number
	wxByMch     map[string]*channel // WeChatPay channels by mchid; read-only after New
	now         func() time.Time

	qmu   sync.Mutex
	queue deliveryHeap // guarded by qmu
	wake  chan struct{}

	running atomic.Bool
}

type channel struct {
	instanceNum int64 // the server's
	name        string
	cfg         ChannelConfig
	faults      atomic.Pointer[Faults]

	mu         sync.Mutex
	seq        uint64
	byMerchant map[int64]*txn    // guarded by mu
	byID       map[string]*txn   // guarded by mu
	refunds    map[int64]*refund // guarded by mu
	days       map[string][]line // bill lines by UTC date; guarded by mu; append-only
	urls       map[string]string // interned notify URLs; guarded by mu

	parked    []*delivery // held back by an outage; guarded by Server.qmu
	held      []*delivery // held back for reordering; guarded by Server.qmu
	heldSince time.Time   // guarded by Server.qmu

	txns, paid, refundN                       atomic.Int64
	pending, attempts, acked, failed, dropped atomic.Int64
	gaveUp                                    atomic.Int64
}

// txn is one transaction; fields other than id, merchantID, amount and
// notifyURL are guarded by channel.mu.
type txn struct {
	merchantID int64
	id         string
	amount     int64
	notifyURL  string
	prepay     string // WeChatPay: the prepay id (set before the txn is shared)
	state      payment.State
	paidAt     time.Time
	refunded   int64
	nRefunds   uint8
	wx         *wxTxn    // WeChatPay: what the prepay request said (set before the txn is shared)
	ali        *aliTrade // Alipay: what the precreate said (set before the txn is shared)
}

type refund struct {
	id        int64
	txn       *txn
	amount    int64
	at        time.Time
	channelID string // the provider's id of the refund
	notifyURL string // where its notice goes ("": the transaction's)
}

// line of a bill: a payment or a refund; immutable once appended.
type line struct {
	refund *refund // nil for a payment
	txn    *txn
	amount int64
	at     time.Time
}

var channelName = regexp.MustCompile(`^[a-z0-9]{1,32}$`)

// Validate reports what is wrong with c (before defaults are applied).
func (c Config) Validate() error {
	for name, cc := range c.Channels {
		if !channelName.MatchString(name) || name == "console" {
			return fmt.Errorf("paysim: channel name %q: want [a-z0-9]{1,32}, not \"console\"", name)
		}
		switch cc.Scheme {
		case WeChatPay:
			if err := cc.WeChat.validate(); err != nil {
				return fmt.Errorf("paysim: channel %s: %w", name, err)
			}
		case Alipay:
			if err := cc.Alipay.validate(); err != nil {
				return fmt.Errorf("paysim: channel %s: %w", name, err)
			}
		default:
			return fmt.Errorf("paysim: channel %s: unknown scheme %q", name, cc.Scheme)
		}
	}
	for _, d := range c.Backoff {
		if d <= 0 {
			return errors.New("paysim: Backoff values must be positive")
		}
	}
	if c.MaxAttempts < 0 || c.Workers < 0 || c.ReorderBatch < 0 || c.ReorderWait < 0 {
		return errors.New("paysim: MaxAttempts, Workers, ReorderBatch and ReorderWait must not be negative")
	}
	if c.PublicURL != "" {
		if u, err := url.Parse(c.PublicURL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return fmt.Errorf("paysim: PublicURL %q is not an absolute http(s) URL", c.PublicURL)
		}
	}
	return nil
}

// New returns a provider for cfg. It panics if cfg.Validate fails (a
// wiring bug; call Validate first to report it nicely).
func New(cfg Config) *Server {
	if err := cfg.Validate(); err != nil {
		panic(err)
	}
	if len(cfg.Channels) == 0 {
		cfg.Channels = DevKeys("").Channels()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if len(cfg.Backoff) == 0 {
		cfg.Backoff = []time.Duration{time.Second, 5 * time.Second, 30 * time.Second, 60 * time.Second}
	}
	if cfg.Workers == 0 {
		cfg.Workers = 64
	}
	if cfg.Client == nil {
		tr := http.DefaultTransport.(*http.Transport).Clone()
		tr.MaxIdleConnsPerHost = cfg.Workers
		cfg.Client = &http.Client{Timeout: 5 * time.Second, Transport: tr}
	}
	if cfg.ReorderBatch == 0 {
		cfg.ReorderBatch = 4
	}
	if cfg.ReorderWait == 0 {
		cfg.ReorderWait = time.Second
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	cfg.PublicURL = strings.TrimRight(cfg.PublicURL, "/")
	var tag [3]byte
	rand.Read(tag[:])
	s := &Server{cfg: cfg, chans: map[string]*channel{}, instance: hex.EncodeToString(tag[:]), now: cfg.Now,
		instanceNum: int64(tag[0])<<16 | int64(tag[1])<<8 | int64(tag[2]), wxByMch: map[string]*channel{},
		wake: make(chan struct{}, 1)}
	for name, cc := range cfg.Channels {
		ch := &channel{instanceNum: s.instanceNum, name: name, cfg: cc, byMerchant: map[int64]*txn{}, byID: map[string]*txn{},
			refunds: map[int64]*refund{}, days: map[string][]line{}, urls: map[string]string{}}
		ch.faults.Store(&Faults{})
		s.chans[name] = ch
		if cc.Scheme == WeChatPay {
			s.wxByMch[cc.WeChat.MchID] = ch
		}
	}
	for _, name := range slices.Sorted(maps.Keys(s.chans)) {
		s.order = append(s.order, s.chans[name])
	}
	return s
}

// Handler serves the provider's routes: WeChat Pay's under /v3/, the
// rest under /paysim/v1/ (see the package doc).
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /paysim/v1/{channel}/pay/{txn}", s.payHTTP)
	mux.HandleFunc("GET /paysim/v1/{channel}/faults", s.control(s.getFaults))
	mux.HandleFunc("PUT /paysim/v1/{channel}/faults", s.control(s.putFaults))
	mux.HandleFunc("POST /paysim/v1/console/refunds", s.consoleRefundHTTP)
	s.wxRoutes(mux)
	s.aliRoutes(mux)
	return mux
}

// SetFaults replaces the faults of channel. Lifting an outage releases the
// callbacks it held back; ending reorder releases the held ones in order.
func (s *Server) SetFaults(channel string, f Faults) error {
	ch := s.chans[channel]
	if ch == nil {
		return ErrUnknownChannel.With("paysim has no channel %q", channel)
	}
	if err := f.validate(); err != nil {
		return err
	}
	ch.faults.Store(&f)
	now := time.Now()
	s.qmu.Lock()
	var moved bool
	if !f.Outage && len(ch.parked) > 0 {
		for _, d := range ch.parked {
			d.due = now
			s.queue.push(d)
		}
		ch.parked, moved = nil, true
	}
	if !f.Reorder && len(ch.held) > 0 {
		for _, d := range ch.held {
			d.due = now
			s.queue.push(d)
		}
		ch.held, moved = nil, true
	}
	s.qmu.Unlock()
	if moved {
		s.poke()
	}
	return nil
}

// Faults returns the current faults of channel (zero for an unknown one).
func (s *Server) Faults(channel string) Faults {
	if ch := s.chans[channel]; ch != nil {
		return *ch.faults.Load()
	}
	return Faults{}
}

func (f Faults) validate() error {
	switch {
	case f.CallbackDelayMS < 0 || f.CallbackDelayMS > maxFaultMS:
		return errkind.ErrInvalid.With("callback_delay_ms must be 0..%d", maxFaultMS)
	case f.APILatencyMS < 0 || f.APILatencyMS > maxFaultMS:
		return errkind.ErrInvalid.With("api_latency_ms must be 0..%d", maxFaultMS)
	case !(f.APIErrorRate >= 0 && f.APIErrorRate <= 1): // also NaN
		return errkind.ErrInvalid.With("api_error_rate must be 0..1")
	}
	return nil
}

// Stats of one channel, for tests and the dashboard.
type Stats struct {
	Transactions int64 // created
	Paid         int64
	Refunds      int64
	Pending      int64 // callbacks neither acknowledged, dropped nor abandoned
	Parked       int   // callbacks held back by an outage
	Held         int   // callbacks held back for reordering
	Attempts     int64 // callback deliveries tried
	Acked        int64 // callbacks acknowledged with success
	Failed       int64 // deliveries that did not get success
	Dropped      int64 // callbacks discarded by the drop fault
	GaveUp       int64 // callbacks abandoned after MaxAttempts
}

// Stats returns the counters of channel (zero for an unknown one).
func (s *Server) Stats(channel string) Stats {
	ch := s.chans[channel]
	if ch == nil {
		return Stats{}
	}
	s.qmu.Lock()
	parked, held := len(ch.parked), len(ch.held)
	s.qmu.Unlock()
	return Stats{Transactions: ch.txns.Load(), Paid: ch.paid.Load(), Refunds: ch.refundN.Load(),
		Pending: ch.pending.Load(), Parked: parked, Held: held, Attempts: ch.attempts.Load(),
		Acked: ch.acked.Load(), Failed: ch.failed.Load(), Dropped: ch.dropped.Load(), GaveUp: ch.gaveUp.Load()}
}

// View is the provider's own record of the transaction merchantID of
// channel, whatever its protocol shows: its state, amount, all refunded
// so far and when it was paid (tests and the operator's console read the
// truth here). payment.ErrUnknownTxn when it has none.
func (s *Server) View(channel string, merchantID int64) (payment.Status, error) {
	ch := s.chans[channel]
	if ch == nil {
		return payment.Status{}, ErrUnknownChannel.With("paysim has no channel %q", channel)
	}
	ch.mu.Lock()
	defer ch.mu.Unlock()
	t := ch.byMerchant[merchantID]
	if t == nil {
		return payment.Status{}, payment.ErrUnknownTxn.With("no transaction with merchant_txn_id %d", merchantID)
	}
	return payment.Status{PaymentID: merchantID, ChannelTxnID: t.id, State: t.state, Amount: t.amount, Refunded: t.refunded,
		PaidAt: t.paidAt}, nil
}

// Config is the provider's side of channel (its scheme and keys).
func (s *Server) Config(channel string) ChannelConfig {
	if ch := s.chans[channel]; ch != nil {
		return ch.cfg
	}
	return ChannelConfig{}
}

// Pay is the payer paying transaction txnID (the channel's id) in process,
// as POST pay_url does. Paying twice is a no-op. It returns
// payment.ErrUnknownTxn, ErrUnknownChannel, or ErrOutage during an outage.
func (s *Server) Pay(channel, txnID string) error {
	ch := s.chans[channel]
	if ch == nil {
		return ErrUnknownChannel.With("paysim has no channel %q", channel)
	}
	_, err := s.pay(ch, txnID)
	return err
}

// ---- HTTP plumbing

// fail writes a kinded error without logging it: injected 5xx answers are
// the point of a simulator, not incidents.
func fail(w http.ResponseWriter, err error) {
	e := errkind.Of(err)
	if e == nil {
		e = errkind.New(errkind.Internal, "internal", err.Error())
	}
	var b web.ErrBody
	b.Error.Code, b.Error.Message = e.Code, e.Message
	web.JSON(w, web.Status(e), b)
}

// A merchant call's fate under the faults.
const (
	served   = iota
	gone     // the caller went away while the latency fault held it
	injected // the error rate fault fails it
)

// apiFaults holds a merchant API call for f's latency, then decides by
// f's error rate whether it fails.
func apiFaults(f *Faults, r *http.Request) int {
	if f.APILatencyMS > 0 {
		t := time.NewTimer(time.Duration(f.APILatencyMS) * time.Millisecond)
		select {
		case <-t.C:
		case <-r.Context().Done():
			t.Stop()
			return gone
		}
	}
	if f.APIErrorRate > 0 && mrand.Float64() < f.APIErrorRate {
		return injected
	}
	return served
}

// controlAuth checks the control token of a faults or console request.
func (s *Server) controlAuth(r *http.Request) error {
	if s.cfg.ControlToken == "" {
		return ErrControlOff
	}
	tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok || subtle.ConstantTimeCompare([]byte(tok), []byte(s.cfg.ControlToken)) != 1 {
		return ErrControlAuth
	}
	return nil
}

func (s *Server) control(h func(w http.ResponseWriter, r *http.Request, ch *channel)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if err := s.controlAuth(r); err != nil {
			fail(w, err)
			return
		}
		ch := s.chans[r.PathValue("channel")]
		if ch == nil {
			fail(w, ErrUnknownChannel)
			return
		}
		h(w, r, ch)
	}
}

func (s *Server) getFaults(w http.ResponseWriter, r *http.Request, ch *channel) {
	web.JSON(w, http.StatusOK, ch.faults.Load())
}

func (s *Server) putFaults(w http.ResponseWriter, r *http.Request, ch *channel) {
	var f Faults
	if err := web.Decode(w, r, &f); err != nil {
		fail(w, err)
		return
	}
	if err := s.SetFaults(ch.name, f); err != nil {
		fail(w, err)
		return
	}
	web.JSON(w, http.StatusOK, f)
}

// ---- transactions and refunds, whatever the protocol

// txnView is the JSON of a transaction (the pay endpoint's answer).
type txnView struct {
	MerchantTxnID int64         `json:"merchant_txn_id,string"`
	TxnID         string        `json:"txn_id"`
	State         payment.State `json:"state"`
	Amount        int64         `json:"amount"`
	Refunded      int64         `json:"refunded"`
	PaidAt        string        `json:"paid_at,omitempty"` // RFC 3339, UTC
}

// viewLocked needs channel.mu.
func (t *txn) viewLocked() txnView {
	v := txnView{MerchantTxnID: t.merchantID, TxnID: t.id, State: t.state, Amount: t.amount, Refunded: t.refunded}
	if !t.paidAt.IsZero() {
		v.PaidAt = t.paidAt.Format(time.RFC3339)
	}
	return v
}

func validNotifyURL(s string) bool {
	if len(s) > MaxURL {
		return false
	}
	u, err := url.Parse(s)
	return err == nil && (u.Scheme == "http" || u.Scheme == "https") && u.Host != "" && u.User == nil
}

// open returns the transaction of merchantID, created pending with amount
// and notifyURL (and then set up by init, under channel.mu) when it is new.
// One that exists with another amount or notify URL is ErrTxnConflict.
func (s *Server) open(ch *channel, merchantID, amount int64, notifyURL string, init func(*txn)) (*txn, error) {
	ch.mu.Lock()
	defer ch.mu.Unlock()
	if t := ch.byMerchant[merchantID]; t != nil {
		if t.amount != amount || t.notifyURL != notifyURL {
			return nil, ErrTxnConflict.With("merchant_txn_id %d was created with amount %d", t.merchantID, t.amount)
		}
		return t, nil
	}
	ch.seq++
	u, ok := ch.urls[notifyURL]
	if !ok {
		u = notifyURL
		if len(ch.urls) < 256 {
			ch.urls[u] = u
		}
	}
	now := s.now().UTC()
	t := &txn{merchantID: merchantID, amount: amount, notifyURL: u, state: payment.Pending}
	if ch.cfg.Scheme == WeChatPay { // a transaction_id of 28 digits, and the prepay id the payer pays by
		t.id = fmt.Sprintf("4200%06d%s%010d", s.instanceNum%1e6, now.Format("20060102"), ch.seq)
		t.prepay = fmt.Sprintf("wx%s%s%010d", now.In(CST).Format("20060102150405"), s.instance, ch.seq)
		ch.byID[t.prepay] = t
	} else {
		t.id = fmt.Sprintf("%s%s%s%08d", ch.name, now.Format("20060102"), s.instance, ch.seq)
	}
	if init != nil {
		init(t)
	}
	ch.byMerchant[t.merchantID], ch.byID[t.id] = t, t
	ch.txns.Add(1)
	return t, nil
}

func (s *Server) payURL(r *http.Request, channel, txnID string) string {
	base := s.cfg.PublicURL
	if base == "" {
		scheme := "http"
		if r.TLS != nil {
			scheme = "https"
		}
		base = scheme + "://" + r.Host
	}
	return base + "/paysim/v1/" + channel + "/pay/" + txnID
}

// refundReq is a refund asked for through a protocol or the console.
type refundReq struct {
	RefundID      int64
	MerchantTxnID int64
	Amount        int64
	Reason        string
	NotifyURL     string // WeChatPay: where the refund's notice goes (see refund)
	console       bool   // made in the merchant console
}

// refundTxn makes refund req (idempotent by refund id) and queues the
// notice of a new one to the transaction's notify URL, as the providers
// notify refunds: it says the transaction is refunded and how much of it.
func (s *Server) refundTxn(ch *channel, req refundReq) (*refund, error) {
	rf, d, err := ch.refund(req, s.now().UTC().Truncate(time.Second))
	if d != nil {
		d.due = time.Now().Add(time.Duration(ch.faults.Load().CallbackDelayMS) * time.Millisecond)
		s.enqueue(d)
	}
	return rf, err
}

// refund makes req at now and returns a notice to send when the refund is
// new (nil for a repeated one).
func (ch *channel) refund(req refundReq, now time.Time) (*refund, *delivery, error) {
	ch.mu.Lock()
	defer ch.mu.Unlock()
	if rf := ch.refunds[req.RefundID]; rf != nil {
		if rf.txn.merchantID != req.MerchantTxnID || rf.amount != req.Amount {
			return nil, nil, ErrRefundConflict.With("refund_id %d was for merchant_txn_id %d, amount %d", rf.id, rf.txn.merchantID, rf.amount)
		}
		return rf, nil, nil
	}
	t := ch.byMerchant[req.MerchantTxnID]
	switch {
	case t == nil:
		return nil, nil, payment.ErrUnknownTxn.With("no transaction with merchant_txn_id %d", req.MerchantTxnID)
	case t.state != payment.Paid && t.state != payment.Refunded:
		return nil, nil, ErrNotPaid.With("merchant_txn_id %d is %s", t.merchantID, t.state)
	case req.Amount > t.amount-t.refunded:
		return nil, nil, ErrRefundExceeds.With("merchant_txn_id %d: %d of %d fen refunded already", t.merchantID, t.refunded, t.amount)
	case t.nRefunds >= MaxRefunds:
		return nil, nil, ErrTooManyRefunds
	}
	ch.seq++
	rf := &refund{id: req.RefundID, txn: t, amount: req.Amount, at: now, notifyURL: req.NotifyURL,
		channelID: fmt.Sprintf("5030%06d%s%010d", ch.instanceNum%1e6, now.Format("20060102"), ch.seq)}
	t.refunded += req.Amount
	t.state = payment.Refunded
	t.nRefunds++
	ch.refunds[rf.id] = rf
	day := now.Format(time.DateOnly)
	ch.days[day] = append(ch.days[day], line{refund: rf, txn: t, amount: rf.amount, at: now})
	ch.refundN.Add(1)
	d := &delivery{ch: ch, txn: t, refund: rf, merchantID: t.merchantID, txnID: t.id, notifyURL: t.notifyURL, noticeID: newID()}
	if ch.cfg.Scheme == WeChatPay { // a refund's notice goes where its request says, as WeChat Pay's
		switch {
		case rf.notifyURL != "":
			d.notifyURL = rf.notifyURL
		case !req.console: // a console refund: to the refund notify URL configured in the platform, here the transaction's
			return rf, nil, nil
		}
	}
	return rf, d, nil
}

// ---- the payer

func (s *Server) payHTTP(w http.ResponseWriter, r *http.Request) {
	ch := s.chans[r.PathValue("channel")]
	if ch == nil {
		fail(w, ErrUnknownChannel)
		return
	}
	v, err := s.pay(ch, r.PathValue("txn"))
	if err != nil {
		fail(w, err)
		return
	}
	web.JSON(w, http.StatusOK, v)
}

// pay marks a pending transaction paid and queues its callback (two under
// the duplicate fault). A transaction already paid or refunded is left as
// it is.
func (s *Server) pay(ch *channel, txnID string) (txnView, error) {
	f := ch.faults.Load()
	if f.Outage {
		return txnView{}, ErrOutage
	}
	ch.mu.Lock()
	t := ch.byID[txnID]
	if t == nil {
		ch.mu.Unlock()
		return txnView{}, payment.ErrUnknownTxn.With("no transaction %.64q", txnID)
	}
	if t.state == payment.Pending && (t.wx != nil && !t.wx.expires.IsZero() && s.now().After(t.wx.expires) ||
		t.ali != nil && !t.ali.expires.IsZero() && s.now().After(t.ali.expires)) {
		t.state = payment.Closed // time_expire passed: the provider closes it
	}
	if t.state == payment.Closed {
		ch.mu.Unlock()
		return txnView{}, ErrClosed.With("transaction %.64q is closed", txnID)
	}
	var ds []*delivery
	if t.state == payment.Pending {
		now := s.now().UTC().Truncate(time.Second)
		t.state, t.paidAt = payment.Paid, now
		if t.wx != nil && t.wx.openID == "" { // an H5 payer: WeChat Pay names who paid
			t.wx.openID = "oSim" + newID()[:24]
		}
		if t.ali != nil {
			t.ali.buyer = fmt.Sprintf("2088%012d", mrand.Int64N(1e12))
		}
		day := now.Format(time.DateOnly)
		ch.days[day] = append(ch.days[day], line{txn: t, amount: t.amount, at: now})
		ch.paid.Add(1)
		due := time.Now().Add(time.Duration(f.CallbackDelayMS) * time.Millisecond)
		n := 1
		if f.DuplicateCallbacks {
			n = 2
		}
		for range n {
			ds = append(ds, &delivery{ch: ch, txn: t, merchantID: t.merchantID, txnID: t.id,
				notifyURL: t.notifyURL, noticeID: newID(), due: due})
		}
	}
	v := t.viewLocked()
	ch.mu.Unlock()
	s.enqueue(ds...)
	return v, nil
}

// close closes transaction t unpaid: it can no longer be paid. Closing a
// closed one again is a no-op; a paid (or refunded) one is ErrAlreadyPaid.
func (s *Server) close(ch *channel, t *txn) error {
	ch.mu.Lock()
	defer ch.mu.Unlock()
	switch t.state {
	case payment.Pending:
		t.state = payment.Closed
	case payment.Paid, payment.Refunded:
		return ErrAlreadyPaid.With("merchant_txn_id %d is %s", t.merchantID, t.state)
	}
	return nil
}

// newID returns 26 random base32 characters (notice ids and nonces).
func newID() string { return rand.Text() }
