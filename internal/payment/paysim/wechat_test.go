package paysim_test

import (
	"context"
	"crypto/sha1"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/wechatpay-apiv3/wechatpay-go/core"
	"github.com/wechatpay-apiv3/wechatpay-go/core/auth/verifiers"
	"github.com/wechatpay-apiv3/wechatpay-go/core/notify"
	"github.com/wechatpay-apiv3/wechatpay-go/core/option"
	"github.com/wechatpay-apiv3/wechatpay-go/services/payments/h5"
	"github.com/wechatpay-apiv3/wechatpay-go/services/payments/jsapi"
	"github.com/wechatpay-apiv3/wechatpay-go/services/refunddomestic"

	"github.com/surge-platform/surge/internal/eventually"
	"github.com/surge-platform/surge/internal/payment/paysim"
)

// redirect sends the SDK's requests for WeChat Pay's host to paysim.
type redirect struct{ to *url.URL }

func (t redirect) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.URL.Host == "api.mch.weixin.qq.com" {
		r = r.Clone(r.Context())
		r.URL.Scheme, r.URL.Host, r.Host = t.to.Scheme, t.to.Host, ""
	}
	return http.DefaultTransport.RoundTrip(r)
}

// WeChat Pay's own Go SDK is the judge of paysim's WeChat Pay v3: it signs
// the requests, and checks the signature of every answer against the
// platform key; its notice handler verifies and opens the notices. Each
// call is the SDK's, not surge's adapter's.
func TestWeChatPaySDKAcceptsPaysim(t *testing.T) {
	t.Parallel()
	k, m, err := paysim.NewWeChat("1900000109", "wxd678efh567hg6787")
	if err != nil {
		t.Fatal(err)
	}
	// The merchant's notice endpoint: the SDK's handler verifies and opens.
	handler, err := notify.NewRSANotifyHandler(string(m.APIv3Key), verifiers.NewSHA256WithRSAPubkeyVerifier(m.PlatformKeyID, *m.PlatformKey))
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var notices []*notify.Request
	var contents []map[string]any
	merchant := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		content := map[string]any{}
		n, err := handler.ParseNotifyRequest(r.Context(), r, &content)
		if err != nil {
			t.Errorf("the SDK refused a notice: %v", err)
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		mu.Lock()
		notices, contents = append(notices, n), append(contents, content)
		mu.Unlock()
		w.WriteHeader(http.StatusNoContent)
	}))
	defer merchant.Close()

	srv := paysim.New(paysim.Config{Channels: map[string]paysim.ChannelConfig{"wechatpay": {Scheme: paysim.WeChatPay, WeChat: k}},
		Backoff: []time.Duration{10 * time.Millisecond}})
	ps := httptest.NewServer(srv.Handler())
	defer ps.Close()
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	go srv.Run(ctx)
	base, _ := url.Parse(ps.URL)
	hc := &http.Client{Timeout: 5 * time.Second, Transport: redirect{base}}
	client, err := core.NewClient(ctx, option.WithWechatPayPublicKeyAuthCipher(m.MchID, m.CertSerial, m.PrivateKey, m.PlatformKeyID, m.PlatformKey),
		option.WithHTTPClient(hc))
	if err != nil {
		t.Fatal(err)
	}
	h5api, jsapiAPI, refunds := h5.H5ApiService{Client: client}, jsapi.JsapiApiService{Client: client}, refunddomestic.RefundsApiService{Client: client}
	notifyURL := merchant.URL + "/notify"

	// H5 prepay: an h5_url the payer opens.
	pre, res, err := h5api.Prepay(ctx, h5.PrepayRequest{Appid: core.String(m.AppID), Mchid: core.String(m.MchID),
		Description: core.String("Image形象店-深圳腾大-QQ公仔"), OutTradeNo: core.String("121775250120140703"),
		NotifyUrl: core.String(notifyURL), Amount: &h5.Amount{Total: core.Int64(100), Currency: core.String("CNY")},
		SceneInfo: &h5.SceneInfo{PayerClientIp: core.String("14.23.150.211"), H5Info: &h5.H5Info{Type: core.String("Wap")}}})
	if err != nil || pre.H5Url == nil || res.Response.Header.Get("Wechatpay-Serial") != m.PlatformKeyID {
		t.Fatalf("h5 prepay: %v %v", pre, err)
	}
	// JSAPI prepay: the SDK makes wx.requestPayment's parameters from the prepay_id.
	jpre, _, err := jsapiAPI.PrepayWithRequestPayment(ctx, jsapi.PrepayRequest{Appid: core.String(m.AppID), Mchid: core.String(m.MchID),
		Description: core.String("a mini-program order"), OutTradeNo: core.String("121775250120140704"),
		NotifyUrl: core.String(notifyURL), Amount: &jsapi.Amount{Total: core.Int64(250)},
		Payer: &jsapi.Payer{Openid: core.String("oUpF8uMuAJO_M2pxb1Q9zNjWeS6o")}})
	if err != nil || jpre.PrepayId == nil || !strings.HasPrefix(*jpre.Package, "prepay_id=wx") {
		t.Fatalf("jsapi prepay: %v %v", jpre, err)
	}
	if _, _, err := h5api.QueryOrderByOutTradeNo(ctx, h5.QueryOrderByOutTradeNoRequest{OutTradeNo: core.String("999999"), Mchid: core.String(m.MchID)}); !isAPIError(err, 404, "ORDER_NOT_EXIST") {
		t.Fatalf("query of an unknown order: %v", err)
	}

	// Pay the H5 one: a TRANSACTION.SUCCESS the SDK opens; the query says SUCCESS.
	if err := paysim.Pay(ctx, nil, *pre.H5Url); err != nil {
		t.Fatal(err)
	}
	eventually.True(t, 5*time.Second, "a notice", func() bool { mu.Lock(); defer mu.Unlock(); return len(notices) == 1 })
	mu.Lock()
	if n, c := notices[0], contents[0]; n.EventType != "TRANSACTION.SUCCESS" || n.Resource.OriginalType != "transaction" ||
		c["out_trade_no"] != "121775250120140703" || c["trade_state"] != "SUCCESS" || c["mchid"] != m.MchID {
		t.Fatalf("notice %+v %v", n, c)
	}
	mu.Unlock()
	tx, _, err := h5api.QueryOrderByOutTradeNo(ctx, h5.QueryOrderByOutTradeNoRequest{OutTradeNo: core.String("121775250120140703"), Mchid: core.String(m.MchID)})
	if err != nil || *tx.TradeState != "SUCCESS" || *tx.Amount.Total != 100 || tx.TransactionId == nil || len(*tx.TransactionId) != 28 || tx.Payer == nil {
		t.Fatalf("query: %+v %v", tx, err)
	}
	// Closing a paid order is refused; closing the unpaid JSAPI one works
	// (204, signed), and then it cannot be paid; one never made does not exist.
	if _, err := h5api.CloseOrder(ctx, h5.CloseOrderRequest{OutTradeNo: core.String("121775250120140703"), Mchid: core.String(m.MchID)}); !isAPIError(err, 400, "ORDERPAID") {
		t.Fatalf("close of a paid order: %v", err)
	}
	if res, err := jsapiAPI.CloseOrder(ctx, jsapi.CloseOrderRequest{OutTradeNo: core.String("121775250120140704"), Mchid: core.String(m.MchID)}); err != nil || res.Response.StatusCode != http.StatusNoContent {
		t.Fatalf("close of an unpaid order: %v", err)
	}
	if err := paysim.Pay(ctx, nil, ps.URL+"/paysim/v1/wechatpay/pay/"+*jpre.PrepayId); !errors.Is(err, paysim.ErrRejected) {
		t.Fatalf("paying a closed order: %v", err)
	}
	if _, err := jsapiAPI.CloseOrder(ctx, jsapi.CloseOrderRequest{OutTradeNo: core.String("121775250120140705"), Mchid: core.String(m.MchID)}); !isAPIError(err, 404, "ORDER_NOT_EXIST") {
		t.Fatalf("close of an order never made: %v", err)
	}

	// Refund 30 fen: the answer, the refund's query, and a REFUND.SUCCESS notice.
	rf, _, err := refunds.Create(ctx, refunddomestic.CreateRequest{OutTradeNo: core.String("121775250120140703"),
		OutRefundNo: core.String("121775250120140799"), Reason: core.String("商品已售完"), NotifyUrl: core.String(notifyURL),
		Amount: &refunddomestic.AmountReq{Refund: core.Int64(30), Total: core.Int64(100), Currency: core.String("CNY")}})
	if err != nil || *rf.Status != refunddomestic.STATUS_SUCCESS || *rf.Amount.Refund != 30 || rf.SuccessTime == nil {
		t.Fatalf("refund: %+v %v", rf, err)
	}
	if q, _, err := refunds.QueryByOutRefundNo(ctx, refunddomestic.QueryByOutRefundNoRequest{OutRefundNo: core.String("121775250120140799")}); err != nil || *q.RefundId != *rf.RefundId {
		t.Fatalf("refund query: %+v %v", q, err)
	}
	if _, _, err := refunds.Create(ctx, refunddomestic.CreateRequest{OutTradeNo: core.String("121775250120140703"), OutRefundNo: core.String("2"),
		Amount: &refunddomestic.AmountReq{Refund: core.Int64(71), Total: core.Int64(100), Currency: core.String("CNY")}}); !isAPIError(err, 400, "INVALID_REQUEST") {
		t.Fatalf("a refund over what is left: %v", err)
	}
	eventually.True(t, 5*time.Second, "the refund's notice", func() bool { mu.Lock(); defer mu.Unlock(); return len(notices) == 2 })
	mu.Lock()
	if n, c := notices[1], contents[1]; n.EventType != "REFUND.SUCCESS" || c["out_refund_no"] != "121775250120140799" || c["refund_status"] != "SUCCESS" {
		t.Fatalf("refund notice %+v %v", n, c)
	}
	mu.Unlock()
	if tx, _, err := h5api.QueryOrderByOutTradeNo(ctx, h5.QueryOrderByOutTradeNoRequest{OutTradeNo: core.String("121775250120140703"), Mchid: core.String(m.MchID)}); err != nil || *tx.TradeState != "REFUND" {
		t.Fatalf("query after the refund: %+v %v", tx, err)
	}

	// The trade bill: signed answer, unsigned file whose SHA1 is the one given.
	day := time.Now().In(paysim.CST).Format(time.DateOnly)
	res, err = client.Request(ctx, http.MethodGet, "https://api.mch.weixin.qq.com/v3/bill/tradebill", nil, url.Values{"bill_date": {day}, "bill_type": {"ALL"}}, nil, "")
	if err != nil {
		t.Fatalf("trade bill: %v", err)
	}
	var meta struct{ HashType, HashValue, DownloadURL string }
	json.NewDecoder(res.Response.Body).Decode(&struct {
		HashType    *string `json:"hash_type"`
		HashValue   *string `json:"hash_value"`
		DownloadURL *string `json:"download_url"`
	}{&meta.HashType, &meta.HashValue, &meta.DownloadURL})
	files, _ := core.NewClient(ctx, option.WithMerchantCredential(m.MchID, m.CertSerial, m.PrivateKey), option.WithoutValidator(), option.WithHTTPClient(hc))
	file, err := files.Get(ctx, meta.DownloadURL)
	if err != nil {
		t.Fatalf("download: %v", err)
	}
	b, _ := io.ReadAll(file.Response.Body)
	sum := sha1.Sum(b)
	if meta.HashType != "SHA1" || hex.EncodeToString(sum[:]) != meta.HashValue || file.Response.Header.Get("Wechatpay-Signature") != "" {
		t.Fatalf("bill %+v: SHA1 %x", meta, sum)
	}
	rows := strings.Split(strings.TrimSpace(string(b)), "\r\n")
	if len(rows) != 5 || !strings.HasPrefix(rows[0], "交易时间,公众账号ID,商户号") || !strings.Contains(rows[1], "`SUCCESS") ||
		!strings.Contains(rows[2], "`REFUND") || !strings.HasPrefix(rows[3], "总交易单数") || rows[4] != "`2,`1.00,`0.30,`0.00,`0.00,`1.00,`0.30" {
		t.Fatalf("bill:\n%s", b)
	}
}

func isAPIError(err error, status int, code string) bool {
	var e *core.APIError
	return errors.As(err, &e) && e.StatusCode == status && e.Code == code
}
