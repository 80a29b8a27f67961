package kvtest

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/surge-platform/surge/internal/platform/kv"
)

// The keys of the Admit tests share a hash tag per test, as callers' keys
// must for a Redis cluster.

// mustAdmit fails the test unless Admit returns wantLeft and want.
func mustAdmit(t *testing.T, s kv.Store, stock, user string, n, limit int64, ttl time.Duration, wantLeft int64, want kv.AdmitResult) {
	t.Helper()
	left, res, err := s.Admit(ctx(t), stock, user, n, limit, ttl)
	if err != nil {
		t.Fatalf("Admit(%q, %q, n %d, limit %d): %v", stock, user, n, limit, err)
	}
	if left != wantLeft || res != want {
		t.Fatalf("Admit(%q, %q, n %d, limit %d) = %d, %v; want %d, %v", stock, user, n, limit, left, res, wantLeft, want)
	}
}

// mustUnadmit fails the test unless Unadmit returns wantLeft.
func mustUnadmit(t *testing.T, s kv.Store, stock, user string, n, wantLeft int64) {
	t.Helper()
	left, err := s.Unadmit(ctx(t), stock, user, n)
	if err != nil || left != wantLeft {
		t.Fatalf("Unadmit(%q, %q, %d) = %d, %v; want %d", stock, user, n, left, err, wantLeft)
	}
}

// count returns the integer at key, 0 if it is missing.
func count(c context.Context, s kv.Store, key string) (int64, error) {
	got, err := s.Get(c, key)
	if errors.Is(err, kv.ErrNotFound) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	v, err := strconv.ParseInt(string(got), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("Get(%q) = %q, not an integer", key, got)
	}
	return v, nil
}

// mustCount is count that fails the test on an error.
func mustCount(t *testing.T, c context.Context, s kv.Store, key string) int64 {
	t.Helper()
	v, err := count(c, s, key)
	if err != nil {
		t.Fatalf("count %q: %v", key, err)
	}
	return v
}

// testAdmitBasic walks one stock through every result, in the order the
// checks are made, and reads both keys back after each refusal.
func testAdmitBasic(t *testing.T, s kv.Store) {
	const stock, u1, u2, u3 = "{admit}:stock", "{admit}:u1", "{admit}:u2", "{admit}:u3"

	// Not loaded: nothing is created, whatever the user.
	mustAdmit(t, s, stock, u1, 1, 5, 0, 0, kv.NotLoaded)
	mustMissing(t, s, stock)
	mustMissing(t, s, u1)

	mustSet(t, s, stock, "5", 0)
	mustAdmit(t, s, stock, u1, 2, 3, 0, 3, kv.Admitted)
	mustGet(t, s, stock, "3")
	mustGet(t, s, u1, "2")

	// Over the limit although the stock would do: 2 + 2 > 3.
	mustAdmit(t, s, stock, u1, 2, 3, 0, 3, kv.OverLimit)
	mustGet(t, s, stock, "3")
	mustGet(t, s, u1, "2")
	mustAdmit(t, s, stock, u1, 1, 3, 0, 2, kv.Admitted) // up to the limit exactly
	mustGet(t, s, u1, "3")

	// Sold out: the stock holds fewer than n; a new user is not created.
	mustAdmit(t, s, stock, u2, 3, 10, 0, 2, kv.SoldOut)
	mustGet(t, s, stock, "2")
	mustMissing(t, s, u2)
	mustAdmit(t, s, stock, u2, 2, 10, 0, 0, kv.Admitted) // the stock exactly
	mustGet(t, s, stock, "0")
	mustGet(t, s, u2, "2")
	mustAdmit(t, s, stock, u3, 1, 1, 0, 0, kv.SoldOut)
	mustMissing(t, s, u3)

	// The limit is checked before the stock: a user at the limit on a
	// sold-out stock is over the limit.
	mustAdmit(t, s, stock, u1, 1, 3, 0, 0, kv.OverLimit)
	mustGet(t, s, stock, "0")
	mustGet(t, s, u1, "3")

	// A limit of 0 admits nobody; a negative stock (possible through
	// IncrBy) is sold out and stays as it is.
	mustSet(t, s, stock, "10", 0)
	mustAdmit(t, s, stock, u3, 1, 0, 0, 10, kv.OverLimit)
	mustMissing(t, s, u3)
	mustSet(t, s, stock, "-3", 0)
	mustAdmit(t, s, stock, u3, 1, 1, 0, -3, kv.SoldOut)
	mustGet(t, s, stock, "-3")
	mustMissing(t, s, u3)

	// Large amounts, and a stock made by IncrBy.
	if err := s.Del(ctx(t), stock); err != nil {
		t.Fatal(err)
	}
	if _, err := s.IncrBy(ctx(t), stock, 1<<41); err != nil {
		t.Fatal(err)
	}
	mustAdmit(t, s, stock, u3, 1<<40, 1<<50, 0, 1<<40, kv.Admitted)
	mustGet(t, s, u3, strconv.FormatInt(1<<40, 10))

	// Invalid arguments are errors that change nothing and admit nobody.
	mustSet(t, s, stock, "7", 0)
	tests := []struct {
		name        string
		stock, user string
		n, limit    int64
		ttl         time.Duration
	}{
		{"n zero", stock, u2, 0, 5, 0},
		{"n negative", stock, u2, -1, 5, 0},
		{"limit negative", stock, u2, 1, -1, 0},
		{"ttl negative", stock, u2, 1, 5, -time.Second},
		{"one key", stock, stock, 1, 5, 0},
	}
	for _, tt := range tests {
		left, res, err := s.Admit(ctx(t), tt.stock, tt.user, tt.n, tt.limit, tt.ttl)
		if err == nil || res == kv.Admitted {
			t.Errorf("%s: Admit = %d, %v, %v; want an error, not admitted", tt.name, left, res, err)
		}
	}
	for _, n := range []int64{0, -1} {
		if left, err := s.Unadmit(ctx(t), stock, u2, n); err == nil {
			t.Errorf("Unadmit(n %d) = %d, nil; want an error", n, left)
		}
	}
	if left, err := s.Unadmit(ctx(t), stock, stock, 1); err == nil {
		t.Errorf("Unadmit(stock, stock) = %d, nil; want an error", left)
	}
	mustGet(t, s, stock, "7")
	mustGet(t, s, u2, "2")
}

