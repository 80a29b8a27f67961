package web

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/surge-platform/surge/internal/platform/errkind"
)

func serve(t *testing.T, h http.Handler, method, path, body string) *httptest.ResponseRecorder {
	t.Helper()
	w := httptest.NewRecorder()
	Middleware(slog.New(slog.NewTextHandler(io.Discard, nil)), h).ServeHTTP(w, httptest.NewRequest(method, path, strings.NewReader(body)))
	return w
}

func code(t *testing.T, w *httptest.ResponseRecorder) string {
	t.Helper()
	var b ErrBody
	if err := json.Unmarshal(w.Body.Bytes(), &b); err != nil {
		t.Fatalf("body %q is not a JSON error: %v", w.Body.String(), err)
	}
	return b.Error.Code
}

func TestErrorsMapToStatusAndCode(t *testing.T) {
	t.Parallel()
	errSoldOut := errkind.New(errkind.Conflict, "sold_out", "sold out")
	cases := []struct {
		name       string
		err        error
		status     int
		code       string
		retryAfter string
	}{
		{"kinded", errSoldOut, 409, "sold_out", ""},
		{"wrapped with detail", fmt.Errorf("reserve: %w", errSoldOut.With("sku 42 sold out")), 409, "sold_out", ""},
		{"plain error is internal", errors.New("boom"), 500, "internal", ""},
		{"not found", errkind.ErrNotFound, 404, "not_found", ""},
		{"throttled", errkind.ErrThrottled, 429, "throttled", ""},
		{"unavailable", errkind.ErrUnavailable, 503, "unavailable", "1"},
		// as a kv adapter classifies a driver error: the kind and the cause
		{"unavailable with its cause", fmt.Errorf("kv: get %q: %w", "k",
			errors.Join(errkind.ErrUnavailable, context.DeadlineExceeded)), 503, "unavailable", "1"},
		{"a deadline", fmt.Errorf("query: %w", context.DeadlineExceeded), 503, "timeout", "1"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			w := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { Error(w, r, tc.err) }), "GET", "/", "")
			if w.Code != tc.status || code(t, w) != tc.code || w.Header().Get("X-Trace-Id") == "" {
				t.Fatalf("got %d %s, want %d %s", w.Code, w.Body, tc.status, tc.code)
			}
			if got := w.Header().Get("Retry-After"); got != tc.retryAfter {
				t.Fatalf("Retry-After %q, want %q", got, tc.retryAfter)
			}
		})
	}
	// A handler's own Retry-After stands.
	w := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Retry-After", "30")
		Error(w, r, errkind.ErrUnavailable)
	}), "GET", "/", "")
	if got := w.Header().Get("Retry-After"); w.Code != 503 || got != "30" {
		t.Fatalf("%d, Retry-After %q; want 503 with the handler's 30", w.Code, got)
	}
}

func TestDecode(t *testing.T) {
	t.Parallel()
	type body struct {
		A int `json:"a"`
	}
	cases := []struct {
		in, code string
	}{
		{`{"a":1}`, ""},
		{``, "invalid_json"},
		{`{"a":1,"b":2}`, "invalid_json"},
		{`{"a":1}{"a":2}`, "invalid_json"},
		{`{"a":"x"}`, "invalid_json"},
		{`{"a":1,"pad":"` + strings.Repeat("x", MaxBody) + `"}`, "body_too_large"},
	}
	for _, tc := range cases {
		h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			var b body
			if err := Decode(w, r, &b); err != nil {
				Error(w, r, err)
				return
			}
			JSON(w, 200, b)
		})
		w := serve(t, h, "POST", "/", tc.in)
		if tc.code == "" {
			if w.Code != 200 {
				t.Errorf("%.40q: %d %s", tc.in, w.Code, w.Body)
			}
			continue
		}
		if got := code(t, w); got != tc.code || w.Code >= 500 {
			t.Errorf("%.40q: %d %s, want code %s", tc.in, w.Code, got, tc.code)
		}
	}
}

func TestMuxAnswersAndPanicsBecomeJSON(t *testing.T) {
	t.Parallel()
	mux := http.NewServeMux()
	mux.HandleFunc("GET /x", func(w http.ResponseWriter, r *http.Request) { JSON(w, 200, "ok") })
	mux.HandleFunc("GET /panic", func(w http.ResponseWriter, r *http.Request) { panic("boom") })
	if w := serve(t, mux, "GET", "/nope", ""); w.Code != 404 || code(t, w) != "not_found" {
		t.Fatalf("unknown route: %d %s", w.Code, w.Body)
	}
	if w := serve(t, mux, "POST", "/x", ""); w.Code != 405 || code(t, w) != "method_not_allowed" || w.Header().Get("Allow") == "" {
		t.Fatalf("wrong method: %d %s", w.Code, w.Body)
	}
	if w := serve(t, mux, "GET", "/panic", ""); w.Code != 500 || code(t, w) != "internal" {
		t.Fatalf("panic: %d %s", w.Code, w.Body)
	}
	w := serve(t, mux, "GET", "/x", "")
	if w.Code != 200 || w.Header().Get("Content-Length") != "4" || len(w.Header().Get("X-Trace-Id")) != 32 {
		t.Fatalf("ok: %d %v", w.Code, w.Header())
	}
}
