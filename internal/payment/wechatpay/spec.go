package wechatpay

import "github.com/surge-platform/surge/internal/payment"

// Keys of --wechatpay.
var specKeys = []string{"mchid", "appid", "serial", "key-file", "key-env", "platform-key-id", "platform-key-file",
	"platform-key-env", "apiv3-key-file", "apiv3-key-env", "url"}

// FromSpec makes the Config of a merchant from --wechatpay's spec:
//
//	mchid=1900000109,appid=wx…,serial=<merchant certificate serial>,
//	key-file=/etc/surge/wechatpay/apiclient_key.pem (or key-env=NAME),
//	platform-key-id=PUB_KEY_ID_…,platform-key-file=/etc/surge/wechatpay/pub_key.pem,
//	apiv3-key-env=SURGE_WECHATPAY_APIV3_KEY (or apiv3-key-file=PATH)[,url=https://…]
//
// Keys are read from files or the environment (getenv), never given in
// the flag; url is WeChat Pay's host unless given (a simulator's).
func FromSpec(spec string, getenv func(string) string) (Config, error) {
	const flag = "wechatpay"
	sp, err := payment.ParseSpec(flag, spec, specKeys...)
	if err != nil {
		return Config{}, err
	}
	if err := sp.Need(flag, "mchid", "appid", "serial", "platform-key-id"); err != nil {
		return Config{}, err
	}
	c := Config{BaseURL: sp["url"], MchID: sp["mchid"], AppID: sp["appid"], CertSerial: sp["serial"], PlatformKeyID: sp["platform-key-id"]}
	if c.PrivateKey, err = sp.PrivateKey(flag, "key", getenv); err != nil {
		return Config{}, err
	}
	if c.PlatformKey, err = sp.PublicKey(flag, "platform-key", getenv); err != nil {
		return Config{}, err
	}
	if c.APIv3Key, err = sp.Secret(flag, "apiv3-key", getenv); err != nil {
		return Config{}, err
	}
	return c, c.Validate()
}
