// Package api maps surge's HTTP API v1 (DESIGN section 6) onto the
// contexts: customers under /api/v1, operators under /admin/v1, and the
// operations endpoints /healthz and /readyz.
package api

import (
	"context"
	"crypto/subtle"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/pprof"
	"net/netip"
	"runtime"
	"strconv"
	"strings"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/surge-platform/surge/internal/catalog"
	"github.com/surge-platform/surge/internal/flashsale"
	"github.com/surge-platform/surge/internal/fulfil"
	"github.com/surge-platform/surge/internal/guard"
	"github.com/surge-platform/surge/internal/member"
	"github.com/surge-platform/surge/internal/monitor"
	"github.com/surge-platform/surge/internal/order"
	"github.com/surge-platform/surge/internal/payment"
	"github.com/surge-platform/surge/internal/platform/bus"
	"github.com/surge-platform/surge/internal/platform/edge"
	"github.com/surge-platform/surge/internal/platform/errkind"
	"github.com/surge-platform/surge/internal/platform/obs"
	"github.com/surge-platform/surge/internal/platform/switches"
	"github.com/surge-platform/surge/internal/platform/web"
	"github.com/surge-platform/surge/internal/promo"
)

// Check is one readiness probe (a backend this node's roles need).
type Check struct {
	Name string
	Ping func(context.Context) error
}

// EventStats reports the event pipeline for operators and tests.
type EventStats func(ctx context.Context) (map[string]int64, error)

// Server holds what the handlers call. Nil services leave their routes out
// (a node without the api role still serves /healthz and /readyz).
type Server struct {
	Log     *slog.Logger
	Members *member.Service
	Catalog *catalog.Service
	// KeyRotated is told of each store whose POS key an operator asked to
	// rotate (after the rotation, even one whose answer failed), so that
	// sockets opened with the old key close; nil: no one is told.
	KeyRotated func(storeID int64)
	Orders     *order.Service
	Payments   *payment.Service
	Fulfil     *fulfil.Service
	Refunds    *payment.Service // the POS's refunds (with Fulfil); nil leaves the route out
	Promo      *promo.Service
	Flash      *flashsale.Service
	Blacklist  *guard.Blacklist
	Extra      map[string]http.Handler // more routes (pattern -> handler), e.g. the payment simulator
	AdminToken string
	Checks     []Check
	Stats      EventStats
	PushStats  func() any // the push centre's counters, for operators; nil = no push role
	// Cluster reports this node's identity, its jobs and the cluster's
	// leases (GET /admin/v1/cluster, on every node); nil = not served.
	Cluster func(ctx context.Context) (any, error)

	// Auth checks customers' tokens in the chain (for every role that
	// serves customers: api, push); nil: no customer is ever recognised.
	Auth *member.Service
	// Edge is the node's limits and shedder (nil: none); Proxies are the
	// trusted reverse proxies whose X-Forwarded-For names the client.
	Edge    *edge.Edge
	Proxies []netip.Prefix
	// RequestTimeout bounds every request but a socket's (0: none).
	RequestTimeout time.Duration

	// DeadLetters serves the dead-letter routes and counts (admin routes
	// only); nil leaves them out.
	DeadLetters *bus.Bus

	// Switches are the cluster's degradation switches (admin routes, and
	// the features they gate); nil: every feature on, routes left out.
	Switches *switches.Panel

	// Metrics is the node's registry (GET /metrics, admin token), and with
	// RED the rate, errors and duration of every request in it.
	Metrics *obs.Metrics
	RED     bool
	// Monitor serves the dashboard (GET /dashboard, admin token, also as
	// ?access_token= for a browser); nil: not served.
	Monitor *monitor.Monitor
	// Tracer gives each request its span (nil: none; the trace id is made
	// or taken from traceparent all the same).
	Tracer trace.Tracer
}