// testAdmitTTL: a user key Admit creates gets the ttl, one that exists
// keeps its own (none, or a shorter one), and the stock keeps its ttl.
func testAdmitTTL(t *testing.T, s kv.Store) {
	const ttl = 80 * time.Millisecond
	const (
		stock     = "{admit-ttl}:stock"
		shortLive = "{admit-ttl}:stock-short" // a stock with a ttl
		keepsNone = "{admit-ttl}:keeps-none"  // exists without a ttl
		keepsOwn  = "{admit-ttl}:keeps-own"   // exists with ttl, admitted with 1h
		noTTL     = "{admit-ttl}:no-ttl"      // created with ttl 0
		longTTL   = "{admit-ttl}:long-ttl"    // created with 1h
		created   = "{admit-ttl}:created"     // created with ttl, last
	)
	mustSet(t, s, stock, "100", 0)
	mustSet(t, s, keepsNone, "0", 0)
	mustAdmit(t, s, stock, keepsNone, 1, 5, ttl, 99, kv.Admitted)
	mustSet(t, s, keepsOwn, "2", ttl)
	mustAdmit(t, s, stock, keepsOwn, 1, 5, time.Hour, 98, kv.Admitted)
	// On a slow machine keepsOwn may have expired before Admit, which
	// then created it anew ("1", with the hour).
	own, err := s.Get(ctx(t), keepsOwn)
	recreated := err == nil && string(own) == "1"
	if err != nil && !errors.Is(err, kv.ErrNotFound) || err == nil && string(own) != "3" && !recreated {
		t.Fatalf("Get(%q) = %q, %v; want 3", keepsOwn, own, err)
	}
	mustAdmit(t, s, stock, noTTL, 1, 5, 0, 97, kv.Admitted)
	mustSet(t, s, shortLive, "10", ttl)
	// On a slow machine the short stock may be gone already.
	left, res, err := s.Admit(ctx(t), shortLive, longTTL, 1, 5, time.Hour)
	if err != nil || !(res == kv.Admitted && left == 9 || res == kv.NotLoaded && left == 0) {
		t.Fatalf("Admit on a stock with a ttl = %d, %v, %v; want 9, admitted (or not loaded once expired)", left, res, err)
	}
	mustAdmit(t, s, stock, created, 1, 5, ttl, 96, kv.Admitted)
	mustGet(t, s, stock, "96")

	// Every ttl above counts from before created's, so once it has
	// expired they have too.
	waitMissing(t, s, created, ttl+3*time.Second)
	mustMissing(t, s, shortLive) // Admit kept the stock's ttl
	if !recreated {
		mustMissing(t, s, keepsOwn) // not replaced by the hour
	}
	mustGet(t, s, keepsNone, "1")
	mustGet(t, s, noTTL, "1")
	if res == kv.Admitted {
		mustGet(t, s, longTTL, "1")
	}
	mustGet(t, s, stock, "96") // the stock has no ttl, and gets none
}

