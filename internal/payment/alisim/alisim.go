// Package alisim is the payment channel "alisim": an Alipay-like provider
// simulated by paysim, reached over HTTP. Merchant requests are signed with
// HMAC-SHA256 under the merchant Secret (see paysim.Client); callbacks are
// form-encoded and signed by the provider's RSA key, as Alipay's:
//
//	out_trade_no=42&trade_no=...&total_amount=12.34&trade_status=TRADE_SUCCESS
//	&gmt_payment=2026-11-23+18:00:00&notify_id=...&notify_time=2026-11-23+18:00:01
//	&notify_type=trade_status_sync&sign_type=RSA2&sign=<base64>
//
// sign = base64(RSA PKCS#1 v1.5 over SHA-256 of every other parameter,
// sorted by key, as k=v joined with &, values unescaped); times are
// "2006-01-02 15:04:05" in CST (UTC+8). Callbacks are acknowledged with the
// body "success". As Alipay's, a callback after a refund carries refund_fee
// (yuan refunded so far): with TRADE_SUCCESS when refunded in part, with
// TRADE_CLOSED when refunded in full; a TRADE_CLOSED with gmt_payment is a
// paid transaction refunded in full.
package alisim

import (
	"crypto"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/surge-platform/surge/internal/payment"
	"github.com/surge-platform/surge/internal/payment/paysim"
)

// Name of the channel (and its path segment at paysim).
const Name = "alisim"

// MaxCallback is the largest callback body accepted.
const MaxCallback = 16 << 10

// cst is the zone of callback times (UTC+8, as Alipay's).
var cst = time.FixedZone("CST", 8*3600)

// Config of the channel.
type Config struct {
	BaseURL   string         // paysim's base URL, e.g. "http://127.0.0.1:8080"
	Secret    []byte         // merchant request HMAC secret (paysim.Keys.AliSecret in the demo)
	PublicKey *rsa.PublicKey // the provider's key verifying callbacks (&paysim.Keys.AliPrivateKey.PublicKey in the demo)
	HTTP      *http.Client   // nil = paysim.NewHTTPClient(3 * time.Second)
}

// Channel implements payment.Channel for alisim. Safe for concurrent use.
type Channel struct {
	*paysim.Client // the merchant API: Create, Query, Refund, Statement
	pub            *rsa.PublicKey
}

var _ payment.Channel = (*Channel)(nil)

// New returns the channel for cfg. A nil PublicKey makes every callback
// fail verification.
func New(cfg Config) *Channel {
	return &Channel{
		Client: paysim.NewClient(paysim.ClientConfig{BaseURL: cfg.BaseURL, Channel: Name, Secret: cfg.Secret, HTTP: cfg.HTTP}),
		pub:    cfg.PublicKey,
	}
}

// Name returns "alisim".
func (c *Channel) Name() string { return Name }

// Ack is alisim's success answer.
func (c *Channel) Ack() (string, []byte) { return "text/plain; charset=utf-8", []byte("success") }

