package paysim

import (
	"bytes"
	"crypto"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/surge-platform/surge/internal/payment"
	"github.com/surge-platform/surge/internal/platform/web"
)

// WeChat Pay API v3, as paysim serves it for a channel of scheme WeChatPay,
// at the paths of api.mch.weixin.qq.com:
//
//	POST /v3/pay/transactions/h5                          prepay (H5): {h5_url}
//	POST /v3/pay/transactions/jsapi                       prepay (JSAPI, mini-programs): {prepay_id}
//	GET  /v3/pay/transactions/out-trade-no/{no}?mchid=    the transaction
//	POST /v3/pay/transactions/out-trade-no/{no}/close     204
//	POST /v3/refund/domestic/refunds                      a refund (done at once: SUCCESS)
//	GET  /v3/refund/domestic/refunds/{out_refund_no}      the refund
//	GET  /v3/bill/tradebill?bill_date=&bill_type=ALL      {hash_type, hash_value, download_url}
//	GET  /v3/billdownload/file?token=                     the bill (not signed: check its hash)
//
// Requests carry Authorization: WECHATPAY2-SHA256-RSA2048 mchid="…",
// nonce_str="…",timestamp="…",serial_no="…",signature="…", the signature
// over method\nURL\ntimestamp\nnonce\nbody\n by the merchant's key
// (WeChatKeys.MerchantKey verifies it; a timestamp more than 5 minutes off
// is refused). Answers are signed by the platform key over
// timestamp\nnonce\nbody\n (Wechatpay-Timestamp, -Nonce, -Serial: the
// platform key's id, -Signature); errors are {"code","message"} with
// WeChat Pay's codes (PARAM_ERROR, SIGN_ERROR, ORDER_NOT_EXIST, ORDERPAID,
// ORDERCLOSED, INVALID_REQUEST, RESOURCE_NOT_EXISTS, SYSTEM_ERROR).
//
// Notices: TRANSACTION.SUCCESS when a transaction is paid (to its
// notify_url), REFUND.SUCCESS for each refund (to the refund request's
// notify_url, none without one; a console refund's to the transaction's,
// standing for the refund notify URL set in the merchant platform), each a JSON body whose resource is the
// transaction or refund sealed with AEAD_AES_256_GCM under the APIv3 key,
// signed as answers are (Wechatpay-Signature-Type WECHATPAY2-SHA256-RSA2048).
// The merchant acknowledges with 200 or 204.
//
// Simulator limits: out_trade_no and out_refund_no must be decimal ids
// (surge's are); amounts are CNY only; refunds succeed at once.

// WeChatKeys are a WeChatPay channel's merchant and keys, as the platform
// holds them.
type WeChatKeys struct {
	MchID          string          // the merchant id (商户号), digits
	AppID          string          // the app id prepay requests must name
	MerchantSerial string          // serial_no of the merchant's API certificate
	MerchantKey    *rsa.PublicKey  // verifies the merchant's requests
	PlatformKeyID  string          // the platform public key's id ("PUB_KEY_ID_…"): Wechatpay-Serial
	PlatformKey    *rsa.PrivateKey // signs answers and notices; the merchant holds its public half
	APIv3Key       []byte          // 32 bytes: seals notices' resources
}

func (k *WeChatKeys) validate() error {
	switch {
	case k == nil:
		return errors.New("WeChatPay needs WeChat keys")
	case k.MchID == "" || !digits(k.MchID) || k.AppID == "" || k.MerchantSerial == "" || k.PlatformKeyID == "":
		return errors.New("WeChatPay needs MchID (digits), AppID, MerchantSerial and PlatformKeyID")
	case k.MerchantKey == nil || k.PlatformKey == nil || k.PlatformKey.N.BitLen() < 2048:
		return errors.New("WeChatPay needs the merchant's public key and a platform key of 2048 bits or more")
	case len(k.APIv3Key) != 32:
		return errors.New("WeChatPay's APIv3 key must be 32 bytes")
	}
	return nil
}

func digits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return s != ""
}

// wxTxn is what a prepay request said beyond amount and notify URL.
type wxTxn struct {
	tradeType   string // JSAPI or MWEB (H5)
	description string
	attach      string
	openID      string // the payer: JSAPI's, or made up when an H5 transaction is paid
	expires     time.Time
}

func (s *Server) wxRoutes(mux *http.ServeMux) {
	mux.HandleFunc("POST /v3/pay/transactions/h5", s.wx(s.wxPrepay("MWEB")))
	mux.HandleFunc("POST /v3/pay/transactions/jsapi", s.wx(s.wxPrepay("JSAPI")))
	mux.HandleFunc("GET /v3/pay/transactions/out-trade-no/{no}", s.wx(s.wxQuery))
	mux.HandleFunc("POST /v3/pay/transactions/out-trade-no/{no}/close", s.wx(s.wxClose))
	mux.HandleFunc("POST /v3/refund/domestic/refunds", s.wx(s.wxRefund))
	mux.HandleFunc("GET /v3/refund/domestic/refunds/{no}", s.wx(s.wxRefundQuery))
	mux.HandleFunc("GET /v3/bill/tradebill", s.wx(s.wxTradeBill))
	mux.HandleFunc("GET /v3/billdownload/file", s.wx(s.wxBillFile))
}

