package alipay_test

import (
	"bytes"
	"crypto"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/surge-platform/surge/internal/payment"
	"github.com/surge-platform/surge/internal/payment/alipay"
	"github.com/surge-platform/surge/internal/payment/paysim"
	"github.com/surge-platform/surge/internal/payment/paysim/paysimtest"
)

// apps holds the app's side of every channel's keys made here.
var apps sync.Map // *paysim.AlipayKeys -> paysim.AlipayMerchant

func keys(t testing.TB, appID string) paysim.ChannelConfig {
	t.Helper()
	k, m, err := paysim.NewAlipay(appID)
	if err != nil {
		t.Fatal(err)
	}
	apps.Store(k, m)
	return paysim.ChannelConfig{Scheme: paysim.Alipay, Alipay: k}
}

func config(base string, hc *http.Client, k paysim.ChannelConfig) alipay.Config {
	v, _ := apps.Load(k.Alipay)
	m := v.(paysim.AlipayMerchant)
	return alipay.Config{Gateway: base + "/paysim/v1/" + alipay.Name + "/gateway.do", AppID: m.AppID, PrivateKey: m.PrivateKey,
		AlipayKey: m.AlipayKey, HTTP: hc}
}

func newChannel(base string, hc *http.Client, k paysim.ChannelConfig) payment.Channel {
	c, err := alipay.New(config(base, hc, k))
	if err != nil {
		panic(err)
	}
	return c
}

func TestSuite(t *testing.T) {
	t.Parallel()
	paysimtest.Run(t, paysimtest.Harness{Name: alipay.Name, Keys: keys(t, "2021000117600001"), OtherKeys: keys(t, "2021000117600001"),
		New: newChannel, TxnIDOnPay: true, QueryHidesPartialRefunds: true, Expires: true})
}

// A notice built by hand as Alipay's documentation describes it (its
// example trade_status_sync parameters, signed RSA2 over every parameter
// but sign and sign_type, sorted by key, k=v joined with &, values not
// escaped), not by paysim's encoder, is taken by the adapter; one signed
// by another key, or changed after signing, is not. The example's
// out_trade_no is one of ours instead.
func TestNoticeAsDocumented(t *testing.T) {
	t.Parallel()
	k := keys(t, "2014072300007148")
	ch := newChannel("http://127.0.0.1:1", nil, k)
	v := url.Values{
		"gmt_create": {"2015-11-27 15:45:58"}, "charset": {"utf-8"}, "seller_email": {"zhuzhanghu@alitest.com"},
		"subject": {"当面付测试"}, "buyer_id": {"2088102169481075"}, "invoice_amount": {"0.80"},
		"notify_id": {"2016071100222000000000000000000000"}, "fund_bill_list": {`[{"amount":"0.50","fundChannel":"ALIPAYACCOUNT"},{"amount":"0.30","fundChannel":"COUPON"}]`},
		"notify_type": {"trade_status_sync"}, "trade_status": {"TRADE_SUCCESS"}, "receipt_amount": {"0.80"},
		"app_id": {"2014072300007148"}, "buyer_pay_amount": {"0.50"}, "seller_id": {"2088102169252684"},
		"gmt_payment": {"2015-11-27 15:45:59"}, "notify_time": {time.Now().In(time.FixedZone("CST", 8*3600)).Format("2006-01-02 15:04:05")},
		"version": {"1.0"}, "out_trade_no": {"7350468214562889728"}, "total_amount": {"1.00"},
		"trade_no": {"2015112721001004070200000000"}, "auth_app_id": {"2014072300007148"}, "buyer_logon_id": {"csq***@sandbox.com"},
		"point_amount": {"0.00"}, "sign_type": {"RSA2"},
	}
	sign := func(key *rsa.PrivateKey, v url.Values) []byte {
		var pairs []string
		for name, vs := range v {
			if name != "sign" && name != "sign_type" {
				pairs = append(pairs, name+"="+vs[0])
			}
		}
		slices.Sort(pairs) // no key here is a prefix of another: sorting pairs sorts keys
		sum := sha256.Sum256([]byte(strings.Join(pairs, "&")))
		sig, err := rsa.SignPKCS1v15(nil, key, crypto.SHA256, sum[:])
		if err != nil {
			t.Fatal(err)
		}
		out := url.Values{}
		for name, vs := range v {
			out[name] = vs
		}
		out.Set("sign", base64.StdEncoding.EncodeToString(sig))
		return []byte(out.Encode())
	}
	n, err := ch.ParseCallback(nil, sign(k.Alipay.AlipayKey, v))
	paidAt := time.Date(2015, 11, 27, 7, 45, 59, 0, time.UTC)
	if err != nil || n.PaymentID != 7350468214562889728 || n.ChannelTxnID != "2015112721001004070200000000" || n.Amount != 100 ||
		n.State != payment.Paid || !n.PaidAt.Equal(paidAt) || n.NoticeID != "2016071100222000000000000000000000" || n.Refunded != 0 {
		t.Fatalf("%+v %v", n, err)
	}
	other := keys(t, "2014072300007148")
	if _, err := ch.ParseCallback(nil, sign(other.Alipay.AlipayKey, v)); !errors.Is(err, payment.ErrBadSignature) {
		t.Fatalf("signed by another key: %v", err)
	}
	b := sign(k.Alipay.AlipayKey, v)
	changed := bytes.Replace(b, []byte("total_amount=1.00"), []byte("total_amount=9.00"), 1)
	if _, err := ch.ParseCallback(nil, changed); !errors.Is(err, payment.ErrBadSignature) {
		t.Fatalf("changed after signing: %v", err)
	}
	// A refund in part: refund_fee, all refunded so far.
	v.Set("refund_fee", "0.30")
	v.Set("gmt_refund", "2015-11-28 10:00:00.123")
	v.Set("out_biz_no", "7350468214562889999")
	if n, err := ch.ParseCallback(nil, sign(k.Alipay.AlipayKey, v)); err != nil || n.State != payment.Refunded || n.Refunded != 30 {
		t.Fatalf("a refund's notice: %+v %v", n, err)
	}
}

