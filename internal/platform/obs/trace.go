package obs

import (
	"context"
	"encoding/binary"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/url"
	"strings"

	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.37.0"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/embedded"
	"go.opentelemetry.io/otel/trace/noop"
)

// Tracing is a node's OpenTelemetry tracer provider. Without an exporter
// no span is recorded, but every request, outbox row and bus message still
// gets and passes on a W3C trace context (X-Trace-Id, trace_id in logs,
// traceparent in bus headers and socket messages), at the cost of making
// two random ids. With one, spans are sampled at a ratio of the traces
// started here (a trace that arrives sampled is recorded whatever the
// ratio) and exported in batches.
type Tracing struct {
	tp     *sdktrace.TracerProvider
	tracer trace.Tracer
}

// NewTracing returns the tracing of a node named service (its roles);
// exp nil records nothing; ratio is the share of new traces recorded
// (0..1).
func NewTracing(service string, exp sdktrace.SpanExporter, ratio float64) *Tracing {
	if exp == nil { // ids only: the SDK's unsampled spans cost twice as much (measured: bench --only observe)
		return &Tracing{tracer: idTracer{}}
	}
	tp := sdktrace.NewTracerProvider(sdktrace.WithSampler(sdktrace.ParentBased(sdktrace.AlwaysSample())),
		sdktrace.WithBatcher(exp), sdktrace.WithIDGenerator(fastIDs{}),
		sdktrace.WithResource(resource.NewSchemaless(semconv.ServiceName("surge"), semconv.ServiceInstanceID(service))))
	return &Tracing{tp: tp, tracer: sampler{sdk: tp.Tracer("github.com/surge-platform/surge"), ratio: ratio}}
}

// sampler decides before the SDK does: a span of a sampled trace (a
// caller's, or one of the ratio of new traces) goes to the SDK and is
// recorded; any other only gets its ids (idTracer), which costs half as
// much as the SDK's unsampled span (measured: BenchmarkChain).
type sampler struct {
	embedded.Tracer
	sdk   trace.Tracer
	ratio float64
}

func (s sampler) Start(ctx context.Context, name string, opts ...trace.SpanStartOption) (context.Context, trace.Span) {
	parent := trace.SpanContextFromContext(ctx)
	if parent.IsValid() && parent.IsSampled() || !parent.IsValid() && rand.Float64() < s.ratio {
		return s.sdk.Start(ctx, name, opts...)
	}
	return idTracer{}.Start(ctx, name, opts...)
}

// idTracer makes the span contexts of spans nobody records: a new span id
// in the parent's trace (its flags kept, so a caller's sampled trace stays
// sampled downstream), or a new trace.
type idTracer struct{ embedded.Tracer }

func (idTracer) Start(ctx context.Context, _ string, _ ...trace.SpanStartOption) (context.Context, trace.Span) {
	parent := trace.SpanContextFromContext(ctx)
	cfg := trace.SpanContextConfig{TraceID: parent.TraceID(), TraceFlags: parent.TraceFlags(), TraceState: parent.TraceState()}
	if !parent.IsValid() {
		cfg = trace.SpanContextConfig{}
		binary.LittleEndian.PutUint64(cfg.TraceID[:8], rand.Uint64())
		binary.LittleEndian.PutUint64(cfg.TraceID[8:], rand.Uint64())
	}
	binary.LittleEndian.PutUint64(cfg.SpanID[:], rand.Uint64()|1) // never all zeros
	ctx = trace.ContextWithSpanContext(ctx, trace.NewSpanContext(cfg))
	return ctx, trace.SpanFromContext(ctx)
}

// fastIDs are the SDK's ids from math/rand/v2, which needs no lock (the
// SDK's default shares one source behind a mutex between all goroutines).
type fastIDs struct{}

func (fastIDs) NewIDs(context.Context) (trace.TraceID, trace.SpanID) {
	var t trace.TraceID
	binary.LittleEndian.PutUint64(t[:8], rand.Uint64())
	binary.LittleEndian.PutUint64(t[8:], rand.Uint64()|1)
	return t, fastIDs{}.NewSpanID(context.Background(), t)
}

func (fastIDs) NewSpanID(context.Context, trace.TraceID) trace.SpanID {
	var s trace.SpanID
	binary.LittleEndian.PutUint64(s[:], rand.Uint64()|1)
	return s
}

// Tracer returns the node's tracer (a nil t: one that records nothing
// and makes no ids).
func (t *Tracing) Tracer() trace.Tracer {
	if t == nil {
		return noop.NewTracerProvider().Tracer("")
	}
	return t.tracer
}

