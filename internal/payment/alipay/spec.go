package alipay

import "github.com/surge-platform/surge/internal/payment"

// Keys of --alipay.
var specKeys = []string{"appid", "key-file", "key-env", "alipay-key-file", "alipay-key-env", "gateway"}

// FromSpec makes the Config of an app from --alipay's spec:
//
//	appid=2021…,key-file=/etc/surge/alipay/app_private_key.pem (or key-env=NAME),
//	alipay-key-file=/etc/surge/alipay/alipay_public_key.pem (or alipay-key-env=NAME)[,gateway=https://…]
//
// Keys (PEM, or the bare base64 Alipay's console shows) are read from
// files or the environment (getenv), never given in the flag; gateway is
// Alipay's unless given (a simulator's).
func FromSpec(spec string, getenv func(string) string) (Config, error) {
	const flag = "alipay"
	sp, err := payment.ParseSpec(flag, spec, specKeys...)
	if err != nil {
		return Config{}, err
	}
	if err := sp.Need(flag, "appid"); err != nil {
		return Config{}, err
	}
	c := Config{Gateway: sp["gateway"], AppID: sp["appid"]}
	if c.PrivateKey, err = sp.PrivateKey(flag, "key", getenv); err != nil {
		return Config{}, err
	}
	if c.AlipayKey, err = sp.PublicKey(flag, "alipay-key", getenv); err != nil {
		return Config{}, err
	}
	return c, c.Validate()
}
