package pricing

import (
	"math"
	"slices"
	"testing"
)

func TestApportion(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		d       int64
		amounts []int64
		keys    []int64 // nil: 1, 2, 3 ...
		want    []int64
	}{
		{"seed example exact", 900, []int64{3000, 4000, 5000}, nil, []int64{225, 300, 375}},
		{"remainder to the largest", 10, []int64{3, 3, 4}, nil, []int64{3, 3, 4}},
		{"primes", 7, []int64{13, 17, 19}, nil, []int64{1, 2, 4}},
		{"tie goes to the smaller key", 1, []int64{5, 7, 7}, []int64{3, 2, 1}, []int64{0, 0, 1}},
		{"one fen over three lines", 1, []int64{100, 100, 100}, nil, []int64{1, 0, 0}},
		{"zero gift line gets nothing", 5, []int64{0, 7, 3}, nil, []int64{0, 4, 1}},
		{"remainder spills past a full largest line", 2, []int64{1, 1, 1}, nil, []int64{1, 1, 0}},
		{"everything", 31, []int64{10, 0, 21}, nil, []int64{10, 0, 21}},
		{"nothing", 0, []int64{10, 21}, nil, []int64{0, 0}},
		{"all zero", 0, []int64{0, 0}, nil, []int64{0, 0}},
		{"no overflow", math.MaxInt64 / 4, []int64{math.MaxInt64 / 4, math.MaxInt64 / 4}, nil, []int64{math.MaxInt64/8 + 1, math.MaxInt64 / 8}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			keys := tt.keys
			if keys == nil {
				for i := range tt.amounts {
					keys = append(keys, int64(i+1))
				}
			}
			got := apportion(tt.d, tt.amounts, keys)
			if !slices.Equal(got, tt.want) {
				t.Fatalf("apportion(%d, %v) = %v, want %v", tt.d, tt.amounts, got, tt.want)
			}
		})
	}
}
