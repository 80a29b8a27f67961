package kv

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/rueidis"
)

// GCRALua is the Lua script of Redis.GCRA, exported so that a benchmark
// can run the very same script (redis-benchmark ... EVAL "$script" 1 key
// perSecond burst n). KEYS[1] holds the theoretical arrival time (TAT) in
// microseconds since 2023-11-14 22:13:20 UTC (unix 1700000000: Lua
// numbers are doubles, and a smaller number keeps more of them after the
// point, about 0.01 µs until the 2030s and 0.03 µs for decades after);
// ARGV[1] is perSecond, ARGV[2] burst, ARGV[3] n, all > 0 (the caller
// checks them). The clock is the server's TIME. It returns {granted, wait}
// with wait in whole microseconds, rounded up; or the error INCRBY gives
// for a value that is not an integer when KEYS[1] holds something else
// than a TAT (WRONGTYPE for a sorted set). It writes the key only when it
// grants, with a ttl that ends when the whole burst is free again. The
// arithmetic is gcraStep's.
const GCRALua = `local t = redis.call('TIME')
local now = (tonumber(t[1]) - 1700000000) * 1000000 + tonumber(t[2])
local per = 1000000 / tonumber(ARGV[1])
local full = tonumber(ARGV[2]) * per
local n = tonumber(ARGV[3])
local tat = now
local v = redis.call('GET', KEYS[1])
if v then
  if not string.match(v, '^%-?%d+%.?%d*$') then
    return redis.error_reply('ERR value is not an integer or out of range')
  end
  tat = math.max(tonumber(v), now)
end
local g = math.max(0, math.min(n, math.floor((full - (tat - now)) / per + 1e-9)))
if g > 0 then
  tat = tat + g * per
  redis.call('SET', KEYS[1], string.format('%.4f', tat), 'PX', math.ceil((tat - now) / 1000) + 1)
end
return {g, math.ceil(math.max(0, tat + per - full - now))}
`

var gcraScript = rueidis.NewLuaScript(GCRALua)

// heartbeatScript implements Heartbeat: KEYS[1] the set, ARGV[1] the
// member, ARGV[2] the window in milliseconds. The score is the server's
// TIME in milliseconds (exact as a Lua number). It returns the members
// left.
var heartbeatScript = rueidis.NewLuaScript(`local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))
return redis.call('ZCARD', KEYS[1])
`)

// GCRA implements Store with GCRALua.
func (r *Redis) GCRA(ctx context.Context, key string, perSecond, burst, n int64) (int64, time.Duration, error) {
	ctx, cancel := r.bound(ctx)
	defer cancel()
	if err := checkGCRA(perSecond, burst, n); err != nil {
		return 0, 0, fmt.Errorf("kv: gcra %q: %w", key, err)
	}
	res, err := gcraScript.Exec(ctx, r.client, []string{r.key(key)}, []string{
		strconv.FormatInt(perSecond, 10), strconv.FormatInt(burst, 10), strconv.FormatInt(n, 10),
	}).ToArray()
	if err != nil {
		return 0, 0, fmt.Errorf("kv: gcra %q: %w", key, classify(err))
	}
	if len(res) != 2 {
		return 0, 0, fmt.Errorf("kv: gcra %q: script returned %d values, want 2", key, len(res))
	}
	granted, err := res[0].AsInt64()
	if err != nil || granted < 0 || granted > n {
		return 0, 0, fmt.Errorf("kv: gcra %q: script granted %d of %d, %v", key, granted, n, err)
	}
	wait, err := res[1].AsInt64()
	if err != nil || wait < 0 {
		return 0, 0, fmt.Errorf("kv: gcra %q: script returned wait %d, %v", key, wait, err)
	}
	return granted, time.Duration(wait) * time.Microsecond, nil
}

// Heartbeat implements Store with a Lua script (TIME, ZADD,
// ZREMRANGEBYSCORE, ZCARD).
func (r *Redis) Heartbeat(ctx context.Context, key, member string, window time.Duration) (int64, error) {
	ctx, cancel := r.bound(ctx)
	defer cancel()
	if window <= 0 {
		return 0, fmt.Errorf("kv: heartbeat %q: window must be > 0, got %v", key, window)
	}
	n, err := heartbeatScript.Exec(ctx, r.client, []string{r.key(key)},
		[]string{member, strconv.FormatInt(millis(window), 10)}).AsInt64()
	if err != nil {
		return 0, fmt.Errorf("kv: heartbeat %q: %w", key, classify(err))
	}
	return n, nil
}