// The app's keys come from files or the environment named by --alipay's
// spec (PEM, or the bare base64 Alipay's console shows); with them the
// adapter talks to a gateway holding the other halves. A missing or
// malformed one is a clear error.
func TestFromSpec(t *testing.T) {
	t.Parallel()
	k := keys(t, "2021000117600001")
	v, _ := apps.Load(k.Alipay)
	m := v.(paysim.AlipayMerchant)
	dir := t.TempDir()
	der, _ := x509.MarshalPKCS8PrivateKey(m.PrivateKey)
	keyFile := filepath.Join(dir, "app_private_key.pem")
	os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600)
	pub, _ := x509.MarshalPKIXPublicKey(m.AlipayKey)
	env := map[string]string{"ALIPAY_PUBLIC_KEY": base64.StdEncoding.EncodeToString(pub)} // as the console shows it
	getenv := func(k string) string { return env[k] }
	srv := paysim.New(paysim.Config{Channels: map[string]paysim.ChannelConfig{"alipay": k}})
	ps := httptest.NewServer(srv.Handler())
	defer ps.Close()
	good := "appid=" + m.AppID + ",key-file=" + keyFile + ",alipay-key-env=ALIPAY_PUBLIC_KEY,gateway=" + ps.URL + "/paysim/v1/alipay/gateway.do"
	cfg, err := alipay.FromSpec(good, getenv)
	if err != nil {
		t.Fatal(err)
	}
	ch, err := alipay.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ch.Query(t.Context(), 123456); !errors.Is(err, payment.ErrUnknownTxn) {
		t.Fatalf("a query with the keys of the spec: %v, want Alipay's signed unknown trade", err)
	}
	for _, tc := range []struct{ spec, want string }{
		{strings.Replace(good, "appid="+m.AppID+",", "", 1), "missing appid"},
		{strings.Replace(good, "alipay-key-env=ALIPAY_PUBLIC_KEY", "alipay-key-env=NOPE", 1), "NOPE is not set"},
		{strings.Replace(good, "key-file="+keyFile+",", "", 1), "missing key-file or key-env"},
		{strings.Replace(good, "alipay-key-env=ALIPAY_PUBLIC_KEY", "alipay-key-file="+keyFile, 1), "not a PEM block of PUBLIC KEY"},
		{good + ",gateway=x", "gateway given twice"},
	} {
		if _, err := alipay.FromSpec(tc.spec, getenv); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("spec %q: %v, want an error saying %q", tc.spec, err, tc.want)
		}
	}
}
