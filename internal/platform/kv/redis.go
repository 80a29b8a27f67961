package kv

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/redis/rueidis"
)

// Redis is the Store backed by a Redis server (or cluster) through rueidis.
// Every key is prefixed with the store's prefix. Take, Admit, Unadmit,
// ZAppend and ZAck run as Lua scripts, so each is atomic across every
// process sharing the server. Sorted sets are Redis sorted sets; their
// float64 scores are why scores are bounded by MaxScore.
type Redis struct {
	client    rueidis.Client
	prefix    string
	timeout   time.Duration
	closeOnce sync.Once
}

// NewRedis returns a Store that uses client and prepends prefix verbatim to
// every key (end it with ':' by convention). Every call is bounded by
// timeout (DefaultTimeout if 0) unless its context ends sooner. The store
// owns client: Close closes it.
func NewRedis(client rueidis.Client, prefix string, timeout time.Duration) *Redis {
	return &Redis{client: client, prefix: prefix, timeout: cmp.Or(timeout, DefaultTimeout)}
}

// takeScript implements Take. KEYS[1] is the counter, ARGV[1] the amount
// (> 0, checked by the caller). It returns {left, took}. Values are checked
// the way Redis parses integers, so a non-integer fails like INCRBY does;
// the comparison uses Lua numbers, exact up to 2^53.
var takeScript = rueidis.NewLuaScript(`
local v = redis.call('GET', KEYS[1])
if not v then
  return {0, 0}
end
if #v > 20 or not (v == '0' or string.match(v, '^%-?[1-9]%d*$')) then
  return redis.error_reply('ERR value is not an integer or out of range')
end
if tonumber(v) < tonumber(ARGV[1]) then
  return {v, 0}
end
return {redis.call('DECRBY', KEYS[1], ARGV[1]), 1}
`)

// isIntLua is Lua that defines int(v): whether the string v is an integer
// the way Redis parses one for INCRBY (an optional minus sign, decimal
// digits without leading zeros, within int64). Digit strings of one length
// compare like their numbers, which keeps the range check exact.
const isIntLua = `local function int(v)
  if v == '0' then
    return true
  end
  local d = string.match(v, '^%-?([1-9]%d*)$')
  if not d or #d > 19 then
    return false
  end
  return #d < 19 or d <= (string.byte(v) == 45 and '9223372036854775808' or '9223372036854775807')
end
`

// AdmitLua is the Lua script of Admit, exported so that a benchmark can
// run the very same script (redis-benchmark ... EVAL "$script" 2 stock user
// n limit ttl). KEYS[1] is the stock, KEYS[2] the user's count; ARGV[1] is
// n (> 0), ARGV[2] the limit (>= 0), ARGV[3] the ttl in milliseconds of a
// user key it creates (0 = none); the caller checks the arguments. It
// returns {stock, result}: the stock before the call as the string stored
// (0 when missing), and an AdmitResult (0 Admitted, 1 SoldOut, 2
// OverLimit, 3 NotLoaded); or the error INCRBY gives for a value that is
// not an integer (WRONGTYPE for a sorted set). It returns the stock from
// before, not the reply of DECRBY, because an integer reply becomes a Lua
// number (a double, exact only up to 2^53); Admit subtracts n itself. Both
// keys are read and checked first, then changed only on admission: GET,
// GET, then DECRBY, INCRBY and, for a user key it created with a ttl,
// PEXPIRE. Counts are compared as Lua numbers, exact up to 2^53.
const AdmitLua = isIntLua + `local s = redis.call('GET', KEYS[1])
local u = redis.call('GET', KEYS[2])
if (s and not int(s)) or (u and not int(u)) then
  return redis.error_reply('ERR value is not an integer or out of range')
end
if not s then
  return {0, 3}
end
local n = tonumber(ARGV[1])
if (u and tonumber(u) or 0) + n > tonumber(ARGV[2]) then
  return {s, 2}
end
if tonumber(s) < n then
  return {s, 1}
end
redis.call('DECRBY', KEYS[1], ARGV[1])
redis.call('INCRBY', KEYS[2], ARGV[1])
if not u and tonumber(ARGV[3]) > 0 then
  redis.call('PEXPIRE', KEYS[2], ARGV[3])
end
return {s, 0}
`

var admitScript = rueidis.NewLuaScript(AdmitLua)

