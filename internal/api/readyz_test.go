package api_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http/httptest"
	"slices"
	"testing"
	"time"

	"github.com/surge-platform/surge/internal/api"
)

type readiness struct {
	Ready  bool              `json:"ready"`
	Checks map[string]string `json:"checks"`
	Failed []string          `json:"failed"`
}

func readyz(t *testing.T, checks ...api.Check) (int, readiness, time.Duration) {
	t.Helper()
	s := &api.Server{Log: slog.New(slog.NewTextHandler(io.Discard, nil)), Checks: checks}
	w := httptest.NewRecorder()
	t0 := time.Now()
	s.Handler().ServeHTTP(w, httptest.NewRequest("GET", "/readyz", nil))
	took := time.Since(t0)
	var out readiness
	if err := json.Unmarshal(w.Body.Bytes(), &out); err != nil {
		t.Fatalf("readyz body %q: %v", w.Body, err)
	}
	return w.Code, out, took
}

func ok(context.Context) error { return nil }

// A dependency that hangs is named, the others are not blamed for it, and
// the answer comes within one check's deadline, even for a check that
// ignores its deadline.
func TestReadyzChecksEachOnItsOwn(t *testing.T) {
	t.Parallel()
	stuck := make(chan struct{})
	defer close(stuck)
	hangs := func(ctx context.Context) error { <-ctx.Done(); return ctx.Err() }
	ignores := func(context.Context) error { <-stuck; return nil }
	fails := func(context.Context) error { return errors.New("connection refused") }

	status, out, took := readyz(t, api.Check{Name: "db", Ping: ok}, api.Check{Name: "kv", Ping: hangs},
		api.Check{Name: "bus", Ping: ok}, api.Check{Name: "stuck", Ping: ignores}, api.Check{Name: "down", Ping: fails})
	if status != 503 || out.Ready || out.Checks["db"] != "ok" || out.Checks["bus"] != "ok" {
		t.Fatalf("readyz = %d %+v; want 503 with db and bus ok", status, out)
	}
	slices.Sort(out.Failed)
	if !slices.Equal(out.Failed, []string{"down", "kv", "stuck"}) {
		t.Fatalf("failed = %v, want down, kv, stuck", out.Failed)
	}
	if out.Checks["kv"] == "ok" || out.Checks["stuck"] == "ok" || out.Checks["down"] != "connection refused" {
		t.Fatalf("checks = %v", out.Checks)
	}
	// In parallel: two checks that take the whole deadline cost one.
	if took > 4*time.Second {
		t.Fatalf("readyz took %v with two checks hanging; want about one deadline (2s)", took)
	}

	status, out, _ = readyz(t, api.Check{Name: "db", Ping: ok}, api.Check{Name: "kv", Ping: ok})
	if status != 200 || !out.Ready || len(out.Failed) != 0 || out.Failed == nil {
		t.Fatalf("all ok: %d %+v; want 200 with failed []", status, out)
	}
}
