// Package obs is a node's observability: its one metrics registry (served
// as GET /metrics in Prometheus's text format), the HTTP chain's RED
// metrics, and metrics read from the node's parts when scraped.
//
// Labels name kinds, never ids: a route's pattern, a class, an event type,
// a shard's name. docs/observability.md lists every metric.
package obs

import (
	"context"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/surge-platform/surge/internal/platform/web"
)

// Metrics is a node's registry. Each node has its own (tests run several
// nodes in one process); a nil *Metrics hands out working metrics that
// nothing scrapes.
type Metrics struct {
	reg  *prometheus.Registry
	reqs *prometheus.CounterVec
	dur  *prometheus.HistogramVec
	red  sync.Map // redKey -> *red: the request path does not hash label values
}

// LatencyBuckets are the request latency histogram's bounds, in seconds.
var LatencyBuckets = []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}

// New returns a registry with the Go runtime's and the process's metrics.
func New() *Metrics {
	m := &Metrics{reg: prometheus.NewRegistry()}
	m.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	m.reqs = m.CounterVec("surge_http_requests_total", "HTTP requests answered, by route pattern, role, class and status code.",
		"route", "role", "class", "code")
	m.dur = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "surge_http_request_duration_seconds",
		Help: "Time from a request's arrival to its handler's return, by route pattern, role and class.", Buckets: LatencyBuckets},
		[]string{"route", "role", "class"})
	m.reg.MustRegister(m.dur)
	return m
}

// Registry returns the registry (nil for a nil m).
func (m *Metrics) Registry() *prometheus.Registry {
	if m == nil {
		return nil
	}
	return m.reg
}

// Handler serves the registry in the Prometheus exposition format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError, Timeout: 10 * time.Second})
}

// CounterVec returns a registered counter vector.
func (m *Metrics) CounterVec(name, help string, labels ...string) *prometheus.CounterVec {
	c := prometheus.NewCounterVec(prometheus.CounterOpts{Name: name, Help: help}, labels)
	if m != nil {
		m.reg.MustRegister(c)
	}
	return c
}

// Counter returns a registered counter.
func (m *Metrics) Counter(name, help string) prometheus.Counter {
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: name, Help: help})
	if m != nil {
		m.reg.MustRegister(c)
	}
	return c
}

// Emit is how a Func reports one sample: its value and its label values,
// in the order the Func named the labels.
type Emit func(v float64, labelValues ...string)

// Func registers a metric read when scraped: read calls emit once per
// sample. It suits what a part already counts (atomics behind a Stats
// method) and what is asked of a dependency (an outbox's depth), which
// read does under ctx (10 s at most, the scrape's timeout).
func (m *Metrics) Func(name, help string, typ prometheus.ValueType, labels []string, read func(ctx context.Context, emit Emit)) {
	if m == nil {
		return
	}
	m.reg.MustRegister(&funcCollector{desc: prometheus.NewDesc(name, help, labels, nil), typ: typ, read: read})
}

type funcCollector struct {
	desc *prometheus.Desc
	typ  prometheus.ValueType
	read func(context.Context, Emit)
}

func (f *funcCollector) Describe(ch chan<- *prometheus.Desc) { ch <- f.desc }

func (f *funcCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), scrapeTimeout)
	defer cancel()
	f.read(ctx, func(v float64, lv ...string) {
		if m, err := prometheus.NewConstMetric(f.desc, f.typ, v, lv...); err == nil {
			ch <- m
		} else {
			ch <- prometheus.NewInvalidMetric(f.desc, err)
		}
	})
}

// scrapeTimeout bounds what a Func asks of a dependency.
const scrapeTimeout = 3 * time.Second

type redKey struct {
	route string
	class web.Class
	code  int
}

type red struct {
	n   prometheus.Counter
	dur prometheus.Observer
}

// Request records one answered request: route is the pattern the router
// matched ("" for none).
func (m *Metrics) Request(route string, class web.Class, code int, d time.Duration) {
	if m == nil {
		return
	}
	k := redKey{route, class, code}
	v, ok := m.red.Load(k)
	if !ok {
		r := routeLabel(route)
		role, cl := RoleOf(route), class.String()
		v, _ = m.red.LoadOrStore(k, &red{n: m.reqs.WithLabelValues(r, role, cl, codeLabel(code)),
			dur: m.dur.WithLabelValues(r, role, cl)})
	}
	x := v.(*red)
	x.n.Inc()
	x.dur.Observe(d.Seconds())
}

// routeLabel is a route's label: its pattern, or "unmatched" (a 404, or a
// request refused before routing).
func routeLabel(route string) string {
	if route == "" {
		return "unmatched"
	}
	return route
}

// codeLabel keeps the code label bounded: a status outside 100..599 (a
// handler's bug) is "other".
func codeLabel(code int) string {
	if code < 100 || code > 599 {
		return "other"
	}
	return strconv.Itoa(code)
}

// RoleOf is the role that serves a route pattern ("GET /pos/v1/queue"):
// api, fulfil (the POS), push (sockets), paysim, admin or ops.
func RoleOf(pattern string) string {
	p := pattern
	for i := 0; i < len(p); i++ { // drop the method
		if p[i] == ' ' {
			p = p[i+1:]
			break
		}
	}
	switch {
	case p == "/api/v1/ws", p == "/pos/v1/ws", hasPrefix(p, "/push/"):
		return "push"
	case hasPrefix(p, "/pos/"):
		return "fulfil"
	case hasPrefix(p, "/api/"), hasPrefix(p, "/pay/"):
		return "api"
	case hasPrefix(p, "/paysim/"):
		return "paysim"
	case hasPrefix(p, "/admin/"), hasPrefix(p, "/debug/"):
		return "admin"
	}
	return "ops"
}

func hasPrefix(s, p string) bool { return len(s) >= len(p) && s[:len(p)] == p }