// wxError is WeChat Pay's error answer.
type wxError struct {
	status  int
	Code    string `json:"code"`
	Message string `json:"message"`
}

func (e *wxError) Error() string { return e.Code + ": " + e.Message }

func wxErr(status int, code, format string, args ...any) *wxError {
	return &wxError{status: status, Code: code, Message: fmt.Sprintf(format, args...)}
}

type wxHandler func(r *http.Request, ch *channel, body []byte) (status int, answer any, err *wxError)

// rawAnswer is an answer written as it is, unsigned (a bill file).
type rawAnswer struct {
	contentType string
	body        []byte
}

// wx serves a merchant API route: the merchant named by the request's
// Authorization, faults (outage, latency, errors), the signature, then h;
// the answer is signed by the platform key.
func (s *Server) wx(h wxHandler) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		auth, ok := parseWxAuth(r.Header.Get("Authorization"))
		ch := s.wxByMch[auth["mchid"]]
		if !ok || ch == nil {
			wxWrite(w, nil, http.StatusUnauthorized, wxErr(http.StatusUnauthorized, "SIGN_ERROR", "Authorization is not WECHATPAY2-SHA256-RSA2048 of a known mchid"))
			return
		}
		f := ch.faults.Load()
		if f.Outage {
			wxWrite(w, nil, http.StatusServiceUnavailable, wxErr(0, "SYSTEM_ERROR", "simulated outage"))
			return
		}
		body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, web.MaxBody))
		if err != nil {
			wxWrite(w, ch, http.StatusBadRequest, wxErr(0, "PARAM_ERROR", "request body: %v", err))
			return
		}
		uri := r.RequestURI
		if uri == "" {
			uri = r.URL.RequestURI()
		}
		if e := ch.cfg.WeChat.verifyRequest(r.Method, uri, auth, body); e != nil {
			wxWrite(w, ch, e.status, e)
			return
		}
		switch apiFaults(f, r) {
		case gone:
			return
		case injected:
			wxWrite(w, ch, http.StatusInternalServerError, wxErr(0, "SYSTEM_ERROR", "simulated provider error"))
			return
		}
		status, answer, e := h(r, ch, body)
		if e != nil {
			wxWrite(w, ch, e.status, e)
			return
		}
		if raw, ok := answer.(rawAnswer); ok { // a file: not signed
			w.Header().Set("Content-Type", raw.contentType)
			w.WriteHeader(status)
			w.Write(raw.body)
			return
		}
		wxWrite(w, ch, status, answer)
	}
}

// parseWxAuth parses `WECHATPAY2-SHA256-RSA2048 k="v",k="v"`.
func parseWxAuth(h string) (map[string]string, bool) {
	rest, ok := strings.CutPrefix(h, "WECHATPAY2-SHA256-RSA2048 ")
	if !ok || len(rest) > 2048 {
		return nil, false
	}
	m := map[string]string{}
	for part := range strings.SplitSeq(rest, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(part), "=")
		if !ok || len(v) < 2 || v[0] != '"' || v[len(v)-1] != '"' {
			return nil, false
		}
		m[k] = v[1 : len(v)-1]
	}
	return m, true
}

// verifyRequest checks a merchant request's signature and timestamp.
func (k *WeChatKeys) verifyRequest(method, uri string, auth map[string]string, body []byte) *wxError {
	if auth["serial_no"] != k.MerchantSerial {
		return wxErr(http.StatusUnauthorized, "SIGN_ERROR", "serial_no %.64q is not the merchant's certificate", auth["serial_no"])
	}
	ts, err := strconv.ParseInt(auth["timestamp"], 10, 64)
	if err != nil || auth["nonce_str"] == "" {
		return wxErr(http.StatusUnauthorized, "SIGN_ERROR", "timestamp and nonce_str are required")
	}
	if d := time.Since(time.Unix(ts, 0)); d > 5*time.Minute || d < -5*time.Minute {
		return wxErr(http.StatusUnauthorized, "SIGN_ERROR", "timestamp is more than 5 minutes off")
	}
	sig, err := base64.StdEncoding.DecodeString(auth["signature"])
	if err != nil {
		return wxErr(http.StatusUnauthorized, "SIGN_ERROR", "signature is not base64")
	}
	msg := method + "\n" + uri + "\n" + auth["timestamp"] + "\n" + auth["nonce_str"] + "\n" + string(body) + "\n"
	sum := sha256.Sum256([]byte(msg))
	if rsa.VerifyPKCS1v15(k.MerchantKey, crypto.SHA256, sum[:], sig) != nil {
		return wxErr(http.StatusUnauthorized, "SIGN_ERROR", "signature does not match")
	}
	return nil
}