// testAdmitErrors: a key holding a non-integer or a sorted set fails
// Admit and Unadmit with the error of its kind, before any result and
// changing nothing.
func testAdmitErrors(t *testing.T, s kv.Store) {
	const (
		zset    = "<zset>"    // the key holds a sorted set
		missing = "<missing>" // the key does not exist
	)
	tests := []struct {
		name        string
		stock, user string // the values stored
		want        error  // nil: either key's error will do
	}{
		{"stock text", "abc", missing, kv.ErrNotInteger},
		{"stock empty", "", missing, kv.ErrNotInteger},
		{"stock leading zero", "007", "1", kv.ErrNotInteger},
		{"stock float", "1.5", missing, kv.ErrNotInteger},
		{"stock minus zero", "-0", missing, kv.ErrNotInteger},
		{"stock above int64", "9223372036854775808", missing, kv.ErrNotInteger},
		{"stock far above int64", "99999999999999999999", missing, kv.ErrNotInteger},
		{"stock below int64", "-9223372036854775809", missing, kv.ErrNotInteger},
		{"stock sorted set", zset, missing, kv.ErrWrongType},
		{"user text", "10", "abc", kv.ErrNotInteger},
		{"user space", "10", " 1", kv.ErrNotInteger},
		{"user above int64", "10", "9223372036854775808", kv.ErrNotInteger},
		{"user sorted set", "10", zset, kv.ErrWrongType},
		{"user text, stock missing", missing, "abc", kv.ErrNotInteger},
		{"user sorted set, stock missing", missing, zset, kv.ErrWrongType},
		{"both bad", zset, "abc", nil},
	}
	for i, tt := range tests {
		tag := fmt.Sprintf("{admit-err-%d}", i)
		stock, user := tag+":stock", tag+":user"
		put := func(key, val string) {
			switch val {
			case missing:
			case zset:
				mustZAdd(t, s, key, 1, "m")
			default:
				mustSet(t, s, key, val, 0)
			}
		}
		check := func(key, val string) {
			t.Helper()
			switch val {
			case missing:
				mustMissing(t, s, key)
			case zset:
				mustZCard(t, s, key, 1)
			default:
				mustGet(t, s, key, val)
			}
		}
		put(stock, tt.stock)
		put(user, tt.user)
		left, res, err := s.Admit(ctx(t), stock, user, 1, 5, time.Hour)
		switch {
		case tt.want == nil:
			if err == nil || res != kv.NotLoaded {
				t.Errorf("%s: Admit = %d, %v, %v; want an error and not loaded", tt.name, left, res, err)
			}
		case !errors.Is(err, tt.want) || res != kv.NotLoaded:
			t.Errorf("%s: Admit = %d, %v, %v; want %v and not loaded", tt.name, left, res, err, tt.want)
		}
		left, err = s.Unadmit(ctx(t), stock, user, 1)
		switch {
		case tt.want == nil:
			if err == nil {
				t.Errorf("%s: Unadmit = %d, nil; want an error", tt.name, left)
			}
		case !errors.Is(err, tt.want):
			t.Errorf("%s: Unadmit = %d, %v; want %v", tt.name, left, err, tt.want)
		}
		check(stock, tt.stock)
		check(user, tt.user)
	}

	// The edges of int64 are integers; a stock that would overflow fails
	// Unadmit, which then changes nothing.
	const stock, user, big = "{admit-edge}:stock", "{admit-edge}:user", "{admit-edge}:big-user"
	mustSet(t, s, stock, "9223372036854775807", 0)
	mustSet(t, s, user, "-9223372036854775808", 0)
	mustAdmit(t, s, stock, user, 1, 0, 0, 9223372036854775806, kv.Admitted)
	mustGet(t, s, user, "-9223372036854775807")
	mustUnadmit(t, s, stock, user, 1, 9223372036854775807)
	mustGet(t, s, user, "-9223372036854775807") // at or below 0: left as it is
	mustSet(t, s, big, "5", 0)
	if left, err := s.Unadmit(ctx(t), stock, big, 1); !errors.Is(err, kv.ErrNotInteger) {
		t.Errorf("Unadmit onto a full stock = %d, %v; want ErrNotInteger", left, err)
	}
	mustGet(t, s, stock, "9223372036854775807")
	mustGet(t, s, big, "5")
}

