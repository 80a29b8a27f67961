package wechatpay_test

import (
	"crypto"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/surge-platform/surge/internal/payment"
	"github.com/surge-platform/surge/internal/payment/paysim"
)

// fuzzNotices are the notices the fuzzers start from, as paysim sends
// them: a payment (also of the largest id), a refund that succeeded and a
// refund closed.
func fuzzNotices(f *testing.F, k paysim.ChannelConfig) (headers []http.Header, bodies [][]byte) {
	now := time.Now()
	paidAt := now.Add(-time.Minute).Truncate(time.Second)
	paid := func(id int64) payment.Notice {
		return payment.Notice{Status: payment.Status{PaymentID: id, ChannelTxnID: "4200000001202611230000000001", State: payment.Paid,
			Amount: 1234, PaidAt: paidAt}, NoticeID: "EV-" + strconv.FormatInt(id, 10), Timestamp: now}
	}
	refund := paid(4)
	refund.State = payment.Refunded
	refund.Refund = &payment.RefundNote{OutRefundNo: "40", ChannelRefundID: "50300000012026112300000001", Amount: 17, Succeeded: true, At: now}
	closed := paid(5)
	closed.Refund = &payment.RefundNote{OutRefundNo: "41", ChannelRefundID: "50300000012026112300000002", Amount: 1234}
	for _, n := range []payment.Notice{paid(1), paid(9_223_372_036_854_775_807), refund, closed} {
		h, b, err := paysim.EncodeCallback(k, n)
		if err != nil {
			f.Fatal(err)
		}
		headers, bodies = append(headers, h), append(bodies, b)
	}
	return headers, bodies
}

// opened is a notice's event with its resource opened.
type opened struct {
	event     paysim.WXEvent
	plaintext []byte
}

// open opens the resource of notice body with the APIv3 key.
func open(f *testing.F, apiV3Key, body []byte) opened {
	var ev paysim.WXEvent
	if err := json.Unmarshal(body, &ev); err != nil {
		f.Fatal(err)
	}
	block, _ := aes.NewCipher(apiV3Key)
	gcm, _ := cipher.NewGCM(block)
	ct, _ := base64.StdEncoding.DecodeString(ev.Resource.Ciphertext)
	pt, err := gcm.Open(nil, []byte(ev.Resource.Nonce), ct, []byte(ev.Resource.AssociatedData))
	if err != nil {
		f.Fatal(err)
	}
	return opened{ev, pt}
}

// check judges ParseCallback's answer to h and body: an error of the
// kinds it may return, or a notice the platform key signed (over
// timestamp\nnonce\nbody\n, the timestamp read as a number, as the SDK
// reads it) with sane fields, stamped with that timestamp.
func check(t *testing.T, platform *rsa.PublicKey, h http.Header, body []byte, before, after int64, n payment.Notice, err error) {
	ts, perr := strconv.ParseInt(strings.TrimSpace(h.Get("Wechatpay-Timestamp")), 10, 64)
	sig, derr := base64.StdEncoding.DecodeString(strings.TrimSpace(h.Get("Wechatpay-Signature")))
	sum := sha256.Sum256([]byte(strconv.FormatInt(ts, 10) + "\n" + strings.TrimSpace(h.Get("Wechatpay-Nonce")) + "\n" + string(body) + "\n"))
	signed := perr == nil && derr == nil && rsa.VerifyPKCS1v15(platform, crypto.SHA256, sum[:], sig) == nil
	switch {
	case errors.Is(err, payment.ErrReplay): // a replay is signed, and outside the 5 minutes
		if !signed || ts > after-300 && ts < before+300 { // the SDK's window, in whole seconds, at some time in [before, after]
			t.Fatalf("a replay that is not one (signed %v, at %d): %v %q", signed, ts, h, body)
		}
		return
	case err != nil:
		if !errors.Is(err, payment.ErrBadSignature) && !errors.Is(err, payment.ErrBadCallback) {
			t.Fatalf("error of another kind: %v", err)
		}
		return
	case !signed:
		t.Fatalf("accepted a notice the platform key did not sign: %v %q", h, body)
	}
	if n.PaymentID <= 0 || n.Amount <= 0 || n.ChannelTxnID == "" || n.NoticeID == "" || n.Timestamp.Unix() != ts {
		t.Fatalf("accepted %+v (signed at %d)", n, ts)
	}
	switch r := n.Refund; {
	case r == nil:
		if n.State != payment.Paid || n.PaidAt.IsZero() || n.Refunded != 0 {
			t.Fatalf("accepted a payment's notice %+v", n)
		}
	case r.Amount <= 0 || r.Amount > n.Amount || r.OutRefundNo == "" || r.ChannelRefundID == "":
		t.Fatalf("accepted a refund's notice %+v with refund %+v", n, r)
	case r.Succeeded != (n.State == payment.Refunded) || r.Succeeded == r.At.IsZero() || n.Refunded != 0:
		t.Fatalf("accepted a refund's notice %+v whose state does not fit refund %+v", n, r)
	}
}