// wxSign returns the Wechatpay-* headers of a message (an answer or a
// notice) with body, signed at ts by k's platform key.
func (k *WeChatKeys) wxSign(h http.Header, ts time.Time, body []byte) {
	t, nonce := strconv.FormatInt(ts.Unix(), 10), newID()
	sum := sha256.Sum256([]byte(t + "\n" + nonce + "\n" + string(body) + "\n"))
	sig, err := rsa.SignPKCS1v15(nil, k.PlatformKey, crypto.SHA256, sum[:])
	if err != nil {
		panic("paysim: sign with the platform key: " + err.Error()) // a key Validate accepted
	}
	h.Set("Wechatpay-Timestamp", t)
	h.Set("Wechatpay-Nonce", nonce)
	h.Set("Wechatpay-Serial", k.PlatformKeyID)
	h.Set("Wechatpay-Signature", base64.StdEncoding.EncodeToString(sig))
	h.Set("Request-Id", newID())
}

// wxWrite writes answer (nil: no body) signed by ch's platform key (not
// signed without a channel: the merchant is unknown).
func wxWrite(w http.ResponseWriter, ch *channel, status int, answer any) {
	var body []byte
	if answer != nil {
		body, _ = json.Marshal(answer)
		w.Header().Set("Content-Type", "application/json")
	}
	if ch != nil {
		ch.cfg.WeChat.wxSign(w.Header(), time.Now(), body)
	}
	w.WriteHeader(status)
	w.Write(body)
}

// ---- transactions

type wxPrepayReq struct {
	AppID       string `json:"appid"`
	MchID       string `json:"mchid"`
	Description string `json:"description"`
	OutTradeNo  string `json:"out_trade_no"`
	TimeExpire  string `json:"time_expire"`
	Attach      string `json:"attach"`
	NotifyURL   string `json:"notify_url"`
	Amount      struct {
		Total    int64  `json:"total"`
		Currency string `json:"currency"`
	} `json:"amount"`
	Payer *struct {
		OpenID string `json:"openid"`
	} `json:"payer"`
	SceneInfo *struct {
		PayerClientIP string `json:"payer_client_ip"`
		H5Info        *struct {
			Type string `json:"type"`
		} `json:"h5_info"`
	} `json:"scene_info"`
}

// wxOutNo parses an out_trade_no or out_refund_no: WeChat Pay takes 6 to
// 32 (trade) or 64 (refund) characters of [0-9A-Za-z_-|*]; paysim takes
// decimal ids only, and shorter ones too (surge's are long).
func wxOutNo(field, s string, maxLen int) (int64, *wxError) {
	id, ok := payment.ParseID(s)
	if !ok || len(s) > maxLen {
		return 0, wxErr(http.StatusBadRequest, "PARAM_ERROR", "%s %.70q: paysim takes a decimal id of at most %d digits", field, s, maxLen)
	}
	return id, nil
}

