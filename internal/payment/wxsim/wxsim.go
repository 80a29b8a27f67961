// Package wxsim is the payment channel "wxsim": a WeChat-Pay-like provider
// simulated by paysim, reached over HTTP. Merchant requests are signed with
// HMAC-SHA256 under the shared Secret (see paysim.Client); callbacks are JSON
// signed with the same Secret:
//
//	Wxsim-Timestamp: <unix seconds>
//	Wxsim-Nonce:     <random>
//	Wxsim-Signature: hex(HMAC-SHA256(Secret, timestamp + "\n" + nonce + "\n" + body))
//
//	{"merchant_txn_id":"42","txn_id":"...","amount":1234,"state":"paid",
//	 "paid_at":"2026-11-23T10:00:00Z","notice_id":"...","timestamp":1795428000}
//
// and are acknowledged with 200 {"code":"SUCCESS"}. A callback tells the
// transaction's state when it was sent: after a refund (by surge or in the
// merchant console) the state is "refunded" and "refunded" says how many
// fen were refunded so far (1..amount).
package wxsim

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"slices"
	"time"

	"github.com/surge-platform/surge/internal/payment"
	"github.com/surge-platform/surge/internal/payment/paysim"
)

// Name of the channel (and its path segment at paysim).
const Name = "wxsim"

// Callback headers.
const (
	HeaderTimestamp = "Wxsim-Timestamp"
	HeaderNonce     = "Wxsim-Nonce"
	HeaderSignature = "Wxsim-Signature"
)

// MaxCallback is the largest callback body accepted.
const MaxCallback = 16 << 10

// Config of the channel.
type Config struct {
	BaseURL string       // paysim's base URL, e.g. "http://127.0.0.1:8080"
	Secret  []byte       // shared HMAC-SHA256 secret (paysim.Keys.WXSecret in the demo)
	HTTP    *http.Client // nil = paysim.NewHTTPClient(3 * time.Second)
}

// Channel implements payment.Channel for wxsim. Safe for concurrent use.
type Channel struct {
	*paysim.Client // the merchant API: Create, Query, Refund, Statement
	secret         []byte
}

var _ payment.Channel = (*Channel)(nil)

// New returns the channel for cfg.
func New(cfg Config) *Channel {
	return &Channel{
		Client: paysim.NewClient(paysim.ClientConfig{BaseURL: cfg.BaseURL, Channel: Name, Secret: cfg.Secret, HTTP: cfg.HTTP}),
		secret: slices.Clone(cfg.Secret),
	}
}

// Name returns "wxsim".
func (c *Channel) Name() string { return Name }

// Ack is wxsim's success answer.
func (c *Channel) Ack() (string, []byte) { return "application/json", []byte(`{"code":"SUCCESS"}`) }

// notice is the callback body.
type notice struct {
	MerchantTxnID string `json:"merchant_txn_id"`
	TxnID         string `json:"txn_id"`
	Amount        int64  `json:"amount"`
	State         string `json:"state"`
	Refunded      int64  `json:"refunded"`
	PaidAt        string `json:"paid_at"`
	NoticeID      string `json:"notice_id"`
	Timestamp     int64  `json:"timestamp"`
}

// ParseCallback verifies a callback's signature (in constant time) and
// parses it. Missing, malformed or wrong signature headers ->
// payment.ErrBadSignature; a signed body that is not a valid notice ->
// payment.ErrBadCallback.
func (c *Channel) ParseCallback(h http.Header, body []byte) (payment.Notice, error) {
	ts, nonce, sig := h.Get(HeaderTimestamp), h.Get(HeaderNonce), h.Get(HeaderSignature)
	if ts == "" || nonce == "" || sig == "" {
		return payment.Notice{}, badSig("signature headers missing")
	}
	got, err := hex.DecodeString(sig)
	if err != nil || len(got) != sha256.Size {
		return payment.Notice{}, badSig("signature is not 64 hex digits")
	}
	m := hmac.New(sha256.New, c.secret)
	io.WriteString(m, ts+"\n"+nonce+"\n")
	m.Write(body)
	if !hmac.Equal(got, m.Sum(nil)) {
		return payment.Notice{}, badSig("signature does not match")
	}

	if len(body) > MaxCallback {
		return payment.Notice{}, bad("body over %d bytes", MaxCallback)
	}
	var n notice
	if err := json.Unmarshal(body, &n); err != nil {
		return payment.Notice{}, bad("body: %v", err)
	}
	unix, ok := paysim.ParseID(ts)
	if !ok || n.Timestamp != unix {
		return payment.Notice{}, bad("timestamp %q does not match the body's %d", ts, n.Timestamp)
	}
	out := payment.Notice{NoticeID: n.NoticeID, Timestamp: time.Unix(unix, 0).UTC()}
	out.ChannelTxnID, out.Amount = n.TxnID, n.Amount
	if out.PaymentID, ok = paysim.ParseID(n.MerchantTxnID); !ok {
		return payment.Notice{}, bad("merchant_txn_id %.40q is not a positive decimal", n.MerchantTxnID)
	}
	if !paysim.Token(n.TxnID) || !paysim.Token(n.NoticeID) {
		return payment.Notice{}, bad("txn_id and notice_id must be 1..64 printable characters")
	}
	if n.Amount <= 0 || n.Amount > paysim.MaxAmount {
		return payment.Notice{}, bad("amount %d out of range", n.Amount)
	}
	switch out.State = payment.State(n.State); out.State {
	case payment.Refunded:
		if n.Refunded <= 0 || n.Refunded > n.Amount {
			return payment.Notice{}, bad("refunded %d is not 1..%d", n.Refunded, n.Amount)
		}
		out.Refunded = n.Refunded
	default:
		if n.Refunded != 0 {
			return payment.Notice{}, bad("a %.20s transaction has nothing refunded", n.State)
		}
	}
	switch out.State {
	case payment.Paid, payment.Refunded:
		t, err := time.Parse(time.RFC3339, n.PaidAt)
		if err != nil || t.Unix() <= 0 {
			return payment.Notice{}, bad("paid_at %.40q is not an RFC 3339 time", n.PaidAt)
		}
		out.PaidAt = t.UTC()
	case payment.Closed:
		if n.PaidAt != "" {
			return payment.Notice{}, bad("a closed transaction has no paid_at")
		}
	default:
		return payment.Notice{}, bad("state %.20q", n.State)
	}
	return out, nil
}

func badSig(msg string) error {
	return payment.ErrBadSignature.With("wxsim callback: %s", msg)
}

func bad(format string, args ...any) error {
	return payment.ErrBadCallback.With("wxsim callback: "+format, args...)
}
