package api

import (
	"net"
	"net/http"

	"github.com/surge-platform/surge/internal/order"
	"github.com/surge-platform/surge/internal/platform/errkind"
	"github.com/surge-platform/surge/internal/platform/switches"
	"github.com/surge-platform/surge/internal/platform/web"
)

// The degradation switches (docs/operations.md, "Degradation switches"):
// operators list, flip and audit them here; the handlers of the features
// they gate ask Server.Switches.On.
func (s *Server) switchRoutes(mux *http.ServeMux) {
	mux.HandleFunc("GET /admin/v1/switches", s.admin(s.listSwitches))
	mux.HandleFunc("PUT /admin/v1/switches/{name}", s.admin(s.setSwitch))
	mux.HandleFunc("GET /admin/v1/switches/{name}/history", s.admin(s.switchHistory))
}

// listSwitches answers the switches as this node sees them (its snapshot,
// no round trip to the bus).
func (s *Server) listSwitches(w http.ResponseWriter, r *http.Request) {
	web.JSON(w, http.StatusOK, map[string]any{"switches": s.Switches.List()})
}

func (s *Server) setSwitch(w http.ResponseWriter, r *http.Request) {
	var in struct {
		On *bool `json:"on"`
	}
	if err := web.Decode(w, r, &in); err != nil {
		web.Error(w, r, err)
		return
	}
	if in.On == nil {
		web.Error(w, r, web.ErrBadJSON.With(`"on" (true or false) is required`))
		return
	}
	rec, err := s.flip(r, r.PathValue("name"), *in.On)
	if err != nil {
		web.Error(w, r, err)
		return
	}
	web.JSON(w, http.StatusOK, rec)
}

// flip sets a switch for the cluster on behalf of the request's operator
// and logs the change.
func (s *Server) flip(r *http.Request, name string, on bool) (switches.Record, error) {
	who, err := operator(r)
	if err != nil {
		return switches.Record{}, err
	}
	rec, err := s.Switches.Set(r.Context(), name, on, who)
	if err == nil {
		web.Log(r.Context()).Info("switch changed", "switch", name, "on", rec.On, "old", rec.Old, "by", rec.By, "revision", rec.Revision)
	}
	return rec, err
}

func (s *Server) switchHistory(w http.ResponseWriter, r *http.Request) {
	h, err := s.Switches.History(r.Context(), r.PathValue("name"))
	if err != nil {
		web.Error(w, r, err)
		return
	}
	web.JSON(w, http.StatusOK, map[string]any{"name": r.PathValue("name"), "changes": h})
}

// operator names who makes a change: the admin token names nobody, so the
// X-Operator header (surge ctl sends the local user's name) or "admin",
// then "@" and the client's address as this node saw it
// ("alice@10.0.0.7").
func operator(r *http.Request) (string, error) {
	name := "admin"
	if v, ok := r.Header["X-Operator"]; ok {
		bad := len(v) != 1 || v[0] == "" || len(v[0]) > 64
		for _, c := range []byte(v[0]) {
			bad = bad || c <= ' ' || c > '~' || c == '@'
		}
		if bad {
			return "", switches.ErrOperator.With("X-Operator %q: want one name of 1-64 printable ASCII characters, no spaces or @", v)
		}
		name = v[0]
	}
	if in := web.InfoOf(r.Context()); in != nil && in.IP.IsValid() {
		return name + "@" + in.IP.String(), nil // behind nginx: the operator's address, not the proxy's
	}
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		host = r.RemoteAddr
	}
	return name + "@" + host, nil
}

// ErrSwitchedOff is the answer of a feature an operator switched off.
var ErrSwitchedOff = errkind.New(errkind.Unavailable, "switched_off", "this feature is switched off for now, try again later")

// switchedOffRetry is the Retry-After of a switched-off feature: an
// operator turns a switch back on in minutes, not seconds.
var switchedOffRetry = []string{"60"}

// switchedOff answers 503 switched_off for the feature behind switch name.
// It is an operator's decision, not a failure: unlike web.Error it logs
// nothing (a degraded feature under peak load would flood the log).
func switchedOff(w http.ResponseWriter, r *http.Request, name string) {
	w.Header()["Retry-After"] = switchedOffRetry
	w.Header().Set("Cache-Control", "no-store")
	web.Refuse(w, r, ErrSwitchedOff.With("%s (switch %s)", ErrSwitchedOff.Message, name))
}

// historyCut is the customer's order list while orders.history_full is
// off: the first page holds at most the latest 20 orders and no
// next_cursor, a later page is empty, and both say "truncated": true when
// older orders were left out.
func (s *Server) historyCut(w http.ResponseWriter, r *http.Request, uid, cursor int64, size int) {
	if cursor != 0 {
		web.JSON(w, http.StatusOK, map[string]any{"orders": []*order.Order{}, "next_cursor": "", "truncated": true})
		return
	}
	size = min(size, order.PageSize(0))
	list, err := s.Orders.List(r.Context(), uid, 0, size+1)
	if err != nil {
		web.Error(w, r, err)
		return
	}
	truncated := len(list) > size
	if truncated {
		list = list[:size]
	}
	web.JSON(w, http.StatusOK, map[string]any{"orders": list, "next_cursor": "", "truncated": truncated})
}
