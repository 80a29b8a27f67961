// Package wechatpay is the payment channel "wechatpay": WeChat Pay's API v3
// as merchants use it for H5 pages and mini-programs, on WeChat Pay's own
// Go SDK (github.com/wechatpay-apiv3/wechatpay-go): it signs our requests
// (WECHATPAY2-SHA256-RSA2048) and verifies the platform's answers and
// notices with the platform public key; the adapter opens the notices'
// resources itself (AEAD_AES_256_GCM under the APIv3 key).
//
// The same adapter pays at WeChat Pay (Config.BaseURL "") and at paysim,
// which speaks the same protocol (Config.BaseURL its base URL): the SDK
// names api.mch.weixin.qq.com in every request, and our transport sends
// such requests to BaseURL instead. The signature covers the path, not
// the host, so nothing else changes.
//
// Mapping: a payment is a transaction whose out_trade_no is the payment
// id; a refund's out_refund_no is surge's refund id. Create prepays H5
// (Txn.OpenID "") or JSAPI (the mini-program's wx.requestPayment
// parameters in Created.Params); Query reads the transaction (SUCCESS:
// paid, REFUND: refunded, an amount WeChat Pay does not say, so
// Status.Refunded is 0; NOTPAY, USERPAYING, PAYERROR: pending; CLOSED,
// REVOKED: closed); Close closes it; Refund makes a refund; Statement
// reads the trade bills (bill_type ALL) of the China days that cover the
// UTC day asked for; ParseCallback takes TRANSACTION.SUCCESS (paid) and
// REFUND.* notices (Notice.Refund: one refund each).
package wechatpay

import (
	"bytes"
	"cmp"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rsa"
	"crypto/sha1"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/wechatpay-apiv3/wechatpay-go/core"
	"github.com/wechatpay-apiv3/wechatpay-go/core/auth"
	"github.com/wechatpay-apiv3/wechatpay-go/core/auth/validators"
	"github.com/wechatpay-apiv3/wechatpay-go/core/auth/verifiers"
	"github.com/wechatpay-apiv3/wechatpay-go/core/option"
	"github.com/wechatpay-apiv3/wechatpay-go/services/payments"
	"github.com/wechatpay-apiv3/wechatpay-go/services/payments/h5"
	"github.com/wechatpay-apiv3/wechatpay-go/services/payments/jsapi"
	"github.com/wechatpay-apiv3/wechatpay-go/services/refunddomestic"

	"github.com/surge-platform/surge/internal/payment"
)

// Name of the channel.
const Name = "wechatpay"

// Host is WeChat Pay's API.
const Host = "https://api.mch.weixin.qq.com"

// Config is the merchant's account and keys. They come from files or the
// environment (see docs/payments.md), never from the database, and are
// never logged.
type Config struct {
	// BaseURL is where requests go: "" = Host; a simulator's base URL
	// (scheme and host only: the API's paths are signed as they are).
	BaseURL    string
	MchID      string          // 商户号
	AppID      string          // the app id (mini-program or official account) the merchant is bound to
	CertSerial string          // serial number of the merchant API certificate
	PrivateKey *rsa.PrivateKey // the merchant API private key: signs our requests
	// PlatformKeyID and PlatformKey are WeChat Pay's public key (微信支付公钥)
	// and its id ("PUB_KEY_ID_…"): they verify answers and notices.
	PlatformKeyID string
	PlatformKey   *rsa.PublicKey
	APIv3Key      string       // 32 bytes: opens notices' resources
	HTTP          *http.Client // nil = a 3 s client that passes the trace on
}

