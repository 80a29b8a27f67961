package member

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/surge-platform/surge/internal/platform/id"
	"github.com/surge-platform/surge/internal/platform/sqldb/sqldbtest"
)

func newService(t *testing.T) *Service {
	t.Helper()
	db := sqldbtest.Open(t, sqldbtest.SQLiteURL(t, 1))
	g, _ := id.New(1)
	s, err := New(context.Background(), db, g)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestLoginIsStableAndTokensVerify(t *testing.T) {
	t.Parallel()
	s := newService(t)
	ctx := context.Background()
	tok, uid, err := s.Login(ctx, "+8613800000001")
	if err != nil {
		t.Fatal(err)
	}
	_, uid2, err := s.Login(ctx, "+8613800000001")
	if err != nil || uid2 != uid {
		t.Fatalf("second login gave user %d (%v), want %d", uid2, err, uid)
	}
	got, err := s.Verify(tok)
	if err != nil || got != uid {
		t.Fatalf("verify = %d, %v; want %d", got, err, uid)
	}
	for _, bad := range []string{"12345", "abcdefg", "+", strings.Repeat("1", 21)} {
		if _, _, err := s.Login(ctx, bad); err != ErrBadPhone {
			t.Errorf("phone %q: err %v, want ErrBadPhone", bad, err)
		}
	}
}

func TestForgedAndExpiredTokensFail(t *testing.T) {
	t.Parallel()
	s := newService(t)
	good := s.Sign(42, time.Now().Add(time.Hour))
	other := &Service{secret: []byte("another secret"), now: time.Now}
	cases := map[string]string{
		"empty":        "",
		"no dots":      "42",
		"other secret": other.Sign(42, time.Now().Add(time.Hour)),
		"changed user": "43" + good[2:],
		"expired":      s.Sign(42, time.Now().Add(-time.Second)),
		"truncated":    good[:len(good)-1],
		"zero user":    s.Sign(0, time.Now().Add(time.Hour)),
	}
	for name, tok := range cases {
		if _, err := s.Verify(tok); err != ErrToken {
			t.Errorf("%s: err %v, want ErrToken", name, err)
		}
	}
	if uid, err := s.Verify(good); err != nil || uid != 42 {
		t.Fatalf("good token: %d %v", uid, err)
	}
}

func FuzzParseToken(f *testing.F) {
	secret := []byte("fuzz secret")
	s := &Service{secret: secret, now: time.Now}
	f.Add(s.Sign(42, time.Now().Add(time.Hour)))
	f.Add("1.2.3")
	f.Add("..")
	f.Add("-1.99999999999999999999.00")
	f.Fuzz(func(t *testing.T, tok string) {
		uid, err := ParseToken(tok, secret, time.Now())
		if err == nil {
			// Only a correctly signed token may pass, and it must round-trip.
			if uid <= 0 {
				t.Fatalf("accepted %q as user %d", tok, uid)
			}
			i := strings.LastIndexByte(tok, '.')
			if s.mac(tok[:i]) != tok[i+1:] {
				t.Fatalf("accepted %q with a bad signature", tok)
			}
		}
	})
}
