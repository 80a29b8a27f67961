package api

import (
	"errors"
	"net/http"
	"net/netip"
	"strconv"
	"time"

	"github.com/surge-platform/surge/internal/flashsale"
	"github.com/surge-platform/surge/internal/guard"
	"github.com/surge-platform/surge/internal/platform/errkind"
	"github.com/surge-platform/surge/internal/platform/web"
)

func (s *Server) flashRoutes(mux *http.ServeMux) {
	mux.HandleFunc("GET /api/v1/flash-sales/{sale_id}", s.salePage)
	mux.HandleFunc("POST /api/v1/flash-sales/{sale_id}/purchase", s.authed(s.purchase))
	mux.HandleFunc("GET /api/v1/flash-sales/{sale_id}/tickets/{ticket}", s.authed(s.ticket))
	mux.HandleFunc("POST /admin/v1/flash-sales", s.admin(s.createSale))
	mux.HandleFunc("GET /admin/v1/flash-sales/{sale_id}", s.admin(s.saleFigures))
	mux.HandleFunc("POST /admin/v1/flash-sales/{sale_id}/recount", s.admin(s.recountSale))
	if s.Blacklist != nil {
		mux.HandleFunc("GET /admin/v1/blacklist", s.admin(s.listBlacklist))
		mux.HandleFunc("DELETE /admin/v1/blacklist/{kind}/{value...}", s.admin(s.clearBlacklist))
	}
}

// salePage serves the sale from the node's memory; a CDN may keep it a
// second, and a client that has it gets 304.
func (s *Server) salePage(w http.ResponseWriter, r *http.Request) {
	sid, err := pathID(r, "sale_id")
	if err != nil {
		web.Error(w, r, err)
		return
	}
	body, etag, err := s.Flash.Page(r.Context(), sid)
	if err != nil {
		web.Error(w, r, err)
		return
	}
	h := w.Header()
	h["Cache-Control"] = cachePage
	h["Etag"] = []string{etag}
	if r.Header.Get("If-None-Match") == etag {
		w.WriteHeader(http.StatusNotModified)
		return
	}
	h["Content-Type"] = jsonType
	w.Write(body)
}

var (
	cachePage = []string{"public, max-age=1"}
	jsonType  = []string{"application/json"}
)

// clientIP is the client's address: as the edge classified it (through
// --trusted-proxies), else the peer's.
func clientIP(r *http.Request) netip.Addr {
	if in := web.InfoOf(r.Context()); in != nil && in.IP.IsValid() {
		return in.IP // the client's, behind the trusted proxies (--trusted-proxies), as the edge's limits see it
	}
	ap, err := netip.ParseAddrPort(r.RemoteAddr)
	if err != nil {
		return netip.Addr{}
	}
	return ap.Addr().Unmap()
}

func (s *Server) purchase(w http.ResponseWriter, r *http.Request, uid int64) {
	sid, err := pathID(r, "sale_id")
	if err != nil {
		web.Error(w, r, err)
		return
	}
	t, err := s.Flash.Purchase(r.Context(), sid, flashsale.Buyer{UserID: uid, IP: clientIP(r), Challenge: r.Header.Get("X-Challenge")})
	if err != nil {
		var early *flashsale.NotStartedError
		var ch *flashsale.ChallengeError
		switch {
		case errors.As(err, &early):
			w.Header().Set("Retry-After", strconv.Itoa(max(1, int(time.Until(early.StartsAt).Seconds()+0.999))))
			e := errkind.Of(err)
			web.JSON(w, http.StatusTooEarly, map[string]any{"error": map[string]string{"code": e.Code, "message": e.Message},
				"starts_at": early.StartsAt})
			return
		case errors.As(err, &ch):
			e := errkind.Of(err)
			web.JSON(w, http.StatusPreconditionRequired, map[string]any{"error": map[string]string{"code": e.Code, "message": e.Message},
				"challenge": ch.Challenge})
			return
		case errors.Is(err, flashsale.ErrRate), errors.Is(err, flashsale.ErrBusy):
			w.Header().Set("Retry-After", "1")
		}
		web.Error(w, r, err)
		return
	}
	web.JSON(w, http.StatusAccepted, t)
}

func (s *Server) ticket(w http.ResponseWriter, r *http.Request, uid int64) {
	sid, err := pathID(r, "sale_id")
	if err != nil {
		web.Error(w, r, err)
		return
	}
	tid, err := pathID(r, "ticket")
	if err != nil {
		web.Error(w, r, err)
		return
	}
	v, err := s.Flash.Ticket(r.Context(), uid, sid, tid)
	if err != nil {
		if errors.Is(err, flashsale.ErrRate) {
			w.Header().Set("Retry-After", "1")
		}
		web.Error(w, r, err)
		return
	}
	w.Header().Set("Cache-Control", "no-store")
	web.JSON(w, http.StatusOK, v)
}

func (s *Server) createSale(w http.ResponseWriter, r *http.Request) {
	var in flashsale.Sale
	if err := web.Decode(w, r, &in); err != nil {
		web.Error(w, r, err)
		return
	}
	sale, err := s.Flash.Create(r.Context(), in)
	if err != nil {
		web.Error(w, r, err)
		return
	}
	web.JSON(w, http.StatusCreated, sale)
}

func (s *Server) saleFigures(w http.ResponseWriter, r *http.Request) {
	sid, err := pathID(r, "sale_id")
	if err != nil {
		web.Error(w, r, err)
		return
	}
	f, err := s.Flash.Figures(r.Context(), sid)
	if err != nil {
		web.Error(w, r, err)
		return
	}
	web.JSON(w, http.StatusOK, f)
}

func (s *Server) recountSale(w http.ResponseWriter, r *http.Request) {
	sid, err := pathID(r, "sale_id")
	if err != nil {
		web.Error(w, r, err)
		return
	}
	if err := s.Flash.Recount(r.Context(), sid); err != nil {
		web.Error(w, r, err)
		return
	}
	s.saleFigures(w, r)
}

func (s *Server) listBlacklist(w http.ResponseWriter, r *http.Request) {
	list, err := s.Blacklist.List(r.Context())
	if err != nil {
		web.Error(w, r, err)
		return
	}
	web.JSON(w, http.StatusOK, map[string]any{"entries": list})
}

func (s *Server) clearBlacklist(w http.ResponseWriter, r *http.Request) {
	found, err := s.Blacklist.Clear(r.Context(), guard.Kind(r.PathValue("kind")), r.PathValue("value"))
	if err != nil {
		web.Error(w, r, err)
		return
	}
	if !found {
		web.Error(w, r, errkind.ErrNotFound.With("no such blacklist entry"))
		return
	}
	w.WriteHeader(http.StatusNoContent)
}