// FuzzParseCallback feeds arbitrary Wechatpay-* headers and bodies:
// nothing panics, and anything accepted was signed by the platform key
// and has sane fields.
func FuzzParseCallback(f *testing.F) {
	k := keys(f, "1900000109")
	ch := newChannel("", nil, k)
	hs, bs := fuzzNotices(f, k)
	for i, h := range hs {
		f.Add(h.Get("Wechatpay-Timestamp"), h.Get("Wechatpay-Nonce"), h.Get("Wechatpay-Signature"), h.Get("Wechatpay-Serial"), bs[i])
	}
	f.Add("", "", "", "", []byte(`{}`))
	f.Add(strconv.FormatInt(time.Now().Unix(), 10), "n", "AAAA", k.WeChat.PlatformKeyID, []byte(`{"id":"x","event_type":"TRANSACTION.SUCCESS"}`))
	f.Fuzz(func(t *testing.T, ts, nonce, sig, serial string, body []byte) {
		h := http.Header{}
		h.Set("Wechatpay-Timestamp", ts)
		h.Set("Wechatpay-Nonce", nonce)
		h.Set("Wechatpay-Signature", sig)
		h.Set("Wechatpay-Serial", serial)
		before := time.Now().Unix()
		n, err := ch.ParseCallback(h, body)
		check(t, &k.WeChat.PlatformKey.PublicKey, h, body, before, time.Now().Unix(), n, err)
	})
}

