package edge

import (
	"errors"
	"fmt"
	"math"
	"net/http"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/surge-platform/surge/internal/guard"
	"github.com/surge-platform/surge/internal/platform/errkind"
	"github.com/surge-platform/surge/internal/platform/limit"
	"github.com/surge-platform/surge/internal/platform/web"
)

// Errors the steps answer with.
var (
	ErrCap         = errkind.New(errkind.Throttled, "cluster_busy", "the service is at its request cap, try again shortly")
	ErrRate        = errkind.New(errkind.Throttled, "rate_limited", "too many requests, slow down")
	ErrBusy        = errkind.New(errkind.Unavailable, "overloaded", "the server is overloaded, try again shortly")
	ErrBlacklisted = errkind.New(errkind.Forbidden, "blacklisted", "too many requests over the limits: you are blocked for a while")
)

// Config is the edge's limits. A zero rate or count turns its limit off.
type Config struct {
	IPRPS       float64            // requests a second per client address (customer classes; loopback exempt)
	UserRPS     float64            // requests a second per customer
	RouteRPS    map[string]float64 // requests a second per customer on each expensive route (Routes)
	MaxInflight int                // requests in flight on this node (per-class shares in shed.go)
	Shed        string             // the adaptive shedder (shed.go): ShedBBR, ShedFailsafe, or ShedOff / ""
	Ban         int                // refusals within limit.StrikeWindow that blacklist the client; 0 = never
	BanFor      time.Duration      // how long; 0 = 10 minutes
	MaxKeys     int                // clients remembered per limit; 0 = 1<<18
}

// Cap is the cluster-wide request cap (limit.Cluster): Allow says whether
// one more request fits now, or how long until one does.
type Cap interface {
	Allow(now time.Time) (ok bool, retry time.Duration)
}

// Edge holds the limits and counters of one node's chain.
type Edge struct {
	cfg   Config
	cap   Cap
	ip    *limit.Keyed
	user  *limit.Keyed
	route map[string]*limit.Keyed
	bl    *guard.Blacklist
	shed  *Shedder
	now   func() time.Time
	conns *Listener // nil: not listening through Listen
	stats [web.Classes]counters
}

type counters struct {
	passed, capped, limited, banned, shed, inflight atomic.Int64
}

// New returns the edge for cfg (a Shed it does not know is ShedOff: Check
// it first). cap (nil: no cluster cap) applies to the
// customer classes; bl (nil: none) is the cluster-wide blacklist
// the limits add to and check.
func New(cfg Config, cap Cap, bl *guard.Blacklist) *Edge {
	keys := cfg.MaxKeys
	if keys == 0 {
		keys = 1 << 18
	}
	if cfg.BanFor == 0 {
		cfg.BanFor = 10 * time.Minute
	}
	e := &Edge{cfg: cfg, cap: cap, bl: bl, now: time.Now, route: map[string]*limit.Keyed{},
		ip:   limit.NewKeyed(cfg.IPRPS, burst(cfg.IPRPS), keys),
		user: limit.NewKeyed(cfg.UserRPS, burst(cfg.UserRPS), keys)}
	for name, rps := range cfg.RouteRPS {
		if rps > 0 {
			e.route[name] = limit.NewKeyed(rps, burst(rps), keys)
		}
	}
	e.shed = NewShedder(cfg.MaxInflight, cfg.Shed)
	return e
}

// Check reports a config that cannot work.
func (c Config) Check() error {
	switch c.Shed {
	case "", ShedOff, ShedBBR, ShedFailsafe:
	default:
		return fmt.Errorf("shed %q: want %s, %s or %s", c.Shed, ShedBBR, ShedFailsafe, ShedOff)
	}
	if c.IPRPS < 0 || c.UserRPS < 0 || c.MaxInflight < 0 || c.Ban < 0 || c.BanFor < 0 {
		return errors.New("edge limits must not be negative")
	}
	return nil
}

// burst is a limit's burst: two seconds' worth, at least 1.
func burst(rps float64) int { return max(1, int(math.Ceil(2*rps))) }

// Admit is the step before authentication: the cluster cap and the per-IP
// limit, and the blacklisted addresses.
func (e *Edge) Admit() web.Step { return admit{e} }

type admit struct{ e *Edge }

func (a admit) Wrap(next http.Handler) http.Handler {
	e := a.e
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		in := web.InfoOf(r.Context())
		if in == nil || in.Class >= web.ClassPOS { // POS, callbacks and operations pass
			next.ServeHTTP(w, r)
			return
		}
		c := &e.stats[in.Class]
		now := e.now()
		if e.bl != nil && in.IP.IsValid() && in.Class != web.ClassAdmin { // an operator must reach the endpoint that clears a ban
			if _, bad := e.bl.IP(in.IP, now); bad {
				c.banned.Add(1)
				web.Refuse(w, r, ErrBlacklisted)
				return
			}
		}
		// Loopback is local tooling, or a proxy not listed in Classify's
		// Proxies (whose clients would all share its address). The per-IP
		// limit comes before the cap: one abuser's refused requests must
		// not spend the cluster's permits.
		if in.Class.Customer() && in.IP.IsValid() && !in.IP.IsLoopback() {
			if ok, strikes := e.ip.Allow(limit.ClientKey(in.IP), now); !ok {
				c.limited.Add(1)
				e.strike(guard.KindIP, guard.IPValue(in.IP), strikes)
				refuse(w, r, ErrRate, perToken(e.cfg.IPRPS))
				return
			}
		}
		if e.cap != nil && in.Class.Customer() { // operators are not capped: they run the incident
			if ok, retry := e.cap.Allow(now); !ok {
				c.capped.Add(1)
				refuse(w, r, ErrCap, retry)
				return
			}
		}
		next.ServeHTTP(w, r)
	})
}

