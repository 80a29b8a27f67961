// Package kv is surge's cache, counter and atomic-script store: an in-process
// implementation for the embedded mode and Redis for the distributed mode.
// Both pass the shared suite in kv/kvtest.
package kv

import (
	"context"
	"errors"
	"strconv"
	"time"

	"github.com/surge-platform/surge/internal/platform/errkind"
)

// ErrNotFound is returned by Get when the key does not exist (or has expired).
// It is returned unwrapped so that cache misses cost no allocation; compare
// with errors.Is all the same.
var ErrNotFound = errors.New("kv: key not found")

// ErrNotInteger is returned (wrapped with the operation and key) by IncrBy,
// Take, Admit and Unadmit when the value at key is not a base-10 int64, or
// when IncrBy or Unadmit would overflow an int64.
var ErrNotInteger = errors.New("kv: value is not an integer or out of range")

// ErrWrongType is returned (wrapped with the operation and key) when a value
// operation (Get, IncrBy, Take, Admit, Unadmit) meets a sorted set, or a
// sorted-set operation meets a value. Set, SetNX and Del treat a sorted set
// like any other key: Set replaces it, SetNX finds it present, Del removes
// it.
var ErrWrongType = errors.New("kv: operation against a key holding the wrong kind of value")

// ErrScoreRange is returned (wrapped with the operation and key) by ZAdd for
// a score outside [MinScore, MaxScore].
var ErrScoreRange = errors.New("kv: sorted-set score out of range")

// ErrUnavailable is returned (wrapped with the operation, the key and the
// cause) when the backend did not answer within the call's deadline, could
// not be reached, or said it cannot serve now (loading its data, failing
// over, out of memory). Its kind is errkind.Unavailable, so the edge
// answers 503 unavailable. The memory store never returns it.
var ErrUnavailable = errkind.New(errkind.Unavailable, "unavailable", "a dependency is unavailable, try again")

// DefaultTimeout bounds each call to a remote store whose context has no
// earlier deadline: a store that hangs (a frozen Redis) costs a request
// this long, not the length of the hang.
const DefaultTimeout = time.Second

// MaxScore and MinScore bound the scores a sorted set holds. Redis keeps
// scores as float64, which is exact for integers only up to 2^53, so every
// adapter rejects scores beyond ±(2^53-1) with ErrScoreRange.
const (
	MaxScore = 1<<53 - 1
	MinScore = -MaxScore
)

// MaxGCRARate is the greatest perSecond GCRA accepts: ten million a
// second, a permit every 0.1 µs, where the precision of Redis's Lua
// numbers (about 0.01 µs) still counts each permit.
const MaxGCRARate = 10_000_000

// AdmitResult says what Admit did.
type AdmitResult int

// The results of Admit. Only Admitted changed anything. The numbers are
// also what AdmitLua returns.
const (
	Admitted  AdmitResult = iota // took n from stock and added n to the user's count
	SoldOut                      // stock holds fewer than n: nothing changed
	OverLimit                    // the user's count + n would exceed limit: nothing changed
	NotLoaded                    // the stock key does not exist (never loaded, or kv lost it): nothing changed
)

// String returns the result's name, such as "sold out".
func (r AdmitResult) String() string {
	switch r {
	case Admitted:
		return "admitted"
	case SoldOut:
		return "sold out"
	case OverLimit:
		return "over limit"
	case NotLoaded:
		return "not loaded"
	}
	return "AdmitResult(" + strconv.Itoa(int(r)) + ")"
}

// Scored is one member of a sorted set and its score.
type Scored struct {
	Score  int64
	Member string
}

