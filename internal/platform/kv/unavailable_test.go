package kv_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/surge-platform/surge/internal/platform/errkind"
	"github.com/surge-platform/surge/internal/platform/kv"
	"github.com/surge-platform/surge/internal/platform/kv/kvtest"
)

// ops are one call of each kind a Store makes to Redis.
var ops = []struct {
	name string
	call func(ctx context.Context, s kv.Store) error
}{
	{"Get", func(ctx context.Context, s kv.Store) error { _, err := s.Get(ctx, "k"); return err }},
	{"Set", func(ctx context.Context, s kv.Store) error { return s.Set(ctx, "k", []byte("v"), 0) }},
	{"SetNX", func(ctx context.Context, s kv.Store) error { _, err := s.SetNX(ctx, "nx", []byte("v"), 0); return err }},
	{"Del", func(ctx context.Context, s kv.Store) error { return s.Del(ctx, "a", "b") }},
	{"IncrBy", func(ctx context.Context, s kv.Store) error { _, err := s.IncrBy(ctx, "n", 1); return err }},
	{"Take", func(ctx context.Context, s kv.Store) error { _, _, err := s.Take(ctx, "n", 1); return err }},
	{"Admit", func(ctx context.Context, s kv.Store) error {
		_, _, err := s.Admit(ctx, "{a}s", "{a}u", 1, 1, 0)
		return err
	}},
	{"Unadmit", func(ctx context.Context, s kv.Store) error { _, err := s.Unadmit(ctx, "{a}s", "{a}u", 1); return err }},
	{"ZAdd", func(ctx context.Context, s kv.Store) error { return s.ZAdd(ctx, "z", 1, "m") }},
	{"ZAppend", func(ctx context.Context, s kv.Store) error { _, err := s.ZAppend(ctx, "z", "c", "m", 0, 0); return err }},
	{"ZAck", func(ctx context.Context, s kv.Store) error { _, _, err := s.ZAck(ctx, "z", "c", 1); return err }},
	{"ZAfter", func(ctx context.Context, s kv.Store) error { _, err := s.ZAfter(ctx, "z", 0, 10); return err }},
	{"ZTrim", func(ctx context.Context, s kv.Store) error { _, err := s.ZTrim(ctx, "z", 1); return err }},
	{"ZCard", func(ctx context.Context, s kv.Store) error { _, err := s.ZCard(ctx, "z"); return err }},
	{"GCRA", func(ctx context.Context, s kv.Store) error { _, _, err := s.GCRA(ctx, "g", 10, 1, 1); return err }},
	{"Heartbeat", func(ctx context.Context, s kv.Store) error {
		_, err := s.Heartbeat(ctx, "h", "m", time.Second)
		return err
	}},
	{"Ping", func(ctx context.Context, s kv.Store) error { return s.Ping(ctx) }},
}

func mustOpen(t *testing.T, url string) kv.Store {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	s, err := kv.Open(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// mustUnavailable fails the test unless err is ErrUnavailable of kind
// Unavailable (a 503 at the edge) and came within limit.
func mustUnavailable(t *testing.T, what string, err error, took, limit time.Duration) {
	t.Helper()
	if !errors.Is(err, kv.ErrUnavailable) {
		t.Errorf("%s: %v, want ErrUnavailable", what, err)
	} else if e := errkind.Of(err); e == nil || e.Kind != errkind.Unavailable || e.Code != "unavailable" {
		t.Errorf("%s: kind %+v, want Unavailable", what, e)
	}
	if took > limit {
		t.Errorf("%s took %v, want at most %v", what, took, limit)
	}
}

// waitUp polls until s answers again.
func waitUp(t *testing.T, s kv.Store) {
	t.Helper()
	for deadline := time.Now().Add(15 * time.Second); s.Ping(t.Context()) != nil; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the store did not answer again within 15s")
		}
	}
}

