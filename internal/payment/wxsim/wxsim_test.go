package wxsim_test

import (
	"errors"
	"net/http"
	"strconv"
	"testing"
	"time"

	"github.com/surge-platform/surge/internal/payment"
	"github.com/surge-platform/surge/internal/payment/paysim"
	"github.com/surge-platform/surge/internal/payment/paysim/paysimtest"
	"github.com/surge-platform/surge/internal/payment/wxsim"
)

func keys(seed string) paysim.ChannelConfig {
	return paysim.ChannelConfig{Scheme: paysim.HMAC, Secret: paysim.DevKeys(seed).WXSecret}
}

func newChannel(base string, hc *http.Client, k paysim.ChannelConfig) payment.Channel {
	return wxsim.New(wxsim.Config{BaseURL: base, Secret: k.Secret, HTTP: hc})
}

func TestSuite(t *testing.T) {
	t.Parallel()
	paysimtest.Run(t, paysimtest.Harness{Name: wxsim.Name, Keys: keys("wxsim test"), OtherKeys: keys("another merchant"), New: newChannel})
}

var paidAt = time.Date(2026, 11, 23, 10, 0, 0, 0, time.UTC)

func notice(id int64) payment.Notice {
	return payment.Notice{
		Status:    payment.Status{PaymentID: id, ChannelTxnID: "wxsim20261123abcdef" + strconv.FormatInt(id, 10), State: payment.Paid, Amount: 1234, PaidAt: paidAt},
		NoticeID:  "N" + strconv.FormatInt(id, 10),
		Timestamp: paidAt.Add(time.Second),
	}
}

func mustEncode(t testing.TB, k paysim.ChannelConfig, n payment.Notice) (http.Header, []byte) {
	t.Helper()
	h, b, err := paysim.EncodeCallback(k, n)
	if err != nil {
		t.Fatal(err)
	}
	return h, b
}

func with(h http.Header, key, value string) http.Header {
	h = h.Clone()
	if value == "" {
		h.Del(key)
	} else {
		h.Set(key, value)
	}
	return h
}

func TestParseCallback(t *testing.T) {
	t.Parallel()
	k := keys("parse")
	ch := wxsim.New(wxsim.Config{Secret: k.Secret})
	h, b := mustEncode(t, k, notice(42))
	n, err := ch.ParseCallback(h, b)
	if err != nil || n != notice(42) {
		t.Fatalf("got %+v %v, want %+v", n, err, notice(42))
	}
	if ct, ack := ch.Ack(); ct != "application/json" || string(ack) != `{"code":"SUCCESS"}` {
		t.Fatalf("ack %s %s", ct, ack)
	}
	for _, refunded := range []int64{1, 600, 1234} { // in part and in full
		r := notice(43)
		r.State, r.Refunded = payment.Refunded, refunded
		h, b := mustEncode(t, k, r)
		if n, err := ch.ParseCallback(h, b); err != nil || n != r {
			t.Fatalf("refunded %d: got %+v %v, want %+v", refunded, n, err, r)
		}
	}
}

func TestForgedCallbacks(t *testing.T) {
	t.Parallel()
	k := keys("forged")
	ch := wxsim.New(wxsim.Config{Secret: k.Secret})
	h1, b1 := mustEncode(t, k, notice(1))
	h2, _ := mustEncode(t, k, notice(2))
	hWrong, bWrong := mustEncode(t, keys("someone else"), notice(1))
	flipped := append([]byte(nil), b1...)
	flipped[len(flipped)/2] ^= 1
	ts := h1.Get(wxsim.HeaderTimestamp)
	tsPlus, _ := strconv.ParseInt(ts, 10, 64)
	cases := []struct {
		name string
		h    http.Header
		body []byte
	}{
		{"wrong key", hWrong, bWrong},
		{"body altered by one byte", h1, flipped},
		{"signature removed", with(h1, wxsim.HeaderSignature, ""), b1},
		{"timestamp removed", with(h1, wxsim.HeaderTimestamp, ""), b1},
		{"nonce removed", with(h1, wxsim.HeaderNonce, ""), b1},
		{"no headers", http.Header{}, b1},
		{"headers of another notice", h2, b1},
		{"signature of another notice", with(h1, wxsim.HeaderSignature, h2.Get(wxsim.HeaderSignature)), b1},
		{"timestamp changed", with(h1, wxsim.HeaderTimestamp, strconv.FormatInt(tsPlus+1, 10)), b1},
		{"nonce changed", with(h1, wxsim.HeaderNonce, "other"), b1},
		{"signature not hex", with(h1, wxsim.HeaderSignature, "zz"), b1},
		{"signature truncated", with(h1, wxsim.HeaderSignature, h1.Get(wxsim.HeaderSignature)[:62]), b1},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := ch.ParseCallback(tc.h, tc.body); !errors.Is(err, payment.ErrBadSignature) {
				t.Fatalf("got %v, want ErrBadSignature", err)
			}
		})
	}
}

// signed returns headers that sign body correctly.
func signed(k paysim.ChannelConfig, ts string, body string) (http.Header, []byte) {
	h := http.Header{}
	h.Set(wxsim.HeaderTimestamp, ts)
	h.Set(wxsim.HeaderNonce, "nonce")
	h.Set(wxsim.HeaderSignature, paysim.SignCallback(k.Secret, ts, "nonce", []byte(body)))
	return h, []byte(body)
}

