package alisim_test

import (
	"crypto"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/surge-platform/surge/internal/payment"
	"github.com/surge-platform/surge/internal/payment/alisim"
	"github.com/surge-platform/surge/internal/payment/paysim"
)

func fuzzSeeds(f *testing.F) {
	k := keys()
	for _, n := range []payment.Notice{notice(1), notice(9_223_372_036_854_775_807)} {
		f.Add([]byte(mustEncode(f, k, n).Encode()))
	}
	refunded := notice(4)
	refunded.State, refunded.Refunded = payment.Refunded, 17
	f.Add([]byte(mustEncode(f, k, refunded).Encode()))
	closed := notice(3)
	closed.State, closed.PaidAt = payment.Closed, time.Time{}
	f.Add([]byte(mustEncode(f, k, closed).Encode()))
	f.Add([]byte("sign=AAAA&sign_type=RSA2&out_trade_no=1"))
	f.Add([]byte("a=1&a=2"))
	f.Add([]byte("%zz"))
}

func check(t *testing.T, k paysim.ChannelConfig, body []byte, n payment.Notice, err error) {
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
	sum := sha256.Sum256([]byte(paysim.AliContent(v)))
	if derr != nil || rsa.VerifyPKCS1v15(&k.PrivateKey.PublicKey, crypto.SHA256, sum[:], sig) != nil {
		t.Fatalf("accepted a callback that does not verify: %q", body)
	}
	if n.PaymentID <= 0 || n.Amount <= 0 || n.ChannelTxnID == "" || n.NoticeID == "" || n.Timestamp.IsZero() {
		t.Fatalf("accepted %+v", n)
	}
	if (n.State == payment.Paid || n.State == payment.Refunded) && n.PaidAt.IsZero() {
		t.Fatalf("accepted %+v: paid without paid_at", n)
	}
	if (n.State == payment.Refunded) != (n.Refunded > 0) || n.Refunded > n.Amount {
		t.Fatalf("accepted %+v: refunded does not fit the state and amount", n)
	}
}

// FuzzParseCallback feeds arbitrary bodies: nothing panics, and anything
// accepted verifies under the key and has positive ids and amount.
func FuzzParseCallback(f *testing.F) {
	k := keys()
	ch := newChannel("", nil, k)
	fuzzSeeds(f)
	f.Fuzz(func(t *testing.T, body []byte) {
		n, err := ch.ParseCallback(nil, body)
		check(t, k, body, n, err)
	})
}

// FuzzParseSignedCallback signs whatever form it is given (when it is one),
// so that the fuzzer reaches the parser behind the signature check.
func FuzzParseSignedCallback(f *testing.F) {
	k := keys()
	ch := newChannel("", nil, k)
	fuzzSeeds(f)
	f.Fuzz(func(t *testing.T, body []byte) {
		v, err := url.ParseQuery(string(body))
		if err != nil {
			return
		}
		body = sign(t, k, v)
		n, err := ch.ParseCallback(nil, body)
		check(t, k, body, n, err)
	})
}

// FuzzParseYuan: whatever is accepted is a canonical amount that formats
// back to itself (padded to two decimals).
func FuzzParseYuan(f *testing.F) {
	for _, s := range []string{"12.34", "0.5", "7", "-1", "1e3", "00.1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		fen, err := alisim.ParseYuan(s)
		if err != nil {
			return
		}
		want := s
		if whole, frac, ok := strings.Cut(s, "."); !ok {
			want = whole + ".00"
		} else if len(frac) == 1 {
			want += "0"
		}
		if fen < 0 || paysim.FormatYuan(fen) != want {
			t.Fatalf("ParseYuan(%q) = %d, formats as %q", s, fen, paysim.FormatYuan(fen))
		}
	})
}