// unadmitScript implements Unadmit: KEYS[1] the stock, KEYS[2] the user's
// count, ARGV[1] n (> 0). It returns the stock before the call as the
// string stored, or nil when it is missing (Unadmit adds n itself, as
// Admit subtracts). INCRBY of the stock, the only step that can fail
// (overflow), comes before the user's count changes. The user's count goes
// down by n, or by all it holds when that is less, passed as the string it
// was read as so that it stays exact.
var unadmitScript = rueidis.NewLuaScript(isIntLua + `local s = redis.call('GET', KEYS[1])
local u = redis.call('GET', KEYS[2])
if (s and not int(s)) or (u and not int(u)) then
  return redis.error_reply('ERR value is not an integer or out of range')
end
if s then
  redis.call('INCRBY', KEYS[1], ARGV[1])
end
if u and tonumber(u) > 0 then
  redis.call('DECRBY', KEYS[2], tonumber(u) < tonumber(ARGV[1]) and u or ARGV[1])
end
return s
`)

// readCounter is Lua that sets cur to the integer at KEYS[2] (missing =
// 0), or returns the error INCRBY gives for a value that is not an integer.
const readCounter = `local v = redis.call('GET', KEYS[2])
local cur = 0
if v then
  if #v > 20 or not (v == '0' or string.match(v, '^%-?[1-9]%d*$')) then
    return redis.error_reply('ERR value is not an integer or out of range')
  end
  cur = tonumber(v)
end`

// appendScript implements ZAppend: KEYS[1] the set, KEYS[2] the counter,
// ARGV[1] the member, ARGV[2] the floor, ARGV[3] the least score of a
// missing counter. It returns the member's score, or
// an error reply "ERR score out of range". Lua numbers are doubles, exact
// for every score in range; a number passed to redis.call is formatted
// with 17 significant digits, so it stays exact too.
var appendScript = rueidis.NewLuaScript(`
local have = redis.call('ZSCORE', KEYS[1], ARGV[1])
if have then
  return tonumber(have)
end
` + readCounter + `
local s = math.max(cur + 1, tonumber(ARGV[2]))
if not v then
  s = math.max(s, tonumber(ARGV[3]))
end
if s > ` + maxScoreLua + ` or s < -` + maxScoreLua + ` then
  return redis.error_reply('ERR score out of range')
end
redis.call('INCRBY', KEYS[2], s - cur)
redis.call('ZADD', KEYS[1], s, ARGV[1])
return s
`)

// ackScript implements ZAck: KEYS[1] the set, KEYS[2] the counter,
// ARGV[1] upTo (clamped to one beyond the score range). It returns how
// many members it removed, or -1 when upTo is above the counter.
var ackScript = rueidis.NewLuaScript(`
` + readCounter + `
if tonumber(ARGV[1]) > cur then
  return -1
end
return redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
`)

// maxScoreLua is MaxScore as a Lua literal.
const maxScoreLua = "9007199254740991"

func (r *Redis) key(k string) string {
	return r.prefix + k
}

// Get implements Store.
func (r *Redis) Get(ctx context.Context, key string) ([]byte, error) {
	ctx, cancel := r.bound(ctx)
	defer cancel()
	val, err := r.client.Do(ctx, r.client.B().Get().Key(r.key(key)).Build()).AsBytes()
	if err != nil {
		if rueidis.IsRedisNil(err) {
			return nil, ErrNotFound
		}
		return nil, fmt.Errorf("kv: get %q: %w", key, classify(err))
	}
	return val, nil
}

// Set implements Store.
func (r *Redis) Set(ctx context.Context, key string, val []byte, ttl time.Duration) error {
	ctx, cancel := r.bound(ctx)
	defer cancel()
	if ttl < 0 {
		return fmt.Errorf("kv: set %q: negative ttl %v", key, ttl)
	}
	b := r.client.B().Set().Key(r.key(key)).Value(rueidis.BinaryString(val))
	var cmd rueidis.Completed
	if ttl > 0 {
		cmd = b.PxMilliseconds(millis(ttl)).Build()
	} else {
		cmd = b.Build()
	}
	if err := r.client.Do(ctx, cmd).Error(); err != nil {
		return fmt.Errorf("kv: set %q: %w", key, classify(err))
	}
	return nil
}

// SetNX implements Store.
func (r *Redis) SetNX(ctx context.Context, key string, val []byte, ttl time.Duration) (bool, error) {
	ctx, cancel := r.bound(ctx)
	defer cancel()
	if ttl < 0 {
		return false, fmt.Errorf("kv: setnx %q: negative ttl %v", key, ttl)
	}
	b := r.client.B().Set().Key(r.key(key)).Value(rueidis.BinaryString(val)).Nx()
	var cmd rueidis.Completed
	if ttl > 0 {
		cmd = b.PxMilliseconds(millis(ttl)).Build()
	} else {
		cmd = b.Build()
	}
	err := r.client.Do(ctx, cmd).Error()
	switch {
	case err == nil:
		return true, nil
	case rueidis.IsRedisNil(err):
		return false, nil
	default:
		return false, fmt.Errorf("kv: setnx %q: %w", key, classify(err))
	}
}

