// Package web holds surge's HTTP plumbing: JSON bodies and errors, the error
// kind -> status table, and the steps of the HTTP chain every server of a
// node runs (chain.go): trace ids and request logging, panic recovery, the
// header limit; the governance steps (limits, shedding) are in package edge.
package web

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"sync"

	"github.com/surge-platform/surge/internal/platform/errkind"
)

// MaxBody is the default limit on request bodies.
const MaxBody = 64 << 10

// Limits on a request's line and headers. Middleware answers a request over
// MaxHeaderBytes with a JSON 431; the server must read up to
// ServerMaxHeaderBytes (its http.Server.MaxHeaderBytes) for that, as
// net/http answers a longer one itself, in plain text, before any handler.
const (
	MaxHeaderBytes       = 64 << 10
	ServerMaxHeaderBytes = 4 * MaxHeaderBytes
)

var statusOf = map[errkind.Kind]int{
	errkind.Internal:     http.StatusInternalServerError,
	errkind.Invalid:      http.StatusBadRequest,
	errkind.Unauthorized: http.StatusUnauthorized,
	errkind.Forbidden:    http.StatusForbidden,
	errkind.NotFound:     http.StatusNotFound,
	errkind.Conflict:     http.StatusConflict,
	errkind.TooLarge:     http.StatusRequestEntityTooLarge,
	errkind.Throttled:    http.StatusTooManyRequests,
	errkind.Unavailable:  http.StatusServiceUnavailable,
	errkind.TooEarly:     http.StatusTooEarly,
	errkind.Challenge:    http.StatusPreconditionRequired,
}

// ErrBody is the JSON shape of every error response.
type ErrBody struct {
	Error struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
}

// Status returns the HTTP status for err.
func Status(err error) int {
	if e := errkind.Of(err); e != nil {
		return statusOf[e.Kind]
	}
	if errors.Is(err, context.Canceled) {
		return StatusClientClosed
	}
	return http.StatusInternalServerError
}

// StatusClientClosed is logged (and written, to nobody) when the client
// went away before the answer was ready.
const StatusClientClosed = 499

// Error writes err as {"error":{code,message}} with the status of its kind.
// Errors without a kind are internal: they are logged (once, here) and the
// client sees a generic message. A 503 carries Retry-After (1 s) unless the
// handler set one.
func Error(w http.ResponseWriter, r *http.Request, err error) {
	if errors.Is(r.Context().Err(), context.Canceled) {
		// The client went away mid-request: whatever failed after that
		// (a query cut short, classified as the database's) is noise.
		if e := errkind.Of(err); e == nil || statusOf[e.Kind] >= 500 {
			err = context.Canceled
		}
	}
	answer(w, r, err, false)
}

// Refuse answers err like Error but logs nothing, and the request's log
// line stays at debug level: a refusal by design (shed load, a limit, a
// switched-off feature) is counted where it is made, and logging each one
// would cost an overloaded node the most when it can least afford it.
func Refuse(w http.ResponseWriter, r *http.Request, err error) {
	if rec, ok := w.(*recorder); ok {
		rec.quiet = true
	}
	answer(w, r, err, true)
}

// answer writes err's body with its status (and Retry-After on a 503),
// logging a 5xx unless quiet. A bare sentinel's body (a flash sale's
// sold_out, a shed request's overloaded: most of a crowd's answers) is
// encoded once.
func answer(w http.ResponseWriter, r *http.Request, err error, quiet bool) {
	status := Status(err)
	if status == http.StatusServiceUnavailable && w.Header().Get("Retry-After") == "" {
		w.Header()["Retry-After"] = retryAfter
	}
	if status >= 500 && !quiet {
		if rec, ok := r.Context().Value(ctxKey{}).(*recorder); ok && rec.status == 0 {
			rec.err = err // Trace logs it, once, as the request ends
		} else { // outside the chain, or after a status went out (Trace would not see a failure)
			Log(r.Context()).Error("request failed", "method", r.Method, "path", r.URL.Path, "status", status, "err", err, "ctx_err", r.Context().Err())
		}
	}
	sentinel, _ := err.(*errkind.Error)
	if sentinel != nil {
		if b, ok := sentinelBodies.Load(sentinel); ok {
			Raw(w, status, b.([]byte))
			return
		}
	}
	var body ErrBody
	if e := errkind.Of(err); e != nil {
		body.Error.Code, body.Error.Message = e.Code, e.Message
	} else if status == StatusClientClosed {
		body.Error.Code, body.Error.Message = "client_closed", "the client closed the request"
	} else {
		body.Error.Code, body.Error.Message = "internal", "internal error (trace id "+TraceID(r.Context())+")"
	}
	if sentinel != nil {
		b, _ := json.Marshal(body)
		sentinelBodies.Store(sentinel, b)
		Raw(w, status, b)
		return
	}
	JSON(w, status, body)
}

// sentinelBodies holds the encoded body of each bare sentinel answered
// so far (*errkind.Error -> []byte): a few dozen at most.
var sentinelBodies sync.Map

// JSON writes v with status.
func JSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		http.Error(w, `{"error":{"code":"internal","message":"encode"}}`, http.StatusInternalServerError)
		return
	}
	Raw(w, status, b)
}

