package api

import (
	"net/http"
	"strings"

	"github.com/surge-platform/surge/internal/order"
	"github.com/surge-platform/surge/internal/payment"
	"github.com/surge-platform/surge/internal/platform/switches"
	"github.com/surge-platform/surge/internal/platform/web"
)

func (s *Server) customerRoutes(mux *http.ServeMux) {
	mux.HandleFunc("POST /api/v1/auth/login", s.login)
	mux.HandleFunc("GET /api/v1/stores", s.stores)
	mux.HandleFunc("GET /api/v1/stores/{store_id}", s.store)
	mux.HandleFunc("GET /api/v1/stores/{store_id}/menu", s.menu)
	mux.HandleFunc("POST /api/v1/orders", s.authed(s.createOrder))
	mux.HandleFunc("GET /api/v1/orders", s.authed(s.listOrders))
	mux.HandleFunc("GET /api/v1/orders/{order_id}", s.authed(s.getOrder))
	mux.HandleFunc("POST /api/v1/orders/{order_id}/cancel", s.authed(s.cancelOrder))
}

func (s *Server) login(w http.ResponseWriter, r *http.Request) {
	var in struct {
		Phone string `json:"phone"`
	}
	if err := web.Decode(w, r, &in); err != nil {
		web.Error(w, r, err)
		return
	}
	tok, uid, err := s.Members.Login(r.Context(), in.Phone)
	if err != nil {
		web.Error(w, r, err)
		return
	}
	web.JSON(w, http.StatusOK, map[string]string{"token": tok, "user_id": itoa(uid)})
}

func (s *Server) stores(w http.ResponseWriter, r *http.Request) {
	list, err := s.Catalog.Stores(r.Context())
	if err != nil {
		web.Error(w, r, err)
		return
	}
	w.Header().Set("Cache-Control", "public, max-age=30")
	web.JSON(w, http.StatusOK, map[string]any{"stores": list})
}

func (s *Server) store(w http.ResponseWriter, r *http.Request) {
	sid, err := pathID(r, "store_id")
	if err != nil {
		web.Error(w, r, err)
		return
	}
	st, err := s.Catalog.Store(r.Context(), sid)
	if err != nil {
		web.Error(w, r, err)
		return
	}
	w.Header().Set("Cache-Control", "public, max-age=30")
	web.JSON(w, http.StatusOK, st)
}

func (s *Server) menu(w http.ResponseWriter, r *http.Request) {
	sid, err := pathID(r, "store_id")
	if err != nil {
		web.Error(w, r, err)
		return
	}
	m, err := s.Catalog.Menu(r.Context(), sid)
	if err != nil {
		web.Error(w, r, err)
		return
	}
	h := w.Header()
	h["Etag"] = m.ETagHeader
	h["Cache-Control"] = m.CacheHeader
	if match := r.Header.Get("If-None-Match"); match != "" && etagMatch(match, m.ETag) {
		w.WriteHeader(http.StatusNotModified)
		return
	}
	web.Raw(w, http.StatusOK, m.Body)
}

// etagMatch reports whether an If-None-Match list names etag (weak
// comparison, as RFC 9110 asks for If-None-Match).
func etagMatch(header, etag string) bool {
	for header != "" {
		var tag string
		tag, header, _ = strings.Cut(header, ",")
		tag = strings.TrimPrefix(strings.TrimSpace(tag), "W/")
		if tag == "*" || tag == strings.TrimPrefix(etag, "W/") {
			return true
		}
	}
	return false
}

func (s *Server) createOrder(w http.ResponseWriter, r *http.Request, uid int64) {
	var req order.Request
	if err := web.Decode(w, r, &req); err != nil {
		web.Error(w, r, err)
		return
	}
	c, err := s.Orders.Create(r.Context(), uid, r.Header.Get("Idempotency-Key"), req)
	if err != nil {
		orderError(w, r, err)
		return
	}
	web.JSON(w, http.StatusCreated, c)
}

func (s *Server) getOrder(w http.ResponseWriter, r *http.Request, uid int64) {
	oid, err := pathID(r, "order_id")
	if err != nil {
		web.Error(w, r, err)
		return
	}
	o, err := s.Orders.Get(r.Context(), uid, oid)
	if err == nil && o.Status == order.PendingPayment && s.Payments != nil && s.Switches.On(switches.OrdersReadPayQuery) {
		// The payer is looking at the result page and the callback has not
		// come: the channel is asked off this request's path, and the
		// page's next poll shows what it said.
		s.Payments.RefreshSoon(oid)
	}
	if err != nil {
		web.Error(w, r, err)
		return
	}
	web.JSON(w, http.StatusOK, o)
}

func (s *Server) listOrders(w http.ResponseWriter, r *http.Request, uid int64) {
	cursor, limit, err := page(r)
	if err != nil {
		web.Error(w, r, err)
		return
	}
	size := order.PageSize(int(min(limit, 1000)))
	if !s.Switches.On(switches.OrdersHistoryFull) {
		s.historyCut(w, r, uid, cursor, size)
		return
	}
	list, err := s.Orders.List(r.Context(), uid, cursor, size)
	if err != nil {
		web.Error(w, r, err)
		return
	}
	next := ""
	if n := len(list); n == size {
		next = itoa(list[n-1].ID)
	}
	web.JSON(w, http.StatusOK, map[string]any{"orders": list, "next_cursor": next})
}

// cancelOrder cancels an unpaid order, or one paid that the store has not
// accepted: that one is refunded in full through the payments centre.
func (s *Server) cancelOrder(w http.ResponseWriter, r *http.Request, uid int64) {
	oid, err := pathID(r, "order_id")
	if err != nil {
		web.Error(w, r, err)
		return
	}
	o, err := s.Orders.Get(r.Context(), uid, oid)
	if err != nil {
		web.Error(w, r, err)
		return
	}
	if o.Status == order.PendingPayment || o.Status == order.Cancelled || s.Payments == nil {
		if o, err = s.Orders.Cancel(r.Context(), uid, oid); err != nil {
			web.Error(w, r, err)
			return
		}
		web.JSON(w, http.StatusOK, o)
		return
	}
	res, err := s.Payments.RefundOrder(r.Context(), payment.OrderRefund{OrderID: oid, By: order.ByCustomer, UserID: uid,
		Reason: "cancelled by the customer before the store accepted it"})
	if err != nil {
		web.Error(w, r, err)
		return
	}
	web.JSON(w, http.StatusOK, res.Order)
}
