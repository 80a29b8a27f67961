package api

import (
	"net/http"
	"strconv"

	"github.com/surge-platform/surge/internal/fulfil"
	"github.com/surge-platform/surge/internal/platform/web"
)

func (s *Server) posRoutes(mux *http.ServeMux) {
	mux.HandleFunc("GET /pos/v1/orders/new", s.pos(s.posPull))
	mux.HandleFunc("POST /pos/v1/orders/{order_id}/accept", s.pos(s.posStep(fulfil.Accepted)))
	mux.HandleFunc("POST /pos/v1/orders/{order_id}/ready", s.pos(s.posStep(fulfil.Ready)))
	mux.HandleFunc("POST /pos/v1/orders/{order_id}/complete", s.pos(s.posStep(fulfil.Completed)))
}

// pos wraps h so that it runs only with a store's POS key.
func (s *Server) pos(h func(http.ResponseWriter, *http.Request, int64)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		key, ok := web.Bearer(r)
		if !ok {
			web.Error(w, r, fulfil.ErrBadKey.With("missing Authorization: Bearer <store POS key>"))
			return
		}
		storeID, err := s.Fulfil.Store(r.Context(), key)
		if err != nil {
			web.Error(w, r, err)
			return
		}
		h(w, r, storeID)
	}
}

func (s *Server) posPull(w http.ResponseWriter, r *http.Request, storeID int64) {
	cursor, limit, err := page(r)
	if err != nil {
		web.Error(w, r, err)
		return
	}
	if limit == 0 {
		limit = 50
	}
	list, err := s.Fulfil.Pull(r.Context(), storeID, cursor, int(min(limit, 100)))
	if err != nil {
		web.Error(w, r, err)
		return
	}
	next := cursor
	if len(list) > 0 {
		next = list[len(list)-1].Seq
	}
	web.JSON(w, http.StatusOK, map[string]any{"orders": list, "cursor": strconv.FormatInt(next, 10)})
}

func (s *Server) posStep(to string) func(http.ResponseWriter, *http.Request, int64) {
	return func(w http.ResponseWriter, r *http.Request, storeID int64) {
		oid, err := pathID(r, "order_id")
		if err != nil {
			web.Error(w, r, err)
			return
		}
		var in struct {
			PickupCode string `json:"pickup_code"`
		}
		if r.ContentLength != 0 && to == fulfil.Accepted {
			if err := web.Decode(w, r, &in); err != nil {
				web.Error(w, r, err)
				return
			}
		}
		code, err := s.Fulfil.Step(r.Context(), storeID, oid, to, in.PickupCode)
		if err != nil {
			web.Error(w, r, err)
			return
		}
		web.JSON(w, http.StatusOK, map[string]string{"order_id": itoa(oid), "status": to, "pickup_code": code})
	}
}
