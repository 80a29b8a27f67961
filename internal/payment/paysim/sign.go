package paysim

import (
	"crypto"
	"crypto/hmac"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/surge-platform/surge/internal/payment"
)

// Headers of a merchant API request (both schemes).
const (
	HeaderTimestamp = "Paysim-Timestamp"
	HeaderNonce     = "Paysim-Nonce"
	HeaderSignature = "Paysim-Signature"
)

// Headers of an HMAC-scheme (wxsim) callback.
const (
	HeaderCallbackTimestamp = "Wxsim-Timestamp"
	HeaderCallbackNonce     = "Wxsim-Nonce"
	HeaderCallbackSignature = "Wxsim-Signature"
)

// CST is the zone of the times in RSA-scheme (alisim) callbacks, as Alipay's.
var CST = time.FixedZone("CST", 8*3600)

// AliTimeLayout is the layout of gmt_payment and notify_time (in CST).
const AliTimeLayout = time.DateTime

// SignRequest returns the Paysim-Signature of a merchant request.
func SignRequest(secret []byte, method, requestURI, timestamp, nonce string, body []byte) string {
	m := hmac.New(sha256.New, secret)
	io.WriteString(m, "paysim-merchant-v1\n"+method+"\n"+requestURI+"\n"+timestamp+"\n"+nonce+"\n")
	m.Write(body)
	return hex.EncodeToString(m.Sum(nil))
}

// verifyRequest checks a merchant request's signature in constant time.
func verifyRequest(secret []byte, method, requestURI string, h http.Header, body []byte) bool {
	ts, nonce := h.Get(HeaderTimestamp), h.Get(HeaderNonce)
	sig, err := hex.DecodeString(h.Get(HeaderSignature))
	if err != nil || len(sig) != sha256.Size || !printable(nonce, 64) {
		return false
	}
	if _, err := strconv.ParseInt(ts, 10, 64); err != nil {
		return false
	}
	want, _ := hex.DecodeString(SignRequest(secret, method, requestURI, ts, nonce, body))
	return hmac.Equal(sig, want)
}

func printable(s string, max int) bool {
	if s == "" || len(s) > max {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] <= ' ' || s[i] > '~' {
			return false
		}
	}
	return true
}

// SignCallback returns the Wxsim-Signature of an HMAC-scheme callback:
// hex(HMAC-SHA256(secret, timestamp + "\n" + nonce + "\n" + body)).
func SignCallback(secret []byte, timestamp, nonce string, body []byte) string {
	m := hmac.New(sha256.New, secret)
	io.WriteString(m, timestamp+"\n"+nonce+"\n")
	m.Write(body)
	return hex.EncodeToString(m.Sum(nil))
}

// WXNotice is the JSON body of an HMAC-scheme callback.
type WXNotice struct {
	MerchantTxnID string `json:"merchant_txn_id"` // decimal
	TxnID         string `json:"txn_id"`
	Amount        int64  `json:"amount"`             // fen
	State         string `json:"state"`              // payment.State
	Refunded      int64  `json:"refunded,omitempty"` // fen refunded so far; 1..amount exactly when state is "refunded"
	PaidAt        string `json:"paid_at"`
	NoticeID      string `json:"notice_id"`
	Timestamp     int64  `json:"timestamp"` // unix seconds, equal to the Wxsim-Timestamp header
}

// AliContent returns the string an RSA-scheme callback's sign covers: every
// parameter except sign, sorted by key, as k=v joined with &, values not
// escaped (as Alipay).
func AliContent(v url.Values) string {
	var b strings.Builder
	for _, k := range slices.Sorted(func(yield func(string) bool) {
		for k := range v {
			if k != "sign" && !yield(k) {
				return
			}
		}
	}) {
		for _, x := range v[k] {
			if b.Len() > 0 {
				b.WriteByte('&')
			}
			b.WriteString(k + "=" + x)
		}
	}
	return b.String()
}

// FormatYuan writes fen as yuan with two decimals ("12.34").
var FormatYuan = payment.FormatYuan