func (s *Server) wxPrepay(tradeType string) wxHandler {
	return func(r *http.Request, ch *channel, body []byte) (int, any, *wxError) {
		k := ch.cfg.WeChat
		var req wxPrepayReq
		if err := json.Unmarshal(body, &req); err != nil {
			return 0, nil, wxErr(http.StatusBadRequest, "PARAM_ERROR", "body: %v", err)
		}
		no, e := wxOutNo("out_trade_no", req.OutTradeNo, 32)
		switch {
		case e != nil:
			return 0, nil, e
		case req.MchID != k.MchID:
			return 0, nil, wxErr(http.StatusBadRequest, "PARAM_ERROR", "mchid is not the one that signed the request")
		case req.AppID != k.AppID:
			return 0, nil, wxErr(http.StatusBadRequest, "APPID_MCHID_NOT_MATCH", "appid %.40q is not bound to mchid %s", req.AppID, k.MchID)
		case req.Description == "" || len(req.Description) > 127 || !utf8.ValidString(req.Description):
			return 0, nil, wxErr(http.StatusBadRequest, "PARAM_ERROR", "description must be 1 to 127 bytes of UTF-8")
		case req.Amount.Total <= 0 || req.Amount.Total > MaxAmount:
			return 0, nil, wxErr(http.StatusBadRequest, "PARAM_ERROR", "amount.total must be 1..%d fen", MaxAmount)
		case req.Amount.Currency != "" && req.Amount.Currency != "CNY":
			return 0, nil, wxErr(http.StatusBadRequest, "PARAM_ERROR", "amount.currency must be CNY")
		case !validNotifyURL(req.NotifyURL) || strings.Contains(req.NotifyURL, "?"):
			return 0, nil, wxErr(http.StatusBadRequest, "PARAM_ERROR", "notify_url must be an absolute http(s) URL without a query")
		case len(req.Attach) > 128:
			return 0, nil, wxErr(http.StatusBadRequest, "PARAM_ERROR", "attach is over 128 bytes")
		}
		info := &wxTxn{tradeType: tradeType, description: req.Description, attach: req.Attach}
		if req.TimeExpire != "" {
			t, err := time.Parse(time.RFC3339, req.TimeExpire)
			if err != nil {
				return 0, nil, wxErr(http.StatusBadRequest, "PARAM_ERROR", "time_expire %.40q is not RFC 3339", req.TimeExpire)
			}
			info.expires = t
		}
		if tradeType == "JSAPI" {
			if req.Payer == nil || req.Payer.OpenID == "" || len(req.Payer.OpenID) > 128 {
				return 0, nil, wxErr(http.StatusBadRequest, "PARAM_ERROR", "payer.openid is required")
			}
			info.openID = req.Payer.OpenID
		} else {
			if req.SceneInfo == nil || req.SceneInfo.H5Info == nil || req.SceneInfo.H5Info.Type == "" {
				return 0, nil, wxErr(http.StatusBadRequest, "PARAM_ERROR", "scene_info.h5_info.type is required")
			}
			if _, err := netip.ParseAddr(req.SceneInfo.PayerClientIP); err != nil {
				return 0, nil, wxErr(http.StatusBadRequest, "PARAM_ERROR", "scene_info.payer_client_ip %.50q is not an IP address", req.SceneInfo.PayerClientIP)
			}
		}
		t, err := s.open(ch, no, req.Amount.Total, req.NotifyURL, func(t *txn) { t.wx = info })
		if err != nil {
			return 0, nil, wxErr(http.StatusBadRequest, "INVALID_REQUEST", "out_trade_no %s was used with other parameters", req.OutTradeNo)
		}
		ch.mu.Lock()
		state, prepay := t.state, t.prepay
		ch.mu.Unlock()
		switch state {
		case payment.Paid, payment.Refunded:
			return 0, nil, wxErr(http.StatusBadRequest, "ORDERPAID", "out_trade_no %s is paid", req.OutTradeNo)
		case payment.Closed:
			return 0, nil, wxErr(http.StatusBadRequest, "ORDERCLOSED", "out_trade_no %s is closed", req.OutTradeNo)
		}
		if tradeType == "JSAPI" {
			return http.StatusOK, map[string]string{"prepay_id": prepay}, nil
		}
		return http.StatusOK, map[string]string{"h5_url": s.payURL(r, ch.name, prepay)}, nil
	}
}

// WXTransaction is a transaction as WeChat Pay v3 shows it (queries and
// TRANSACTION.* notices).
type WXTransaction struct {
	AppID          string    `json:"appid"`
	MchID          string    `json:"mchid"`
	OutTradeNo     string    `json:"out_trade_no"`
	TransactionID  string    `json:"transaction_id,omitempty"`
	TradeType      string    `json:"trade_type,omitempty"`
	TradeState     string    `json:"trade_state"`
	TradeStateDesc string    `json:"trade_state_desc"`
	BankType       string    `json:"bank_type,omitempty"`
	Attach         string    `json:"attach"`
	SuccessTime    string    `json:"success_time,omitempty"` // RFC 3339, +08:00
	Payer          *WXPayer  `json:"payer,omitempty"`
	Amount         WXTxnAmnt `json:"amount"`
}

// WXPayer is a transaction's payer.
type WXPayer struct {
	OpenID string `json:"openid"`
}

// WXTxnAmnt is a transaction's amount, in fen.
type WXTxnAmnt struct {
	Total         int64  `json:"total"`
	PayerTotal    int64  `json:"payer_total,omitempty"`
	Currency      string `json:"currency"`
	PayerCurrency string `json:"payer_currency,omitempty"`
}

// wxTradeState is WeChat Pay's trade_state for st, and its description.
func wxTradeState(st payment.State) (string, string) {
	switch st {
	case payment.Paid:
		return "SUCCESS", "支付成功"
	case payment.Refunded:
		return "REFUND", "转入退款"
	case payment.Closed:
		return "CLOSED", "订单已关闭"
	}
	return "NOTPAY", "订单未支付"
}

// wxViewLocked needs channel.mu.
func (t *txn) wxViewLocked(k *WeChatKeys) WXTransaction {
	v := WXTransaction{AppID: k.AppID, MchID: k.MchID, OutTradeNo: strconv.FormatInt(t.merchantID, 10),
		Amount: WXTxnAmnt{Total: t.amount, Currency: "CNY"}}
	v.TradeState, v.TradeStateDesc = wxTradeState(t.state)
	if t.wx != nil {
		v.TradeType, v.Attach = t.wx.tradeType, t.wx.attach
	}
	if t.state == payment.Paid || t.state == payment.Refunded {
		v.TransactionID, v.BankType = t.id, "OTHERS"
		v.SuccessTime = t.paidAt.In(CST).Format(time.RFC3339)
		v.Amount.PayerTotal, v.Amount.PayerCurrency = t.amount, "CNY"
		if t.wx != nil && t.wx.openID != "" {
			v.Payer = &WXPayer{OpenID: t.wx.openID}
		}
	}
	return v
}

