package web

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
)

// Step is one stage of the HTTP chain. Every server of a node (customer
// API, POS, payment callbacks, admin, WebSocket upgrades) is one handler
// wrapped in one chain, built in one place (api.Server.Handler); adding a
// step is one line there.
type Step interface {
	Wrap(next http.Handler) http.Handler
}

// Chain wraps h in steps, the first outermost: Chain(h, a, b) runs a, then
// b, then h.
func Chain(h http.Handler, steps ...Step) http.Handler {
	for i := len(steps) - 1; i >= 0; i-- {
		h = steps[i].Wrap(h)
	}
	return h
}

// Class is the kind of client a request comes from (DESIGN's 终端分流):
// limits, shedding and metrics are per class, so a flood from one class
// cannot starve the others.
type Class uint8

// Classes, in the order they are shed under overload: browsing first,
// payment callbacks and POS terminals last, operations never.
const (
	ClassApp      Class = iota // the customer app (the default for /api/)
	ClassMini                  // a WeChat mini-program
	ClassH5                    // a mobile web page
	ClassAdmin                 // operators (/admin/, /debug/, /metrics, /dashboard)
	ClassPOS                   // store terminals (/pos/, /ws/pos)
	ClassCallback              // payment channels' notifications (/pay/v1/notify/)
	ClassOps                   // /healthz, /readyz, the simulators
	Classes                    // the number of classes
)

var classNames = [Classes]string{"app", "mini", "h5", "admin", "pos", "callback", "ops"}

func (c Class) String() string {
	if c < Classes {
		return classNames[c]
	}
	return "class" + strconv.Itoa(int(c))
}

// ParseClass is the class named s ("app", "pos", ...).
func ParseClass(s string) (Class, bool) {
	for i, n := range classNames {
		if n == s {
			return Class(i), true
		}
	}
	return 0, false
}

// Customer reports whether c is one of the customer classes.
func (c Class) Customer() bool { return c <= ClassH5 }

// Info is what the chain's steps learn about a request, for the steps and
// handlers after them. It lives in the request's one allocation.
type Info struct {
	Class  Class
	IP     netip.Addr // the client's address (a trusted proxy's header, else the peer)
	Route  string     // the name of an expensive route ("order", "pay", ...), else ""
	Write  bool       // a method that changes state (not GET, HEAD, OPTIONS)
	UserID int64      // the customer the bearer token names (0: none, or AuthErr)
	Admin  bool       // the bearer token is the admin token
	// AuthErr is why a customer's token was refused (nil: none was
	// given, or it was good). Routes that need a customer answer with it.
	AuthErr error
	// Pattern is the route pattern the router matched ("" before routing,
	// and for none): set by Routed.
	Pattern string
}

// InfoOf returns the request's Info, or nil outside the chain.
func InfoOf(ctx context.Context) *Info {
	if rec, ok := ctx.Value(ctxKey{}).(*recorder); ok {
		return &rec.info
	}
	return nil
}

// Trace is the outermost step: it gives the request its trace context
// (continuing the caller's traceparent when present) and its server span,
// X-Trace-Id on every response, its logger in the context, its Info, and
// one log line when it ends: at debug level, or at error level with the
// error for a 5xx (the one place a failed request is logged). Done, when
// set, is told of every answered request (the RED metrics).
type Trace struct {
	Log    *slog.Logger
	Tracer trace.Tracer // nil: no span; the trace id is traceparent's or a random one
	// Done is told of every answered request: quiet is a refusal by design
	// (Refuse), not a failure.
	Done func(r *http.Request, in *Info, status int, quiet bool, d time.Duration)
}

func (t Trace) Wrap(next http.Handler) http.Handler {
	base := t.Log
	debug := base.Enabled(context.Background(), slog.LevelDebug)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		ctx := r.Context()
		var span trace.Span
		var tid string
		if t.Tracer != nil {
			if tp := r.Header["Traceparent"]; len(tp) > 0 { // upper-case hex taken too, as before tracing
				ctx = propagator.Extract(ctx, propagation.MapCarrier{"traceparent": strings.ToLower(tp[0]),
					"tracestate": r.Header.Get("Tracestate")})
			}
			ctx, span = t.Tracer.Start(ctx, r.Method, trace.WithSpanKind(trace.SpanKindServer))
			if sc := span.SpanContext(); sc.IsValid() {
				tid = sc.TraceID().String()
			}
		}
		if tid == "" {
			tid = traceFrom(r)
		}
		rec := &recorder{ResponseWriter: w, trace: tid, log: base, traceHdr: [1]string{tid}}
		rec.ctx = reqCtx{Context: ctx, rec: rec}
		w.Header()["X-Trace-Id"] = rec.traceHdr[:]
		r = r.WithContext(&rec.ctx)
		defer func() {
			st := rec.status
			if st == 0 { // nothing written: net/http answers 200
				st = http.StatusOK
			}
			if t.Done != nil {
				t.Done(r, &rec.info, st, rec.quiet, time.Since(start))
			}
			failed := st >= 500 && st != StatusClientClosed && !rec.quiet
			if span != nil {
				endSpan(span, r.Method, &rec.info, st, failed, rec.err)
			}
			if debug || failed {
				lvl, args := slog.LevelDebug, []any{"method", r.Method, "path", r.URL.Path, "status", st,
					"class", rec.info.Class.String(), "ms", float64(time.Since(start).Microseconds()) / 1000}
				if failed {
					lvl = slog.LevelError
					if rec.err != nil {
						args = append(args, "err", rec.err.Error())
					}
					if err := r.Context().Err(); err != nil {
						args = append(args, "ctx_err", err.Error())
					}
				}
				ctx := r.Context()
				Log(ctx).Log(ctx, lvl, "request", args...)
			}
		}()
		next.ServeHTTP(rec, r)
	})
}

