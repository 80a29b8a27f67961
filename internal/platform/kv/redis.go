package kv

import (
	"context"
	"fmt"
	"math"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/rueidis"
)

// Redis is the Store backed by a Redis server (or cluster) through rueidis.
// Every key is prefixed with the store's prefix. Take runs as a Lua script,
// so it is atomic across every process sharing the server. Sorted sets are
// Redis sorted sets; their float64 scores are why scores are bounded by
// MaxScore.
type Redis struct {
	client    rueidis.Client
	prefix    string
	closeOnce sync.Once
}

// NewRedis returns a Store that uses client and prepends prefix verbatim to
// every key (end it with ':' by convention). The store owns client: Close
// closes it.
func NewRedis(client rueidis.Client, prefix string) *Redis {
	return &Redis{client: client, prefix: prefix}
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

// appendScript implements ZAppend: KEYS[1] the set, KEYS[2] the counter,
// ARGV[1] the member.
var appendScript = rueidis.NewLuaScript(`
local s = redis.call('INCR', KEYS[2])
redis.call('ZADD', KEYS[1], s, ARGV[1])
return s
`)

func (r *Redis) key(k string) string {
	return r.prefix + k
}

// Get implements Store.
func (r *Redis) Get(ctx context.Context, key string) ([]byte, error) {
	val, err := r.client.Do(ctx, r.client.B().Get().Key(r.key(key)).Build()).AsBytes()
	if err != nil {
		if rueidis.IsRedisNil(err) {
			return nil, ErrNotFound
		}
		return nil, fmt.Errorf("kv: get %q: %w", key, translate(err))
	}
	return val, nil
}

// Set implements Store.
func (r *Redis) Set(ctx context.Context, key string, val []byte, ttl time.Duration) error {
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
		return fmt.Errorf("kv: set %q: %w", key, err)
	}
	return nil
}

// SetNX implements Store.
func (r *Redis) SetNX(ctx context.Context, key string, val []byte, ttl time.Duration) (bool, error) {
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
		return false, fmt.Errorf("kv: setnx %q: %w", key, err)
	}
}

// Del implements Store. It sends one DEL per key, pipelined, so that keys
// may live in different cluster slots.
func (r *Redis) Del(ctx context.Context, keys ...string) error {
	if len(keys) == 0 {
		return nil
	}
	cmds := make(rueidis.Commands, len(keys))
	for i, k := range keys {
		cmds[i] = r.client.B().Del().Key(r.key(k)).Build()
	}
	for i, res := range r.client.DoMulti(ctx, cmds...) {
		if err := res.Error(); err != nil {
			return fmt.Errorf("kv: del %q: %w", keys[i], err)
		}
	}
	return nil
}

// IncrBy implements Store.
func (r *Redis) IncrBy(ctx context.Context, key string, n int64) (int64, error) {
	v, err := r.client.Do(ctx, r.client.B().Incrby().Key(r.key(key)).Increment(n).Build()).AsInt64()
	if err != nil {
		return 0, fmt.Errorf("kv: incrby %q by %d: %w", key, n, translate(err))
	}
	return v, nil
}

// Take implements Store.
func (r *Redis) Take(ctx context.Context, key string, n int64) (int64, bool, error) {
	if n <= 0 {
		return 0, false, fmt.Errorf("kv: take %q: n must be > 0, got %d", key, n)
	}
	res, err := takeScript.Exec(ctx, r.client, []string{r.key(key)}, []string{strconv.FormatInt(n, 10)}).ToArray()
	if err != nil {
		return 0, false, fmt.Errorf("kv: take %q: %w", key, translate(err))
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

// ZAdd implements Store with ZADD.
func (r *Redis) ZAdd(ctx context.Context, key string, score int64, member string) error {
	if score < MinScore || score > MaxScore {
		return fmt.Errorf("kv: zadd %q score %d: %w", key, score, ErrScoreRange)
	}
	// float64(score) is exact within the score range, and rueidis formats
	// it without an exponent.
	cmd := r.client.B().Zadd().Key(r.key(key)).ScoreMember().ScoreMember(float64(score), member).Build()
	if err := r.client.Do(ctx, cmd).Error(); err != nil {
		return fmt.Errorf("kv: zadd %q: %w", key, translate(err))
	}
	return nil
}

// ZAppend implements Store with a Lua script (INCR then ZADD).
func (r *Redis) ZAppend(ctx context.Context, key, counter, member string) (int64, error) {
	s, err := appendScript.Exec(ctx, r.client, []string{r.key(key), r.key(counter)}, []string{member}).AsInt64()
	if err != nil {
		return 0, fmt.Errorf("kv: zappend %q: %w", key, translate(err))
	}
	return s, nil
}

// ZAfter implements Store with ZRANGE key (after +inf BYSCORE LIMIT 0 limit
// WITHSCORES. A score that is not an integer within the score range (written
// by something other than ZAdd) is reported as an error.
func (r *Redis) ZAfter(ctx context.Context, key string, after int64, limit int) ([]Scored, error) {
	if limit <= 0 {
		return nil, fmt.Errorf("kv: zafter %q: limit must be > 0, got %d", key, limit)
	}
	cmd := r.client.B().Zrange().Key(r.key(key)).
		Min("("+strconv.FormatInt(scoreBound(after), 10)).Max("+inf").
		Byscore().Limit(0, int64(limit)).Withscores().Build()
	zs, err := r.client.Do(ctx, cmd).AsZScores()
	if err != nil {
		return nil, fmt.Errorf("kv: zafter %q: %w", key, translate(err))
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
	cmd := r.client.B().Zremrangebyscore().Key(r.key(key)).
		Min("-inf").Max(strconv.FormatInt(scoreBound(upTo), 10)).Build()
	n, err := r.client.Do(ctx, cmd).AsInt64()
	if err != nil {
		return 0, fmt.Errorf("kv: ztrim %q: %w", key, translate(err))
	}
	return n, nil
}

// ZCard implements Store with ZCARD.
func (r *Redis) ZCard(ctx context.Context, key string) (int64, error) {
	n, err := r.client.Do(ctx, r.client.B().Zcard().Key(r.key(key)).Build()).AsInt64()
	if err != nil {
		return 0, fmt.Errorf("kv: zcard %q: %w", key, translate(err))
	}
	return n, nil
}

// scoreBound clamps a range bound to [MinScore-1, MaxScore], where Redis
// parses it exactly; since every score lies within [MinScore, MaxScore], the
// range selects the same members as the unclamped bound would.
func scoreBound(b int64) int64 {
	return min(max(b, MinScore-1), MaxScore)
}

// Ping implements Store.
func (r *Redis) Ping(ctx context.Context) error {
	if err := r.client.Do(ctx, r.client.B().Ping().Build()).Error(); err != nil {
		return fmt.Errorf("kv: ping: %w", err)
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

// translate maps Redis type errors to ErrWrongType and integer errors to
// ErrNotInteger, and returns any other error unchanged.
func translate(err error) error {
	if re, ok := rueidis.IsRedisErr(err); ok {
		switch msg := re.Error(); {
		case strings.HasPrefix(msg, "WRONGTYPE"):
			return ErrWrongType
		case strings.Contains(msg, "not an integer"):
			return ErrNotInteger
		case strings.Contains(msg, "overflow"):
			return fmt.Errorf("%w (%s)", ErrNotInteger, msg)
		}
	}
	return err
}
