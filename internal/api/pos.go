package api

import (
	"context"
	"net/http"
	"strconv"
	"time"

	"github.com/surge-platform/surge/internal/fulfil"
	"github.com/surge-platform/surge/internal/order"
	"github.com/surge-platform/surge/internal/payment"
	"github.com/surge-platform/surge/internal/platform/errkind"
	"github.com/surge-platform/surge/internal/platform/web"
	"github.com/surge-platform/surge/internal/promo"
)

func (s *Server) posRoutes(mux *http.ServeMux) {
	mux.HandleFunc("GET /admin/v1/stores/{store_id}/figures", s.admin(s.storeFigures))
	mux.HandleFunc("GET /pos/v1/orders/new", s.pos(s.posPull))
	mux.HandleFunc("POST /pos/v1/orders/{order_id}/accept", s.pos(s.posStep(fulfil.Accepted)))
	mux.HandleFunc("POST /pos/v1/orders/{order_id}/ready", s.pos(s.posStep(fulfil.Ready)))
	mux.HandleFunc("POST /pos/v1/orders/{order_id}/complete", s.pos(s.posStep(fulfil.Completed)))
	mux.HandleFunc("GET /pos/v1/orders/{order_id}", s.pos(s.posOrder))
	if s.Refunds != nil {
		mux.HandleFunc("POST /pos/v1/orders/{order_id}/refund", s.pos(func(w http.ResponseWriter, r *http.Request, storeID int64) {
			s.refund(w, r, s.Refunds, order.ByStore, storeID)
		}))
	}
}

// posOrder answers one of the store's orders as it is now (its status,
// and what of it is refunded).
func (s *Server) posOrder(w http.ResponseWriter, r *http.Request, storeID int64) {
	oid, err := pathID(r, "order_id")
	if err != nil {
		web.Error(w, r, err)
		return
	}
	o, err := s.Fulfil.Order(r.Context(), storeID, oid)
	if err != nil {
		web.Error(w, r, err)
		return
	}
	web.JSON(w, http.StatusOK, o)
}

// refund serves POST .../orders/{order_id}/refund of a store (storeID) or
// an operator (storeID 0) through payments: {"sku_ids": [...], "reason":
// "..."}, both optional (no sku_ids: every line not refunded yet).
func (s *Server) refund(w http.ResponseWriter, r *http.Request, payments *payment.Service, by string, storeID int64) {
	oid, err := pathID(r, "order_id")
	if err != nil {
		web.Error(w, r, err)
		return
	}
	var in struct {
		SKUs   promo.IDs `json:"sku_ids"`
		Reason string    `json:"reason"`
	}
	if r.ContentLength != 0 {
		if err := web.Decode(w, r, &in); err != nil {
			web.Error(w, r, err)
			return
		}
	}
	res, err := payments.RefundOrder(r.Context(), payment.OrderRefund{OrderID: oid, SKUs: in.SKUs, Reason: in.Reason, By: by, StoreID: storeID})
	if err != nil {
		web.Error(w, r, err)
		return
	}
	web.JSON(w, http.StatusCreated, res)
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

// ErrBadSince is a since that is not an RFC 3339 time.
var ErrBadSince = errkind.New(errkind.Invalid, "invalid_since", "since must be an RFC 3339 time, e.g. 2026-12-06T00:00:00Z")

// storeFigures answers a store's orders paid since ?since= (default: the
// start of today, UTC) by where they are now.
func (s *Server) storeFigures(w http.ResponseWriter, r *http.Request) {
	sid, err := pathID(r, "store_id")
	if err != nil {
		web.Error(w, r, err)
		return
	}
	since := time.Now().UTC().Truncate(24 * time.Hour)
	if v := r.URL.Query().Get("since"); v != "" {
		if since, err = time.Parse(time.RFC3339, v); err != nil {
			web.Error(w, r, ErrBadSince)
			return
		}
	}
	ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second) // operators' requests have no deadline of their own
	defer cancel()
	f, err := s.Fulfil.Figures(ctx, sid, since)
	if err != nil {
		web.Error(w, r, err)
		return
	}
	web.JSON(w, http.StatusOK, f)
}