// Validate says what is missing or malformed in c.
func (c Config) Validate() error {
	var missing []string
	for _, f := range []struct {
		name string
		ok   bool
	}{
		{"mchid", c.MchID != ""}, {"appid", c.AppID != ""}, {"certificate serial", c.CertSerial != ""},
		{"private key", c.PrivateKey != nil}, {"platform key id", c.PlatformKeyID != ""}, {"platform key", c.PlatformKey != nil},
	} {
		if !f.ok {
			missing = append(missing, f.name)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("wechatpay: missing %s", strings.Join(missing, ", "))
	}
	if len(c.APIv3Key) != 32 {
		return fmt.Errorf("wechatpay: the APIv3 key is %d bytes, want 32", len(c.APIv3Key))
	}
	if c.PrivateKey.N.BitLen() < 2048 {
		return errors.New("wechatpay: the merchant private key is under 2048 bits")
	}
	if c.BaseURL != "" {
		u, err := url.Parse(c.BaseURL)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || strings.Trim(u.Path, "/") != "" {
			return fmt.Errorf("wechatpay: base URL %q: want scheme://host[:port], no path", c.BaseURL)
		}
	}
	return nil
}

// Channel implements payment.Channel for WeChat Pay. Safe for concurrent use.
type Channel struct {
	cfg     Config
	client  *core.Client // signs requests and verifies answers
	files   *core.Client // signs requests; a bill file's answer is not signed (its hash is checked)
	open    cipher.AEAD  // AEAD_AES_256_GCM under the APIv3 key: opens notices' resources
	h5      h5.H5ApiService
	jsapi   jsapi.JsapiApiService
	refunds refunddomestic.RefundsApiService
	verify  *validators.WechatPayNotifyValidator
	signed  auth.Verifier // the platform key's signature alone, without the SDK's time window
}

var _ payment.Channel = (*Channel)(nil)

// New returns the channel for cfg (see Config.Validate).
func New(cfg Config) (*Channel, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	hc := cfg.HTTP
	if hc == nil {
		hc = payment.NewHTTPClient(3 * time.Second)
	}
	if cfg.BaseURL != "" {
		u, _ := url.Parse(cfg.BaseURL)
		c := *hc
		c.Transport = rebase{to: u, next: hc.Transport}
		hc = &c
	}
	verifier := verifiers.NewSHA256WithRSAPubkeyVerifier(cfg.PlatformKeyID, *cfg.PlatformKey)
	ctx := context.Background()
	client, err := core.NewClient(ctx,
		option.WithWechatPayPublicKeyAuthCipher(cfg.MchID, cfg.CertSerial, cfg.PrivateKey, cfg.PlatformKeyID, cfg.PlatformKey),
		option.WithHTTPClient(hc))
	if err != nil {
		return nil, fmt.Errorf("wechatpay: %w", err)
	}
	files, err := core.NewClient(ctx, option.WithMerchantCredential(cfg.MchID, cfg.CertSerial, cfg.PrivateKey),
		option.WithoutValidator(), option.WithHTTPClient(hc))
	if err != nil {
		return nil, fmt.Errorf("wechatpay: %w", err)
	}
	block, err := aes.NewCipher([]byte(cfg.APIv3Key))
	if err != nil {
		return nil, fmt.Errorf("wechatpay: APIv3 key: %w", err)
	}
	open, err := cipher.NewGCM(block)
	if err != nil {
		return nil, fmt.Errorf("wechatpay: APIv3 key: %w", err)
	}
	return &Channel{cfg: cfg, client: client, files: files, open: open,
		h5: h5.H5ApiService{Client: client}, jsapi: jsapi.JsapiApiService{Client: client},
		refunds: refunddomestic.RefundsApiService{Client: client}, verify: validators.NewWechatPayNotifyValidator(verifier),
		signed: verifier}, nil
}

// rebase sends requests for WeChat Pay's host to another base URL.
type rebase struct {
	to   *url.URL
	next http.RoundTripper
}

func (t rebase) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.URL.Host == "api.mch.weixin.qq.com" {
		r = r.Clone(r.Context())
		r.URL.Scheme, r.URL.Host, r.Host = t.to.Scheme, t.to.Host, ""
	}
	next := t.next
	if next == nil {
		next = http.DefaultTransport
	}
	return next.RoundTrip(r)
}

