package node_test

import (
	"encoding/json"
	"testing"

	"github.com/surge-platform/surge/internal/node"
	"github.com/surge-platform/surge/internal/nodetest"
	"github.com/surge-platform/surge/internal/payment"
	"github.com/surge-platform/surge/internal/payment/paysim"
	"github.com/surge-platform/surge/internal/payment/wechatpay"
)

// Without credentials, wechatpay and alipay pay at the simulator; given
// the merchant's credentials of one, that channel alone is made, paying at
// the provider they name (here an address where nothing answers: the
// channel is down): none is left at the simulator beside it.
func TestCredentialsRouteTheChannel(t *testing.T) {
	t.Parallel()
	_, m, err := paysim.NewWeChat("1900000109", "wxd678efh567hg6787")
	if err != nil {
		t.Fatal(err)
	}
	n := nodetest.Start(t, func(c *node.Config) {
		c.WeChatPay = &wechatpay.Config{BaseURL: "http://127.0.0.1:1", MchID: m.MchID, AppID: m.AppID, CertSerial: m.CertSerial,
			PrivateKey: m.PrivateKey, PlatformKeyID: m.PlatformKeyID, PlatformKey: m.PlatformKey, APIv3Key: string(m.APIv3Key)}
	})
	var names []string
	for _, st := range n.Payments.Router.States() {
		names = append(names, st.Name)
	}
	if len(names) != 1 || names[0] != "wechatpay" {
		t.Fatalf("channels %v; want wechatpay alone", names)
	}
	c := nodetest.Login(t, n.URL(), "+8613700000001")
	order := func() string {
		r := c.Do("POST", "/api/v1/orders", `{"store_id":"1001","items":[{"sku_id":"1001006","qty":1}]}`)
		if r.Status != 201 {
			t.Fatalf("order: %d %s", r.Status, r.Body)
		}
		var o struct {
			OrderID string `json:"order_id"`
		}
		json.Unmarshal(r.Body, &o)
		return o.OrderID
	}
	for _, body := range []string{`{"channel":"wechatpay"}`, `{}`} {
		if r := c.Do("POST", "/api/v1/orders/"+order()+"/pay", body); r.Status != 503 {
			t.Fatalf("pay %s, whose provider does not answer: %d %s; want 503", body, r.Status, r.Body)
		}
	}
	if r := c.Do("POST", "/api/v1/orders/"+order()+"/pay", `{"channel":"alipay"}`); r.Status != 400 || r.Code() != payment.ErrUnknownChannel.Code {
		t.Fatalf("pay at alipay, which has no credentials: %d %s; want 400 %s", r.Status, r.Body, payment.ErrUnknownChannel.Code)
	}
}
