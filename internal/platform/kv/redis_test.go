package kv_test

import (
	"context"
	"crypto/rand"
	"errors"
	"net/url"
	"os"
	"testing"
	"time"

	"github.com/redis/rueidis"

	"github.com/surge-platform/surge/internal/platform/kv"
	"github.com/surge-platform/surge/internal/platform/kv/kvtest"
)

// redisURL is the Redis the tests use: SURGE_TEST_REDIS or a local default.
func redisURL() string {
	if u := os.Getenv("SURGE_TEST_REDIS"); u != "" {
		return u
	}
	return "redis://127.0.0.1:6379/0"
}

// mustRedis opens a Store on the test Redis under a fresh prefix, with the
// extra query parameters in params. Cleanup closes it and deletes every key
// under the prefix. An unreachable Redis fails the test unless
// SURGE_TEST_SKIP_REDIS=1.
func mustRedis(tb testing.TB, params url.Values) (kv.Store, string) {
	tb.Helper()
	prefix := "surgetest:" + rand.Text()[:12] + ":"
	u, err := url.Parse(redisURL())
	if err != nil {
		tb.Fatalf("SURGE_TEST_REDIS: %v", err)
	}
	q := u.Query()
	q.Set("prefix", prefix)
	for k, vs := range params {
		q[k] = vs
	}
	u.RawQuery = q.Encode()

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s, err := kv.Open(ctx, u.String())
	if err != nil {
		if os.Getenv("SURGE_TEST_SKIP_REDIS") == "1" {
			tb.Skipf("Redis unavailable, skipped by SURGE_TEST_SKIP_REDIS=1: %v", err)
		}
		tb.Fatalf("Redis unavailable (set SURGE_TEST_REDIS, or SURGE_TEST_SKIP_REDIS=1 to skip): %v", err)
	}
	tb.Cleanup(func() {
		s.Close()
		deletePrefix(tb, prefix)
	})
	return s, prefix
}

// rawRedis returns a plain rueidis client on the test Redis.
func rawRedis(tb testing.TB) rueidis.Client {
	tb.Helper()
	u, err := url.Parse(redisURL())
	if err != nil {
		tb.Fatal(err)
	}
	q := u.Query()
	q.Del("prefix")
	q.Del("pipeline")
	u.RawQuery = q.Encode()
	opt, err := rueidis.ParseURL(u.String())
	if err != nil {
		tb.Fatal(err)
	}
	opt.DisableCache = true
	c, err := rueidis.NewClient(opt)
	if err != nil {
		tb.Fatalf("raw Redis client: %v", err)
	}
	return c
}

// deletePrefix removes every key under prefix with SCAN and DEL. It runs
// in Cleanup, after the test's context is cancelled, so it has its own.
func deletePrefix(tb testing.TB, prefix string) {
	c := rawRedis(tb)
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var cursor uint64
	for {
		e, err := c.Do(ctx, c.B().Scan().Cursor(cursor).Match(prefix+"*").Count(1000).Build()).AsScanEntry()
		if err != nil {
			tb.Errorf("scan %s*: %v", prefix, err)
			return
		}
		cmds := make(rueidis.Commands, 0, len(e.Elements))
		for _, k := range e.Elements {
			cmds = append(cmds, c.B().Del().Key(k).Build())
		}
		for _, res := range c.DoMulti(ctx, cmds...) {
			if err := res.Error(); err != nil {
				tb.Errorf("del under %s: %v", prefix, err)
				return
			}
		}
		if cursor = e.Cursor; cursor == 0 {
			return
		}
	}
}

func TestRedis(t *testing.T) {
	t.Parallel()
	kvtest.Run(t, func(t *testing.T) kv.Store {
		s, _ := mustRedis(t, nil)
		return s
	})
}

func TestRedisNoPipeline(t *testing.T) {
	t.Parallel()
	kvtest.Run(t, func(t *testing.T) kv.Store {
		s, _ := mustRedis(t, url.Values{"pipeline": {"off"}})
		return s
	})
}

func TestRedisPrefix(t *testing.T) {
	t.Parallel()
	a, prefixA := mustRedis(t, nil)
	b, _ := mustRedis(t, nil)
	ctx := t.Context()
	if err := a.Set(ctx, "k", []byte("in a"), 0); err != nil {
		t.Fatal(err)
	}
	if got, err := b.Get(ctx, "k"); !errors.Is(err, kv.ErrNotFound) {
		t.Fatalf("other prefix sees %q, %v; want ErrNotFound", got, err)
	}
	raw := rawRedis(t)
	defer raw.Close()
	got, err := raw.Do(ctx, raw.B().Get().Key(prefixA+"k").Build()).ToString()
	if err != nil || got != "in a" {
		t.Fatalf("raw GET %sk = %q, %v; want %q", prefixA, got, err, "in a")
	}
}