// Handler returns the whole HTTP surface of a node.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		web.JSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	mux.HandleFunc("GET /readyz", s.readyz)
	if s.Members != nil {
		s.customerRoutes(mux)
		s.adminRoutes(mux)
	}
	if s.Promo != nil {
		s.promoRoutes(mux)
	}
	if s.Flash != nil {
		s.flashRoutes(mux)
	}
	if s.Payments != nil {
		s.paymentRoutes(mux)
	}
	if s.Fulfil != nil {
		s.posRoutes(mux)
	}
	if s.Switches != nil {
		s.switchRoutes(mux)
	}
	// Profiles for operators (admin token): go tool pprof -H 'Authorization: Bearer T' .../debug/pprof/profile
	mux.HandleFunc("GET /debug/pprof/", s.admin(pprof.Index))
	mux.HandleFunc("GET /debug/pprof/profile", s.admin(pprof.Profile))
	if s.Cluster != nil {
		mux.HandleFunc("GET /admin/v1/cluster", s.admin(func(w http.ResponseWriter, r *http.Request) {
			v, err := s.Cluster(r.Context())
			if err != nil {
				web.Error(w, r, err)
				return
			}
			web.JSON(w, http.StatusOK, v)
		}))
	}
	if s.Edge != nil {
		mux.HandleFunc("GET /admin/v1/edge", s.admin(func(w http.ResponseWriter, r *http.Request) {
			web.JSON(w, http.StatusOK, s.Edge.Stats())
		}))
	}
	if s.PushStats != nil {
		mux.HandleFunc("GET /push/v1/stats", s.admin(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Query().Get("gc") == "1" { // for memory measurements: live memory only
				runtime.GC()
			}
			web.JSON(w, http.StatusOK, s.PushStats())
		}))
	}
	if m := s.Monitor; m != nil {
		mux.HandleFunc("GET /dashboard", s.admin(m.Page))
		mux.HandleFunc("GET /dashboard/state", s.admin(m.State))
		mux.HandleFunc("GET /dashboard/events", s.admin(m.Events))
	}
	var done func(*http.Request, *web.Info, int, bool, time.Duration)
	if m := s.Metrics; m != nil {
		mux.Handle("GET /metrics", s.admin(m.Handler().ServeHTTP))
	}
	if m := s.Metrics; m != nil && s.RED {
		done = func(r *http.Request, in *web.Info, status int, quiet bool, d time.Duration) {
			m.Request(in.Pattern, r.URL.Path, in.Class, status, quiet, d)
		}
	}
	for pattern, h := range s.Extra {
		mux.Handle(pattern, h)
	}
	e := s.Edge
	if e == nil {
		e = edge.New(edge.Config{}, nil, nil)
	}
	// The chain every request passes, in this order; DESIGN section 9 and
	// docs/operations.md say what each step does.
	return web.Chain(web.Routed(mux),
		web.Trace{Log: s.Log, Tracer: s.Tracer, Done: done}, // trace, logger, the request's log line, the RED metrics
		web.Recover{},                     // a panic is a JSON 500
		web.HeaderLimit{},                 // 431 over MaxHeaderBytes
		edge.Classify{Proxies: s.Proxies}, // class, client address, expensive route
		e.Admit(),                         // blacklisted addresses, the per-IP limit, the cluster cap
		e.Shed(),                          // in-flight caps per class, adaptive shedding
		web.Deadline{D: s.RequestTimeout}, // every downstream call gives up by then
		auth{s},                           // customer token or admin token, checked once
		e.Users(),                         // blacklisted customers, per-customer and per-route limits
	)
}

// checkTimeout bounds each readiness check.
const checkTimeout = 2 * time.Second

// readyz runs every check at once, each under its own deadline, so a
// dependency that hangs is named and does not make the others look down.
// A check that ignores its deadline counts as failed once it has passed.
func (s *Server) readyz(w http.ResponseWriter, r *http.Request) {
	type result struct {
		i   int
		err error
	}
	results := make(chan result, len(s.Checks))
	for i, c := range s.Checks {
		go func() {
			ctx, cancel := context.WithTimeout(r.Context(), checkTimeout)
			defer cancel()
			results <- result{i, c.Ping(ctx)}
		}()
	}
	errs := make([]error, len(s.Checks))
	answered := make([]bool, len(s.Checks))
	late := time.NewTimer(checkTimeout + 100*time.Millisecond)
	defer late.Stop()
wait:
	for range s.Checks {
		select {
		case res := <-results:
			errs[res.i], answered[res.i] = res.err, true
		case <-late.C:
			break wait
		}
	}
	out := map[string]string{}
	failed := []string{}
	for i, c := range s.Checks {
		switch {
		case !answered[i]:
			out[c.Name] = fmt.Sprintf("no answer within %v", checkTimeout)
		case errs[i] != nil:
			out[c.Name] = errs[i].Error()
		default:
			out[c.Name] = "ok"
			continue
		}
		failed = append(failed, c.Name)
	}
	status := http.StatusOK
	if len(failed) > 0 {
		status = http.StatusServiceUnavailable
	}
	web.JSON(w, status, map[string]any{"ready": len(failed) == 0, "checks": out, "failed": failed})
}