// Store is the contract every adapter implements. Keys are plain strings; an
// adapter opened with a prefix applies it to every key transparently.
// A ttl of 0 means "no expiry"; a negative ttl is rejected with an error.
// Redis rounds a ttl up to whole milliseconds. All methods are safe for
// concurrent use. Errors other than ErrNotFound are wrapped with the
// operation and key. Every call of a remote store has a deadline (its
// context's, or the store's timeout if that comes sooner, DefaultTimeout
// unless set) and fails with ErrUnavailable when the store is down or
// slow; a cancelled context gives context.Canceled.
type Store interface {
	// Get returns the value at key or ErrNotFound. The returned slice belongs
	// to the caller.
	Get(ctx context.Context, key string) ([]byte, error)
	// Set stores val at key, replacing any value and its ttl. The store keeps
	// no reference to val.
	Set(ctx context.Context, key string, val []byte, ttl time.Duration) error
	// SetNX stores val only if key does not exist; it reports whether it did.
	SetNX(ctx context.Context, key string, val []byte, ttl time.Duration) (bool, error)
	// Del removes the keys; missing keys are not an error. Del with no keys
	// does nothing. Removing several keys is not atomic.
	Del(ctx context.Context, keys ...string) error
	// IncrBy adds n to the integer at key (missing = 0) and returns the new
	// value. An existing ttl is kept; a new key gets none. Returns
	// ErrNotInteger if the value is not an integer or the sum overflows.
	IncrBy(ctx context.Context, key string, n int64) (int64, error)
	// Take atomically subtracts n (> 0) from the integer at key if it holds at
	// least n, and returns the value after the call and whether it took.
	// A missing key holds 0. Never lets the value go below zero. An existing
	// ttl is kept. Returns an error for n <= 0 and ErrNotInteger if the value
	// is not an integer.
	Take(ctx context.Context, key string, n int64) (left int64, ok bool, err error)

	// Admit is one atomic admission against a stock and a per-user count
	// (a coupon claim, a flash-sale ticket): if the stock key is missing
	// -> NotLoaded; else if the integer at user (missing = 0) + n > limit
	// -> OverLimit; else if the integer at stock < n -> SoldOut; else
	// stock -= n and user += n -> Admitted. The checks come before any
	// change (never decrement then undo). left is the stock after the call
	// (0 for NotLoaded). A user key Admit creates gets userTTL (0 = none);
	// an existing one keeps its ttl, and so does the stock key.
	//
	// Errors: n <= 0, limit < 0, a negative userTTL or stock == user (a
	// plain error); ErrNotInteger if either key holds a non-integer,
	// ErrWrongType if either holds a sorted set; ErrUnavailable as every
	// remote call. Both keys are checked before anything else, so a bad
	// user key fails the call even when the stock is missing. On an error
	// res is NotLoaded, never Admitted, so a caller that drops err admits
	// nobody; with ErrUnavailable the admission may have happened all the
	// same (the answer was lost on the way), and the caller cannot tell.
	// On Redis both keys must be in one hash slot for a cluster (callers
	// use a hash tag, "{coupon:42}:stock" and "{coupon:42}:user:7"), and
	// the counts are compared as Lua numbers, exact up to 2^53.
	Admit(ctx context.Context, stock, user string, n, limit int64, userTTL time.Duration) (left int64, res AdmitResult, err error)
	// Unadmit gives back what an Admit took, atomically: stock += n only
	// if the stock key exists (a missing one is being rebuilt from the
	// durable records, which do not count the unit), and the user's count
	// -= n, never below 0 (a missing user key stays missing; a count at 0
	// or below is left as it is). Both keys keep their ttls. Returns the
	// stock after the call (0 when missing). Errors as Admit (n <= 0 or
	// stock == user: a plain error), and ErrNotInteger, changing nothing,
	// if the stock would overflow an int64.
	Unadmit(ctx context.Context, stock, user string, n int64) (left int64, err error)

	// Sorted sets. A sorted set lives in the same key space as values but
	// never has a ttl: a set is created by its first ZAdd and removed when
	// its last member is trimmed or by Del. Members are ordered by score,
	// then bytewise by member. Each operation is atomic. A missing key is
	// an empty set. Using a sorted-set operation on a key holding a value,
	// or the reverse, returns ErrWrongType.

	// ZAdd adds member with score to the sorted set at key, replacing its
	// score if it is present. Returns ErrScoreRange unless MinScore <= score
	// <= MaxScore.
	ZAdd(ctx context.Context, key string, score int64, member string) error
	// ZAppend adds member to the sorted set at key with a score from the
	// integer at counter (missing = 0): the greater of counter+1 and floor,
	// which the counter is set to. Both happen as one step: a reader that
	// sees a score also sees every lower score handed out by ZAppend on
	// the same counter (unless trimmed). A member already in the set stays
	// where it is: ZAppend returns its score and changes nothing, so
	// several processes appending the same members (rebuilding a lost set)
	// add each once. Returns the member's score.
	//
	// floor keeps scores from going back when the counter is lost (kv
	// restarted empty, a failover to a replica that was behind): a caller
	// passing the time in microseconds gets scores above every score handed
	// out before the loss, as long as its clock agrees with the clocks of
	// the processes that appended then. fresh is the least score when the
	// counter is missing (new, or lost): passing the time plus an
	// allowance for clocks that disagree (fulfil: a minute) puts the scores
	// after a loss above every score handed out before it, whichever
	// process handed them out (unless the loss comes within that allowance
	// of the counter's first start, which began ahead by it too). Pass 0, 0
	// for plain 1, 2, 3 ...
	//
	// Errors: ErrNotInteger if counter holds a value that is not an
	// integer, ErrWrongType if key or counter holds the other kind,
	// ErrScoreRange if the new score would lie outside [MinScore,
	// MaxScore]. (On Redis both keys must be in one hash slot for a
	// cluster.)
	ZAppend(ctx context.Context, key, counter, member string, floor, fresh int64) (int64, error)
	// ZAck is ZTrim for a set filled by ZAppend on counter: it removes
	// every member with score <= upTo, but only if upTo is at most the
	// integer at counter (missing = 0), i.e. a score ZAppend has handed
	// out. Otherwise it removes nothing and reports false: upTo comes from
	// before the counter was lost, and trimming with it could remove
	// members appended since that the caller has never seen. Returns how
	// many members it removed. Errors as ZAppend.
	ZAck(ctx context.Context, key, counter string, upTo int64) (removed int64, known bool, err error)
	// ZAfter returns up to limit (> 0) members with score > after, ascending
	// by score, then member. after may lie outside the score range. Paging
	// with after = the last score returned skips members that share that
	// score but did not fit the page, so a set paged this way should give
	// every member a distinct score. Returns an error for limit <= 0.
	ZAfter(ctx context.Context, key string, after int64, limit int) ([]Scored, error)
	// ZTrim removes every member with score <= upTo and returns how many it
	// removed. upTo may lie outside the score range.
	ZTrim(ctx context.Context, key string, upTo int64) (int64, error)
	// ZRem removes member from the sorted set at key and reports whether it
	// was there. A set left empty is removed, as by ZTrim.
	ZRem(ctx context.Context, key, member string) (bool, error)
	// ZCard returns the number of members of the sorted set at key.
	ZCard(ctx context.Context, key string) (int64, error)

	// GCRA takes up to n (> 0) permits from the rate limit at key, a
	// generic cell rate algorithm of perSecond (> 0) permits a second and
	// at most burst (> 0) at once. It grants as many of the n as conform
	// now, possibly 0, all or none of them changing the limit atomically,
	// and returns them with wait: the time until the next permit conforms
	// (0 if one does now). The clock is the store's: Redis's TIME, so that
	// every node sharing key shares one clock whatever its own says; the
	// process's monotonic clock for Memory. A missing key is a limit with
	// its whole burst free; key holds the limit's theoretical arrival time
	// and expires once the whole burst is free again, so Del resets it.
	// Calls on one key with another perSecond or burst are allowed and
	// count from that call on. Permits are exact to about 0.01 µs of
	// arrival time per call.
	//
	// Errors: n, perSecond or burst <= 0, or perSecond > MaxGCRARate (a
	// plain error); ErrNotInteger if key holds a value GCRA did not write,
	// ErrWrongType if it holds a sorted set; ErrUnavailable as every remote
	// call, and then the permits may have been granted all the same (they
	// are lost: a lost answer under-admits, never over-admits).
	GCRA(ctx context.Context, key string, perSecond, burst, n int64) (granted int64, wait time.Duration, err error)
	// Heartbeat records member as alive now in the sorted set at key, with
	// the store's time in milliseconds as its score (the clock as GCRA's),
	// removes the members not heard from within window (> 0, in whole
	// milliseconds, rounded up) and returns how many members are left,
	// member included. The set has no ttl; the next Heartbeat trims what
	// stopped beating. Errors: window <= 0 (a plain error); ErrWrongType if
	// key holds a value; ErrUnavailable as every remote call.
	Heartbeat(ctx context.Context, key, member string, window time.Duration) (live int64, err error)

	// Ping reports whether the backend is reachable.
	Ping(ctx context.Context) error
	// Close releases connections; the store must not be used afterwards.
	// Calling Close more than once is harmless.
	Close() error
}
