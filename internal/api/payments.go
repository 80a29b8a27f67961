package api

import (
	"net/http"
	"regexp"
	"time"

	"github.com/surge-platform/surge/internal/order"
	"github.com/surge-platform/surge/internal/payment"
	"github.com/surge-platform/surge/internal/payment/wechatpay"
	"github.com/surge-platform/surge/internal/platform/errkind"
	"github.com/surge-platform/surge/internal/platform/switches"
	"github.com/surge-platform/surge/internal/platform/web"
)

func (s *Server) paymentRoutes(mux *http.ServeMux) {
	mux.HandleFunc("POST /api/v1/orders/{order_id}/pay", s.authed(s.pay))
	mux.HandleFunc("POST /pay/v1/notify/{channel}", s.notify)
	mux.HandleFunc("GET /admin/v1/orders/{order_id}/payments", s.admin(s.orderPayments))
	mux.HandleFunc("GET /admin/v1/orders/{order_id}/refunds", s.admin(s.orderRefunds))
	mux.HandleFunc("POST /admin/v1/orders/{order_id}/refund", s.admin(func(w http.ResponseWriter, r *http.Request) {
		s.refund(w, r, s.Payments, order.ByOperator, 0)
	}))
	mux.HandleFunc("GET /admin/v1/payments/anomalies", s.admin(s.anomalies))
	mux.HandleFunc("GET /admin/v1/payments/channels", s.admin(s.channels))
	mux.HandleFunc("PUT /admin/v1/payments/channels/{channel}", s.admin(s.switchChannel))
	mux.HandleFunc("POST /admin/v1/reconciliations", s.admin(s.reconcile))
}

func (s *Server) pay(w http.ResponseWriter, r *http.Request, uid int64) {
	oid, err := pathID(r, "order_id")
	if err != nil {
		web.Error(w, r, err)
		return
	}
	var in struct {
		Channel string `json:"channel"`
		OpenID  string `json:"openid"`
	}
	if r.ContentLength != 0 {
		if err := web.Decode(w, r, &in); err != nil {
			web.Error(w, r, err)
			return
		}
	}
	if in.OpenID != "" && (in.Channel != wechatpay.Name || !openID.MatchString(in.OpenID)) {
		web.Error(w, r, errkind.ErrInvalid.With("openid (1 to 128 letters, digits, - and _) pays in a WeChat mini-program: it needs \"channel\":\"wechatpay\""))
		return
	}
	st, err := s.Payments.Pay(r.Context(), uid, oid, payment.PayRequest{Channel: in.Channel, OpenID: in.OpenID})
	if err != nil {
		web.Error(w, r, err)
		return
	}
	web.JSON(w, http.StatusCreated, st)
}

// openID is the form of a WeChat openid.
var openID = regexp.MustCompile(`^[A-Za-z0-9_-]{1,128}$`)

// notify takes a channel's callback. Anything that does not verify is a 4xx
// (the channel keeps retrying a real one; a forger learns nothing). The
// payments centre reads the body, so that it counts every refusal.
func (s *Server) notify(w http.ResponseWriter, r *http.Request) {
	ct, ack, err := s.Payments.Callback(r.Context(), r.PathValue("channel"), r.Header, r.Body)
	if err != nil {
		web.Error(w, r, err)
		return
	}
	if ct != "" { // WeChat Pay's: 200 and no body
		w.Header().Set("Content-Type", ct)
	}
	w.Write(ack)
}

func (s *Server) orderPayments(w http.ResponseWriter, r *http.Request) {
	oid, err := pathID(r, "order_id")
	if err != nil {
		web.Error(w, r, err)
		return
	}
	ps, err := s.Payments.OfOrder(r.Context(), oid)
	if err != nil {
		web.Error(w, r, err)
		return
	}
	web.JSON(w, http.StatusOK, map[string]any{"payments": ps})
}

func (s *Server) anomalies(w http.ResponseWriter, r *http.Request) {
	list, err := s.Payments.Anomalies(r.Context(), 1000)
	if err != nil {
		web.Error(w, r, err)
		return
	}
	web.JSON(w, http.StatusOK, struct {
		Anomalies []payment.Anomaly `json:"anomalies"`
		payment.CallbackCounts
	}{list, s.Payments.CallbackCounts()})
}

func (s *Server) channels(w http.ResponseWriter, r *http.Request) {
	web.JSON(w, http.StatusOK, map[string]any{"channels": s.Payments.Router.States()})
}

func (s *Server) switchChannel(w http.ResponseWriter, r *http.Request) {
	var in struct {
		Enabled *bool `json:"enabled"`
	}
	if err := web.Decode(w, r, &in); err != nil {
		web.Error(w, r, err)
		return
	}
	if in.Enabled == nil {
		web.Error(w, r, web.ErrBadJSON.With("enabled is required"))
		return
	}
	// The cluster-wide switch pay.channel.<name>: every node's router follows it.
	name := r.PathValue("channel")
	if err := s.Payments.Router.Check(name); err != nil {
		web.Error(w, r, err)
		return
	}
	if _, err := s.flip(r, switches.PayChannel(name), *in.Enabled); err != nil {
		web.Error(w, r, err)
		return
	}
	web.JSON(w, http.StatusOK, map[string]any{"channels": s.Payments.Router.States()})
}

func (s *Server) reconcile(w http.ResponseWriter, r *http.Request) {
	var in struct {
		Channel string `json:"channel"`
		Date    string `json:"date"`
	}
	if err := web.Decode(w, r, &in); err != nil {
		web.Error(w, r, err)
		return
	}
	day, err := time.Parse(time.DateOnly, in.Date)
	if err != nil {
		web.Error(w, r, errkind.ErrInvalid.With("date %q: want YYYY-MM-DD", in.Date))
		return
	}
	rep, err := s.Payments.Reconcile(r.Context(), in.Channel, day)
	if err != nil {
		web.Error(w, r, err)
		return
	}
	web.JSON(w, http.StatusOK, rep)
}

func (s *Server) orderRefunds(w http.ResponseWriter, r *http.Request) {
	oid, err := pathID(r, "order_id")
	if err != nil {
		web.Error(w, r, err)
		return
	}
	list, err := s.Payments.RefundsOf(r.Context(), oid)
	if err != nil {
		web.Error(w, r, err)
		return
	}
	web.JSON(w, http.StatusOK, map[string]any{"refunds": list})
}