// EncodeCallback signs notice n as channel cc sends it and returns the
// request's headers and body. Tests use it to make real callbacks.
//
// HMAC scheme (wxsim): Content-Type application/json, body WXNotice, and
// the headers Wxsim-Timestamp (unix seconds of n.Timestamp), Wxsim-Nonce
// (random) and Wxsim-Signature (see SignCallback). The merchant answers 200
// with {"code":"SUCCESS"}. A refunded transaction has state "refunded" and
// refunded (fen, all refunds so far).
//
// RSA scheme (alisim): Content-Type application/x-www-form-urlencoded with
// out_trade_no (merchant txn id), trade_no, total_amount (yuan, "12.34"),
// trade_status (TRADE_SUCCESS when paid or refunded in part, TRADE_CLOSED
// when closed unpaid or refunded in full), refund_fee (yuan refunded so far,
// only when refunded), gmt_payment and notify_time ("2006-01-02 15:04:05"
// in CST, UTC+8), notify_id, notify_type=trade_status_sync, sign_type=RSA2
// and sign = base64(RSA PKCS#1 v1.5 SHA-256 over AliContent), as Alipay
// notifies refunds. The merchant answers 200 with the body "success".
//
// WeChatPay scheme: see encodeWeChat.
func EncodeCallback(cc ChannelConfig, n payment.Notice) (http.Header, []byte, error) {
	return encodeCallback(cc, n, nil)
}

func encodeCallback(cc ChannelConfig, n payment.Notice, info *wxTxn) (http.Header, []byte, error) {
	h := http.Header{}
	switch cc.Scheme {
	case WeChatPay:
		return encodeWeChat(cc.WeChat, n, info)
	case Alipay:
		return encodeAlipay(cc.Alipay, n)
	case HMAC:
		var paidAt string
		if !n.PaidAt.IsZero() {
			paidAt = n.PaidAt.UTC().Format(time.RFC3339)
		}
		body, err := json.Marshal(WXNotice{MerchantTxnID: strconv.FormatInt(n.PaymentID, 10), TxnID: n.ChannelTxnID,
			Amount: n.Amount, State: string(n.State), Refunded: n.Refunded, PaidAt: paidAt, NoticeID: n.NoticeID,
			Timestamp: n.Timestamp.Unix()})
		if err != nil {
			return nil, nil, err
		}
		ts, nonce := strconv.FormatInt(n.Timestamp.Unix(), 10), newID()
		h.Set("Content-Type", "application/json")
		h.Set(HeaderCallbackTimestamp, ts)
		h.Set(HeaderCallbackNonce, nonce)
		h.Set(HeaderCallbackSignature, SignCallback(cc.Secret, ts, nonce, body))
		return h, body, nil
	case RSA:
		if cc.PrivateKey == nil {
			return nil, nil, errors.New("paysim: RSA scheme without a private key")
		}
		var status string
		switch {
		case n.State == payment.Paid, n.State == payment.Refunded && n.Refunded < n.Amount:
			status = "TRADE_SUCCESS"
		case n.State == payment.Closed, n.State == payment.Refunded:
			status = "TRADE_CLOSED"
		default:
			return nil, nil, fmt.Errorf("paysim: RSA callbacks cannot say %q", n.State)
		}
		v := url.Values{
			"out_trade_no": {strconv.FormatInt(n.PaymentID, 10)},
			"trade_no":     {n.ChannelTxnID},
			"total_amount": {FormatYuan(n.Amount)},
			"trade_status": {status},
			"notify_id":    {n.NoticeID},
			"notify_time":  {n.Timestamp.In(CST).Format(AliTimeLayout)},
			"notify_type":  {"trade_status_sync"},
			"sign_type":    {"RSA2"},
		}
		if !n.PaidAt.IsZero() {
			v.Set("gmt_payment", n.PaidAt.In(CST).Format(AliTimeLayout))
		}
		if n.State == payment.Refunded {
			v.Set("refund_fee", FormatYuan(n.Refunded))
		}
		sum := sha256.Sum256([]byte(AliContent(v)))
		sig, err := rsa.SignPKCS1v15(nil, cc.PrivateKey, crypto.SHA256, sum[:])
		if err != nil {
			return nil, nil, err
		}
		v.Set("sign", base64.StdEncoding.EncodeToString(sig))
		h.Set("Content-Type", "application/x-www-form-urlencoded; charset=utf-8")
		return h, []byte(v.Encode()), nil
	}
	return nil, nil, fmt.Errorf("paysim: unknown scheme %q", cc.Scheme)
}

// acked reports whether a callback answer means success under scheme.
func acked(scheme Scheme, status int, body []byte) bool {
	if scheme == WeChatPay {
		return status == http.StatusOK || status == http.StatusNoContent
	}
	if status != http.StatusOK {
		return false
	}
	if scheme == RSA || scheme == Alipay {
		return string(body) == "success"
	}
	var a struct {
		Code string `json:"code"`
	}
	return json.Unmarshal(body, &a) == nil && a.Code == "SUCCESS"
}
