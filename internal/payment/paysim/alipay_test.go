package paysim_test

import (
	"archive/zip"
	"bytes"
	"context"
	"crypto/x509"
	"encoding/pem"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	alipaysdk "github.com/smartwalle/alipay/v3"
	"golang.org/x/text/encoding/simplifiedchinese"

	"github.com/surge-platform/surge/internal/eventually"
	"github.com/surge-platform/surge/internal/payment/paysim"
)

// The Alipay SDK (smartwalle/alipay) is the judge of paysim's Alipay: it
// signs the requests and verifies every answer's signature with Alipay's
// public key, and its DecodeNotification verifies the notices.
func TestAlipaySDKAcceptsPaysim(t *testing.T) {
	t.Parallel()
	k, m, err := paysim.NewAlipay("2021000117600001")
	if err != nil {
		t.Fatal(err)
	}
	der, _ := x509.MarshalPKCS8PrivateKey(m.PrivateKey)
	client, err := alipaysdk.New(m.AppID, string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})), true)
	if err != nil {
		t.Fatal(err)
	}
	pub, _ := x509.MarshalPKIXPublicKey(m.AlipayKey)
	if err := client.LoadAliPayPublicKey(string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pub}))); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var notices []*alipaysdk.Notification
	merchant := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r.ParseForm()
		n, err := client.DecodeNotification(r.Context(), r.Form)
		if err != nil {
			t.Errorf("the SDK refused a notice: %v", err)
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		mu.Lock()
		notices = append(notices, n)
		mu.Unlock()
		alipaysdk.ACKNotification(w)
	}))
	defer merchant.Close()
	srv := paysim.New(paysim.Config{Channels: map[string]paysim.ChannelConfig{"alipay": {Scheme: paysim.Alipay, Alipay: k}},
		Backoff: []time.Duration{10 * time.Millisecond}})
	ps := httptest.NewServer(srv.Handler())
	defer ps.Close()
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	go srv.Run(ctx)
	alipaysdk.WithProductionGateway(ps.URL + "/paysim/v1/alipay/gateway.do")(client)

	pre, err := client.TradePreCreate(ctx, alipaysdk.TradePreCreate{Trade: alipaysdk.Trade{NotifyURL: merchant.URL + "/notify",
		Subject: "Iphone6 16G", OutTradeNo: "20150320010101001", TotalAmount: "88.88", ProductCode: "FACE_TO_FACE_PAYMENT"}})
	if err != nil || !pre.IsSuccess() || pre.QRCode == "" {
		t.Fatalf("precreate: %+v %v", pre, err)
	}
	if q, err := client.TradeQuery(ctx, alipaysdk.TradeQuery{OutTradeNo: "20150320010101002"}); err != nil || q.SubCode != "ACQ.TRADE_NOT_EXIST" {
		t.Fatalf("query of an unknown trade: %+v %v", q, err)
	}
	if err := paysim.Pay(ctx, nil, pre.QRCode); err != nil {
		t.Fatal(err)
	}
	eventually.True(t, 5*time.Second, "a notice", func() bool { mu.Lock(); defer mu.Unlock(); return len(notices) == 1 })
	if n := notices[0]; n.TradeStatus != alipaysdk.TradeStatusSuccess || n.OutTradeNo != "20150320010101001" || n.TotalAmount != "88.88" {
		t.Fatalf("notice %+v", n)
	}
	q, err := client.TradeQuery(ctx, alipaysdk.TradeQuery{OutTradeNo: "20150320010101001"})
	if err != nil || !q.IsSuccess() || q.TradeStatus != alipaysdk.TradeStatusSuccess || q.SendPayDate == "" || q.TotalAmount != "88.88" {
		t.Fatalf("query: %+v %v", q, err)
	}
	if c, err := client.TradeClose(ctx, alipaysdk.TradeClose{OutTradeNo: "20150320010101001"}); err != nil || c.SubCode != "ACQ.TRADE_STATUS_ERROR" {
		t.Fatalf("close of a paid trade: %+v %v", c, err)
	}
	rf, err := client.TradeRefund(ctx, alipaysdk.TradeRefund{OutTradeNo: "20150320010101001", RefundAmount: "8.88", OutRequestNo: "20150320010101999"})
	if err != nil || !rf.IsSuccess() || rf.RefundFee != "8.88" || rf.FundChange != "Y" {
		t.Fatalf("refund: %+v %v", rf, err)
	}
	if rq, err := client.TradeFastPayRefundQuery(ctx, alipaysdk.TradeFastPayRefundQuery{OutTradeNo: "20150320010101001", OutRequestNo: "20150320010101999"}); err != nil || rq.RefundStatus != "REFUND_SUCCESS" || rq.RefundAmount != "8.88" {
		t.Fatalf("refund query: %+v %v", rq, err)
	}
	eventually.True(t, 5*time.Second, "the refund's notice", func() bool { mu.Lock(); defer mu.Unlock(); return len(notices) == 2 })
	if n := notices[1]; n.RefundFee != "8.88" || n.OutBizNo != "20150320010101999" || n.TradeStatus != alipaysdk.TradeStatusSuccess {
		t.Fatalf("refund notice %+v", n)
	}
	// The bill: a zip of GBK CSV, the details with one row per trade and refund.
	day := time.Now().In(paysim.CST).Format(time.DateOnly)
	b, err := client.BillDownloadURLQuery(ctx, alipaysdk.BillDownloadURLQuery{BillType: "trade", BillDate: day})
	if err != nil || !b.IsSuccess() {
		t.Fatalf("bill url: %+v %v", b, err)
	}
	resp, err := http.Get(b.BillDownloadURL)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	zr, err := zip.NewReader(bytes.NewReader(body), int64(len(body)))
	if err != nil || len(zr.File) != 2 || !strings.HasSuffix(zr.File[0].Name, "_业务明细.csv") {
		t.Fatalf("bill zip: %v %v", zr, err)
	}
	f, _ := zr.File[0].Open()
	raw, _ := io.ReadAll(f)
	text, err := simplifiedchinese.GBK.NewDecoder().Bytes(raw)
	if err != nil || !strings.Contains(string(text), "20150320010101001\t,交易,Iphone6 16G") || !strings.Contains(string(text), ",-8.88,-8.88,") {
		t.Fatalf("bill:\n%s %v", text, err)
	}
	// A request signed by another app key is refused, unsigned.
	_, other, _ := paysim.NewAlipay(m.AppID)
	der2, _ := x509.MarshalPKCS8PrivateKey(other.PrivateKey)
	impostor, _ := alipaysdk.New(m.AppID, string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der2})), true,
		alipaysdk.WithProductionGateway(ps.URL+"/paysim/v1/alipay/gateway.do"))
	impostor.LoadAliPayPublicKey(string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pub})))
	if _, err := impostor.TradeQuery(ctx, alipaysdk.TradeQuery{OutTradeNo: "20150320010101001"}); err == nil || !strings.HasPrefix(err.Error(), "40002") {
		t.Fatalf("a request signed by another key: %v", err)
	}
}