// Flush exports the spans ended so far.
func (t *Tracing) Flush(ctx context.Context) error {
	if t.tp == nil {
		return nil
	}
	return t.tp.ForceFlush(ctx)
}

// Close flushes and stops the exporter.
func (t *Tracing) Close(ctx context.Context) error {
	if t.tp == nil {
		return nil
	}
	return t.tp.Shutdown(ctx)
}

// OTLP returns an exporter that sends spans over OTLP/HTTP (protobuf) to
// endpoint, a URL such as http://collector:4318 (the path /v1/traces is
// added when it has none).
func OTLP(endpoint string) (sdktrace.SpanExporter, error) {
	u, err := url.Parse(endpoint)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("--otlp %q: want an http(s) URL such as http://127.0.0.1:4318", endpoint)
	}
	if u.Path == "" || u.Path == "/" {
		u.Path = "/v1/traces"
	}
	return otlptracehttp.New(context.Background(), otlptracehttp.WithEndpointURL(u.String()))
}

// propagator reads and writes W3C traceparent (and tracestate).
var propagator = propagation.TraceContext{}

// TraceHeader is the header that carries a trace context, lower-case as it
// is written into bus messages and outbox rows.
const TraceHeader = "traceparent"

// Carrier is a message's headers as a TextMapCarrier: it writes keys in
// lower case and reads them in any case (nats.Header is case-sensitive,
// and the stock carrier would write "Traceparent").
type Carrier map[string]string

func (c Carrier) Get(key string) string {
	if v, ok := c[key]; ok {
		return v
	}
	for k, v := range c {
		if strings.EqualFold(k, key) {
			return v
		}
	}
	return ""
}

func (c Carrier) Set(key, value string) { c[strings.ToLower(key)] = value }

func (c Carrier) Keys() []string {
	keys := make([]string, 0, len(c))
	for k := range c {
		keys = append(keys, k)
	}
	return keys
}

// Inject writes ctx's trace context into h (nothing when ctx has none).
func Inject(ctx context.Context, h map[string]string) {
	if trace.SpanContextFromContext(ctx).IsValid() {
		propagator.Inject(ctx, Carrier(h))
	}
}

// Extract returns ctx with the remote trace context h carries, if any.
func Extract(ctx context.Context, h map[string]string) context.Context {
	if len(h) == 0 {
		return ctx
	}
	return propagator.Extract(ctx, Carrier(h))
}

// Traceparent returns ctx's trace context as a traceparent value ("" when
// it has none): what socket messages carry, for a client to send back.
func Traceparent(ctx context.Context) string {
	sc := trace.SpanContextFromContext(ctx)
	if !sc.IsValid() {
		return ""
	}
	return "00-" + sc.TraceID().String() + "-" + sc.SpanID().String() + "-" + sc.TraceFlags().String()
}

// WithTraceparent returns ctx with the remote trace context tp ("": ctx).
func WithTraceparent(ctx context.Context, tp string) context.Context {
	if tp == "" {
		return ctx
	}
	return Extract(ctx, map[string]string{TraceHeader: tp})
}

// Transport passes the trace context of each request's context on as a
// traceparent header (calls to payment channels and webhooks).
type Transport struct{ Base http.RoundTripper }

func (t Transport) RoundTrip(r *http.Request) (*http.Response, error) {
	base := t.Base
	if base == nil {
		base = http.DefaultTransport
	}
	if trace.SpanContextFromContext(r.Context()).IsValid() && r.Header.Get("Traceparent") == "" {
		r = r.Clone(r.Context())
		propagator.Inject(r.Context(), propagation.HeaderCarrier(r.Header))
	}
	return base.RoundTrip(r)
}

// LogHandler adds trace_id to each record logged with a context that
// carries a trace (log.InfoContext(ctx, ...)), unless the logger has one
// already (a request's logger, web.Log).
type LogHandler struct {
	slog.Handler
	traced bool // a trace_id attribute was added with WithAttrs
}

func (h LogHandler) Handle(ctx context.Context, r slog.Record) error {
	if !h.traced {
		if sc := trace.SpanContextFromContext(ctx); sc.IsValid() {
			r.AddAttrs(slog.String("trace_id", sc.TraceID().String()))
		}
	}
	return h.Handler.Handle(ctx, r)
}

func (h LogHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	traced := h.traced
	for _, a := range attrs {
		traced = traced || a.Key == "trace_id"
	}
	return LogHandler{Handler: h.Handler.WithAttrs(attrs), traced: traced}
}

func (h LogHandler) WithGroup(name string) slog.Handler {
	return LogHandler{Handler: h.Handler.WithGroup(name), traced: h.traced}
}