// Name returns "wechatpay".
func (c *Channel) Name() string { return Name }

// Ack is the answer to a notice taken: 200 with no body.
func (c *Channel) Ack() (string, []byte) { return "", nil }

// Create prepays t: JSAPI when t.OpenID is set (Created.Params holds what
// wx.requestPayment needs), else H5 (Created.PayURL is the h5_url the
// payer opens). WeChat Pay gives the transaction id only once paid:
// Created.ChannelTxnID is "". Repeating it for the same payment is safe.
func (c *Channel) Create(ctx context.Context, t payment.Txn) (payment.Created, error) {
	no := strconv.FormatInt(t.PaymentID, 10)
	desc := payment.Cut(cmp.Or(t.Subject, "order "+no), 127) // WeChat Pay's bound, in bytes
	amount := &h5.Amount{Total: core.Int64(t.Amount), Currency: core.String("CNY")}
	var expire *time.Time
	if !t.Expires.IsZero() {
		e := t.Expires.In(payment.CST).Truncate(time.Second)
		expire = &e
	}
	if t.OpenID != "" {
		resp, _, err := c.jsapi.PrepayWithRequestPayment(ctx, jsapi.PrepayRequest{Appid: &c.cfg.AppID, Mchid: &c.cfg.MchID,
			Description: &desc, OutTradeNo: &no, TimeExpire: expire, NotifyUrl: &t.NotifyURL,
			Amount: &jsapi.Amount{Total: amount.Total, Currency: amount.Currency}, Payer: &jsapi.Payer{Openid: &t.OpenID}})
		if err != nil {
			return payment.Created{}, c.fail(ctx, "prepay (JSAPI) "+no, err)
		}
		return payment.Created{Params: map[string]string{"appId": deref(resp.Appid), "timeStamp": deref(resp.TimeStamp),
			"nonceStr": deref(resp.NonceStr), "package": deref(resp.Package), "signType": deref(resp.SignType),
			"paySign": deref(resp.PaySign)}}, nil
	}
	ip := t.PayerIP
	if net.ParseIP(ip) == nil {
		ip = "127.0.0.1" // WeChat Pay wants one; an unknown payer's is not ours to make up better
	}
	resp, _, err := c.h5.Prepay(ctx, h5.PrepayRequest{Appid: &c.cfg.AppID, Mchid: &c.cfg.MchID, Description: &desc,
		OutTradeNo: &no, TimeExpire: expire, NotifyUrl: &t.NotifyURL, Amount: amount,
		SceneInfo: &h5.SceneInfo{PayerClientIp: &ip, H5Info: &h5.H5Info{Type: core.String("Wap")}}})
	if err != nil {
		return payment.Created{}, c.fail(ctx, "prepay (H5) "+no, err)
	}
	if resp.H5Url == nil || *resp.H5Url == "" {
		return payment.Created{}, payment.ErrBadAnswer.With("wechatpay prepay %s: no h5_url in the answer", no)
	}
	return payment.Created{PayURL: *resp.H5Url}, nil
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

// Query reads the transaction of paymentID.
func (c *Channel) Query(ctx context.Context, paymentID int64) (payment.Status, error) {
	no := strconv.FormatInt(paymentID, 10)
	t, _, err := c.h5.QueryOrderByOutTradeNo(ctx, h5.QueryOrderByOutTradeNoRequest{OutTradeNo: &no, Mchid: &c.cfg.MchID})
	if err != nil {
		return payment.Status{}, c.fail(ctx, "query "+no, err)
	}
	st, err := c.status(t)
	if err != nil {
		return payment.Status{}, payment.ErrBadAnswer.With("wechatpay query %s: %v", no, err)
	}
	if st.PaymentID != paymentID {
		return payment.Status{}, payment.ErrBadAnswer.With("wechatpay query %s answered for out_trade_no %d", no, st.PaymentID)
	}
	return st, nil
}

// status maps a transaction (a query's answer, a notice's resource).
func (c *Channel) status(t *payments.Transaction) (payment.Status, error) {
	var st payment.Status
	if t == nil {
		return st, errors.New("no transaction")
	}
	if deref(t.Mchid) != c.cfg.MchID {
		return st, fmt.Errorf("mchid %.20q is not ours", deref(t.Mchid))
	}
	var ok bool
	if st.PaymentID, ok = payment.ParseID(deref(t.OutTradeNo)); !ok {
		return st, fmt.Errorf("out_trade_no %.40q is not a payment id", deref(t.OutTradeNo))
	}
	if t.Amount == nil || t.Amount.Total == nil || *t.Amount.Total <= 0 {
		return st, errors.New("no amount.total")
	}
	st.Amount, st.ChannelTxnID = *t.Amount.Total, deref(t.TransactionId)
	switch s := deref(t.TradeState); s {
	case "SUCCESS", "REFUND":
		st.State = payment.Paid
		if s == "REFUND" {
			st.State = payment.Refunded // how much WeChat Pay does not say here: Refunded stays 0
		}
		if st.ChannelTxnID == "" || len(st.ChannelTxnID) > 64 {
			return st, errors.New("a paid transaction without a transaction_id")
		}
		at, err := time.Parse(time.RFC3339, deref(t.SuccessTime))
		if err != nil {
			return st, fmt.Errorf("success_time %.40q", deref(t.SuccessTime))
		}
		st.PaidAt = at.UTC()
	case "NOTPAY", "USERPAYING", "PAYERROR":
		st.State = payment.Pending
	case "CLOSED", "REVOKED":
		st.State = payment.Closed
	default:
		return st, fmt.Errorf("trade_state %.20q", s)
	}
	return st, nil
}

// Close closes the unpaid transaction of paymentID, so that it can no
// longer be paid. One WeChat Pay never saw is closed already; a paid one
// is payment.ErrPaidAtChannel.
func (c *Channel) Close(ctx context.Context, paymentID int64) error {
	no := strconv.FormatInt(paymentID, 10)
	_, err := c.h5.CloseOrder(ctx, h5.CloseOrderRequest{OutTradeNo: &no, Mchid: &c.cfg.MchID})
	if err == nil {
		return nil
	}
	var api *core.APIError
	if errors.As(err, &api) {
		switch api.Code {
		case "ORDER_NOT_EXIST", "ORDER_CLOSED", "ORDERCLOSED": // v3 says ORDER_CLOSED; v2's spelling too
			return nil
		case "ORDERPAID":
			return payment.ErrPaidAtChannel.With("wechatpay close %s: %s", no, api.Message)
		}
	}
	return c.fail(ctx, "close "+no, err)
}

// Refund refunds r.Amount of payment r.PaymentID (of r.Total in all),
// once per r.RefundID however often asked.
func (c *Channel) Refund(ctx context.Context, r payment.Refund) error {
	no, rno := strconv.FormatInt(r.PaymentID, 10), strconv.FormatInt(r.RefundID, 10)
	req := refunddomestic.CreateRequest{OutTradeNo: &no, OutRefundNo: &rno,
		Amount: &refunddomestic.AmountReq{Refund: core.Int64(r.Amount), Total: core.Int64(r.Total), Currency: core.String("CNY")}}
	if r.Reason != "" {
		reason := payment.Cut(r.Reason, 80)
		req.Reason = &reason
	}
	if r.NotifyURL != "" {
		req.NotifyUrl = &r.NotifyURL
	}
	resp, _, err := c.refunds.Create(ctx, req)
	if err != nil {
		return c.fail(ctx, "refund "+rno+" of "+no, err)
	}
	if resp.Status != nil && (*resp.Status == refunddomestic.STATUS_CLOSED || *resp.Status == refunddomestic.STATUS_ABNORMAL) {
		return payment.ErrRejected.With("wechatpay refund %s of %s: %s", rno, no, *resp.Status)
	}
	return nil
}

// fail classifies an error of the SDK: the caller's cancellation as it
// is; transport failures, timeouts, 5xx and 429 -> payment.ErrChannelDown;
// ORDER_NOT_EXIST and RESOURCE_NOT_EXISTS -> payment.ErrUnknownTxn; 401
// -> payment.ErrMerchantAuth; other 4xx (403 included: WeChat Pay's
// business refusals) -> payment.ErrRejected; an
// answer whose signature does not verify -> payment.ErrBadAnswer.
func (c *Channel) fail(ctx context.Context, op string, err error) error {
	if errors.Is(ctx.Err(), context.Canceled) {
		return fmt.Errorf("wechatpay %s: %w", op, ctx.Err())
	}
	var api *core.APIError
	if errors.As(err, &api) {
		detail := fmt.Sprintf("wechatpay %s: %d %s: %.200s", op, api.StatusCode, api.Code, api.Message)
		switch {
		case api.StatusCode >= 500 || api.StatusCode == http.StatusTooManyRequests:
			return payment.ErrChannelDown.With("%s", detail)
		case api.Code == "ORDER_NOT_EXIST" || api.Code == "RESOURCE_NOT_EXISTS":
			return payment.ErrUnknownTxn.With("%s", detail)
		case api.StatusCode == http.StatusUnauthorized: // 403 is a business refusal (NOT_ENOUGH, TRADE_ERROR, ...)
			return payment.ErrMerchantAuth.With("%s", detail)
		}
		return payment.ErrRejected.With("%s", detail)
	}
	var uerr *url.Error
	if errors.As(err, &uerr) || errors.Is(err, context.DeadlineExceeded) || errors.Is(err, io.ErrUnexpectedEOF) {
		return fmt.Errorf("wechatpay %s: %w: %w", op, payment.ErrChannelDown, err)
	}
	if strings.Contains(err.Error(), "validate verify fail") || strings.Contains(err.Error(), "in header") ||
		strings.Contains(err.Error(), "expires") {
		return payment.ErrBadAnswer.With("wechatpay %s: %v", op, err)
	}
	return fmt.Errorf("wechatpay %s: %w: %w", op, payment.ErrChannelDown, err)
}

// ---- notices

// refundNotice is the resource of a REFUND.* notice.
type refundNotice struct {
	MchID         string `json:"mchid"`
	OutTradeNo    string `json:"out_trade_no"`
	TransactionID string `json:"transaction_id"`
	OutRefundNo   string `json:"out_refund_no"`
	RefundID      string `json:"refund_id"`
	RefundStatus  string `json:"refund_status"`
	SuccessTime   string `json:"success_time"`
	Amount        struct {
		Total  int64 `json:"total"`
		Refund int64 `json:"refund"`
	} `json:"amount"`
}

// ParseCallback verifies a notice with the SDK (the platform key's
// signature over timestamp, nonce and body, within 5 minutes of now) and
// opens its resource (AEAD_AES_256_GCM under the APIv3 key, the
// resource's associated data and nonce). The SDK's notice handler is not
// used: it would verify the signature and the time a second time, and it
// panics on a signed notice without a resource or with a nonce not 12
// bytes. One that does not verify -> payment.ErrBadSignature,
// or payment.ErrReplay when only its time is outside the window (a
// replay); a verified one that cannot be opened or is not a notice surge
// knows -> payment.ErrBadCallback.
func (c *Channel) ParseCallback(h http.Header, body []byte) (payment.Notice, error) {
	ctx := context.Background()
	req := &http.Request{Method: http.MethodPost, Header: h, Body: io.NopCloser(bytes.NewReader(body))}
	if err := c.verify.Validate(ctx, req); err != nil {
		if ts, ok := c.signedAt(ctx, h, body); ok {
			return payment.Notice{}, payment.ErrReplay.With("wechatpay notice signed at %s, outside WeChat Pay's 5 minutes", ts.Format(time.RFC3339))
		}
		return payment.Notice{}, payment.ErrBadSignature.With("wechatpay notice: %v", err)
	}
	n, raw, err := c.opened(body)
	if err != nil {
		return payment.Notice{}, err
	}
	ts, _ := strconv.ParseInt(strings.TrimSpace(h.Get("Wechatpay-Timestamp")), 10, 64) // the validator read it so
	out := payment.Notice{NoticeID: n.ID, Timestamp: time.Unix(ts, 0).UTC()}
	if out.NoticeID == "" || len(out.NoticeID) > 64 {
		return payment.Notice{}, bad("id %.70q", out.NoticeID)
	}
	switch n.EventType {
	case "TRANSACTION.SUCCESS":
		var t payments.Transaction
		if err := json.Unmarshal(raw, &t); err != nil {
			return payment.Notice{}, bad("transaction: %v", err)
		}
		if deref(t.TradeState) != "SUCCESS" {
			return payment.Notice{}, bad("TRANSACTION.SUCCESS with trade_state %.20q", deref(t.TradeState))
		}
		if t.Appid != nil && *t.Appid != c.cfg.AppID {
			return payment.Notice{}, bad("appid %.40q is not ours", *t.Appid)
		}
		if out.Status, err = c.status(&t); err != nil {
			return payment.Notice{}, bad("%v", err)
		}
	case "REFUND.SUCCESS", "REFUND.ABNORMAL", "REFUND.CLOSED":
		var r refundNotice
		if err := json.Unmarshal(raw, &r); err != nil {
			return payment.Notice{}, bad("refund: %v", err)
		}
		var ok bool
		switch {
		case r.MchID != c.cfg.MchID:
			return payment.Notice{}, bad("mchid %.20q is not ours", r.MchID)
		case r.Amount.Total <= 0 || r.Amount.Refund <= 0 || r.Amount.Refund > r.Amount.Total:
			return payment.Notice{}, bad("refund of %d fen of %d", r.Amount.Refund, r.Amount.Total)
		case r.OutRefundNo == "" || len(r.OutRefundNo) > 64 || r.RefundID == "" || len(r.RefundID) > 64:
			return payment.Notice{}, bad("out_refund_no and refund_id must be 1..64 characters")
		case r.TransactionID == "" || len(r.TransactionID) > 64:
			return payment.Notice{}, bad("transaction_id must be 1..64 characters")
		}
		if out.PaymentID, ok = payment.ParseID(r.OutTradeNo); !ok {
			return payment.Notice{}, bad("out_trade_no %.40q is not a payment id", r.OutTradeNo)
		}
		out.ChannelTxnID, out.Amount, out.State = r.TransactionID, r.Amount.Total, payment.Paid
		note := &payment.RefundNote{OutRefundNo: r.OutRefundNo, ChannelRefundID: r.RefundID, Amount: r.Amount.Refund}
		if r.RefundStatus == "SUCCESS" && n.EventType == "REFUND.SUCCESS" {
			at, err := time.Parse(time.RFC3339, r.SuccessTime)
			if err != nil {
				return payment.Notice{}, bad("success_time %.40q", r.SuccessTime)
			}
			note.Succeeded, note.At, out.State = true, at.UTC(), payment.Refunded
		}
		out.Refund = note
	default:
		return payment.Notice{}, bad("event_type %.40q", n.EventType)
	}
	return out, nil
}

func bad(format string, args ...any) error {
	return payment.ErrBadCallback.With("wechatpay notice: "+format, args...)
}

// notice is a notice's body (通知).
type notice struct {
	ID        string `json:"id"`
	EventType string `json:"event_type"`
	Resource  *struct {
		Algorithm      string `json:"algorithm"`
		Ciphertext     string `json:"ciphertext"`
		AssociatedData string `json:"associated_data"`
		Nonce          string `json:"nonce"`
	} `json:"resource"`
}

// opened parses a verified notice's body and opens its resource.
// -> payment.ErrBadCallback.
func (c *Channel) opened(body []byte) (notice, []byte, error) {
	var n notice
	switch {
	case json.Unmarshal(body, &n) != nil:
		return n, nil, bad("the body is not a notice")
	case n.Resource == nil:
		return n, nil, bad("no resource")
	case n.Resource.Algorithm != "AEAD_AES_256_GCM":
		return n, nil, bad("resource.algorithm %.30q", n.Resource.Algorithm)
	case len(n.Resource.Nonce) != c.open.NonceSize():
		return n, nil, bad("resource.nonce is %d bytes, want %d", len(n.Resource.Nonce), c.open.NonceSize())
	}
	ct, err := base64.StdEncoding.DecodeString(n.Resource.Ciphertext)
	if err != nil {
		return n, nil, bad("resource.ciphertext is not base64")
	}
	plain, err := c.open.Open(nil, []byte(n.Resource.Nonce), ct, []byte(n.Resource.AssociatedData))
	if err != nil {
		return n, nil, bad("resource does not open under the APIv3 key")
	}
	return n, plain, nil
}

// signedAt reports whether a notice the SDK refused carries the platform
// key's signature all the same, and when it says it was signed: then the
// SDK refused its time, and it is a replay, not a forgery. The message is
// the one the SDK verifies (its headers trimmed as it trims them).
func (c *Channel) signedAt(ctx context.Context, h http.Header, body []byte) (time.Time, bool) {
	get := func(k string) string { return strings.TrimSpace(h.Get(k)) }
	ts, err := strconv.ParseInt(get("Wechatpay-Timestamp"), 10, 64)
	if err != nil || get("Wechatpay-Serial") == "" || get("Wechatpay-Nonce") == "" || get("Wechatpay-Signature") == "" {
		return time.Time{}, false
	}
	msg := strconv.FormatInt(ts, 10) + "\n" + get("Wechatpay-Nonce") + "\n" + string(body) + "\n"
	if c.signed.Verify(ctx, get("Wechatpay-Serial"), msg, get("Wechatpay-Signature")) != nil {
		return time.Time{}, false
	}
	return time.Unix(ts, 0).UTC(), true
}

// ---- the trade bill

// Statement returns the payments and refunds made in UTC day (a date):
// the lines of the trade bills of the two China days it overlaps. A bill
// WeChat Pay does not have yet (a day not over) has no lines.
func (c *Channel) Statement(ctx context.Context, day time.Time) ([]payment.Line, error) {
	return payment.ChinaDayLines(ctx, day, c.bill)
}

// bill reads the trade bill of China day (YYYY-MM-DD).
func (c *Channel) bill(ctx context.Context, day string) ([]payment.Line, error) {
	op := "trade bill " + day
	res, err := c.client.Request(ctx, http.MethodGet, Host+"/v3/bill/tradebill", nil,
		url.Values{"bill_date": {day}, "bill_type": {"ALL"}}, nil, "")
	if err != nil {
		var api *core.APIError
		if errors.As(err, &api) && api.Code == "NO_STATEMENT_EXIST" {
			return nil, nil
		}
		return nil, c.fail(ctx, op, err)
	}
	defer res.Response.Body.Close()
	var meta struct {
		HashType    string `json:"hash_type"`
		HashValue   string `json:"hash_value"`
		DownloadURL string `json:"download_url"`
	}
	if err := json.NewDecoder(io.LimitReader(res.Response.Body, 64<<10)).Decode(&meta); err != nil {
		return nil, payment.ErrBadAnswer.With("wechatpay %s: %v", op, err)
	}
	if meta.HashType != "SHA1" || meta.DownloadURL == "" {
		return nil, payment.ErrBadAnswer.With("wechatpay %s: hash_type %.10q, download_url %.100q", op, meta.HashType, meta.DownloadURL)
	}
	file, err := c.files.Request(ctx, http.MethodGet, meta.DownloadURL, nil, nil, nil, "")
	if err != nil {
		return nil, c.fail(ctx, op+" download", err)
	}
	defer file.Response.Body.Close()
	b, err := io.ReadAll(io.LimitReader(file.Response.Body, 256<<20))
	if err != nil {
		return nil, c.fail(ctx, op+" download", err)
	}
	if sum := sha1.Sum(b); !strings.EqualFold(hex.EncodeToString(sum[:]), meta.HashValue) {
		return nil, payment.ErrBadStatement.With("wechatpay %s: the file's SHA1 is not the bill API's", op)
	}
	return ParseBill(b)
}

// ParseBill parses a trade bill (bill_type ALL): the header row, a row per
// payment (交易状态 SUCCESS) and per refund (REFUND), each field behind a
// backquote, then the totals. Columns are found by their names. A row
// whose out_refund_no is not a decimal id (a refund made outside surge)
// has RefundID 0.
func ParseBill(b []byte) ([]payment.Line, error) {
	rows := strings.Split(strings.ReplaceAll(string(b), "\r\n", "\n"), "\n")
	if len(rows) == 0 {
		return nil, payment.ErrBadStatement.With("wechatpay bill: empty")
	}
	col := map[string]int{}
	for i, h := range strings.Split(strings.TrimPrefix(rows[0], "\ufeff"), ",") {
		col[strings.TrimSpace(h)] = i
	}
	need := []string{"交易时间", "微信订单号", "商户订单号", "交易状态", "商户退款单号", "订单金额", "退款金额"}
	for _, n := range need {
		if _, ok := col[n]; !ok {
			return nil, payment.ErrBadStatement.With("wechatpay bill: no column %s", n)
		}
	}
	var out []payment.Line
	for i, row := range rows[1:] {
		if row == "" {
			continue
		}
		if strings.HasPrefix(row, "总交易单数") {
			return out, nil
		}
		f := strings.Split(row, ",")
		if len(f) < len(col) {
			return nil, payment.ErrBadStatement.With("wechatpay bill row %d: %d fields, want %d", i+2, len(f), len(col))
		}
		get := func(name string) string { return strings.TrimPrefix(f[col[name]], "`") }
		at, err := time.ParseInLocation(time.DateTime, get("交易时间"), payment.CST)
		if err != nil {
			return nil, payment.ErrBadStatement.With("wechatpay bill row %d: 交易时间 %.30q", i+2, get("交易时间"))
		}
		l := payment.Line{ChannelTxnID: get("微信订单号"), At: at.UTC()}
		var ok bool
		if l.PaymentID, ok = payment.ParseID(get("商户订单号")); !ok {
			return nil, payment.ErrBadStatement.With("wechatpay bill row %d: 商户订单号 %.40q", i+2, get("商户订单号"))
		}
		amount := get("订单金额")
		switch get("交易状态") {
		case "SUCCESS":
			l.Kind = "payment"
		case "REFUND":
			l.Kind = "refund"
			l.RefundID, _ = payment.ParseID(get("商户退款单号"))
			amount = get("退款金额")
			if j, ok := col["申请退款金额"]; ok && j < len(f) && strings.TrimPrefix(f[j], "`") != "" {
				amount = strings.TrimPrefix(f[j], "`")
			}
		default:
			continue // REVOKED and the like: no money moved
		}
		if l.Amount, err = payment.ParseYuan(amount); err != nil || l.Amount == 0 {
			return nil, payment.ErrBadStatement.With("wechatpay bill row %d: amount %.30q", i+2, amount)
		}
		out = append(out, l)
	}
	return nil, payment.ErrBadStatement.With("wechatpay bill: no totals at its end (cut short?)")
}
