package alisim_test

import (
	"crypto"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/surge-platform/surge/internal/payment"
	"github.com/surge-platform/surge/internal/payment/alisim"
	"github.com/surge-platform/surge/internal/payment/paysim"
	"github.com/surge-platform/surge/internal/payment/paysim/paysimtest"
)

func keys() paysim.ChannelConfig {
	k := paysim.DevKeys("alisim test")
	return paysim.ChannelConfig{Scheme: paysim.RSA, Secret: k.AliSecret, PrivateKey: k.AliPrivateKey}
}

var (
	otherOnce sync.Once
	other     paysim.ChannelConfig
)

// otherKeys has another merchant secret and another RSA key.
func otherKeys(tb testing.TB) paysim.ChannelConfig {
	otherOnce.Do(func() {
		other = paysimtest.OtherRSA(tb, paysim.ChannelConfig{Scheme: paysim.RSA, Secret: paysim.DevKeys("another merchant").AliSecret})
	})
	return other
}

func newChannel(base string, hc *http.Client, k paysim.ChannelConfig) payment.Channel {
	return alisim.New(alisim.Config{BaseURL: base, Secret: k.Secret, PublicKey: &k.PrivateKey.PublicKey, HTTP: hc})
}

func TestSuite(t *testing.T) {
	t.Parallel()
	paysimtest.Run(t, paysimtest.Harness{Name: alisim.Name, Keys: keys(), OtherKeys: otherKeys(t), New: newChannel})
}

var paidAt = time.Date(2026, 11, 23, 10, 0, 0, 0, time.UTC)

func notice(id int64) payment.Notice {
	return payment.Notice{
		Status:    payment.Status{PaymentID: id, ChannelTxnID: "alisim20261123abcdef" + strconv.FormatInt(id, 10), State: payment.Paid, Amount: 1234, PaidAt: paidAt},
		NoticeID:  "N" + strconv.FormatInt(id, 10),
		Timestamp: paidAt.Add(time.Second),
	}
}

func mustEncode(t testing.TB, k paysim.ChannelConfig, n payment.Notice) url.Values {
	t.Helper()
	_, b, err := paysim.EncodeCallback(k, n)
	if err != nil {
		t.Fatal(err)
	}
	v, err := url.ParseQuery(string(b))
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// sign signs v as paysim does.
func sign(t testing.TB, k paysim.ChannelConfig, v url.Values) []byte {
	t.Helper()
	v.Del("sign")
	sum := sha256.Sum256([]byte(paysim.AliContent(v)))
	sig, err := rsa.SignPKCS1v15(nil, k.PrivateKey, crypto.SHA256, sum[:])
	if err != nil {
		t.Fatal(err)
	}
	v.Set("sign", base64.StdEncoding.EncodeToString(sig))
	return []byte(v.Encode())
}

func edited(v url.Values, f func(url.Values)) url.Values {
	c := url.Values{}
	for k, vs := range v {
		c[k] = append([]string(nil), vs...)
	}
	f(c)
	return c
}

func edit(v url.Values, f func(url.Values)) []byte { return []byte(edited(v, f).Encode()) }

func TestParseCallback(t *testing.T) {
	t.Parallel()
	k := keys()
	ch := newChannel("", nil, k)
	refunded := func(id, fen int64) payment.Notice {
		n := notice(id)
		n.State, n.Refunded = payment.Refunded, fen
		return n
	}
	for _, n := range []payment.Notice{notice(42), func() payment.Notice {
		n := notice(43)
		n.State, n.PaidAt = payment.Closed, time.Time{}
		return n
	}(), refunded(44, 1), refunded(45, 600), refunded(46, 1234)} {
		h, b, err := paysim.EncodeCallback(k, n)
		if err != nil {
			t.Fatal(err)
		}
		if got, err := ch.ParseCallback(h, b); err != nil || got != n {
			t.Fatalf("got %+v %v, want %+v", got, err, n)
		}
	}
	if ct, ack := ch.Ack(); !strings.HasPrefix(ct, "text/plain") || string(ack) != "success" {
		t.Fatalf("ack %s %s", ct, ack)
	}
	// As Alipay: a trade closed after it was paid is refunded in full, even
	// without refund_fee.
	v := mustEncode(t, k, notice(47))
	v.Set("trade_status", "TRADE_CLOSED")
	want := refunded(47, 1234)
	if got, err := ch.ParseCallback(nil, sign(t, k, v)); err != nil || got != want {
		t.Fatalf("closed after paying: %+v %v, want %+v", got, err, want)
	}
}

func TestForgedCallbacks(t *testing.T) {
	t.Parallel()
	k := keys()
	ch := newChannel("", nil, k)
	v1, v2 := mustEncode(t, k, notice(1)), mustEncode(t, k, notice(2))
	wrong := mustEncode(t, otherKeys(t), notice(1))
	b1 := []byte(v1.Encode())
	flipped := append([]byte(nil), b1...)
	flipped[len(flipped)/3] ^= 1
	cases := []struct {
		name string
		body []byte
	}{
		{"wrong key", []byte(wrong.Encode())},
		{"body altered by one byte", flipped},
		{"sign removed", edit(v1, func(v url.Values) { v.Del("sign") })},
		{"sign empty", edit(v1, func(v url.Values) { v.Set("sign", "") })},
		{"sign of another notice", edit(v1, func(v url.Values) { v.Set("sign", v2.Get("sign")) })},
		{"sign of a notice with another amount", edit(v2, func(v url.Values) { v.Set("total_amount", "99999.00") })},
		{"sign_type removed", edit(v1, func(v url.Values) { v.Del("sign_type") })},
		{"sign_type RSA", edit(v1, func(v url.Values) { v.Set("sign_type", "RSA") })},
		{"parameter added", edit(v1, func(v url.Values) { v.Set("refund_fee", "12.34") })},
		{"parameter removed", edit(v1, func(v url.Values) { v.Del("gmt_payment") })},
		{"parameter twice", edit(v1, func(v url.Values) { v.Add("out_trade_no", "2") })},
		{"sign twice", edit(v1, func(v url.Values) { v.Add("sign", v2.Get("sign")) })},
		{"value holding &", edit(v1, func(v url.Values) { v.Set("notify_id", "N1&out_trade_no=2") })},
		{"sign not base64", edit(v1, func(v url.Values) { v.Set("sign", "!!!") })},
		{"not a form", []byte("%zz")},
		{"empty", nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := ch.ParseCallback(nil, tc.body); !errors.Is(err, payment.ErrBadSignature) {
				t.Fatalf("got %v, want ErrBadSignature", err)
			}
		})
	}
	t.Run("no public key", func(t *testing.T) {
		if _, err := alisim.New(alisim.Config{}).ParseCallback(nil, b1); !errors.Is(err, payment.ErrBadSignature) {
			t.Fatalf("got %v, want ErrBadSignature", err)
		}
	})
}

