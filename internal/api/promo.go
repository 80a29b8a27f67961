package api

import (
	"errors"
	"net/http"
	"strconv"

	"github.com/surge-platform/surge/internal/order"
	"github.com/surge-platform/surge/internal/platform/errkind"
	"github.com/surge-platform/surge/internal/platform/switches"
	"github.com/surge-platform/surge/internal/platform/web"
	"github.com/surge-platform/surge/internal/promo"
)

func (s *Server) promoRoutes(mux *http.ServeMux) {
	mux.HandleFunc("POST /api/v1/orders/preview", s.authed(s.preview))
	mux.HandleFunc("GET /api/v1/coupons", s.claimable)
	mux.HandleFunc("POST /api/v1/coupons/{template_id}/claim", s.authed(s.claim))
	mux.HandleFunc("GET /api/v1/me/coupons", s.authed(s.wallet))
	mux.HandleFunc("POST /admin/v1/promotions", s.admin(s.createPromotion))
	mux.HandleFunc("GET /admin/v1/promotions", s.admin(s.listPromotions))
	mux.HandleFunc("POST /admin/v1/promotions/{promotion_id}/disable", s.admin(s.disablePromotion))
	mux.HandleFunc("POST /admin/v1/coupon-templates", s.admin(s.createTemplate))
	mux.HandleFunc("GET /admin/v1/coupon-templates/{template_id}", s.admin(s.getTemplate))
	mux.HandleFunc("POST /admin/v1/coupon-templates/{template_id}/reload", s.admin(s.reloadTemplate))
}

// orderError writes a refused order: a price_changed refusal carries the
// new breakdown next to the error.
func orderError(w http.ResponseWriter, r *http.Request, err error) {
	var pc *order.PriceChangedError
	if errors.As(err, &pc) {
		e := errkind.Of(err)
		body := map[string]any{"error": map[string]string{"code": e.Code, "message": e.Message}, "breakdown": pc.Breakdown}
		web.JSON(w, http.StatusConflict, body)
		return
	}
	web.Error(w, r, err)
}

func (s *Server) preview(w http.ResponseWriter, r *http.Request, uid int64) {
	var req order.Request
	if err := web.Decode(w, r, &req); err != nil {
		web.Error(w, r, err)
		return
	}
	b, err := s.Orders.Preview(r.Context(), uid, req)
	if err != nil {
		web.Error(w, r, err)
		return
	}
	web.JSON(w, http.StatusOK, b)
}

func (s *Server) claimable(w http.ResponseWriter, r *http.Request) {
	if !s.Switches.On(switches.PromoCouponList) {
		switchedOff(w, r, switches.PromoCouponList)
		return
	}
	sid, err := queryStoreID(r)
	if err != nil {
		web.Error(w, r, err)
		return
	}
	list, err := s.Promo.Claimable(r.Context(), sid)
	if err != nil {
		web.Error(w, r, err)
		return
	}
	w.Header().Set("Cache-Control", "private, max-age=5")
	web.JSON(w, http.StatusOK, map[string]any{"templates": list})
}

func (s *Server) claim(w http.ResponseWriter, r *http.Request, uid int64) {
	tid, err := pathID(r, "template_id")
	if err != nil {
		web.Error(w, r, err)
		return
	}
	c, err := s.Promo.Claim(r.Context(), uid, tid)
	if err != nil {
		web.Error(w, r, err)
		return
	}
	web.JSON(w, http.StatusCreated, c)
}

func (s *Server) wallet(w http.ResponseWriter, r *http.Request, uid int64) {
	list, err := s.Promo.Wallet(r.Context(), uid)
	if err != nil {
		web.Error(w, r, err)
		return
	}
	web.JSON(w, http.StatusOK, map[string]any{"coupons": list})
}

func (s *Server) createPromotion(w http.ResponseWriter, r *http.Request) {
	var in promo.Promotion
	if err := web.Decode(w, r, &in); err != nil {
		web.Error(w, r, err)
		return
	}
	p, err := s.Promo.CreatePromotion(r.Context(), in)
	if err != nil {
		web.Error(w, r, err)
		return
	}
	web.JSON(w, http.StatusCreated, p)
}

func (s *Server) listPromotions(w http.ResponseWriter, r *http.Request) {
	sid, err := queryStoreID(r)
	if err != nil {
		web.Error(w, r, err)
		return
	}
	list, err := s.Promo.Promotions(r.Context(), sid)
	if err != nil {
		web.Error(w, r, err)
		return
	}
	web.JSON(w, http.StatusOK, map[string]any{"promotions": list})
}

func (s *Server) disablePromotion(w http.ResponseWriter, r *http.Request) {
	pid, err := pathID(r, "promotion_id")
	if err != nil {
		web.Error(w, r, err)
		return
	}
	if err := s.Promo.DisablePromotion(r.Context(), pid); err != nil {
		web.Error(w, r, err)
		return
	}
	web.JSON(w, http.StatusOK, map[string]any{"promotion_id": itoa(pid), "disabled": true})
}

func (s *Server) createTemplate(w http.ResponseWriter, r *http.Request) {
	var in promo.Template
	if err := web.Decode(w, r, &in); err != nil {
		web.Error(w, r, err)
		return
	}
	t, err := s.Promo.CreateTemplate(r.Context(), in)
	if err != nil {
		web.Error(w, r, err)
		return
	}
	web.JSON(w, http.StatusCreated, t)
}

func (s *Server) getTemplate(w http.ResponseWriter, r *http.Request) {
	tid, err := pathID(r, "template_id")
	if err != nil {
		web.Error(w, r, err)
		return
	}
	t, err := s.Promo.Template(r.Context(), tid)
	if err != nil {
		web.Error(w, r, err)
		return
	}
	web.JSON(w, http.StatusOK, t)
}

func (s *Server) reloadTemplate(w http.ResponseWriter, r *http.Request) {
	tid, err := pathID(r, "template_id")
	if err != nil {
		web.Error(w, r, err)
		return
	}
	if err := s.Promo.Reload(r.Context(), tid); err != nil {
		web.Error(w, r, err)
		return
	}
	t, err := s.Promo.Template(r.Context(), tid)
	if err != nil {
		web.Error(w, r, err)
		return
	}
	web.JSON(w, http.StatusOK, t)
}

// queryStoreID reads the optional ?store_id= (0 when absent).
func queryStoreID(r *http.Request) (int64, error) {
	v := r.URL.Query().Get("store_id")
	if v == "" {
		return 0, nil
	}
	x, err := strconv.ParseInt(v, 10, 64)
	if err != nil || x <= 0 {
		return 0, errkind.ErrBadID.With("store_id %q is not a valid id: ids are positive decimal strings", v)
	}
	return x, nil
}
