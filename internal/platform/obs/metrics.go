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
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	dto "github.com/prometheus/client_model/go"

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
	// refused counts the 5xx answered by design to client classes (shed,
	// a cap): counted in the RED metrics, not as failures by Totals.
	refused atomic.Uint64
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
// read does under ctx (3 s at most: scrapeTimeout).
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
// matched ("" for none: then path names the role); refused is a refusal
// by design (shed, capped), not a failure.
func (m *Metrics) Request(route, path string, class web.Class, code int, refused bool, d time.Duration) {
	if m == nil {
		return
	}
	if refused && code >= 500 && class != web.ClassAdmin && class != web.ClassOps {
		m.refused.Add(1)
	}
	k := redKey{route, class, code}
	if route == "" {
		k.route = unrouted + RoleOf(path) // a handful of keys: the role, not the path
	}
	v, ok := m.red.Load(k)
	if !ok {
		r, role := routeLabel(route), RoleOf(route)
		if route == "" {
			role = k.route[len(unrouted):]
		}
		cl := class.String()
		v, _ = m.red.LoadOrStore(k, &red{n: m.reqs.WithLabelValues(r, role, cl, codeLabel(code)),
			dur: m.dur.WithLabelValues(r, role, cl)})
	}
	x := v.(*red)
	x.n.Inc()
	x.dur.Observe(d.Seconds())
}

// unrouted prefixes the keys of requests no route matched.
const unrouted = "\x00"

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
	case hasPrefix(p, "/paysim/"), hasPrefix(p, "/v3/"): // the simulator's own routes, and WeChat Pay's API it serves
		return "paysim"
	case hasPrefix(p, "/admin/"), hasPrefix(p, "/debug/"):
		return "admin"
	}
	return "ops"
}

func hasPrefix(s, p string) bool { return len(s) >= len(p) && s[:len(p)] == p }

// Totals is what a node answered clients since it started (operators'
// and probes' requests, classes admin and ops, left out).
type Totals struct {
	Requests, Errors uint64   // Errors: 5xx but 499 (the client left) and refusals by design (shed, capped)
	Timed            uint64   // requests in the latency histogram (read with Buckets, apart from Requests)
	Buckets          []uint64 // of those, the ones that took at most LatencyBuckets[i] seconds
}

// Totals reads the RED metrics' totals (a few dozen series: cheap enough
// for once a second).
func (m *Metrics) Totals() Totals {
	t := Totals{Buckets: make([]uint64, len(LatencyBuckets))}
	if m == nil {
		return t
	}
	client := func(ls []*dto.LabelPair, code *string) bool {
		ok := true
		for _, l := range ls {
			switch l.GetName() {
			case "class":
				ok = l.GetValue() != "admin" && l.GetValue() != "ops"
			case "code":
				*code = l.GetValue()
			}
		}
		return ok
	}
	for _, c := range []prometheus.Collector{m.reqs, m.dur} {
		ch := make(chan prometheus.Metric, 64)
		go func() { c.Collect(ch); close(ch) }()
		for pm := range ch {
			var d dto.Metric
			if pm.Write(&d) != nil {
				continue
			}
			var code string
			if !client(d.Label, &code) {
				continue
			}
			if d.Counter != nil {
				n := uint64(d.Counter.GetValue())
				t.Requests += n
				if code >= "500" && code <= "599" && code != "499" {
					t.Errors += n
				}
			}
			if h := d.Histogram; h != nil {
				t.Timed += h.GetSampleCount()
				for i, b := range h.Bucket {
					if i < len(t.Buckets) {
						t.Buckets[i] += b.GetCumulativeCount()
					}
				}
			}
		}
	}
	t.Errors -= min(t.Errors, m.refused.Load())
	return t
}

// Since is what was answered between old and t: requests, the share of
// 5xx, and the 99th percentile's bucket bound in seconds (0: none).
func (t Totals) Since(old Totals) (requests uint64, errShare, p99 float64) {
	requests = t.Requests - old.Requests
	if requests == 0 {
		return 0, 0, 0
	}
	errShare = float64(t.Errors-min(t.Errors, old.Errors)) / float64(requests)
	// The percentile from the histogram alone (its count and buckets are
	// read together; the counter a moment apart).
	timed := t.Timed - min(t.Timed, old.Timed)
	if timed == 0 {
		return requests, errShare, 0
	}
	var seen uint64
	for i := range t.Buckets {
		if i < len(old.Buckets) {
			seen = t.Buckets[i] - min(t.Buckets[i], old.Buckets[i])
		}
		if float64(seen) >= 0.99*float64(timed) {
			return requests, errShare, LatencyBuckets[i]
		}
	}
	return requests, errShare, 2 * LatencyBuckets[len(LatencyBuckets)-1] // beyond the last bound
}