// wxTxnOf returns the transaction out_trade_no {no} of a request whose
// mchid parameter (query or body) must be ch's.
func wxTxnOf(r *http.Request, ch *channel, mchid string) (*txn, *wxError) {
	if mchid != ch.cfg.WeChat.MchID {
		return nil, wxErr(http.StatusBadRequest, "PARAM_ERROR", "mchid %.20q is not the one that signed the request", mchid)
	}
	no, e := wxOutNo("out_trade_no", r.PathValue("no"), 32)
	if e != nil {
		return nil, e
	}
	ch.mu.Lock()
	t := ch.byMerchant[no]
	ch.mu.Unlock()
	if t == nil {
		return nil, wxErr(http.StatusNotFound, "ORDER_NOT_EXIST", "订单不存在")
	}
	return t, nil
}

func (s *Server) wxQuery(r *http.Request, ch *channel, _ []byte) (int, any, *wxError) {
	t, e := wxTxnOf(r, ch, r.URL.Query().Get("mchid"))
	if e != nil {
		return 0, nil, e
	}
	ch.mu.Lock()
	defer ch.mu.Unlock()
	return http.StatusOK, t.wxViewLocked(ch.cfg.WeChat), nil
}

func (s *Server) wxClose(r *http.Request, ch *channel, body []byte) (int, any, *wxError) {
	var req struct {
		MchID string `json:"mchid"`
	}
	if err := json.Unmarshal(body, &req); err != nil {
		return 0, nil, wxErr(http.StatusBadRequest, "PARAM_ERROR", "body: %v", err)
	}
	t, e := wxTxnOf(r, ch, req.MchID)
	if e != nil {
		return 0, nil, e
	}
	if err := s.close(ch, t); err != nil {
		return 0, nil, wxErr(http.StatusBadRequest, "ORDERPAID", "out_trade_no %d is paid: refund it instead", t.merchantID)
	}
	return http.StatusNoContent, nil, nil
}

// ---- refunds

type wxRefundReq struct {
	TransactionID string `json:"transaction_id"`
	OutTradeNo    string `json:"out_trade_no"`
	OutRefundNo   string `json:"out_refund_no"`
	Reason        string `json:"reason"`
	NotifyURL     string `json:"notify_url"`
	Amount        struct {
		Refund   int64  `json:"refund"`
		Total    int64  `json:"total"`
		Currency string `json:"currency"`
	} `json:"amount"`
}

// WXRefund is a refund as WeChat Pay v3 shows it (the refund API's
// answers; REFUND.* notices carry WXRefundNotice).
type WXRefund struct {
	RefundID            string        `json:"refund_id"`
	OutRefundNo         string        `json:"out_refund_no"`
	TransactionID       string        `json:"transaction_id"`
	OutTradeNo          string        `json:"out_trade_no"`
	Channel             string        `json:"channel"`
	UserReceivedAccount string        `json:"user_received_account"`
	SuccessTime         string        `json:"success_time,omitempty"`
	CreateTime          string        `json:"create_time"`
	Status              string        `json:"status"`
	FundsAccount        string        `json:"funds_account"`
	Amount              WXRefundAmnts `json:"amount"`
}

// WXRefundAmnts are a refund's amounts, in fen.
type WXRefundAmnts struct {
	Total            int64  `json:"total"`
	Refund           int64  `json:"refund"`
	PayerTotal       int64  `json:"payer_total"`
	PayerRefund      int64  `json:"payer_refund"`
	SettlementRefund int64  `json:"settlement_refund"`
	SettlementTotal  int64  `json:"settlement_total"`
	DiscountRefund   int64  `json:"discount_refund"`
	Currency         string `json:"currency"`
}

// wxRefundView needs nothing locked: a refund's fields never change.
func (rf *refund) wxView() WXRefund {
	at := rf.at.In(CST).Format(time.RFC3339)
	return WXRefund{RefundID: rf.channelID, OutRefundNo: strconv.FormatInt(rf.id, 10), TransactionID: rf.txn.id,
		OutTradeNo: strconv.FormatInt(rf.txn.merchantID, 10), Channel: "ORIGINAL", UserReceivedAccount: "支付用户零钱",
		SuccessTime: at, CreateTime: at, Status: "SUCCESS", FundsAccount: "AVAILABLE",
		Amount: WXRefundAmnts{Total: rf.txn.amount, Refund: rf.amount, PayerTotal: rf.txn.amount, PayerRefund: rf.amount,
			SettlementRefund: rf.amount, SettlementTotal: rf.txn.amount, Currency: "CNY"}}
}

