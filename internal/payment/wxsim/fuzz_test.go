package wxsim_test

import (
	"crypto/hmac"
	"encoding/hex"
	"errors"
	"net/http"
	"testing"
	"time"

	"github.com/surge-platform/surge/internal/payment"
	"github.com/surge-platform/surge/internal/payment/paysim"
	"github.com/surge-platform/surge/internal/payment/wxsim"
)

func fuzzSeeds(f *testing.F, k paysim.ChannelConfig) {
	for _, n := range []payment.Notice{notice(1), notice(9_223_372_036_854_775_807)} {
		h, b := mustEncode(f, k, n)
		f.Add(h.Get(wxsim.HeaderTimestamp), h.Get(wxsim.HeaderNonce), h.Get(wxsim.HeaderSignature), b)
	}
	refunded := notice(4)
	refunded.State, refunded.Refunded = payment.Refunded, 17
	h, b := mustEncode(f, k, refunded)
	f.Add(h.Get(wxsim.HeaderTimestamp), h.Get(wxsim.HeaderNonce), h.Get(wxsim.HeaderSignature), b)
	closed := notice(3)
	closed.State, closed.PaidAt = payment.Closed, time.Time{}
	h, b = mustEncode(f, k, closed)
	f.Add(h.Get(wxsim.HeaderTimestamp), h.Get(wxsim.HeaderNonce), h.Get(wxsim.HeaderSignature), b)
	f.Add("", "", "", []byte(`{}`))
	f.Add("1", "n", "00", []byte(`{"merchant_txn_id":"1"}`))
}

func check(t *testing.T, k paysim.ChannelConfig, ts, nonce, sig string, body []byte, n payment.Notice, err error) {
	if err != nil {
		if !errors.Is(err, payment.ErrBadSignature) && !errors.Is(err, payment.ErrBadCallback) {
			t.Fatalf("error of another kind: %v", err)
		}
		return
	}
	want, _ := hex.DecodeString(paysim.SignCallback(k.Secret, ts, nonce, body))
	got, _ := hex.DecodeString(sig)
	if !hmac.Equal(got, want) {
		t.Fatalf("accepted a callback that does not verify: %q %q %q %q", ts, nonce, sig, body)
	}
	if n.PaymentID <= 0 || n.Amount <= 0 || n.ChannelTxnID == "" || n.NoticeID == "" || n.Timestamp.IsZero() {
		t.Fatalf("accepted %+v", n)
	}
	if (n.State == payment.Paid || n.State == payment.Refunded) == n.PaidAt.IsZero() {
		t.Fatalf("accepted %+v: paid_at does not fit the state", n)
	}
	if (n.State == payment.Refunded) != (n.Refunded > 0) || n.Refunded > n.Amount {
		t.Fatalf("accepted %+v: refunded does not fit the state and amount", n)
	}
}

// FuzzParseCallback feeds arbitrary headers and bodies: nothing panics, and
// anything accepted verifies under the key and has positive ids and amount.
func FuzzParseCallback(f *testing.F) {
	k := keys("fuzz")
	ch := wxsim.New(wxsim.Config{Secret: k.Secret})
	fuzzSeeds(f, k)
	f.Fuzz(func(t *testing.T, ts, nonce, sig string, body []byte) {
		h := http.Header{}
		h.Set(wxsim.HeaderTimestamp, ts)
		h.Set(wxsim.HeaderNonce, nonce)
		h.Set(wxsim.HeaderSignature, sig)
		n, err := ch.ParseCallback(h, body)
		check(t, k, ts, nonce, sig, body, n, err)
	})
}

// FuzzParseSignedCallback signs whatever body it is given, so that the
// fuzzer reaches the parser behind the signature check.
func FuzzParseSignedCallback(f *testing.F) {
	k := keys("fuzz")
	ch := wxsim.New(wxsim.Config{Secret: k.Secret})
	fuzzSeeds(f, k)
	f.Fuzz(func(t *testing.T, ts, nonce, _ string, body []byte) {
		sig := paysim.SignCallback(k.Secret, ts, nonce, body)
		h := http.Header{}
		h.Set(wxsim.HeaderTimestamp, ts)
		h.Set(wxsim.HeaderNonce, nonce)
		h.Set(wxsim.HeaderSignature, sig)
		n, err := ch.ParseCallback(h, body)
		check(t, k, ts, nonce, sig, body, n, err)
	})
}
