package pricing

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/surge-platform/surge/internal/platform/errkind"
)

// testCase is one case of a testdata/*.json file (a JSON array of them).
// Fields of want that are absent are not checked; an empty list is checked
// to be empty.
type testCase struct {
	Name       string      `json:"name"`
	Note       string      `json:"note"`
	At         time.Time   `json:"at"`
	Cart       Cart        `json:"cart"`
	Promotions []Promotion `json:"promotions"`
	Coupons    []Coupon    `json:"coupons"`
	Want       *want       `json:"want"`
	// WantError is the code of the expected error; WantErrorHas a part of
	// its message.
	WantError    string `json:"want_error"`
	WantErrorHas string `json:"want_error_has"`
}

type want struct {
	Total     int64      `json:"total"`
	Payable   int64      `json:"payable"`
	Lines     []wantLine `json:"lines"`
	Discounts []Discount `json:"discounts"`
	Skipped   []Skip     `json:"skipped"`
	Refunds   []struct {
		Lines []int `json:"lines"`
		Want  int64 `json:"want"`
	} `json:"refunds"`
}

type wantLine struct {
	SKU       int64      `json:"sku"`
	Qty       int64      `json:"qty"`
	Price     int64      `json:"price"`
	List      int64      `json:"list"`
	GiftOf    int64      `json:"gift_of"`
	Payable   int64      `json:"payable"`
	Discounts []Discount `json:"discounts"`
}

// MustLoadCases reads every testdata/*.json file.
func MustLoadCases(tb testing.TB) map[string][]testCase {
	tb.Helper()
	files, err := filepath.Glob(filepath.Join("testdata", "*.json"))
	if err != nil || len(files) == 0 {
		tb.Fatalf("no testdata: %v", err)
	}
	out := map[string][]testCase{}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			tb.Fatal(err)
		}
		dec := json.NewDecoder(bytes.NewReader(b))
		dec.DisallowUnknownFields()
		var cases []testCase
		if err := dec.Decode(&cases); err != nil {
			tb.Fatalf("%s: %v", f, err)
		}
		out[strings.TrimSuffix(filepath.Base(f), ".json")] = cases
	}
	return out
}

func TestPriceTestdata(t *testing.T) {
	t.Parallel()
	for file, cases := range MustLoadCases(t) {
		t.Run(file, func(t *testing.T) {
			t.Parallel()
			for _, tc := range cases {
				t.Run(tc.Name, func(t *testing.T) {
					t.Parallel()
					runCase(t, tc)
				})
			}
		})
	}
}

func runCase(t *testing.T, tc testCase) {
	t.Helper()
	got, err := Price(tc.Cart, tc.Promotions, tc.Coupons, tc.At)
	if tc.WantError != "" {
		e := errkind.Of(err)
		if e == nil || e.Code != tc.WantError || !strings.Contains(e.Message, tc.WantErrorHas) {
			t.Fatalf("error = %v, want code %s containing %q", err, tc.WantError, tc.WantErrorHas)
		}
		return
	}
	if err != nil {
		t.Fatalf("Price: %v", err)
	}
	checkInvariants(t, tc.Cart, got)
	w := tc.Want
	if w == nil {
		t.Fatal("case has neither want nor want_error")
	}
	if got.Total != w.Total || got.Payable != w.Payable {
		t.Errorf("total/payable = %d/%d, want %d/%d", got.Total, got.Payable, w.Total, w.Payable)
	}
	if w.Lines != nil {
		if len(got.Lines) != len(w.Lines) {
			t.Fatalf("%d lines, want %d: %s", len(got.Lines), len(w.Lines), mustJSON(t, got.Lines))
		}
		for i, wl := range w.Lines {
			gl := got.Lines[i]
			if gl.SKU != wl.SKU || gl.Payable != wl.Payable || gl.GiftOf != wl.GiftOf ||
				(wl.Qty != 0 && gl.Qty != wl.Qty) || (wl.List != 0 && gl.List != wl.List) || gl.Price != wl.Price && wl.Price != 0 {
				t.Errorf("line %d = %s, want %s", i, mustJSON(t, gl), mustJSON(t, wl))
			}
			if wl.Discounts != nil && !slices.Equal(gl.Discounts, wl.Discounts) {
				t.Errorf("line %d discounts = %s, want %s", i, mustJSON(t, gl.Discounts), mustJSON(t, wl.Discounts))
			}
		}
	}
	if w.Discounts != nil && !slices.Equal(got.Discounts, w.Discounts) {
		t.Errorf("discounts = %s, want %s", mustJSON(t, got.Discounts), mustJSON(t, w.Discounts))
	}
	if w.Skipped != nil && !slices.Equal(got.Skipped, w.Skipped) {
		t.Errorf("skipped = %s, want %s", mustJSON(t, got.Skipped), mustJSON(t, w.Skipped))
	}
	for _, r := range w.Refunds {
		if g := got.Refund(r.Lines...); g != r.Want {
			t.Errorf("refund of lines %v = %d, want %d", r.Lines, g, r.Want)
		}
	}
}

func mustJSON(tb testing.TB, v any) string {
	tb.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		tb.Fatal(err)
	}
	return string(b)
}

// checkInvariants holds for every result: the lines add up to the payable,
// no line is negative or above its list amount, the payable is at most the
// total, the discounts add up to total - payable, and each line's payable is
// its list minus its discounts.
func checkInvariants(tb testing.TB, cart Cart, r Result) {
	tb.Helper()
	var sum, total, disc int64
	for i, l := range r.Lines {
		var ld int64
		for _, d := range l.Discounts {
			if d.Amount <= 0 {
				tb.Errorf("line %d: discount %+v not positive", i, d)
			}
			ld += d.Amount
		}
		if l.Payable < 0 || l.Payable > l.List || l.List-ld != l.Payable || l.List != l.Price*l.Qty {
			tb.Errorf("line %d inconsistent: %+v", i, l)
		}
		if l.GiftOf != 0 && (l.Price != 0 || l.Payable != 0) {
			tb.Errorf("gift line %d is not free: %+v", i, l)
		}
		sum += l.Payable
		total += l.List
	}
	for _, d := range r.Discounts {
		disc += d.Amount
	}
	if sum != r.Payable || total != r.Total || r.Payable > r.Total || r.Payable < 0 ||
		disc != r.Total-r.Payable || r.Discount != disc {
		tb.Errorf("totals inconsistent: lines sum %d, payable %d, total %d (lines %d), discount %d (listed %d)",
			sum, r.Payable, r.Total, total, r.Discount, disc)
	}
	if len(r.Lines) < len(cart.Lines) {
		tb.Fatalf("%d lines for a cart of %d", len(r.Lines), len(cart.Lines))
	}
	for i, l := range cart.Lines {
		if r.Lines[i].SKU != l.SKU || r.Lines[i].Qty != l.Qty || r.Lines[i].Price != l.Price {
			tb.Errorf("line %d is not the cart's: %+v vs %+v", i, r.Lines[i], l)
		}
	}
}