func (s *Server) wxRefund(r *http.Request, ch *channel, body []byte) (int, any, *wxError) {
	var req wxRefundReq
	if err := json.Unmarshal(body, &req); err != nil {
		return 0, nil, wxErr(http.StatusBadRequest, "PARAM_ERROR", "body: %v", err)
	}
	rid, e := wxOutNo("out_refund_no", req.OutRefundNo, 64)
	if e != nil {
		return 0, nil, e
	}
	var t *txn
	ch.mu.Lock()
	switch {
	case req.OutTradeNo != "":
		if no, ok := payment.ParseID(req.OutTradeNo); ok {
			t = ch.byMerchant[no]
		}
	case req.TransactionID != "":
		if t = ch.byID[req.TransactionID]; t != nil && t.id != req.TransactionID { // a prepay id is not a transaction id
			t = nil
		}
	}
	ch.mu.Unlock()
	switch {
	case t == nil:
		return 0, nil, wxErr(http.StatusNotFound, "RESOURCE_NOT_EXISTS", "订单不存在")
	case req.Amount.Total != t.amount:
		return 0, nil, wxErr(http.StatusBadRequest, "PARAM_ERROR", "amount.total %d is not the order's %d", req.Amount.Total, t.amount)
	case req.Amount.Refund <= 0:
		return 0, nil, wxErr(http.StatusBadRequest, "PARAM_ERROR", "amount.refund must be positive")
	case req.Amount.Currency != "" && req.Amount.Currency != "CNY":
		return 0, nil, wxErr(http.StatusBadRequest, "PARAM_ERROR", "amount.currency must be CNY")
	case len(req.Reason) > 80:
		return 0, nil, wxErr(http.StatusBadRequest, "PARAM_ERROR", "reason is over 80 bytes")
	case req.NotifyURL != "" && !validNotifyURL(req.NotifyURL):
		return 0, nil, wxErr(http.StatusBadRequest, "PARAM_ERROR", "notify_url must be an absolute http(s) URL")
	}
	rf, err := s.refundTxn(ch, refundReq{RefundID: rid, MerchantTxnID: t.merchantID, Amount: req.Amount.Refund,
		Reason: req.Reason, NotifyURL: req.NotifyURL})
	switch {
	case errors.Is(err, ErrNotPaid):
		return 0, nil, wxErr(http.StatusBadRequest, "INVALID_REQUEST", "订单未支付")
	case errors.Is(err, ErrRefundExceeds):
		return 0, nil, wxErr(http.StatusBadRequest, "INVALID_REQUEST", "申请退款金额超过订单可退金额")
	case errors.Is(err, ErrRefundConflict):
		return 0, nil, wxErr(http.StatusBadRequest, "INVALID_REQUEST", "out_refund_no %s was used with other parameters", req.OutRefundNo)
	case errors.Is(err, ErrTooManyRefunds):
		return 0, nil, wxErr(http.StatusBadRequest, "INVALID_REQUEST", "an order takes at most %d refunds", MaxRefunds)
	case err != nil:
		return 0, nil, wxErr(http.StatusInternalServerError, "SYSTEM_ERROR", "%v", err)
	}
	return http.StatusOK, rf.wxView(), nil
}

func (s *Server) wxRefundQuery(r *http.Request, ch *channel, _ []byte) (int, any, *wxError) {
	rid, e := wxOutNo("out_refund_no", r.PathValue("no"), 64)
	if e != nil {
		return 0, nil, e
	}
	ch.mu.Lock()
	rf := ch.refunds[rid]
	ch.mu.Unlock()
	if rf == nil {
		return 0, nil, wxErr(http.StatusNotFound, "RESOURCE_NOT_EXISTS", "退款单不存在")
	}
	return http.StatusOK, rf.wxView(), nil
}

// ---- the trade bill

// WXBillHeader is the first row of a trade bill (bill_type ALL).
var WXBillHeader = []string{"交易时间", "公众账号ID", "商户号", "特约商户号", "设备号", "微信订单号", "商户订单号", "用户标识",
	"交易类型", "交易状态", "付款银行", "货币种类", "应结订单金额", "代金券金额", "微信退款单号", "商户退款单号", "退款金额",
	"充值券退款金额", "退款类型", "退款状态", "商品名称", "商户数据包", "手续费", "费率", "订单金额", "申请退款金额", "费率备注"}

// WXBillSummaryHeader heads the bill's totals, after its rows.
var WXBillSummaryHeader = []string{"总交易单数", "应结订单总金额", "退款总金额", "充值券退款总金额", "手续费总金额", "订单总金额", "申请退款总金额"}