// testAdmitRace: 5,000 users, two attempts each, claim one unit each
// (limit 1) of a stock of 1,000, the two attempts of a user side by side
// so that a user races itself: exactly 1,000 are admitted, each with a
// distinct remainder, the stock ends at 0 and nobody holds more than one.
func testAdmitRace(t *testing.T, s kv.Store) {
	const (
		stock   = 1000
		users   = 5000
		tries   = 2
		workers = 64
		total   = users * tries
	)
	const stockKey = "{admit-race}:stock"
	userKey := func(u int) string { return "{admit-race}:user:" + strconv.Itoa(u) }
	c, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	mustSet(t, s, stockKey, strconv.Itoa(stock), 0)

	var (
		next    atomic.Int64
		results [total]kv.AdmitResult
		lefts   [total]int64
		errs    = make(chan error, workers)
	)
	race(workers, func(int) {
		for {
			i := int(next.Add(1) - 1)
			if i >= total {
				return
			}
			left, res, err := s.Admit(c, stockKey, userKey(i/tries), 1, 1, time.Hour)
			if err != nil {
				errs <- fmt.Errorf("Admit(user %d): %w", i/tries, err)
				return
			}
			results[i], lefts[i] = res, left
		}
	})
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}

	var counts [4]int
	seen := make(map[int64]int, stock)
	for u := range users {
		var mine [4]int // this user's results
		for i := u * tries; i < (u+1)*tries; i++ {
			res, left := results[i], lefts[i]
			switch res {
			case kv.Admitted:
				seen[left]++
			case kv.SoldOut:
				if left != 0 {
					t.Fatalf("Admit %d: sold out with %d left", i, left)
				}
			case kv.OverLimit:
			default:
				t.Fatalf("Admit %d: %v, but the stock was set", i, res)
			}
			mine[res]++
			counts[res]++
		}
		// Over the limit only once the user's other attempt was admitted.
		if mine[kv.Admitted] > 1 || mine[kv.OverLimit] > 0 && mine[kv.Admitted] == 0 {
			t.Fatalf("user %d: %d admitted, %d over the limit", u, mine[kv.Admitted], mine[kv.OverLimit])
		}
	}
	if counts[kv.Admitted] != stock || counts[kv.Admitted]+counts[kv.SoldOut]+counts[kv.OverLimit] != total {
		t.Fatalf("%d admitted, %d sold out, %d over the limit; want %d admitted of %d",
			counts[kv.Admitted], counts[kv.SoldOut], counts[kv.OverLimit], stock, total)
	}
	// Every admission saw a distinct remainder 0..stock-1: no double sale.
	for left := range int64(stock) {
		if seen[left] != 1 {
			t.Fatalf("remainder %d reported %d times, want once", left, seen[left])
		}
	}
	mustGet(t, s, stockKey, "0")

	// The users' counts, read back on the same pool.
	var sum, outside atomic.Int64
	next.Store(0)
	errs = make(chan error, workers)
	race(workers, func(int) {
		for {
			u := int(next.Add(1) - 1)
			if u >= users {
				return
			}
			n, err := count(c, s, userKey(u))
			if err != nil {
				errs <- err
				return
			}
			sum.Add(n)
			if n < 0 || n > 1 {
				outside.Add(1)
			}
		}
	})
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if outside.Load() != 0 || sum.Load() != stock {
		t.Fatalf("users' counts sum to %d with %d outside [0, 1]; want %d and none", sum.Load(), outside.Load(), stock)
	}
}

