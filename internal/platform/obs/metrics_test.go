package obs

import (
	"context"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"

	"github.com/surge-platform/surge/internal/platform/web"
)

func TestRoleOf(t *testing.T) {
	for pattern, want := range map[string]string{
		"GET /api/v1/stores/{store_id}/menu":    "api",
		"POST /pay/v1/notify/{channel}":         "api",
		"POST /pos/v1/orders/{order_id}/accept": "fulfil",
		"GET /pos/v1/ws":                        "push",
		"GET /api/v1/ws":                        "push",
		"GET /push/v1/stats":                    "push",
		"/paysim/v1/":                           "paysim",
		"/v3/":                                  "paysim",
		"GET /admin/v1/cluster":                 "admin",
		"GET /debug/pprof/":                     "admin",
		"GET /readyz":                           "ops",
		"":                                      "ops",
	} {
		if got := RoleOf(pattern); got != want {
			t.Errorf("RoleOf(%q) = %q, want %q", pattern, got, want)
		}
	}
}

func TestCodeLabelIsBounded(t *testing.T) {
	for code, want := range map[int]string{200: "200", 499: "499", 599: "599", 0: "other", 99: "other", 600: "other", 1 << 20: "other"} {
		if got := codeLabel(code); got != want {
			t.Errorf("codeLabel(%d) = %q, want %q", code, got, want)
		}
	}
}

// A nil registry hands out metrics that work and are never scraped.
func TestNilMetrics(t *testing.T) {
	var m *Metrics
	m.Request("GET /x", "/x", web.ClassApp, 200, false, time.Millisecond)
	m.CounterVec("a_total", "a", "x").WithLabelValues("y").Inc()
	m.Counter("b_total", "b").Inc()
	m.Func("c", "c", prometheus.GaugeValue, nil, func(context.Context, Emit) { t.Error("a nil registry's Func was read") })
}

// A Func that emits a sample with the wrong label values spoils only its
// own family: the scrape still answers with the others.
func TestFuncErrorSpoilsOnlyItself(t *testing.T) {
	m := New()
	m.Func("good", "good", prometheus.GaugeValue, []string{"k"}, func(_ context.Context, emit Emit) { emit(7, "v") })
	m.Func("bad", "bad", prometheus.GaugeValue, []string{"k"}, func(_ context.Context, emit Emit) { emit(1) })
	m.Request("GET /x/{id}", "/x/1", web.ClassPOS, 201, false, 3*time.Millisecond)
	w := httptest.NewRecorder()
	m.Handler().ServeHTTP(w, httptest.NewRequest("GET", "/metrics", nil))
	body := w.Body.String()
	for _, want := range []string{`good{k="v"} 7`,
		`surge_http_requests_total{class="pos",code="201",role="ops",route="GET /x/{id}"} 1`,
		`surge_http_request_duration_seconds_bucket{class="pos",role="ops",route="GET /x/{id}",le="0.005"} 1`} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	if strings.Contains(body, "\nbad") {
		t.Error("a Func with wrong label values was exposed")
	}
}

// BenchmarkRequest is the RED metrics' cost per request once the route's
// series exist: no allocation.
func BenchmarkRequest(b *testing.B) {
	m := New()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			m.Request("GET /api/v1/stores/{store_id}/menu", "/api/v1/stores/1001/menu", web.ClassApp, 200, false, 300*time.Microsecond)
		}
	})
}

// BenchmarkChain is the chain's Trace step around a handler that does
// nothing, with telemetry off, with RED metrics and ids-only tracing (the
// default), and with every span recorded (exported to nowhere).
func BenchmarkChain(b *testing.B) {
	noop := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(200) })
	mux := http.NewServeMux()
	mux.Handle("GET /api/v1/stores/{store_id}/menu", noop)
	m := New()
	red := func(r *http.Request, in *web.Info, st int, quiet bool, d time.Duration) {
		m.Request(in.Pattern, r.URL.Path, in.Class, st, quiet, d)
	}
	log := slog.New(slog.DiscardHandler)
	for _, c := range []struct {
		name string
		step web.Trace
	}{
		{"off", web.Trace{Log: log}},
		{"on", web.Trace{Log: log, Tracer: NewTracing("api", nil, 1).Tracer(), Done: red}},
		{"exporter, 1% recorded", web.Trace{Log: log, Tracer: NewTracing("api", discard{}, 0.01).Tracer(), Done: red}},
		{"recorded", web.Trace{Log: log, Tracer: NewTracing("api", discard{}, 1).Tracer(), Done: red}},
	} {
		h := web.Chain(web.Routed(mux), c.step)
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				r := httptest.NewRequest("GET", "/api/v1/stores/1001/menu", nil)
				w := httptest.NewRecorder()
				for pb.Next() {
					h.ServeHTTP(w, r)
				}
			})
		})
	}
}

type discard struct{}

func (discard) ExportSpans(context.Context, []sdktrace.ReadOnlySpan) error { return nil }
func (discard) Shutdown(context.Context) error                             { return nil }

// Totals: refusals by design are not failures, unrouted requests take
// their path's role, and the p99 comes from the histogram alone.
func TestTotals(t *testing.T) {
	m := New()
	before := m.Totals()
	for range 97 {
		m.Request("GET /api/v1/x", "/api/v1/x", web.ClassApp, 200, false, time.Millisecond)
	}
	m.Request("GET /api/v1/x", "/api/v1/x", web.ClassApp, 500, false, 2*time.Second)
	m.Request("", "/api/v1/nothing", web.ClassApp, 503, true, time.Millisecond) // shed
	m.Request("", "/api/v1/nothing", web.ClassApp, 503, true, time.Millisecond)
	m.Request("GET /metrics", "/metrics", web.ClassAdmin, 500, false, time.Second) // operators' are left out
	n, errShare, p99 := m.Totals().Since(before)
	if n != 100 || errShare != 0.01 || p99 != 0.001 {
		t.Errorf("100 requests, 1 failed, 2 shed: got %d, %v, p99 %v", n, errShare, p99)
	}
	w := httptest.NewRecorder()
	m.Handler().ServeHTTP(w, httptest.NewRequest("GET", "/metrics", nil))
	if !strings.Contains(w.Body.String(), `surge_http_requests_total{class="app",code="503",role="api",route="unmatched"} 2`) {
		t.Errorf("refused requests without a route are not the api's:\n%s", w.Body.String())
	}
}