// Del implements Store. It sends one DEL per key, pipelined, so that keys
// may live in different cluster slots.
func (r *Redis) Del(ctx context.Context, keys ...string) error {
	ctx, cancel := r.bound(ctx)
	defer cancel()
	if len(keys) == 0 {
		return nil
	}
	cmds := make(rueidis.Commands, len(keys))
	for i, k := range keys {
		cmds[i] = r.client.B().Del().Key(r.key(k)).Build()
	}
	for i, res := range r.client.DoMulti(ctx, cmds...) {
		if err := res.Error(); err != nil {
			return fmt.Errorf("kv: del %q: %w", keys[i], classify(err))
		}
	}
	return nil
}

// IncrBy implements Store.
func (r *Redis) IncrBy(ctx context.Context, key string, n int64) (int64, error) {
	ctx, cancel := r.bound(ctx)
	defer cancel()
	v, err := r.client.Do(ctx, r.client.B().Incrby().Key(r.key(key)).Increment(n).Build()).AsInt64()
	if err != nil {
		return 0, fmt.Errorf("kv: incrby %q by %d: %w", key, n, classify(err))
	}
	return v, nil
}

// Take implements Store.
func (r *Redis) Take(ctx context.Context, key string, n int64) (int64, bool, error) {
	ctx, cancel := r.bound(ctx)
	defer cancel()
	if n <= 0 {
		return 0, false, fmt.Errorf("kv: take %q: n must be > 0, got %d", key, n)
	}
	res, err := takeScript.Exec(ctx, r.client, []string{r.key(key)}, []string{strconv.FormatInt(n, 10)}).ToArray()
	if err != nil {
		return 0, false, fmt.Errorf("kv: take %q: %w", key, classify(err))
	}
	if len(res) != 2 {
		return 0, false, fmt.Errorf("kv: take %q: script returned %d values, want 2", key, len(res))
	}
	left, err := res[0].AsInt64()
	if err != nil {
		return 0, false, fmt.Errorf("kv: take %q: left: %w", key, err)
	}
	took, err := res[1].AsInt64()
	if err != nil {
		return 0, false, fmt.Errorf("kv: take %q: took: %w", key, err)
	}
	return left, took == 1, nil
}

// Admit implements Store with AdmitLua.
func (r *Redis) Admit(ctx context.Context, stock, user string, n, limit int64, userTTL time.Duration) (int64, AdmitResult, error) {
	ctx, cancel := r.bound(ctx)
	defer cancel()
	if err := checkAdmit(stock, user, n, limit, userTTL); err != nil {
		return 0, NotLoaded, fmt.Errorf("kv: admit %q user %q: %w", stock, user, err)
	}
	ttl := int64(0)
	if userTTL > 0 {
		ttl = millis(userTTL)
	}
	res, err := admitScript.Exec(ctx, r.client, []string{r.key(stock), r.key(user)}, []string{
		strconv.FormatInt(n, 10), strconv.FormatInt(limit, 10), strconv.FormatInt(ttl, 10),
	}).ToArray()
	if err != nil {
		return 0, NotLoaded, fmt.Errorf("kv: admit %q user %q: %w", stock, user, classify(err))
	}
	if len(res) != 2 {
		return 0, NotLoaded, fmt.Errorf("kv: admit %q user %q: script returned %d values, want 2", stock, user, len(res))
	}
	left, err := res[0].AsInt64()
	if err != nil {
		return 0, NotLoaded, fmt.Errorf("kv: admit %q user %q: stock: %w", stock, user, err)
	}
	code, err := res[1].AsInt64()
	if err != nil || code < int64(Admitted) || code > int64(NotLoaded) {
		return 0, NotLoaded, fmt.Errorf("kv: admit %q user %q: script returned result %d, %v", stock, user, code, err)
	}
	if code == int64(Admitted) {
		left -= n // the stock held at least n > 0
	}
	return left, AdmitResult(code), nil
}

