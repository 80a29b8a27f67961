package pricing

import "math/bits"

// apportion splits d fen over lines whose amounts are given, in proportion
// to those amounts, and returns each line's share. keys are the lines' skus
// (distinct): they break ties, so the order of the lines changes nothing.
//
// Rounding (the one rule used for every spread in this package):
//   - each line first gets floor(d × amount / sum) fen;
//   - the remainder (fewer fen than there are lines) goes to the line with
//     the largest amount, ties to the smaller sku;
//   - a line never gets more than its own amount: if the remainder does not
//     fit on the largest line, what is left goes to the next largest (same
//     tie rule), and so on. It always fits because d <= sum.
//
// Precondition: 0 <= d <= sum(amounts), every amount >= 0. A zero-amount
// line (a gift) gets 0. The shares add up to exactly d.
func apportion(d int64, amounts, keys []int64) []int64 {
	shares := make([]int64, len(amounts))
	var sum int64
	for _, a := range amounts {
		sum += a
	}
	if d <= 0 || sum <= 0 {
		return shares
	}
	if d > sum {
		panic("pricing: apportion over more than the amounts")
	}
	rest := d
	for i, a := range amounts {
		shares[i] = mulDiv(d, a, sum)
		rest -= shares[i]
	}
	for rest > 0 {
		best := -1
		for i, a := range amounts {
			if shares[i] < a && (best < 0 || a > amounts[best] || a == amounts[best] && keys[i] < keys[best]) {
				best = i
			}
		}
		take := min(rest, amounts[best]-shares[best])
		shares[best] += take
		rest -= take
	}
	return shares
}

// mulDiv returns floor(a × b / c) for a, b >= 0 and c > 0 without
// overflowing in the product; the quotient must fit in an int64 (it does
// whenever a <= c or b <= c, which is how it is called).
func mulDiv(a, b, c int64) int64 {
	hi, lo := bits.Mul64(uint64(a), uint64(b))
	q, _ := bits.Div64(hi, lo, uint64(c))
	return int64(q)
}
