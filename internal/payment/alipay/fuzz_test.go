package alipay_test

import (
	"crypto"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"maps"
	"net/url"
	"strconv"
	"testing"
	"time"

	"github.com/surge-platform/surge/internal/payment"
	"github.com/surge-platform/surge/internal/payment/paysim"
)

// fuzzSeeds adds the notices paysim sends (a payment, also of the largest
// id; a refund in part; one in full; a trade closed unpaid) and junk,
// each followed by args.
func fuzzSeeds(f *testing.F, k paysim.ChannelConfig, args ...any) {
	now := time.Now()
	paid := func(id int64) payment.Notice {
		return payment.Notice{Status: payment.Status{PaymentID: id, ChannelTxnID: "2026112322001400000000000001", State: payment.Paid,
			Amount: 1234, PaidAt: now.Add(-time.Minute)}, NoticeID: "N" + strconv.FormatInt(id, 10), Timestamp: now}
	}
	part := paid(4)
	part.State, part.Refunded = payment.Refunded, 17
	part.Refund = &payment.RefundNote{OutRefundNo: "40", ChannelRefundID: "R40", Amount: 17, Succeeded: true, At: now}
	full := paid(5)
	full.State, full.Refunded = payment.Refunded, 1234
	closed := paid(3)
	closed.State, closed.PaidAt = payment.Closed, time.Time{}
	for _, n := range []payment.Notice{paid(1), paid(9_223_372_036_854_775_807), part, full, closed} {
		_, b, err := paysim.EncodeCallback(k, n)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(append([]any{b}, args...)...)
	}
	for _, junk := range []string{"sign=AAAA&sign_type=RSA2&out_trade_no=1", "a=1&a=2", "%zz", "sign_type=RSA2&alipay_cert_sn=1&sign=AAAA"} {
		f.Add(append([]any{[]byte(junk)}, args...)...)
	}
}

// signedContent is what Alipay's sign of notice v covers: every parameter
// but sign and sign_type.
func signedContent(v url.Values) string {
	w := maps.Clone(v)
	delete(w, "sign_type")
	return paysim.AliContent(w)
}

// check judges ParseCallback's answer to body: an error of the kinds it
// may return, or a form Alipay's key signed with sane fields.
func check(t *testing.T, alipayKey *rsa.PublicKey, body []byte, n payment.Notice, err error) {
	if err != nil {
		if !errors.Is(err, payment.ErrBadSignature) && !errors.Is(err, payment.ErrBadCallback) {
			t.Fatalf("error of another kind: %v", err)
		}
		return
	}
	v, perr := url.ParseQuery(string(body))
	if perr != nil {
		t.Fatalf("accepted a body that is not a form: %q", body)
	}
	sig, derr := base64.StdEncoding.DecodeString(v.Get("sign"))
	sum := sha256.Sum256([]byte(signedContent(v)))
	if derr != nil || rsa.VerifyPKCS1v15(alipayKey, crypto.SHA256, sum[:], sig) != nil {
		t.Fatalf("accepted a notice Alipay's key did not sign: %q", body)
	}
	if n.PaymentID <= 0 || n.Amount <= 0 || n.ChannelTxnID == "" || n.NoticeID == "" || n.Timestamp.IsZero() || n.Refund != nil {
		t.Fatalf("accepted %+v", n)
	}
	switch n.State {
	case payment.Paid:
		if n.PaidAt.IsZero() || n.Refunded != 0 {
			t.Fatalf("accepted a paid trade %+v", n)
		}
	case payment.Refunded:
		if n.PaidAt.IsZero() || n.Refunded <= 0 || n.Refunded > n.Amount {
			t.Fatalf("accepted a refunded trade %+v: refunded not within the amount, or never paid", n)
		}
	case payment.Closed:
		if !n.PaidAt.IsZero() || n.Refunded != 0 {
			t.Fatalf("accepted a closed trade %+v that was paid", n)
		}
	default:
		t.Fatalf("accepted %+v: state %q", n, n.State)
	}
}

// FuzzParseCallback feeds arbitrary bodies: nothing panics, and anything
// accepted was signed by Alipay's key and has sane fields.
func FuzzParseCallback(f *testing.F) {
	k := keys(f, "2021000117600001")
	ch := newChannel("http://127.0.0.1:1", nil, k)
	fuzzSeeds(f, k)
	f.Fuzz(func(t *testing.T, body []byte) {
		n, err := ch.ParseCallback(nil, body)
		check(t, &k.Alipay.AlipayKey.PublicKey, body, n, err)
	})
}

// FuzzParseSignedCallback signs whatever form it is given (when it is one),
// with parameter key set to value unless key is "", with Alipay's key as
// Alipay signs a notice, so that the fuzzer reaches the parser behind the
// signature check.
func FuzzParseSignedCallback(f *testing.F) {
	k := keys(f, "2021000117600001")
	ch := newChannel("http://127.0.0.1:1", nil, k)
	fuzzSeeds(f, k, "", "")
	for _, kv := range [][2]string{{"refund_fee", "0.17"}, {"refund_fee", "12.34"}, {"total_amount", "12.34"}, {"trade_status", "TRADE_CLOSED"},
		{"gmt_payment", "2026-11-23 10:00:00"}, {"notify_time", "2026-11-23 10:00:00"}, {"out_trade_no", "1"}} {
		fuzzSeeds(f, k, kv[0], kv[1])
	}
	f.Fuzz(func(t *testing.T, body []byte, key, value string) {
		v, err := url.ParseQuery(string(body))
		if err != nil {
			return
		}
		if key != "" {
			v.Set(key, value)
		}
		sum := sha256.Sum256([]byte(signedContent(v)))
		sig, err := rsa.SignPKCS1v15(nil, k.Alipay.AlipayKey, crypto.SHA256, sum[:])
		if err != nil {
			t.Fatal(err)
		}
		v.Set("sign", base64.StdEncoding.EncodeToString(sig))
		body = []byte(v.Encode())
		n, err := ch.ParseCallback(nil, body)
		check(t, &k.Alipay.AlipayKey.PublicKey, body, n, err)
	})
}
