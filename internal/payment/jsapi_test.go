package payment_test

import (
	"crypto"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/surge-platform/surge/internal/payment/paysim"
	"github.com/surge-platform/surge/internal/platform/errkind"
)

// A payer in a WeChat mini-program pays by JSAPI: the pay answer has no pay
// URL but wx.requestPayment's parameters, paySign made with the merchant's
// key over appId, timeStamp, nonceStr and package (as WeChat Pay checks
// it); paying the prepay id they name pays the order. An openid with
// another channel, with none named, or malformed is a 400.
func TestJSAPIPayment(t *testing.T) {
	t.Parallel()
	e := mustStart(t, envOpts{})
	c := e.mustCustomer()
	oid := c.mustOrder()
	path := "/api/v1/orders/" + strconv.FormatInt(oid, 10) + "/pay"
	for _, body := range []string{`{"channel":"alipay","openid":"oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"}`, `{"openid":"oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"}`,
		`{"channel":"wechatpay","openid":"o UpF8"}`, `{"channel":"wechatpay","openid":"` + strings.Repeat("o", 129) + `"}`} {
		if r := e.do("POST", path, c.token, nil, []byte(body)); r.status != 400 || r.code() != errkind.ErrInvalid.Code {
			t.Errorf("pay %s: %d %s; want 400 %s", body, r.status, r.body, errkind.ErrInvalid.Code)
		}
	}
	if ps := e.payments(oid); len(ps) != 0 {
		t.Fatalf("refused requests made payments %+v", ps)
	}

	r := e.do("POST", path, c.token, nil, []byte(`{"channel":"wechatpay","openid":"oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"}`))
	var st struct {
		PayURL string            `json:"pay_url"`
		Params map[string]string `json:"params"`
	}
	if err := json.Unmarshal(r.body, &st); err != nil || r.status != 201 || st.PayURL != "" || len(st.Params) != 6 {
		t.Fatalf("JSAPI pay: %d %s; want 201 with the 6 parameters of wx.requestPayment and no pay_url", r.status, r.body)
	}
	k := e.keys["wechatpay"].WeChat
	p := st.Params
	if p["appId"] != k.AppID || p["signType"] != "RSA" || !strings.HasPrefix(p["package"], "prepay_id=") || p["nonceStr"] == "" {
		t.Fatalf("params %v", p)
	}
	if ts, err := strconv.ParseInt(p["timeStamp"], 10, 64); err != nil || time.Since(time.Unix(ts, 0)).Abs() > time.Minute {
		t.Fatalf("timeStamp %q is not now", p["timeStamp"])
	}
	sig, err := base64.StdEncoding.DecodeString(p["paySign"])
	sum := sha256.Sum256([]byte(p["appId"] + "\n" + p["timeStamp"] + "\n" + p["nonceStr"] + "\n" + p["package"] + "\n"))
	if err != nil || rsa.VerifyPKCS1v15(k.MerchantKey, crypto.SHA256, sum[:], sig) != nil {
		t.Fatalf("paySign %q does not verify with the merchant's key", p["paySign"])
	}
	// The mini-program pays (wx.requestPayment): at paysim, the prepay id.
	if err := paysim.Pay(e.ctx, httpc, e.base+"/paysim/v1/wechatpay/pay/"+strings.TrimPrefix(p["package"], "prepay_id=")); err != nil {
		t.Fatal(err)
	}
	e.waitPaid(oid, 10*time.Second)
}