// propagator reads W3C traceparent (and tracestate).
var propagator = propagation.TraceContext{}

// endSpan names a request's span after its route and ends it.
func endSpan(span trace.Span, method string, in *Info, status int, failed bool, err error) {
	name := in.Pattern
	if name == "" {
		name = method + " unmatched"
	}
	span.SetName(name)
	if span.IsRecording() {
		span.SetAttributes(attribute.Int("http.response.status_code", status), attribute.String("surge.class", in.Class.String()))
		if failed {
			msg := ""
			if err != nil {
				msg = err.Error()
			}
			span.SetStatus(codes.Error, msg)
		}
	}
	span.End()
}

// Routed is mux, recording the pattern it matched in the request's Info.
func Routed(mux *http.ServeMux) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer func() {
			if in := InfoOf(r.Context()); in != nil {
				in.Pattern = r.Pattern
			}
		}()
		mux.ServeHTTP(w, r)
	})
}

// Recover turns a handler's panic into a JSON 500 (when nothing was
// written yet), logged with the stack. http.ErrAbortHandler goes on up.
type Recover struct{}

func (Recover) Wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer func() {
			if p := recover(); p != nil {
				if p == http.ErrAbortHandler {
					panic(p)
				}
				rec, ok := w.(*recorder)
				if ok && rec.status == 0 { // answered 500 below: Trace logs it as the request ends
					rec.err = fmt.Errorf("panic: %v\n%s", p, stack())
				} else {
					Log(r.Context()).Error("panic", "method", r.Method, "path", r.URL.Path, "panic", p, "stack", stack())
				}
				if !ok || rec.status == 0 {
					JSON(w, http.StatusInternalServerError, errBody("internal", "internal error (trace id "+TraceID(r.Context())+")"))
				}
			}
		}()
		next.ServeHTTP(w, r)
	})
}

// HeaderLimit answers a request whose line and headers exceed
// MaxHeaderBytes with a JSON 431 and closes the connection.
type HeaderLimit struct{}

func (HeaderLimit) Wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if headerBytes(r) > MaxHeaderBytes {
			w.Header()["Connection"] = []string{"close"}
			JSON(w, http.StatusRequestHeaderFieldsTooLarge, errBody("header_too_large",
				"the request line and headers exceed "+strconv.Itoa(MaxHeaderBytes>>10)+" KiB"))
			return
		}
		next.ServeHTTP(w, r)
	})
}

// Deadline gives every request but a socket's (/api/v1/ws, /pos/v1/ws) and
// an operator's a deadline of D
// (0: none), so that every call it makes downstream (a database, kv, the
// bus, a payment channel) gives up by then: a dependency that hangs costs
// a request D, never the length of the hang, and answers 503 timeout.
type Deadline struct{ D time.Duration }

func (d Deadline) Wrap(next http.Handler) http.Handler {
	if d.D <= 0 {
		return next
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if p := r.URL.Path; p == "/api/v1/ws" || p == "/pos/v1/ws" { // a socket lives on; its pings bound it
			next.ServeHTTP(w, r)
			return
		}
		if in := InfoOf(r.Context()); in != nil && in.Class == ClassAdmin { // a reconciliation, a pre-warm, a profile: minutes
			next.ServeHTTP(w, r)
			return
		}
		ctx, cancel := context.WithTimeout(r.Context(), d.D)
		defer cancel()
		next.ServeHTTP(w, r.WithContext(ctx))
	})
}

// Basic is the chain's first steps, which every server runs: trace and
// log, recovery, the header limit.
func Basic(log *slog.Logger) []Step { return []Step{Trace{Log: log}, Recover{}, HeaderLimit{}} }