// Raw writes an already encoded JSON body.
func Raw(w http.ResponseWriter, status int, b []byte) {
	h := w.Header()
	h["Content-Type"] = jsonType
	h["Content-Length"] = []string{strconv.Itoa(len(b))} // no chunked encoding for bodies over 2 KiB
	w.WriteHeader(status)
	w.Write(b)
}

var jsonType = []string{"application/json"}

// retryAfter is the Retry-After of a 503: a dependency that is down is
// asked again after a second (calls to it give up within about that).
var retryAfter = []string{"1"}

type ctxKey struct{}

// TraceID returns the request's trace id ("" outside a request).
func TraceID(ctx context.Context) string {
	if rec, ok := ctx.Value(ctxKey{}).(*recorder); ok {
		return rec.trace
	}
	return ""
}

// Log returns a logger with the request's trace_id, or slog.Default()
// outside a request. It is built on demand: most requests log nothing.
func Log(ctx context.Context) *slog.Logger {
	if rec, ok := ctx.Value(ctxKey{}).(*recorder); ok {
		return rec.log.With("trace_id", rec.trace)
	}
	return slog.Default()
}

// traceFrom takes the trace id from a W3C traceparent header
// (version-traceid-parentid-flags), or makes a new one.
func traceFrom(r *http.Request) string {
	if tp := r.Header.Get("Traceparent"); len(tp) == 55 && tp[2] == '-' && tp[35] == '-' {
		if t := strings.ToLower(tp[3:35]); isHex(t) && t != strings.Repeat("0", 32) {
			return t
		}
	}
	var b [32]byte
	hi, lo := rand.Uint64(), rand.Uint64()
	const digits = "0123456789abcdef"
	for i := range 16 {
		b[i], b[16+i] = digits[hi>>(4*i)&15], digits[lo>>(4*i)&15]
	}
	return string(b[:])
}

func isHex(s string) bool {
	for _, c := range s {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

// recorder is a request's state: the response writer that records the
// status, and (in ctx) the request's context that carries it. One
// allocation per request for all of it: at tens of thousands of requests a
// second the middleware's allocations were a sixth of the garbage.
type recorder struct {
	http.ResponseWriter
	ctx      reqCtx
	trace    string
	log      *slog.Logger
	status   int
	swallow  bool      // net/http's own plain-text 404/405 was replaced by JSON
	quiet    bool      // a refusal by design (Refuse): not logged as a failure
	err      error     // why a 5xx was answered (Error), for its log line
	traceHdr [1]string // X-Trace-Id's value
	info     Info      // what the chain's steps learnt about the request
}

// reqCtx is the request's context with its recorder as the value of
// ctxKey. Lookups of other keys, deadlines and cancellation go to the
// request's own context.
type reqCtx struct {
	context.Context
	rec *recorder
}

func (c *reqCtx) Value(key any) any {
	if _, ok := key.(ctxKey); ok {
		return c.rec
	}
	return c.Context.Value(key)
}

func (r *recorder) WriteHeader(s int) {
	if r.status != 0 {
		return
	}
	r.status = s
	h := r.Header()
	if (s == http.StatusNotFound || s == http.StatusMethodNotAllowed) && strings.HasPrefix(h.Get("Content-Type"), "text/plain") {
		// The mux's own answer to an unknown route or method: say it in JSON.
		r.swallow = true
		h.Del("X-Content-Type-Options")
		h["Content-Type"] = jsonType
		r.ResponseWriter.WriteHeader(s)
		code, msg := "not_found", "no such route"
		if s == http.StatusMethodNotAllowed {
			code, msg = "method_not_allowed", "method not allowed on this route (see the Allow header)"
		}
		b, _ := json.Marshal(errBody(code, msg))
		r.ResponseWriter.Write(b)
		return
	}
	r.ResponseWriter.WriteHeader(s)
}

func (r *recorder) Write(b []byte) (int, error) {
	if r.status == 0 {
		r.WriteHeader(http.StatusOK)
	}
	if r.swallow {
		return len(b), nil
	}
	return r.ResponseWriter.Write(b)
}

func (r *recorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }

// headerBytes is about what the request line and headers took on the wire.
func headerBytes(r *http.Request) int {
	n := len(r.Method) + len(r.RequestURI) + len(r.Proto) + len(r.Host) + 12
	for k, vs := range r.Header {
		for _, v := range vs {
			n += len(k) + len(v) + 4
		}
	}
	return n
}

func errBody(code, msg string) ErrBody {
	var b ErrBody
	b.Error.Code, b.Error.Message = code, msg
	return b
}

// Bearer returns the token of an "Authorization: Bearer <token>" header.
func Bearer(r *http.Request) (string, bool) {
	h := r.Header.Get("Authorization")
	if len(h) < 8 || !strings.EqualFold(h[:7], "bearer ") {
		return "", false
	}
	return strings.TrimSpace(h[7:]), true
}

// Token returns the bearer token of r: its Authorization header's, else
// its access_token= parameter's (browsers cannot set headers on a
// WebSocket).
func Token(r *http.Request) (string, bool) {
	if t, ok := Bearer(r); ok {
		return t, true
	}
	if t := r.URL.Query().Get("access_token"); t != "" {
		return t, true
	}
	return "", false
}
