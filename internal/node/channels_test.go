package node_test

import (
	"testing"

	"github.com/surge-platform/surge/internal/node"
	"github.com/surge-platform/surge/internal/nodetest"
	"github.com/surge-platform/surge/internal/payment/paysim"
	"github.com/surge-platform/surge/internal/payment/wechatpay"
)

// Without credentials, wechatpay and alipay pay at the simulator and only
// when asked for by name; given the merchant's, a channel pays at the
// provider they name and takes its share of every payment.
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
	named := map[string]bool{}
	for _, st := range n.Payments.Router.States() {
		named[st.Name] = st.NamedOnly
		if st.NamedOnly != (st.Weight == 0) {
			t.Errorf("channel %+v: weight 0 exactly when named only", st)
		}
	}
	if len(named) != 4 || named["wechatpay"] || !named["alipay"] || named["wxsim"] || named["alisim"] {
		t.Fatalf("named-only channels %v; want alipay alone (wechatpay has credentials)", named)
	}
}
