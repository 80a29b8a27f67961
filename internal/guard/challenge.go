package guard

import (
	"crypto/sha256"
	"math/bits"
	"strconv"
	"strings"
	"time"
)

// Challenger checks the challenges (captcha-style) that a request must
// carry when its caller decides so: a flash-sale purchase by a user whose
// risk is high. Implementations are safe for concurrent use.
type Challenger interface {
	// Verify reports whether token is a valid solution for this user and
	// scope (a sale id) now.
	Verify(userID int64, scope string, token string, now time.Time) bool
	// Issue returns what a client needs to solve one, as a JSON object:
	// for PoW, {"kind":"pow","bits":N,"prefix":"...","minute":M}.
	Issue(userID int64, scope string, now time.Time) map[string]any
}

// Difficulty of PoW, in leading zero bits of a hash: each bit doubles the
// work of a solution (16 bits: 65,536 hashes on average, some
// milliseconds in Go, well under a second in a browser).
const (
	DefaultBits = 16
	MaxBits     = 32
)

// maxNonce is the longest nonce Verify accepts, in bytes.
const maxNonce = 32

// PoW is the built-in Challenger, a proof of work. A token is
// "<unix minute>:<nonce>" and is valid while its minute is within 2 of
// now's and sha256("surge-challenge:" + scope + ":" + userID + ":" +
// minute + ":" + nonce) starts with Bits zero bits; the minute is decimal
// without leading zeros, the nonce 1 to 32 letters, digits, '-' or '_'.
// It needs no secret: any node verifies what a client solved for another.
//
// A solution holds for its user and scope for about 5 minutes, as many
// times as it is sent: it prices a user's entry to a sale, not each
// request (per-user limits do that). The zero value asks for DefaultBits.
type PoW struct {
	bits int
}

var _ Challenger = (*PoW)(nil)

// NewPoW returns a PoW asking for bits leading zero bits: DefaultBits when
// bits <= 0, at most MaxBits.
func NewPoW(bits int) *PoW { return &PoW{bits: difficulty(bits)} }

func difficulty(bits int) int {
	if bits <= 0 {
		return DefaultBits
	}
	return min(bits, MaxBits)
}

// Issue returns the challenge: find a nonce such that sha256(prefix +
// nonce) starts with bits zero bits, and send minute + ":" + nonce.
func (p *PoW) Issue(userID int64, scope string, now time.Time) map[string]any {
	minute := now.Unix() / 60
	return map[string]any{
		"kind":   "pow",
		"bits":   difficulty(p.bits),
		"prefix": string(prefix(nil, userID, scope, minute)),
		"minute": minute,
	}
}

// Verify reports whether token solves the challenge of userID and scope
// at now. It does not allocate for a scope of up to 64 bytes.
func (p *PoW) Verify(userID int64, scope string, token string, now time.Time) bool {
	m, nonce, ok := strings.Cut(token, ":")
	if !ok || !validNonce(nonce) {
		return false
	}
	minute, ok := parseMinute(m)
	if now := now.Unix() / 60; !ok || minute < now-2 || minute > now+2 {
		return false
	}
	var buf [160]byte // 83 bytes of text besides the scope, at the most
	in := append(prefix(buf[:0], userID, scope, minute), nonce...)
	sum := sha256.Sum256(in)
	return zeroBits(&sum) >= difficulty(p.bits)
}

// Solve finds a solution to the challenge of userID and scope at now for
// bits (as NewPoW takes them), for clients, tests and the demo. It takes
// 2^bits hashes on average.
func Solve(userID int64, scope string, bits int, now time.Time) string {
	bits = difficulty(bits)
	minute := now.Unix() / 60
	in := prefix(nil, userID, scope, minute)
	n := len(in)
	for nonce := uint64(0); ; nonce++ {
		in = strconv.AppendUint(in[:n], nonce, 10)
		if sum := sha256.Sum256(in); zeroBits(&sum) >= bits {
			return strconv.FormatInt(minute, 10) + ":" + string(in[n:])
		}
	}
}

// prefix appends what a nonce follows in the hashed text to b.
func prefix(b []byte, userID int64, scope string, minute int64) []byte {
	b = append(b, "surge-challenge:"...)
	b = append(b, scope...)
	b = append(b, ':')
	b = strconv.AppendInt(b, userID, 10)
	b = append(b, ':')
	b = strconv.AppendInt(b, minute, 10)
	return append(b, ':')
}

// parseMinute reads a minute in canonical decimal: digits, no sign, no
// leading zero, at most 12 of them.
func parseMinute(s string) (int64, bool) {
	if len(s) == 0 || len(s) > 12 || (s[0] == '0' && len(s) > 1) {
		return 0, false
	}
	var n int64
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int64(c-'0')
	}
	return n, true
}

func validNonce(s string) bool {
	if len(s) == 0 || len(s) > maxNonce {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

// zeroBits counts the leading zero bits of sum.
func zeroBits(sum *[sha256.Size]byte) int {
	n := 0
	for _, c := range sum {
		if c != 0 {
			return n + bits.LeadingZeros8(c)
		}
		n += 8
	}
	return n
}