// Unadmit implements Store with a Lua script (GET, GET, then INCRBY and
// DECRBY).
func (r *Redis) Unadmit(ctx context.Context, stock, user string, n int64) (int64, error) {
	ctx, cancel := r.bound(ctx)
	defer cancel()
	if err := checkAdmit(stock, user, n, 0, 0); err != nil {
		return 0, fmt.Errorf("kv: unadmit %q user %q: %w", stock, user, err)
	}
	left, err := unadmitScript.Exec(ctx, r.client, []string{r.key(stock), r.key(user)},
		[]string{strconv.FormatInt(n, 10)}).AsInt64()
	switch {
	case rueidis.IsRedisNil(err):
		return 0, nil // no stock
	case err != nil:
		return 0, fmt.Errorf("kv: unadmit %q user %q: %w", stock, user, classify(err))
	}
	return left + n, nil // INCRBY succeeded: no overflow
}

// ZAdd implements Store with ZADD.
func (r *Redis) ZAdd(ctx context.Context, key string, score int64, member string) error {
	ctx, cancel := r.bound(ctx)
	defer cancel()
	if score < MinScore || score > MaxScore {
		return fmt.Errorf("kv: zadd %q score %d: %w", key, score, ErrScoreRange)
	}
	// float64(score) is exact within the score range, and rueidis formats
	// it without an exponent.
	cmd := r.client.B().Zadd().Key(r.key(key)).ScoreMember().ScoreMember(float64(score), member).Build()
	if err := r.client.Do(ctx, cmd).Error(); err != nil {
		return fmt.Errorf("kv: zadd %q: %w", key, classify(err))
	}
	return nil
}

// ZAppend implements Store with a Lua script (ZSCORE, then GET, INCRBY
// and ZADD).
func (r *Redis) ZAppend(ctx context.Context, key, counter, member string, floor, fresh int64) (int64, error) {
	ctx, cancel := r.bound(ctx)
	defer cancel()
	s, err := appendScript.Exec(ctx, r.client, []string{r.key(key), r.key(counter)},
		[]string{member, strconv.FormatInt(outside(floor), 10), strconv.FormatInt(outside(fresh), 10)}).AsInt64()
	if err != nil {
		return 0, fmt.Errorf("kv: zappend %q counter %q: %w", key, counter, classify(err))
	}
	return s, nil
}

// ZAck implements Store with a Lua script (GET, then ZREMRANGEBYSCORE).
func (r *Redis) ZAck(ctx context.Context, key, counter string, upTo int64) (int64, bool, error) {
	ctx, cancel := r.bound(ctx)
	defer cancel()
	n, err := ackScript.Exec(ctx, r.client, []string{r.key(key), r.key(counter)},
		[]string{strconv.FormatInt(outside(upTo), 10)}).AsInt64()
	if err != nil {
		return 0, false, fmt.Errorf("kv: zack %q counter %q: %w", key, counter, classify(err))
	}
	if n < 0 {
		return 0, false, nil
	}
	return n, true, nil
}

// ZAfter implements Store with ZRANGE key (after +inf BYSCORE LIMIT 0 limit
// WITHSCORES. A score that is not an integer within the score range (written
// by something other than ZAdd) is reported as an error.
func (r *Redis) ZAfter(ctx context.Context, key string, after int64, limit int) ([]Scored, error) {
	ctx, cancel := r.bound(ctx)
	defer cancel()
	if limit <= 0 {
		return nil, fmt.Errorf("kv: zafter %q: limit must be > 0, got %d", key, limit)
	}
	cmd := r.client.B().Zrange().Key(r.key(key)).
		Min("("+strconv.FormatInt(scoreBound(after), 10)).Max("+inf").
		Byscore().Limit(0, int64(limit)).Withscores().Build()
	zs, err := r.client.Do(ctx, cmd).AsZScores()
	if err != nil {
		return nil, fmt.Errorf("kv: zafter %q: %w", key, classify(err))
	}
	if len(zs) == 0 {
		return nil, nil
	}
	out := make([]Scored, len(zs))
	for i, z := range zs {
		if z.Score < MinScore || z.Score > MaxScore || z.Score != math.Trunc(z.Score) {
			return nil, fmt.Errorf("kv: zafter %q: member %q has score %v, not an integer in [%d, %d]",
				key, z.Member, z.Score, int64(MinScore), int64(MaxScore))
		}
		out[i] = Scored{Score: int64(z.Score), Member: z.Member}
	}
	return out, nil
}

// ZTrim implements Store with ZREMRANGEBYSCORE key -inf upTo.
func (r *Redis) ZTrim(ctx context.Context, key string, upTo int64) (int64, error) {
	ctx, cancel := r.bound(ctx)
	defer cancel()
	cmd := r.client.B().Zremrangebyscore().Key(r.key(key)).
		Min("-inf").Max(strconv.FormatInt(scoreBound(upTo), 10)).Build()
	n, err := r.client.Do(ctx, cmd).AsInt64()
	if err != nil {
		return 0, fmt.Errorf("kv: ztrim %q: %w", key, classify(err))
	}
	return n, nil
}