// Users is the step after authentication: the blacklisted customers, the
// per-customer limit and the per-route limits.
func (e *Edge) Users() web.Step { return users{e} }

type users struct{ e *Edge }

func (u users) Wrap(next http.Handler) http.Handler {
	e := u.e
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		in := web.InfoOf(r.Context())
		if in == nil || in.UserID == 0 {
			if in != nil {
				e.stats[in.Class].passed.Add(1)
			}
			next.ServeHTTP(w, r)
			return
		}
		c := &e.stats[in.Class]
		now := e.now()
		if e.bl != nil {
			if _, bad := e.bl.User(in.UserID, now); bad {
				c.banned.Add(1)
				web.Refuse(w, r, ErrBlacklisted)
				return
			}
		}
		if !e.allowUser(w, r, e.user, e.cfg.UserRPS, in.UserID, c, now) {
			return
		}
		if k := e.route[in.Route]; k != nil && !e.allowUser(w, r, k, e.cfg.RouteRPS[in.Route], in.UserID, c, now) {
			return
		}
		c.passed.Add(1)
		next.ServeHTTP(w, r)
	})
}

// allowUser takes a token of the customer's from k (a limit of rps), or
// answers 429 and counts a strike.
func (e *Edge) allowUser(w http.ResponseWriter, r *http.Request, k *limit.Keyed, rps float64, uid int64, c *counters, now time.Time) bool {
	ok, strikes := k.Allow(uint64(uid), now)
	if !ok {
		c.limited.Add(1)
		e.strike(guard.KindUser, strconv.FormatInt(uid, 10), strikes)
		refuse(w, r, ErrRate, perToken(rps))
	}
	return ok
}

func (e *Edge) strike(kind guard.Kind, value string, strikes int) {
	if e.bl != nil && e.cfg.Ban > 0 && strikes >= e.cfg.Ban {
		e.bl.Ban(kind, value, e.cfg.BanFor, "requests over the limits "+strconv.Itoa(strikes)+" times in 10 s")
	}
}

// perToken is the time a limit of rps takes to give one more request.
func perToken(rps float64) time.Duration {
	if rps <= 0 {
		return time.Second
	}
	return time.Duration(float64(time.Second) / rps)
}

// refuse answers err with Retry-After: retry rounded up to whole seconds,
// at least 1. It logs nothing: the counters say how many.
func refuse(w http.ResponseWriter, r *http.Request, err error, retry time.Duration) {
	secs := max(1, int64((retry+time.Second-1)/time.Second))
	w.Header()["Retry-After"] = retryValues(secs)
	web.Refuse(w, r, err)
}

var retryCache [11][]string

func init() {
	for i := range retryCache {
		retryCache[i] = []string{strconv.Itoa(i)}
	}
}

func retryValues(secs int64) []string {
	if secs < int64(len(retryCache)) {
		return retryCache[secs]
	}
	return []string{strconv.FormatInt(secs, 10)}
}

// ClassStats is one class's counters.
type ClassStats struct {
	Passed   int64 `json:"passed"`   // went on to the route
	Capped   int64 `json:"capped"`   // 429 cluster_busy: the cluster cap
	Limited  int64 `json:"limited"`  // 429 rate_limited: a per-IP, per-user or per-route limit
	Banned   int64 `json:"banned"`   // 403 blacklisted
	Shed     int64 `json:"shed"`     // 503 overloaded
	Inflight int64 `json:"inflight"` // now
}

// Snapshot is the edge's counters and state at one moment.
type Snapshot struct {
	Classes [web.Classes]ClassStats
	Shed    ShedState
	Conns   *ConnStats          // nil: connections are not counted (no Listen)
	Cap     *limit.ClusterStats // nil: no cluster cap
}

// ConnStats is the connection cap's state.
type ConnStats struct {
	Open    int64 `json:"open"`
	Max     int64 `json:"max"`
	Refused int64 `json:"refused"`
}

// Snapshot returns the counters per class, the shedder's, the connection
// cap's and the cluster cap's state.
func (e *Edge) Snapshot() Snapshot {
	var sn Snapshot
	for i := range e.stats {
		c := &e.stats[i]
		sn.Classes[i] = ClassStats{Passed: c.passed.Load(), Capped: c.capped.Load(),
			Limited: c.limited.Load(), Banned: c.banned.Load(), Shed: c.shed.Load(), Inflight: c.inflight.Load()}
	}
	sn.Shed = e.shed.State()
	if e.conns != nil {
		open, refused := e.conns.Open()
		sn.Conns = &ConnStats{Open: open, Max: e.conns.max, Refused: refused}
	}
	if s, ok := e.cap.(interface{ Stats() limit.ClusterStats }); ok {
		st := s.Stats()
		sn.Cap = &st
	}
	return sn
}

// Stats returns Snapshot for operators (GET /admin/v1/edge).
func (e *Edge) Stats() map[string]any {
	sn := e.Snapshot()
	classes := map[string]ClassStats{}
	for i, c := range sn.Classes {
		classes[web.Class(i).String()] = c
	}
	out := map[string]any{"classes": classes, "shedder": sn.Shed}
	if sn.Conns != nil {
		out["connections"] = sn.Conns
	}
	if st := sn.Cap; st != nil {
		c := map[string]any{"mode": st.Mode, "rate": st.Rate, "nodes": st.Nodes, "reserve": st.Reserve,
			"allowed": st.Allowed, "refused": st.Refused, "fallbacks": st.Fallbacks}
		if st.Err != nil {
			c["error"] = st.Err.Error()
		}
		out["cap"] = c
	}
	return out
}