// wxBill returns the trade bill of China day (YYYY-MM-DD): every payment
// and refund made that day (in CST), at most n rows (the rows the
// download URL was given for; -1: all).
func (ch *channel) wxBill(day string, n int) []byte {
	lines := ch.dayLines(day, n)
	ch.mu.Lock()
	k := ch.cfg.WeChat
	var b bytes.Buffer
	b.WriteString(strings.Join(WXBillHeader, ",") + "\r\n")
	var paid, refunded int64
	for _, l := range lines {
		desc := ""
		tradeType, openID := "MWEB", ""
		if l.txn.wx != nil {
			desc, tradeType, openID = l.txn.wx.description, l.txn.wx.tradeType, l.txn.wx.openID
		}
		row := []string{l.at.In(CST).Format(time.DateTime), k.AppID, k.MchID, "0", "", l.txn.id,
			strconv.FormatInt(l.txn.merchantID, 10), openID, tradeType}
		if l.refund == nil {
			paid += l.amount
			row = append(row, "SUCCESS", "OTHERS", "CNY", FormatYuan(l.amount), "0.00", "0", "0", "0.00", "0.00", "", "",
				desc, "", "0.00", "0.60%", FormatYuan(l.amount), "0.00", "")
		} else {
			refunded += l.amount
			row = append(row, "REFUND", "OTHERS", "CNY", "0.00", "0.00", l.refund.channelID, strconv.FormatInt(l.refund.id, 10),
				FormatYuan(l.amount), "0.00", "ORIGINAL", "SUCCESS", desc, "", "0.00", "0.60%", FormatYuan(l.txn.amount),
				FormatYuan(l.amount), "")
		}
		wxBillRow(&b, row)
	}
	ch.mu.Unlock()
	b.WriteString(strings.Join(WXBillSummaryHeader, ",") + "\r\n")
	wxBillRow(&b, []string{strconv.Itoa(len(lines)), FormatYuan(paid), FormatYuan(refunded), "0.00", "0.00", FormatYuan(paid), FormatYuan(refunded)})
	return b.Bytes()
}

// wxBillRow writes a bill row: each field behind a backquote, as WeChat
// Pay writes them (so that a spreadsheet keeps ids as text).
func wxBillRow(b *bytes.Buffer, fields []string) {
	for i, f := range fields {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteByte('`')
		b.WriteString(strings.NewReplacer(",", " ", "\r", " ", "\n", " ").Replace(f))
	}
	b.WriteString("\r\n")
}

func (s *Server) wxTradeBill(r *http.Request, ch *channel, _ []byte) (int, any, *wxError) {
	q := r.URL.Query()
	day := q.Get("bill_date")
	d, err := time.ParseInLocation(time.DateOnly, day, CST)
	switch {
	case err != nil:
		return 0, nil, wxErr(http.StatusBadRequest, "PARAM_ERROR", "bill_date %.20q is not YYYY-MM-DD", day)
	case q.Get("bill_type") != "" && q.Get("bill_type") != "ALL":
		return 0, nil, wxErr(http.StatusBadRequest, "PARAM_ERROR", "paysim serves bill_type ALL only")
	case q.Get("tar_type") != "":
		return 0, nil, wxErr(http.StatusBadRequest, "PARAM_ERROR", "paysim serves the bill uncompressed only")
	case !d.Before(s.now().Add(24 * time.Hour)):
		return 0, nil, wxErr(http.StatusBadRequest, "NO_STATEMENT_EXIST", "the bill of %s does not exist yet", day)
	}
	// The download is of the rows there are now: the bill of a day still
	// going on only grows at its end.
	bill := ch.wxBill(day, -1)
	rows := bytes.Count(bill, []byte("\r\n")) - 3
	sum := sha1.Sum(bill)
	token := day + "." + strconv.Itoa(rows)
	return http.StatusOK, map[string]string{"hash_type": "SHA1", "hash_value": hex.EncodeToString(sum[:]),
		"download_url": s.publicBase(r) + "/v3/billdownload/file?token=" + url.QueryEscape(token)}, nil
}

// wxBillFile answers the download of a bill, unsigned (as WeChat Pay's:
// the merchant checks the hash the bill API gave).
func (s *Server) wxBillFile(r *http.Request, ch *channel, _ []byte) (int, any, *wxError) {
	day, n, ok := strings.Cut(r.URL.Query().Get("token"), ".")
	rows, err := strconv.Atoi(n)
	if _, derr := time.Parse(time.DateOnly, day); !ok || err != nil || derr != nil || rows < 0 {
		return 0, nil, wxErr(http.StatusBadRequest, "PARAM_ERROR", "token is not one the bill API gave")
	}
	return http.StatusOK, rawAnswer{"text/csv; charset=utf-8", ch.wxBill(day, rows)}, nil
}

// publicBase is the base URL the provider is reached at.
func (s *Server) publicBase(r *http.Request) string {
	if s.cfg.PublicURL != "" {
		return s.cfg.PublicURL
	}
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	return scheme + "://" + r.Host
}

// ---- notices

// WXEvent is the body of a WeChat Pay v3 notice (通知).
type WXEvent struct {
	ID           string     `json:"id"`
	CreateTime   string     `json:"create_time"`
	ResourceType string     `json:"resource_type"`
	EventType    string     `json:"event_type"`
	Summary      string     `json:"summary"`
	Resource     WXResource `json:"resource"`
}

// WXResource is a notice's sealed resource.
type WXResource struct {
	OriginalType   string `json:"original_type"`
	Algorithm      string `json:"algorithm"`
	Ciphertext     string `json:"ciphertext"`
	AssociatedData string `json:"associated_data"`
	Nonce          string `json:"nonce"`
}