// FuzzParseSignedCallback signs what it is given with the platform key, so
// that the fuzzer reaches the parser behind the signature. By how%3: 0
// sends body as it is; 1 and 2 send a notice of id and event whose
// resource, sealed with the APIv3 key under originalType, is plaintext
// (1) or a transaction or refund (by event) built from the fuzzed fields
// (2).
func FuzzParseSignedCallback(f *testing.F) {
	k := keys(f, "1900000109")
	ch := newChannel("", nil, k)
	hs, bs := fuzzNotices(f, k)
	for i, h := range hs {
		ts, nonce := h.Get("Wechatpay-Timestamp"), h.Get("Wechatpay-Nonce")
		f.Add(ts, nonce, bs[i], uint8(0), "", "", "", []byte(nil), "", "", "", "", int64(0), int64(0))
		o := open(f, k.WeChat.APIv3Key, bs[i])
		f.Add(ts, nonce, []byte(nil), uint8(1), o.event.ID, o.event.EventType, o.event.Resource.OriginalType, o.plaintext, "", "", "", "", int64(0), int64(0))
		var fields struct {
			OutTradeNo    string `json:"out_trade_no"`
			TransactionID string `json:"transaction_id"`
			TradeState    string `json:"trade_state"`
			RefundStatus  string `json:"refund_status"`
			SuccessTime   string `json:"success_time"`
			Amount        struct{ Total, Refund int64 }
		}
		json.Unmarshal(o.plaintext, &fields)
		f.Add(ts, nonce, []byte(nil), uint8(2), o.event.ID, o.event.EventType, o.event.Resource.OriginalType, []byte(nil), fields.OutTradeNo,
			fields.TransactionID, fields.TradeState+fields.RefundStatus, fields.SuccessTime, fields.Amount.Total, fields.Amount.Refund)
	}
	now := strconv.FormatInt(time.Now().Unix(), 10)
	f.Add(now, "n", []byte(`{}`), uint8(0), "", "", "", []byte(nil), "", "", "", "", int64(0), int64(0))
	f.Add(now, "n", []byte(nil), uint8(1), "EV-1", "TRANSACTION.SUCCESS", "transaction", []byte(`{}`), "", "", "", "", int64(0), int64(0))
	f.Add(now, "n", []byte(nil), uint8(1), "EV-2", "REFUND.SUCCESS", "refund", []byte(`{"mchid":"1900000109","amount":{"total":1,"refund":2}}`),
		"", "", "", "", int64(0), int64(0))
	f.Fuzz(func(t *testing.T, ts, nonce string, body []byte, how uint8, id, event, originalType string, plaintext []byte,
		outTradeNo, txnID, state, at string, total, refund int64) {
		if how%3 != 0 {
			if how%3 == 2 {
				plaintext = resource(k.WeChat, event, outTradeNo, txnID, state, at, total, refund)
			}
			res, err := paysim.Seal(k.WeChat.APIv3Key, originalType, plaintext)
			if err != nil {
				t.Fatal(err)
			}
			if body, err = json.Marshal(paysim.WXEvent{ID: id, CreateTime: "2026-11-23T10:00:00+08:00", ResourceType: "encrypt-resource",
				EventType: event, Summary: "支付成功", Resource: res}); err != nil {
				t.Fatal(err)
			}
		}
		sum := sha256.Sum256([]byte(ts + "\n" + nonce + "\n" + string(body) + "\n"))
		sig, err := rsa.SignPKCS1v15(nil, k.WeChat.PlatformKey, crypto.SHA256, sum[:])
		if err != nil {
			t.Fatal(err)
		}
		h := http.Header{}
		h.Set("Wechatpay-Timestamp", ts)
		h.Set("Wechatpay-Nonce", nonce)
		h.Set("Wechatpay-Signature", base64.StdEncoding.EncodeToString(sig))
		h.Set("Wechatpay-Serial", k.WeChat.PlatformKeyID)
		h.Set("Wechatpay-Signature-Type", "WECHATPAY2-SHA256-RSA2048")
		before := time.Now().Unix()
		n, err := ch.ParseCallback(h, body)
		check(t, &k.WeChat.PlatformKey.PublicKey, h, body, before, time.Now().Unix(), n, err)
	})
}

// resource is the plaintext of a notice's resource for event, of the
// merchant of k: a refund (REFUND.*) or a transaction.
func resource(k *paysim.WeChatKeys, event, outTradeNo, txnID, state, at string, total, refund int64) []byte {
	var v any
	if strings.HasPrefix(event, "REFUND.") {
		r := paysim.WXRefundNotice{MchID: k.MchID, OutTradeNo: outTradeNo, TransactionID: txnID, OutRefundNo: "40",
			RefundID: "50300000012026112300000001", RefundStatus: state, SuccessTime: at, UserReceivedAccount: "支付用户零钱"}
		r.Amount.Total, r.Amount.Refund, r.Amount.PayerTotal, r.Amount.PayerRefund = total, refund, total, refund
		v = r
	} else {
		v = paysim.WXTransaction{AppID: k.AppID, MchID: k.MchID, OutTradeNo: outTradeNo, TransactionID: txnID, TradeType: "MWEB",
			TradeState: state, SuccessTime: at, Amount: paysim.WXTxnAmnt{Total: total, PayerTotal: total, Currency: "CNY"}}
	}
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}
