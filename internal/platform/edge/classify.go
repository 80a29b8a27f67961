// Package edge holds the governance steps of the HTTP chain (DESIGN
// section 9; the seeds' 限流, 降级 and 终端分流): each request is classed,
// then passes the cluster-wide cap and the per-IP limit, the shedder (the
// in-flight caps of its class and the adaptive limit), and after
// authentication the per-user and per-route limits. Every refusal is
// immediate (429 or 503 with Retry-After), never a queue, and counted per
// class. A client that keeps tripping the limits is blacklisted for a
// while, cluster-wide (guard.Blacklist).
package edge

import (
	"net/http"
	"net/netip"
	"strings"

	"github.com/surge-platform/surge/internal/platform/web"
)

// Classify is the step that fills the request's web.Info: its class (from
// the path, then the X-Client header or the User-Agent), the client's
// address and the name of an expensive route.
type Classify struct {
	// Proxies are the addresses of trusted reverse proxies (nginx): from
	// them the client's address is the last X-Forwarded-For entry not
	// itself a proxy (or X-Real-IP). Empty: the peer's address, always.
	Proxies []netip.Prefix
}

func (c Classify) Wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if in := web.InfoOf(r.Context()); in != nil {
			in.Class, in.Route = ClassOf(r)
			in.Write = r.Method != http.MethodGet && r.Method != http.MethodHead && r.Method != http.MethodOptions
			in.IP = c.clientIP(r)
		}
		next.ServeHTTP(w, r)
	})
}

// ClassOf returns r's class and the name of its route when it is one of
// the expensive ones the per-route limits apply to.
func ClassOf(r *http.Request) (web.Class, string) {
	p := r.URL.Path
	switch {
	case strings.HasPrefix(p, "/api/"):
		route := ""
		if r.Method == http.MethodPost {
			route = expensive(p)
		}
		return customerClass(r), route
	case strings.HasPrefix(p, "/pos/"):
		return web.ClassPOS, ""
	case strings.HasPrefix(p, "/pay/v1/notify/"):
		return web.ClassCallback, ""
	case strings.HasPrefix(p, "/admin/"), strings.HasPrefix(p, "/debug/"), strings.HasPrefix(p, "/push/v1/"), p == "/metrics",
		strings.HasPrefix(p, "/dashboard"):
		return web.ClassAdmin, ""
	}
	return web.ClassOps, "" // /healthz, /readyz, the simulators
}

// Expensive routes (POST): the per-route limits' names.
const (
	RouteOrder = "order" // /api/v1/orders
	RoutePay   = "pay"   // /api/v1/orders/{id}/pay
	RouteClaim = "claim" // /api/v1/coupons/{id}/claim
	RouteFlash = "flash" // /api/v1/flash-sales/{id}/purchase
)

// Routes lists the expensive routes.
var Routes = []string{RouteOrder, RoutePay, RouteClaim, RouteFlash}

func expensive(p string) string {
	switch {
	case p == "/api/v1/orders":
		return RouteOrder
	case strings.HasPrefix(p, "/api/v1/orders/") && strings.HasSuffix(p, "/pay"):
		return RoutePay
	case strings.HasPrefix(p, "/api/v1/coupons/") && strings.HasSuffix(p, "/claim"):
		return RouteClaim
	case strings.HasPrefix(p, "/api/v1/flash-sales/") && strings.HasSuffix(p, "/purchase"):
		return RouteFlash
	}
	return ""
}

// customerClass is the client kind of a customer request: X-Client (app,
// mini, h5) when it names one, else a mini-program's or a browser's
// User-Agent, else the app.
func customerClass(r *http.Request) web.Class {
	if v := r.Header.Get("X-Client"); v != "" {
		if c, ok := web.ParseClass(v); ok && c.Customer() {
			return c
		}
	}
	ua := r.Header.Get("User-Agent")
	switch {
	case strings.Contains(ua, "miniProgram") || strings.Contains(ua, "MiniProgram"):
		return web.ClassMini
	case strings.HasPrefix(ua, "Mozilla/"):
		return web.ClassH5
	}
	return web.ClassApp
}

func (c Classify) clientIP(r *http.Request) netip.Addr {
	ap, err := netip.ParseAddrPort(r.RemoteAddr)
	if err != nil {
		return netip.Addr{}
	}
	peer := ap.Addr().Unmap()
	if len(c.Proxies) == 0 || !c.trusted(peer) {
		return peer
	}
	// Walk X-Forwarded-For from the right: the first entry not a proxy of
	// ours is the client (entries left of it are the client's to forge).
	xff := r.Header.Values("X-Forwarded-For")
	for i := len(xff) - 1; i >= 0; i-- {
		parts := strings.Split(xff[i], ",")
		for j := len(parts) - 1; j >= 0; j-- {
			a, err := netip.ParseAddr(strings.TrimSpace(parts[j]))
			if err != nil {
				return peer
			}
			if a = a.Unmap(); !c.trusted(a) {
				return a
			}
		}
	}
	if a, err := netip.ParseAddr(strings.TrimSpace(r.Header.Get("X-Real-IP"))); err == nil {
		return a.Unmap()
	}
	return peer
}

func (c Classify) trusted(a netip.Addr) bool {
	for _, p := range c.Proxies {
		if p.Contains(a) {
			return true
		}
	}
	return false
}