func TestMalformedButSigned(t *testing.T) {
	t.Parallel()
	k := keys("malformed")
	ch := wxsim.New(wxsim.Config{Secret: k.Secret})
	const ok = `{"merchant_txn_id":"42","txn_id":"T1","amount":1234,"state":"paid","paid_at":"2026-11-23T10:00:00Z","notice_id":"N1","timestamp":1795428000}`
	if _, err := ch.ParseCallback(signed(k, "1795428000", ok)); err != nil {
		t.Fatalf("the valid body: %v", err)
	}
	cases := []struct{ name, ts, body string }{
		{"not JSON", "1795428000", `merchant_txn_id=42`},
		{"empty", "1795428000", ``},
		{"trailing data", "1795428000", ok + `{}`},
		{"timestamp mismatch", "1795428001", ok},
		{"timestamp not canonical", "01795428000", ok},
		{"zero id", "1", `{"merchant_txn_id":"0","txn_id":"T1","amount":1,"state":"paid","paid_at":"2026-11-23T10:00:00Z","notice_id":"N1","timestamp":1}`},
		{"signed id", "1", `{"merchant_txn_id":"+42","txn_id":"T1","amount":1,"state":"paid","paid_at":"2026-11-23T10:00:00Z","notice_id":"N1","timestamp":1}`},
		{"id with leading zero", "1", `{"merchant_txn_id":"042","txn_id":"T1","amount":1,"state":"paid","paid_at":"2026-11-23T10:00:00Z","notice_id":"N1","timestamp":1}`},
		{"numeric id", "1", `{"merchant_txn_id":42,"txn_id":"T1","amount":1,"state":"paid","paid_at":"2026-11-23T10:00:00Z","notice_id":"N1","timestamp":1}`},
		{"zero amount", "1", `{"merchant_txn_id":"42","txn_id":"T1","amount":0,"state":"paid","paid_at":"2026-11-23T10:00:00Z","notice_id":"N1","timestamp":1}`},
		{"negative amount", "1", `{"merchant_txn_id":"42","txn_id":"T1","amount":-5,"state":"paid","paid_at":"2026-11-23T10:00:00Z","notice_id":"N1","timestamp":1}`},
		{"fractional amount", "1", `{"merchant_txn_id":"42","txn_id":"T1","amount":12.5,"state":"paid","paid_at":"2026-11-23T10:00:00Z","notice_id":"N1","timestamp":1}`},
		{"pending state", "1", `{"merchant_txn_id":"42","txn_id":"T1","amount":1,"state":"pending","paid_at":"","notice_id":"N1","timestamp":1}`},
		{"paid without paid_at", "1", `{"merchant_txn_id":"42","txn_id":"T1","amount":1,"state":"paid","paid_at":"","notice_id":"N1","timestamp":1}`},
		{"bad paid_at", "1", `{"merchant_txn_id":"42","txn_id":"T1","amount":1,"state":"paid","paid_at":"yesterday","notice_id":"N1","timestamp":1}`},
		{"no notice id", "1", `{"merchant_txn_id":"42","txn_id":"T1","amount":1,"state":"paid","paid_at":"2026-11-23T10:00:00Z","timestamp":1}`},
		{"no txn id", "1", `{"merchant_txn_id":"42","amount":1,"state":"paid","paid_at":"2026-11-23T10:00:00Z","notice_id":"N1","timestamp":1}`},
		{"txn id with space", "1", `{"merchant_txn_id":"42","txn_id":"T 1","amount":1,"state":"paid","paid_at":"2026-11-23T10:00:00Z","notice_id":"N1","timestamp":1}`},
		{"refunded without how much", "1", `{"merchant_txn_id":"42","txn_id":"T1","amount":5,"state":"refunded","paid_at":"2026-11-23T10:00:00Z","notice_id":"N1","timestamp":1}`},
		{"refunded over the amount", "1", `{"merchant_txn_id":"42","txn_id":"T1","amount":5,"state":"refunded","refunded":6,"paid_at":"2026-11-23T10:00:00Z","notice_id":"N1","timestamp":1}`},
		{"refunded negative", "1", `{"merchant_txn_id":"42","txn_id":"T1","amount":5,"state":"refunded","refunded":-1,"paid_at":"2026-11-23T10:00:00Z","notice_id":"N1","timestamp":1}`},
		{"paid with something refunded", "1", `{"merchant_txn_id":"42","txn_id":"T1","amount":5,"state":"paid","refunded":1,"paid_at":"2026-11-23T10:00:00Z","notice_id":"N1","timestamp":1}`},
		{"refunded without paid_at", "1", `{"merchant_txn_id":"42","txn_id":"T1","amount":5,"state":"refunded","refunded":5,"paid_at":"","notice_id":"N1","timestamp":1}`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := ch.ParseCallback(signed(k, tc.ts, tc.body)); !errors.Is(err, payment.ErrBadCallback) {
				t.Fatalf("got %v, want ErrBadCallback", err)
			}
		})
	}
}
