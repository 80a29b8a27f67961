package wechatpay_test

import (
	"crypto"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/surge-platform/surge/internal/payment"
	"github.com/surge-platform/surge/internal/payment/paysim"
	"github.com/surge-platform/surge/internal/payment/paysim/paysimtest"
	"github.com/surge-platform/surge/internal/payment/wechatpay"
)

// merchants holds the merchant's side of every platform's keys made here.
var merchants sync.Map // *paysim.WeChatKeys -> paysim.WeChatMerchant

func keys(t testing.TB, mchID string) paysim.ChannelConfig {
	t.Helper()
	k, m, err := paysim.NewWeChat(mchID, "wxd678efh567hg6787")
	if err != nil {
		t.Fatal(err)
	}
	merchants.Store(k, m)
	return paysim.ChannelConfig{Scheme: paysim.WeChatPay, WeChat: k}
}

func config(base string, hc *http.Client, k paysim.ChannelConfig) wechatpay.Config {
	v, _ := merchants.Load(k.WeChat)
	m := v.(paysim.WeChatMerchant)
	return wechatpay.Config{BaseURL: base, MchID: m.MchID, AppID: m.AppID, CertSerial: m.CertSerial, PrivateKey: m.PrivateKey,
		PlatformKeyID: m.PlatformKeyID, PlatformKey: m.PlatformKey, APIv3Key: string(m.APIv3Key), HTTP: hc}
}

func newChannel(base string, hc *http.Client, k paysim.ChannelConfig) payment.Channel {
	c, err := wechatpay.New(config(base, hc, k))
	if err != nil {
		panic(err)
	}
	return c
}

func TestSuite(t *testing.T) {
	t.Parallel()
	paysimtest.Run(t, paysimtest.Harness{Name: wechatpay.Name, Keys: keys(t, "1900000109"), OtherKeys: keys(t, "1900000109"),
		New: newChannel, PerRefundNotices: true, TxnIDOnPay: true, AckByStatus: true, Expires: true})
}

// A notice built by hand as WeChat Pay's documentation describes it (its
// example payment notice: the transaction sealed with AES-256-GCM under the
// APIv3 key, associated data "transaction", the body signed by the platform
// key over timestamp\nnonce\nbody\n), not by paysim's encoder, is taken by
// the adapter; one signed by another key, or replayed with another body,
// is not. The example's out_trade_no (28 digits) is one of ours instead.
func TestNoticeAsDocumented(t *testing.T) {
	t.Parallel()
	k := keys(t, "1230000109")
	ch := newChannel("", nil, k)
	plain := `{"transaction_id":"1217752501201407033233368018","amount":{"payer_total":100,"total":100,"currency":"CNY","payer_currency":"CNY"},` +
		`"mchid":"1230000109","trade_state":"SUCCESS","bank_type":"CMC","promotion_detail":[],"success_time":"2018-06-08T10:34:56+08:00",` +
		`"payer":{"openid":"oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"},"out_trade_no":"7350468214562889728","appid":"wxd678efh567hg6787",` +
		`"trade_state_desc":"支付成功","trade_type":"MICROPAY","attach":"自定义数据"}`
	block, _ := aes.NewCipher(k.WeChat.APIv3Key)
	gcm, _ := cipher.NewGCM(block)
	nonce := "fdasfjihihihlkja484w"[:12]
	ct := base64.StdEncoding.EncodeToString(gcm.Seal(nil, []byte(nonce), []byte(plain), []byte("transaction")))
	body := `{"id":"EV-2018022511223320873","create_time":"2015-05-20T13:29:35+08:00","resource_type":"encrypt-resource",` +
		`"event_type":"TRANSACTION.SUCCESS","summary":"支付成功","resource":{"original_type":"transaction","algorithm":"AEAD_AES_256_GCM",` +
		`"ciphertext":"` + ct + `","associated_data":"transaction","nonce":"` + nonce + `"}}`
	ts := strconv.FormatInt(time.Now().Unix(), 10)
	sign := func(key *rsa.PrivateKey, body string) http.Header {
		sum := sha256.Sum256([]byte(ts + "\n" + "5K8264ILTKCH16CQ2502SI8ZNMTM67VS" + "\n" + body + "\n"))
		sig, err := rsa.SignPKCS1v15(nil, key, crypto.SHA256, sum[:])
		if err != nil {
			t.Fatal(err)
		}
		h := http.Header{}
		h.Set("Wechatpay-Timestamp", ts)
		h.Set("Wechatpay-Nonce", "5K8264ILTKCH16CQ2502SI8ZNMTM67VS")
		h.Set("Wechatpay-Serial", k.WeChat.PlatformKeyID)
		h.Set("Wechatpay-Signature", base64.StdEncoding.EncodeToString(sig))
		h.Set("Wechatpay-Signature-Type", "WECHATPAY2-SHA256-RSA2048")
		return h
	}
	n, err := ch.ParseCallback(sign(k.WeChat.PlatformKey, body), []byte(body))
	paidAt := time.Date(2018, 6, 8, 2, 34, 56, 0, time.UTC)
	if err != nil || n.PaymentID != 7350468214562889728 || n.ChannelTxnID != "1217752501201407033233368018" || n.Amount != 100 ||
		n.State != payment.Paid || !n.PaidAt.Equal(paidAt) || n.NoticeID != "EV-2018022511223320873" || n.Refund != nil {
		t.Fatalf("%+v %v", n, err)
	}
	other := keys(t, "1230000109")
	if _, err := ch.ParseCallback(sign(other.WeChat.PlatformKey, body), []byte(body)); !errors.Is(err, payment.ErrBadSignature) {
		t.Fatalf("signed by another key: %v", err)
	}
	changed := strings.Replace(body, "EV-2018022511223320873", "EV-2018022511223320874", 1)
	if _, err := ch.ParseCallback(sign(k.WeChat.PlatformKey, body), []byte(changed)); !errors.Is(err, payment.ErrBadSignature) {
		t.Fatalf("another body under the signature: %v", err)
	}
	// Signed, but sealed with other associated data: it cannot be opened.
	if _, err := ch.ParseCallback(sign(k.WeChat.PlatformKey, strings.Replace(body, ct, base64.StdEncoding.EncodeToString(
		gcm.Seal(nil, []byte(nonce), []byte(plain), []byte("refund"))), 1)), []byte(strings.Replace(body, ct,
		base64.StdEncoding.EncodeToString(gcm.Seal(nil, []byte(nonce), []byte(plain), []byte("refund"))), 1))); !errors.Is(err, payment.ErrBadCallback) {
		t.Fatalf("sealed with other associated data: %v", err)
	}
}