// ZRem implements Store with ZREM.
func (r *Redis) ZRem(ctx context.Context, key, member string) (bool, error) {
	ctx, cancel := r.bound(ctx)
	defer cancel()
	n, err := r.client.Do(ctx, r.client.B().Zrem().Key(r.key(key)).Member(member).Build()).AsInt64()
	if err != nil {
		return false, fmt.Errorf("kv: zrem %q: %w", key, classify(err))
	}
	return n == 1, nil
}

// ZCard implements Store with ZCARD.
func (r *Redis) ZCard(ctx context.Context, key string) (int64, error) {
	ctx, cancel := r.bound(ctx)
	defer cancel()
	n, err := r.client.Do(ctx, r.client.B().Zcard().Key(r.key(key)).Build()).AsInt64()
	if err != nil {
		return 0, fmt.Errorf("kv: zcard %q: %w", key, classify(err))
	}
	return n, nil
}

// scoreBound clamps a range bound to [MinScore-1, MaxScore], where Redis
// parses it exactly; since every score lies within [MinScore, MaxScore], the
// range selects the same members as the unclamped bound would.
func scoreBound(b int64) int64 {
	return min(max(b, MinScore-1), MaxScore)
}

// outside clamps b to [MinScore-1, MaxScore+1], where Lua numbers are
// exact: a value beyond the score range stays beyond it.
func outside(b int64) int64 {
	return min(max(b, MinScore-1), MaxScore+1)
}

// Ping implements Store.
func (r *Redis) Ping(ctx context.Context) error {
	ctx, cancel := r.bound(ctx)
	defer cancel()
	if err := r.client.Do(ctx, r.client.B().Ping().Build()).Error(); err != nil {
		return fmt.Errorf("kv: ping: %w", classify(err))
	}
	return nil
}

// Close implements Store; it closes the rueidis client.
func (r *Redis) Close() error {
	r.closeOnce.Do(r.client.Close)
	return nil
}

// millis rounds a positive ttl up to whole milliseconds, the unit of PX.
func millis(ttl time.Duration) int64 {
	return int64((ttl + time.Millisecond - 1) / time.Millisecond)
}

// bound gives ctx the store's deadline unless it has an earlier one.
func (r *Redis) bound(ctx context.Context) (context.Context, context.CancelFunc) {
	if dl, ok := ctx.Deadline(); ok && time.Until(dl) <= r.timeout {
		return ctx, noCancel
	}
	return context.WithTimeout(ctx, r.timeout)
}

func noCancel() {}

// transient are the prefixes of Redis error replies that say the server
// cannot serve now but will: loading its data, a script running too long,
// a failover or resharding under way, out of memory.
var transient = []string{"LOADING", "BUSY", "MASTERDOWN", "READONLY", "CLUSTERDOWN", "TRYAGAIN", "NOREPLICAS", "OOM"}

// classify maps Redis type errors to ErrWrongType, integer errors to
// ErrNotInteger and range errors of the scripts to ErrScoreRange; a
// deadline that passed, a connection that failed and a server that says it
// cannot serve now to ErrUnavailable; the caller's cancellation and other
// error replies (bugs) stay as they are.
func classify(err error) error {
	if re, ok := rueidis.IsRedisErr(err); ok {
		switch msg := re.Error(); {
		case strings.HasPrefix(msg, "WRONGTYPE"):
			return ErrWrongType
		case strings.Contains(msg, "not an integer"):
			return ErrNotInteger
		case strings.Contains(msg, "overflow"):
			return fmt.Errorf("%w (%s)", ErrNotInteger, msg)
		case strings.Contains(msg, "score out of range"):
			return ErrScoreRange
		case slices.ContainsFunc(transient, func(p string) bool { return strings.HasPrefix(msg, p) }):
			return &unavailable{err}
		}
		return err
	}
	var ne net.Error
	switch {
	case errors.Is(err, context.Canceled):
		return err
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &ne), errors.Is(err, io.EOF),
		errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE),
		errors.Is(err, rueidis.ErrClosing), errors.Is(err, rueidis.ErrNoAddr), errors.Is(err, rueidis.ErrNoSlot):
		return &unavailable{err}
	}
	return err
}

// unavailable is ErrUnavailable with its cause; both match errors.Is.
type unavailable struct{ cause error }

func (e *unavailable) Error() string   { return "unavailable: " + e.cause.Error() }
func (e *unavailable) Unwrap() []error { return []error{ErrUnavailable, e.cause} }