// ParseCallback verifies a callback's RSA2 signature and parses it; the
// headers are not used. A body that cannot be verified (not a form, a
// parameter given twice, a key or value holding & or = that would make the
// signed string ambiguous, sign missing, sign_type not RSA2, a wrong
// signature) -> payment.ErrBadSignature; a signed body that is not a valid
// notice -> payment.ErrBadCallback.
func (c *Channel) ParseCallback(_ http.Header, body []byte) (payment.Notice, error) {
	if len(body) > MaxCallback {
		return payment.Notice{}, bad("body over %d bytes", MaxCallback)
	}
	v, err := url.ParseQuery(string(body))
	if err != nil {
		return payment.Notice{}, badSig("body is not a form")
	}
	if len(v["sign"]) != 1 || v.Get("sign") == "" {
		return payment.Notice{}, badSig("sign missing")
	}
	if st := v["sign_type"]; len(st) != 1 || st[0] != "RSA2" {
		return payment.Notice{}, badSig("sign_type is not RSA2")
	}
	for k, vs := range v {
		if len(vs) != 1 {
			return payment.Notice{}, badSig("a parameter is given twice")
		}
		if k != "sign" && (k == "" || strings.ContainsAny(k, "&=") || strings.ContainsAny(vs[0], "&=")) {
			return payment.Notice{}, badSig("a key or value holds & or =")
		}
	}
	sig, err := base64.StdEncoding.DecodeString(v.Get("sign"))
	if err != nil {
		return payment.Notice{}, badSig("sign is not base64")
	}
	if c.pub == nil {
		return payment.Notice{}, badSig("no public key configured")
	}
	sum := sha256.Sum256([]byte(content(v)))
	if rsa.VerifyPKCS1v15(c.pub, crypto.SHA256, sum[:], sig) != nil {
		return payment.Notice{}, badSig("signature does not match")
	}

	var n payment.Notice
	var ok bool
	if n.PaymentID, ok = paysim.ParseID(v.Get("out_trade_no")); !ok {
		return payment.Notice{}, bad("out_trade_no %.40q is not a positive decimal", v.Get("out_trade_no"))
	}
	n.ChannelTxnID, n.NoticeID = v.Get("trade_no"), v.Get("notify_id")
	if !paysim.Token(n.ChannelTxnID) || !paysim.Token(n.NoticeID) {
		return payment.Notice{}, bad("trade_no and notify_id must be 1..64 printable characters")
	}
	if n.Amount, err = ParseYuan(v.Get("total_amount")); err != nil || n.Amount == 0 || n.Amount > paysim.MaxAmount {
		return payment.Notice{}, bad("total_amount %.40q is not a positive amount of yuan", v.Get("total_amount"))
	}
	if n.Timestamp, ok = parseTime(v.Get("notify_time")); !ok {
		return payment.Notice{}, bad("notify_time %.40q", v.Get("notify_time"))
	}
	if s := v.Get("refund_fee"); s != "" {
		if n.Refunded, err = ParseYuan(s); err != nil || n.Refunded == 0 || n.Refunded > n.Amount {
			return payment.Notice{}, bad("refund_fee %.40q is not an amount of yuan within total_amount", s)
		}
	}
	switch v.Get("trade_status") {
	case "TRADE_SUCCESS", "TRADE_FINISHED":
		n.State = payment.Paid
		if n.Refunded > 0 {
			n.State = payment.Refunded // refunded in part
		}
		if n.PaidAt, ok = parseTime(v.Get("gmt_payment")); !ok {
			return payment.Notice{}, bad("gmt_payment %.40q", v.Get("gmt_payment"))
		}
	case "TRADE_CLOSED":
		n.State = payment.Closed
		if s := v.Get("gmt_payment"); s != "" { // paid, then closed: refunded in full
			if n.PaidAt, ok = parseTime(s); !ok {
				return payment.Notice{}, bad("gmt_payment %.40q", s)
			}
			if n.Refunded != 0 && n.Refunded != n.Amount {
				return payment.Notice{}, bad("a closed trade refunded %d of %d fen", n.Refunded, n.Amount)
			}
			n.State, n.Refunded = payment.Refunded, n.Amount
		} else if n.Refunded != 0 {
			return payment.Notice{}, bad("an unpaid trade has refund_fee")
		}
	default:
		return payment.Notice{}, bad("trade_status %.30q", v.Get("trade_status"))
	}
	return n, nil
}

// content is the signed string: every parameter but sign, sorted by key,
// k=v joined with &.
func content(v url.Values) string {
	keys := make([]string, 0, len(v))
	for k := range v {
		if k != "sign" {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	var b strings.Builder
	for i, k := range keys {
		if i > 0 {
			b.WriteByte('&')
		}
		b.WriteString(k)
		b.WriteByte('=')
		b.WriteString(v[k][0])
	}
	return b.String()
}

// ErrBadAmount and ParseYuan are payment's (alisim's tests name them here).
var (
	ErrBadAmount = payment.ErrBadAmount
	ParseYuan    = payment.ParseYuan
)

func parseTime(s string) (time.Time, bool) {
	t, err := time.ParseInLocation(paysim.AliTimeLayout, s, cst)
	return t.UTC(), err == nil && t.Unix() > 0
}

func badSig(msg string) error { return payment.ErrBadSignature.With("alisim callback: %s", msg) }

func bad(format string, args ...any) error {
	return payment.ErrBadCallback.With("alisim callback: "+format, args...)
}
