package payment

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

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

// ParseID parses a positive decimal id in canonical form (no sign, no
// leading zeros), as ids come back from a channel (out_trade_no).
func ParseID(s string) (int64, bool) {
	v, err := strconv.ParseInt(s, 10, 64)
	return v, err == nil && v > 0 && strconv.FormatInt(v, 10) == s
}

// CST is China's time zone, of the providers' times and bill days.
var CST = time.FixedZone("CST", 8*3600)

// ChinaDayLines returns the lines of UTC day (a date; day's own zone does
// not matter) from the bills of the two China days it overlaps, as bill
// reads the bill of one ("2006-01-02").
func ChinaDayLines(ctx context.Context, day time.Time, bill func(ctx context.Context, chinaDay string) ([]Line, error)) ([]Line, error) {
	day = day.UTC()
	from := time.Date(day.Year(), day.Month(), day.Day(), 0, 0, 0, 0, time.UTC)
	to := from.Add(24 * time.Hour)
	var out []Line
	for _, d := range []time.Time{from.In(CST), to.In(CST)} {
		lines, err := bill(ctx, d.Format(time.DateOnly))
		if err != nil {
			return nil, err
		}
		for _, l := range lines {
			if !l.At.Before(from) && l.At.Before(to) {
				out = append(out, l)
			}
		}
	}
	return out, nil
}

// Cut is s cut to at most max bytes at a character's boundary (the
// providers bound a subject or a reason in bytes of UTF-8).
func Cut(s string, max int) string {
	for len(s) > max {
		_, n := utf8.DecodeLastRuneInString(s)
		s = s[:len(s)-n]
	}
	return s
}
