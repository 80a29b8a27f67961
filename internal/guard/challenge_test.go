package guard_test

import (
	"crypto/sha256"
	"fmt"
	"math/bits"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/surge-platform/surge/internal/guard"
)

// now is a fixed time in the middle of a minute.
var now = time.Unix(1_700_000_000/60*60+30, 0)

// zeroBits hashes the text the way PoW documents it, independently of the
// package, and counts the leading zero bits.
func zeroBits(userID int64, scope, minute, nonce string) int {
	sum := sha256.Sum256(fmt.Appendf(nil, "surge-challenge:%s:%d:%s:%s", scope, userID, minute, nonce))
	n := 0
	for _, c := range sum {
		n += bits.LeadingZeros8(c)
		if c != 0 {
			break
		}
	}
	return n
}

func TestSolveThenVerify(t *testing.T) {
	t.Parallel()
	const user, scope, difficulty = 42, "sale-7", 12
	p := guard.NewPoW(difficulty)
	tok := guard.Solve(user, scope, difficulty, now)
	minute, nonce, _ := strings.Cut(tok, ":")
	if m := strconv.FormatInt(now.Unix()/60, 10); minute != m {
		t.Fatalf("token %q: minute %s, want %s", tok, minute, m)
	}
	got := zeroBits(user, scope, minute, nonce)
	if got < difficulty {
		t.Fatalf("token %q has %d zero bits, want %d", tok, got, difficulty)
	}
	valid := []struct {
		name string
		at   time.Time
	}{
		{"now", now},
		{"2 minutes later", now.Add(2 * time.Minute)},
		{"2 minutes earlier (a client clock ahead)", now.Add(-2 * time.Minute)},
	}
	for _, c := range valid {
		if !p.Verify(user, scope, tok, c.at) {
			t.Errorf("%s: Verify(%q) = false", c.name, tok)
		}
	}
	stale := guard.Solve(user, scope, difficulty, now.Add(-3*time.Minute))
	long := strings.Repeat("1", 33)
	invalid := []struct {
		name  string
		user  int64
		scope string
		token string
		at    time.Time
	}{
		{"another user", user + 1, scope, tok, now},
		{"another scope", user, "sale-8", tok, now},
		{"3 minutes later", user, scope, tok, now.Add(3 * time.Minute)},
		{"3 minutes earlier", user, scope, tok, now.Add(-3 * time.Minute)},
		{"a stale minute", user, scope, stale, now},
		{"more bits asked than solved", user, scope, tok, now},
		{"empty", user, scope, "", now},
		{"no colon", user, scope, minute + nonce, now},
		{"no nonce", user, scope, minute + ":", now},
		{"no minute", user, scope, ":" + nonce, now},
		{"a leading zero", user, scope, "0" + tok, now},
		{"a sign", user, scope, "+" + tok, now},
		{"a minute that is not a number", user, scope, "x" + tok, now},
		{"a minute of 13 digits", user, scope, "1000000000000:" + nonce, now},
		{"a colon in the nonce", user, scope, tok + ":", now},
		{"a nonce of 33 bytes", user, scope, minute + ":" + long, now},
		{"a nonce with a space", user, scope, tok + " ", now},
	}
	for _, c := range invalid {
		v := p
		if c.name == "more bits asked than solved" {
			v = guard.NewPoW(got + 1)
		}
		if v.Verify(c.user, c.scope, c.token, c.at) {
			t.Errorf("%s: Verify(%d, %q, %q) = true", c.name, c.user, c.scope, c.token)
		}
	}
}

func TestDefaultDifficulty(t *testing.T) {
	t.Parallel()
	tok := guard.Solve(1, "s", 0, now)
	minute, nonce, _ := strings.Cut(tok, ":")
	if n := zeroBits(1, "s", minute, nonce); n < guard.DefaultBits {
		t.Fatalf("Solve with bits 0: %d zero bits, want %d", n, guard.DefaultBits)
	}
	for name, p := range map[string]*guard.PoW{"zero value": {}, "NewPoW(0)": guard.NewPoW(0), "NewPoW(-1)": guard.NewPoW(-1)} {
		if got := p.Issue(1, "s", now)["bits"]; got != guard.DefaultBits {
			t.Errorf("%s asks for %v bits, want %d", name, got, guard.DefaultBits)
		}
		if !p.Verify(1, "s", tok, now) {
			t.Errorf("%s refuses a solution of %d bits", name, guard.DefaultBits)
		}
	}
	if got := guard.NewPoW(99).Issue(1, "s", now)["bits"]; got != guard.MaxBits {
		t.Errorf("NewPoW(99) asks for %v bits, want %d", got, guard.MaxBits)
	}
}

// TestIssueIsEnough solves a challenge from what Issue says alone, as a
// client would, and has it verified.
func TestIssueIsEnough(t *testing.T) {
	t.Parallel()
	var c guard.Challenger = guard.NewPoW(10)
	ch := c.Issue(42, "sale-7", now)
	if ch["kind"] != "pow" {
		t.Fatalf("kind %v, want pow", ch["kind"])
	}
	prefix, _ := ch["prefix"].(string)
	difficulty, _ := ch["bits"].(int)
	minute, _ := ch["minute"].(int64)
	if difficulty != 10 || prefix == "" || minute == 0 {
		t.Fatalf("challenge %v", ch)
	}
	for i := 0; ; i++ {
		nonce := "c" + strconv.Itoa(i)
		sum := sha256.Sum256([]byte(prefix + nonce))
		n := 0
		for _, b := range sum {
			n += bits.LeadingZeros8(b)
			if b != 0 {
				break
			}
		}
		if n >= difficulty {
			tok := strconv.FormatInt(minute, 10) + ":" + nonce
			if !c.Verify(42, "sale-7", tok, now.Add(time.Minute)) {
				t.Fatalf("a solution of %v refused: %q", ch, tok)
			}
			return
		}
	}
}

func TestVerifyDoesNotAllocate(t *testing.T) {
	// Not parallel: AllocsPerRun counts the whole process's allocations.
	p := guard.NewPoW(8)
	scope := strings.Repeat("s", 64)
	tok := guard.Solve(42, scope, 8, now)
	allocs := testing.AllocsPerRun(1000, func() {
		if !p.Verify(42, scope, tok, now) {
			t.Fatal("refused")
		}
	})
	if allocs != 0 {
		t.Errorf("%v allocations per Verify", allocs)
	}
}

func FuzzVerify(f *testing.F) {
	const difficulty = 4
	p := guard.NewPoW(difficulty)
	f.Add(int64(42), "sale-7", guard.Solve(42, "sale-7", difficulty, now))
	f.Add(int64(-1), "", "")
	f.Add(int64(0), ":", "::")
	f.Add(int64(1), "s", "28333333:")
	f.Add(int64(1), "s", "99999999999999999999:1")
	f.Fuzz(func(t *testing.T, userID int64, scope, token string) {
		if !p.Verify(userID, scope, token, now) {
			return
		}
		// Only a solution as documented may pass.
		minute, nonce, _ := strings.Cut(token, ":")
		m, err := strconv.ParseInt(minute, 10, 64)
		if err != nil || strconv.FormatInt(m, 10) != minute || m < now.Unix()/60-2 || m > now.Unix()/60+2 {
			t.Fatalf("accepted %q: its minute is not within 2 of now's", token)
		}
		if zeroBits(userID, scope, minute, nonce) < difficulty {
			t.Fatalf("accepted %q: too few zero bits", token)
		}
	})
}