// The merchant's credentials come from files and the environment named by
// --wechatpay's spec; with them the adapter talks to a platform holding
// the other halves. Every missing or malformed credential is a clear
// error that names it, and no error carries a secret.
func TestFromSpec(t *testing.T) {
	t.Parallel()
	k := keys(t, "1900000109")
	v, _ := merchants.Load(k.WeChat)
	m := v.(paysim.WeChatMerchant)
	dir := t.TempDir()
	der, _ := x509.MarshalPKCS8PrivateKey(m.PrivateKey)
	keyFile := filepath.Join(dir, "apiclient_key.pem")
	os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600)
	pub, _ := x509.MarshalPKIXPublicKey(m.PlatformKey)
	pubFile := filepath.Join(dir, "pub_key.pem")
	os.WriteFile(pubFile, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pub}), 0o644)
	env := map[string]string{"APIV3": string(m.APIv3Key)}
	getenv := func(k string) string { return env[k] }
	srv := paysim.New(paysim.Config{Channels: map[string]paysim.ChannelConfig{"wechatpay": k}})
	ps := httptest.NewServer(srv.Handler())
	defer ps.Close()
	good := "mchid=" + m.MchID + ",appid=" + m.AppID + ",serial=" + m.CertSerial + ",key-file=" + keyFile +
		",platform-key-id=" + m.PlatformKeyID + ",platform-key-file=" + pubFile + ",apiv3-key-env=APIV3,url=" + ps.URL
	cfg, err := wechatpay.FromSpec(good, getenv)
	if err != nil {
		t.Fatal(err)
	}
	ch, err := wechatpay.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ch.Query(t.Context(), 123456); !errors.Is(err, payment.ErrUnknownTxn) {
		t.Fatalf("a query with the credentials of the spec: %v, want the platform's signed unknown transaction", err)
	}
	bad := filepath.Join(dir, "bad.pem")
	os.WriteFile(bad, []byte("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"), 0o600)
	for _, tc := range []struct{ spec, want string }{
		{strings.Replace(good, "mchid="+m.MchID+",", "", 1), "missing mchid"},
		{good + ",color=red", `unknown key "color"`},
		{good + ",appid=x", "appid given twice"},
		{strings.Replace(good, "apiv3-key-env=APIV3", "apiv3-key-env=NOPE", 1), "NOPE is not set"},
		{strings.Replace(good, "apiv3-key-env=APIV3", "apiv3-key-env=APIV3,apiv3-key-file="+keyFile, 1), "not both"},
		{strings.Replace(good, "key-file="+keyFile, "key-file="+pubFile, 1), "not a PEM block of PRIVATE KEY"},
		{strings.Replace(good, "key-file="+keyFile, "key-file="+bad, 1), "not an RSA private key"},
		{strings.Replace(good, "key-file="+keyFile, "key-file="+filepath.Join(dir, "none.pem"), 1), "no such file"},
		{strings.Replace(good, "platform-key-file="+pubFile, "platform-key-file="+keyFile, 1), "not a PEM block of PUBLIC KEY"},
		{strings.Replace(good, "apiv3-key-env=APIV3", "apiv3-key-file="+pubFile, 1), "APIv3 key is"},
		{strings.Replace(good, "url="+ps.URL, "url="+ps.URL+"/v3", 1), "no path"},
		{"mchid", "is not key=value"},
	} {
		_, err := wechatpay.FromSpec(tc.spec, getenv)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("spec %q: %v, want an error saying %q", tc.spec, err, tc.want)
		}
		if err != nil && strings.Contains(err.Error(), string(m.APIv3Key)) {
			t.Errorf("an error carries the APIv3 key: %v", err)
		}
	}
}