type ctxKey int

const userKey ctxKey = 0

// auth is the chain's authentication step: a customer request's bearer
// token (or a socket's access_token=) is verified once, here, and an
// operator request's admin token compared; what it finds is in the
// request's web.Info for the limits after it and for authed, admin and the
// push centre. It refuses nothing itself: a route that needs a customer or
// an operator does.
type auth struct{ s *Server }

func (a auth) Wrap(next http.Handler) http.Handler {
	s := a.s
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if in := web.InfoOf(r.Context()); in != nil {
			switch {
			case in.Class.Customer() && s.Auth != nil:
				tok, ok := web.Bearer(r)
				if !ok && r.URL.Path == "/api/v1/ws" {
					tok, ok = web.Token(r)
				}
				if ok {
					in.UserID, in.AuthErr = s.Auth.Verify(tok)
				}
			case in.Class == web.ClassAdmin:
				tok, ok := web.Bearer(r)
				if !ok && strings.HasPrefix(r.URL.Path, "/dashboard") { // a browser's page and its EventSource
					tok, ok = web.Token(r)
				}
				in.Admin = ok && subtle.ConstantTimeCompare([]byte(tok), []byte(s.AdminToken)) == 1
			}
		}
		next.ServeHTTP(w, r)
	})
}

// authed wraps h so that it runs only for a customer whose token the
// chain's auth step accepted.
func (s *Server) authed(h func(http.ResponseWriter, *http.Request, int64)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		in := web.InfoOf(r.Context())
		switch {
		case in != nil && in.UserID != 0:
			h(w, r, in.UserID)
		case in != nil && in.AuthErr != nil:
			web.Error(w, r, in.AuthErr)
		default:
			web.Error(w, r, member.ErrToken.With("missing Authorization: Bearer <token>"))
		}
	}
}

// admin wraps h so that it runs only when the chain's auth step found the
// admin token.
func (s *Server) admin(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if in := web.InfoOf(r.Context()); in == nil || !in.Admin {
			web.Error(w, r, errkind.ErrUnauthorized.With("admin token required"))
			return
		}
		h(w, r)
	}
}

var ErrBadID = errkind.ErrBadID

// pathID parses the {name} path value as an id.
func pathID(r *http.Request, name string) (int64, error) {
	v := r.PathValue(name)
	x, err := strconv.ParseInt(v, 10, 64)
	if err != nil || x <= 0 {
		return 0, ErrBadID.With("%s %q is not a valid id", name, v)
	}
	return x, nil
}

// ErrBadCursor is a cursor query parameter that no page could have given.
var ErrBadCursor = errkind.New(errkind.Invalid, "invalid_cursor", "cursor must be a cursor from a previous page, or 0")

func queryInt(r *http.Request, name string) (int64, error) {
	v := r.URL.Query().Get(name)
	if v == "" {
		return 0, nil
	}
	x, err := strconv.ParseInt(v, 10, 64)
	if err != nil || x < 0 {
		return 0, errkind.ErrInvalid.With("query parameter %s=%q is not a non-negative integer", name, v)
	}
	return x, nil
}

// page reads the cursor and limit query parameters of a paged list; a bad
// cursor is ErrBadCursor (invalid_cursor, as docs/api.md and docs/pos.md say).
func page(r *http.Request) (cursor, limit int64, err error) {
	if cursor, err = queryInt(r, "cursor"); err != nil {
		return 0, 0, ErrBadCursor.With("%s", err.Error())
	}
	limit, err = queryInt(r, "limit")
	return cursor, limit, err
}

func itoa(x int64) string { return fmt.Sprint(x) }