// testUnadmit: Unadmit gives back what Admit took; a missing stock stays
// missing (the rebuild counts from the durable records) while the user's
// count still goes down; the count never goes below 0; ttls are kept.
func testUnadmit(t *testing.T, s kv.Store) {
	const stock, u1, u2 = "{unadmit}:stock", "{unadmit}:u1", "{unadmit}:u2"
	mustSet(t, s, stock, "10", 0)
	mustAdmit(t, s, stock, u1, 3, 5, 0, 7, kv.Admitted)
	mustUnadmit(t, s, stock, u1, 3, 10)
	mustGet(t, s, u1, "0") // a count at 0 stays, at 0
	mustAdmit(t, s, stock, u1, 5, 5, 0, 5, kv.Admitted)
	mustUnadmit(t, s, stock, u1, 2, 7)
	mustGet(t, s, u1, "3")

	// The count never goes below 0; the stock gets n back all the same.
	mustUnadmit(t, s, stock, u1, 5, 12)
	mustGet(t, s, u1, "0")
	mustUnadmit(t, s, stock, u1, 1, 13)
	mustGet(t, s, u1, "0")
	// A missing user stays missing.
	mustUnadmit(t, s, stock, u2, 1, 14)
	mustMissing(t, s, u2)
	mustGet(t, s, stock, "14")

	// A missing stock stays missing; the user's count goes down.
	mustAdmit(t, s, stock, u2, 2, 5, 0, 12, kv.Admitted)
	if err := s.Del(ctx(t), stock); err != nil {
		t.Fatal(err)
	}
	mustUnadmit(t, s, stock, u2, 1, 0)
	mustMissing(t, s, stock)
	mustGet(t, s, u2, "1")

	// Both keys keep their ttls.
	const ttl = 80 * time.Millisecond
	const tstock, tuser = "{unadmit-ttl}:stock", "{unadmit-ttl}:user"
	mustSet(t, s, tstock, "5", 0)
	mustAdmit(t, s, tstock, tuser, 2, 5, ttl, 3, kv.Admitted)
	mustSet(t, s, tstock, "3", ttl)
	// On a slow machine either key may be gone already.
	if left, err := s.Unadmit(ctx(t), tstock, tuser, 1); err != nil || left != 4 && left != 0 {
		t.Fatalf("Unadmit = %d, %v; want 4 (or 0 once expired)", left, err)
	}
	waitMissing(t, s, tuser, ttl+3*time.Second)
	waitMissing(t, s, tstock, ttl+3*time.Second)
}

// testAdmitUnadmitRace: workers admit and give back on a few users and a
// small stock at once; at the end the stock and the users' counts add up
// to the initial stock, and each user holds exactly what it was admitted
// and not given back.
func testAdmitUnadmitRace(t *testing.T, s kv.Store) {
	const (
		initial = 60
		users   = 20
		limit   = 3
		workers = 16
		each    = 60
	)
	const stockKey = "{admit-unadmit}:stock"
	userKey := func(u int) string { return "{admit-unadmit}:user:" + strconv.Itoa(u) }
	c, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	mustSet(t, s, stockKey, strconv.Itoa(initial), 0)

	var (
		mu   sync.Mutex
		held [users]int64 // admitted and kept, per user
		errs = make(chan error, workers)
	)
	race(workers, func(w int) {
		for k := range each {
			u := (w*7 + k) % users
			n := int64(1 + (w+k)%2)
			left, res, err := s.Admit(c, stockKey, userKey(u), n, limit, 0)
			if err != nil {
				errs <- fmt.Errorf("Admit: %w", err)
				return
			}
			if left < 0 {
				errs <- fmt.Errorf("Admit left %d, below zero", left)
				return
			}
			switch {
			case res != kv.Admitted:
				continue
			case k%3 == 0: // kept
				mu.Lock()
				held[u] += n
				mu.Unlock()
				continue
			}
			if _, err := s.Unadmit(c, stockKey, userKey(u), n); err != nil {
				errs <- fmt.Errorf("Unadmit: %w", err)
				return
			}
		}
	})
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	left := mustCount(t, c, s, stockKey)
	sum := left
	for u := range users {
		n := mustCount(t, c, s, userKey(u))
		if n != held[u] || n < 0 || n > limit {
			t.Errorf("user %d holds %d, want %d (in [0, %d])", u, n, held[u], limit)
		}
		sum += n
	}
	if sum != initial || left < 0 {
		t.Fatalf("stock %d + users' counts = %d, want %d", left, sum, initial)
	}
}