func TestMalformedButSigned(t *testing.T) {
	t.Parallel()
	k := keys()
	ch := newChannel("", nil, k)
	base := mustEncode(t, k, notice(7))
	cases := []struct {
		name string
		edit func(url.Values)
	}{
		{"zero out_trade_no", func(v url.Values) { v.Set("out_trade_no", "0") }},
		{"signed out_trade_no", func(v url.Values) { v.Set("out_trade_no", "+7") }},
		{"out_trade_no missing", func(v url.Values) { v.Del("out_trade_no") }},
		{"trade_no missing", func(v url.Values) { v.Del("trade_no") }},
		{"notify_id missing", func(v url.Values) { v.Del("notify_id") }},
		{"amount with 3 decimals", func(v url.Values) { v.Set("total_amount", "12.345") }},
		{"negative amount", func(v url.Values) { v.Set("total_amount", "-12.34") }},
		{"zero amount", func(v url.Values) { v.Set("total_amount", "0.00") }},
		{"amount garbage", func(v url.Values) { v.Set("total_amount", "12,34") }},
		{"amount float syntax", func(v url.Values) { v.Set("total_amount", "1e3") }},
		{"amount missing", func(v url.Values) { v.Del("total_amount") }},
		{"waiting status", func(v url.Values) { v.Set("trade_status", "WAIT_BUYER_PAY") }},
		{"gmt_payment garbage", func(v url.Values) { v.Set("gmt_payment", "2026-11-23T10:00:00Z") }},
		{"paid without gmt_payment", func(v url.Values) { v.Del("gmt_payment") }},
		{"notify_time missing", func(v url.Values) { v.Del("notify_time") }},
		{"refund_fee over the amount", func(v url.Values) { v.Set("refund_fee", "12.35") }},
		{"refund_fee zero", func(v url.Values) { v.Set("refund_fee", "0.00") }},
		{"refund_fee garbage", func(v url.Values) { v.Set("refund_fee", "-1") }},
		{"closed in part", func(v url.Values) { v.Set("trade_status", "TRADE_CLOSED"); v.Set("refund_fee", "1.00") }},
		{"unpaid with refund_fee", func(v url.Values) {
			v.Set("trade_status", "TRADE_CLOSED")
			v.Del("gmt_payment")
			v.Set("refund_fee", "1.00")
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			body := sign(t, k, edited(base, tc.edit))
			if _, err := ch.ParseCallback(nil, body); !errors.Is(err, payment.ErrBadCallback) {
				t.Fatalf("got %v, want ErrBadCallback", err)
			}
		})
	}
	if _, err := ch.ParseCallback(nil, sign(t, k, edited(base, func(url.Values) {}))); err != nil {
		t.Fatalf("the unedited notice signed again: %v", err)
	}
}

func TestParseYuan(t *testing.T) {
	t.Parallel()
	cases := []struct {
		in   string
		want int64
		ok   bool
	}{
		{"12.34", 1234, true},
		{"12.3", 1230, true},
		{"12", 1200, true},
		{"0.01", 1, true},
		{"0.00", 0, true},
		{"0", 0, true},
		{"999999999999999.99", 99999999999999999, true},
		{"", 0, false},
		{"12.345", 0, false},
		{"12.", 0, false},
		{".5", 0, false},
		{"-1.00", 0, false},
		{"+1.00", 0, false},
		{"012.00", 0, false},
		{"1e3", 0, false},
		{"1,00", 0, false},
		{" 1.00", 0, false},
		{"1.00 ", 0, false},
		{"1.0.0", 0, false},
		{"1.-1", 0, false},
		{"1000000000000000.00", 0, false}, // 16 integer digits
		{"NaN", 0, false},
		{"１.00", 0, false}, // full-width digit
	}
	for _, tc := range cases {
		got, err := alisim.ParseYuan(tc.in)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("ParseYuan(%q) = %d, %v; want %d, ok %v", tc.in, got, err, tc.want, tc.ok)
		}
		if err != nil && !errors.Is(err, alisim.ErrBadAmount) {
			t.Errorf("ParseYuan(%q): %v, want ErrBadAmount", tc.in, err)
		}
	}
}
