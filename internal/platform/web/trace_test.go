package web

import (
	"bytes"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
)

// A failed request is logged once, at error level, with its trace id, its
// error and (for a panic) the stack; a refusal by design and a request
// that went well are not logged at info level.
func TestFailureLoggedOnce(t *testing.T) {
	t.Parallel()
	var buf bytes.Buffer
	log := slog.New(slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: slog.LevelInfo}))
	mux := http.NewServeMux()
	mux.HandleFunc("GET /fail", func(w http.ResponseWriter, r *http.Request) { Error(w, r, errors.New("disk on fire")) })
	mux.HandleFunc("GET /panic", func(w http.ResponseWriter, r *http.Request) { panic("boom") })
	mux.HandleFunc("GET /ok", func(w http.ResponseWriter, r *http.Request) { JSON(w, 200, "fine") })
	h := Chain(Routed(mux), Basic(log)...)
	for _, p := range []string{"/fail", "/panic", "/ok"} {
		buf.Reset()
		w := httptest.NewRecorder()
		h.ServeHTTP(w, httptest.NewRequest("GET", p, nil))
		var lines []map[string]any
		for _, l := range strings.Split(strings.TrimSpace(buf.String()), "\n") {
			if l == "" {
				continue
			}
			var m map[string]any
			if err := json.Unmarshal([]byte(l), &m); err != nil {
				t.Fatalf("%s: log line %q: %v", p, l, err)
			}
			lines = append(lines, m)
		}
		if p == "/ok" {
			if len(lines) != 0 {
				t.Errorf("/ok logged %v", lines)
			}
			continue
		}
		if len(lines) != 1 {
			t.Fatalf("%s: %d log lines, want 1: %s", p, len(lines), buf.String())
		}
		l := lines[0]
		want := map[string]string{"/fail": "disk on fire", "/panic": "panic: boom"}[p]
		if l["level"] != "ERROR" || l["trace_id"] != w.Header().Get("X-Trace-Id") || !strings.Contains(l["err"].(string), want) ||
			l["status"] != float64(500) {
			t.Errorf("%s: log line %v, want ERROR with trace id %s and %q", p, l, w.Header().Get("X-Trace-Id"), want)
		}
		if p == "/panic" && !strings.Contains(l["err"].(string), "goroutine") {
			t.Errorf("a panic's line has no stack: %v", l["err"])
		}
	}
}

// With a tracer, a request continues the caller's traceparent: its span
// is the caller's child, named after the route, and X-Trace-Id is the
// caller's trace id; a request without one starts a trace.
func TestTraceContinuesTraceparent(t *testing.T) {
	t.Parallel()
	exp := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
	mux := http.NewServeMux()
	mux.HandleFunc("GET /orders/{id}", func(w http.ResponseWriter, r *http.Request) { Error(w, r, errors.New("boom")) })
	h := Chain(Routed(mux), Trace{Log: slog.New(slog.DiscardHandler), Tracer: tp.Tracer("t")})
	const parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	r := httptest.NewRequest("GET", "/orders/42", nil)
	r.Header.Set("Traceparent", parent)
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	if got := w.Header().Get("X-Trace-Id"); got != "4bf92f3577b34da6a3ce929d0e0e4736" {
		t.Fatalf("X-Trace-Id %q, want the caller's trace id", got)
	}
	spans := exp.GetSpans()
	if len(spans) != 1 {
		t.Fatalf("%d spans, want 1", len(spans))
	}
	s := spans[0]
	if s.Name != "GET /orders/{id}" || s.Parent.SpanID().String() != "00f067aa0ba902b7" || s.Status.Description != "boom" {
		t.Errorf("span %q parent %s status %+v", s.Name, s.Parent.SpanID(), s.Status)
	}
	w = httptest.NewRecorder()
	h.ServeHTTP(w, httptest.NewRequest("GET", "/nowhere", nil))
	spans = exp.GetSpans()
	if len(spans) != 2 || spans[1].SpanContext.TraceID().String() != w.Header().Get("X-Trace-Id") || spans[1].Parent.IsValid() ||
		spans[1].Name != "GET unmatched" {
		t.Errorf("a request without traceparent: X-Trace-Id %s, spans %+v", w.Header().Get("X-Trace-Id"), spans)
	}
}
