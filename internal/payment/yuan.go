package payment

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/surge-platform/surge/internal/platform/errkind"
)

// ErrBadAmount: ParseYuan's input is not an amount.
var ErrBadAmount = errkind.New(errkind.Invalid, "bad_amount", "not an amount of yuan with at most 2 decimals")

// ParseYuan parses a non-negative amount of yuan with at most two decimals
// ("12.34", "12.3", "12", "0.05") into fen, exactly (no floats). Signs,
// leading zeros ("012"), more decimals, a bare dot, spaces, exponents and
// amounts over 15 integer digits are rejected with ErrBadAmount.
func ParseYuan(s string) (int64, error) {
	whole, frac, dot := strings.Cut(s, ".")
	if whole == "" || len(whole) > 15 || (len(whole) > 1 && whole[0] == '0') || !digits(whole) ||
		dot && (frac == "" || len(frac) > 2 || !digits(frac)) {
		return 0, ErrBadAmount.With("amount %.40q: want yuan with at most 2 decimals, e.g. 12.34", s)
	}
	fen, _ := strconv.ParseInt(whole, 10, 64) // at most 15 digits: fits, and fits times 100
	fen *= 100
	switch len(frac) {
	case 1:
		fen += int64(frac[0]-'0') * 10
	case 2:
		fen += int64(frac[0]-'0')*10 + int64(frac[1]-'0')
	}
	return fen, nil
}

func digits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// FormatYuan writes fen as yuan with two decimals ("12.34").
func FormatYuan(fen int64) string {
	if fen < 0 {
		return "-" + FormatYuan(-fen)
	}
	return fmt.Sprintf("%d.%02d", fen/100, fen%100)
}