// WXRefundNotice is the resource of a REFUND.* notice.
type WXRefundNotice struct {
	MchID               string `json:"mchid"`
	OutTradeNo          string `json:"out_trade_no"`
	TransactionID       string `json:"transaction_id"`
	OutRefundNo         string `json:"out_refund_no"`
	RefundID            string `json:"refund_id"`
	RefundStatus        string `json:"refund_status"`
	SuccessTime         string `json:"success_time,omitempty"`
	UserReceivedAccount string `json:"user_received_account"`
	Amount              struct {
		Total       int64 `json:"total"`
		Refund      int64 `json:"refund"`
		PayerTotal  int64 `json:"payer_total"`
		PayerRefund int64 `json:"payer_refund"`
	} `json:"amount"`
}

// Seal seals plaintext as a notice's resource under the APIv3 key
// (AEAD_AES_256_GCM, a random 12-character nonce).
func Seal(apiV3Key []byte, originalType string, plaintext []byte) (WXResource, error) {
	block, err := aes.NewCipher(apiV3Key)
	if err != nil {
		return WXResource{}, err
	}
	gcm, err := cipher.NewGCM(block)
	if err != nil {
		return WXResource{}, err
	}
	nonce := rand.Text()[:12]
	ct := gcm.Seal(nil, []byte(nonce), plaintext, []byte(originalType))
	return WXResource{OriginalType: originalType, Algorithm: "AEAD_AES_256_GCM", Ciphertext: base64.StdEncoding.EncodeToString(ct),
		AssociatedData: originalType, Nonce: nonce}, nil
}

// encodeWeChat is EncodeCallback for a WeChatPay channel: a refund's
// notice (n.Refund set) is REFUND.SUCCESS (REFUND.CLOSED when it did not
// succeed); a paid or refunded transaction's is TRANSACTION.SUCCESS. Other
// states are not notified. info, when known, is what the prepay said.
func encodeWeChat(k *WeChatKeys, n payment.Notice, info *wxTxn) (http.Header, []byte, error) {
	if k == nil {
		return nil, nil, errors.New("paysim: WeChatPay without keys")
	}
	var event, summary, typ string
	var plain any
	switch {
	case n.Refund != nil:
		rn := WXRefundNotice{MchID: k.MchID, OutTradeNo: strconv.FormatInt(n.PaymentID, 10), TransactionID: n.ChannelTxnID,
			OutRefundNo: n.Refund.OutRefundNo, RefundID: n.Refund.ChannelRefundID, RefundStatus: "SUCCESS",
			UserReceivedAccount: "支付用户零钱"}
		rn.Amount.Total, rn.Amount.Refund, rn.Amount.PayerTotal, rn.Amount.PayerRefund = n.Amount, n.Refund.Amount, n.Amount, n.Refund.Amount
		event, summary, typ = "REFUND.SUCCESS", "退款成功", "refund"
		if n.Refund.Succeeded {
			rn.SuccessTime = n.Refund.At.In(CST).Format(time.RFC3339)
		} else {
			rn.RefundStatus, event, summary = "CLOSED", "REFUND.CLOSED", "退款关闭"
		}
		plain = rn
	case n.State == payment.Paid || n.State == payment.Refunded:
		t := WXTransaction{AppID: k.AppID, MchID: k.MchID, OutTradeNo: strconv.FormatInt(n.PaymentID, 10),
			TransactionID: n.ChannelTxnID, TradeType: "MWEB", TradeState: "SUCCESS", TradeStateDesc: "支付成功",
			BankType: "OTHERS", SuccessTime: n.PaidAt.In(CST).Format(time.RFC3339),
			Amount: WXTxnAmnt{Total: n.Amount, PayerTotal: n.Amount, Currency: "CNY", PayerCurrency: "CNY"}}
		if info != nil {
			t.TradeType, t.Attach = info.tradeType, info.attach
			if info.openID != "" {
				t.Payer = &WXPayer{OpenID: info.openID}
			}
		}
		event, summary, typ, plain = "TRANSACTION.SUCCESS", "支付成功", "transaction", t
	default:
		return nil, nil, fmt.Errorf("paysim: WeChat Pay does not notify a %s transaction", n.State)
	}
	pt, err := json.Marshal(plain)
	if err != nil {
		return nil, nil, err
	}
	res, err := Seal(k.APIv3Key, typ, pt)
	if err != nil {
		return nil, nil, err
	}
	body, err := json.Marshal(WXEvent{ID: n.NoticeID, CreateTime: n.Timestamp.In(CST).Format(time.RFC3339),
		ResourceType: "encrypt-resource", EventType: event, Summary: summary, Resource: res})
	if err != nil {
		return nil, nil, err
	}
	h := http.Header{}
	h.Set("Content-Type", "application/json")
	h.Set("Wechatpay-Signature-Type", "WECHATPAY2-SHA256-RSA2048")
	k.wxSign(h, n.Timestamp, body)
	return h, body, nil
}