// TestRedisFrozen: a Redis that stops answering (SIGSTOP) costs each call
// its deadline and a classified error, not the length of the freeze; the
// caller's shorter deadline wins, a cancellation stays a cancellation, and
// the store works again once Redis does.
func TestRedisFrozen(t *testing.T) {
	t.Parallel()
	srv := kvtest.StartRedis(t)
	for _, pipeline := range []string{"on", "off"} {
		t.Run("pipeline="+pipeline, func(t *testing.T) {
			const timeout = 300 * time.Millisecond
			s := mustOpen(t, srv.URL("timeout=300ms&pipeline="+pipeline))
			if err := s.Set(t.Context(), "before", []byte("v"), 0); err != nil {
				t.Fatal(err)
			}
			srv.Freeze()
			thawed := false
			defer func() {
				if !thawed {
					srv.Thaw()
				}
			}()
			// A call may join a reconnection under way, which the timeout
			// bounds too; the rest is slack for a loaded machine.
			const limit = 2*timeout + 1500*time.Millisecond
			for _, op := range ops {
				t0 := time.Now()
				err := op.call(context.Background(), s)
				mustUnavailable(t, op.name, err, time.Since(t0), limit)
				if !errors.Is(err, context.DeadlineExceeded) {
					t.Errorf("%s: %v does not say the deadline passed", op.name, err)
				}
			}
			ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
			t0 := time.Now()
			_, err := s.Get(ctx, "before")
			cancel()
			mustUnavailable(t, "Get under a 50ms deadline", err, time.Since(t0), limit)

			ctx, cancel = context.WithCancel(context.Background())
			time.AfterFunc(20*time.Millisecond, cancel)
			_, err = s.Get(ctx, "before")
			if !errors.Is(err, context.Canceled) || errors.Is(err, kv.ErrUnavailable) {
				t.Errorf("Get cancelled by its caller: %v, want context.Canceled and not ErrUnavailable", err)
			}

			srv.Thaw()
			thawed = true
			waitUp(t, s)
			mustGet(t, s, "before", "v")
		})
	}
}

// TestRedisDefaultTimeout: without timeout= a call to a frozen Redis ends
// after DefaultTimeout.
func TestRedisDefaultTimeout(t *testing.T) {
	t.Parallel()
	srv := kvtest.StartRedis(t)
	s := mustOpen(t, srv.URL(""))
	srv.Freeze()
	defer srv.Thaw()
	t0 := time.Now()
	_, err := s.Get(context.Background(), "k")
	took := time.Since(t0)
	mustUnavailable(t, "Get", err, took, kv.DefaultTimeout+1500*time.Millisecond)
	if took < kv.DefaultTimeout-50*time.Millisecond {
		t.Errorf("Get gave up after %v, before DefaultTimeout %v", took, kv.DefaultTimeout)
	}
}

// TestRedisDown: a Redis that is gone answers ErrUnavailable (reads within
// the timeout: rueidis retries them until then, so a blip is ridden out); one
// restarted without persistence serves again, empty.
func TestRedisDown(t *testing.T) {
	t.Parallel()
	srv := kvtest.StartRedis(t)
	s := mustOpen(t, srv.URL("timeout=1s"))
	if err := s.Set(t.Context(), "k", []byte("v"), 0); err != nil {
		t.Fatal(err)
	}
	srv.Kill()
	for _, op := range ops {
		t0 := time.Now()
		err := op.call(context.Background(), s)
		mustUnavailable(t, op.name, err, time.Since(t0), 2*time.Second+1500*time.Millisecond)
	}
	srv.Start()
	waitUp(t, s)
	mustMissing(t, s, "k")
}

func mustGet(t *testing.T, s kv.Store, key, want string) {
	t.Helper()
	got, err := s.Get(t.Context(), key)
	if err != nil || string(got) != want {
		t.Fatalf("Get(%q) = %q, %v; want %q", key, got, err, want)
	}
}

func mustMissing(t *testing.T, s kv.Store, key string) {
	t.Helper()
	if got, err := s.Get(t.Context(), key); !errors.Is(err, kv.ErrNotFound) {
		t.Fatalf("Get(%q) = %q, %v; want ErrNotFound", key, got, err)
	}
}

// TestOpenTimeout: timeout= must be a positive duration.
func TestOpenTimeout(t *testing.T) {
	t.Parallel()
	for _, v := range []string{"0", "-1s", "soon", "5"} {
		if s, err := kv.Open(t.Context(), "redis://127.0.0.1:1/0?timeout="+v); err == nil {
			s.Close()
			t.Errorf("timeout=%s accepted", v)
		}
	}
}
