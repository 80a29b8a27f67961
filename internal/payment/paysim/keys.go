package paysim

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/hex"
	"strings"
	"sync"
)

// Keys are the demo keys of the two shipped channels.
//
// Production must not use DevKeys. It configures, per channel, a random
// Secret of 32 bytes or more (the same bytes in paysim's ChannelConfig and
// in the adapter's Config) and, for alisim, an RSA key pair of 2048 bits or
// more: the private key (PKCS#8 PEM, x509.ParsePKCS8PrivateKey) only in
// paysim, the public key (PKIX PEM, x509.ParsePKIXPublicKey) in the alisim
// adapter. This is also required whenever paysim and the payment service
// run in different processes: DevKeys' RSA key is generated once per
// process, so another process has another key. Against the real providers,
// the keys are the ones their merchant consoles issue.
type Keys struct {
	WXSecret      []byte          // wxsim: HMAC-SHA256 secret of callbacks and merchant requests
	AliSecret     []byte          // alisim: HMAC-SHA256 secret of merchant requests
	AliPrivateKey *rsa.PrivateKey // alisim: paysim signs callbacks; the adapter gets &AliPrivateKey.PublicKey
}

var (
	devRSAOnce sync.Once
	devRSA     *rsa.PrivateKey
)

// DevKeys returns demo keys: secrets derived from seed (the same in every
// process), and a 2048-bit RSA key generated once per process whatever the
// seed (Go cannot derive one from a seed).
func DevKeys(seed string) Keys {
	devRSAOnce.Do(func() {
		k, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			panic("paysim: generate dev RSA key: " + err.Error())
		}
		devRSA = k
	})
	wx := sha256.Sum256([]byte("surge paysim dev wxsim secret\x00" + seed))
	ali := sha256.Sum256([]byte("surge paysim dev alisim secret\x00" + seed))
	return Keys{WXSecret: wx[:], AliSecret: ali[:], AliPrivateKey: devRSA}
}

// Channels returns the paysim side of k: "wxsim" (HMAC) and "alisim" (RSA).
func (k Keys) Channels() map[string]ChannelConfig {
	return map[string]ChannelConfig{
		"wxsim":  {Scheme: HMAC, Secret: k.WXSecret},
		"alisim": {Scheme: RSA, Secret: k.AliSecret, PrivateKey: k.AliPrivateKey},
	}
}

// WeChatMerchant is the merchant's side of a WeChatPay channel: what the
// wechatpay adapter is configured with.
type WeChatMerchant struct {
	MchID, AppID, CertSerial string
	PrivateKey               *rsa.PrivateKey // signs the merchant's requests
	PlatformKeyID            string
	PlatformKey              *rsa.PublicKey // verifies the platform's answers and notices
	APIv3Key                 []byte
}

// NewWeChat makes the keys of a WeChatPay channel for merchant mchID
// bound to appID: the platform's side (for paysim) and the merchant's (for
// the adapter), with two new 2048-bit RSA keys and a random APIv3 key.
func NewWeChat(mchID, appID string) (*WeChatKeys, WeChatMerchant, error) {
	merchant, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, WeChatMerchant{}, err
	}
	platform, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, WeChatMerchant{}, err
	}
	var serial [20]byte
	rand.Read(serial[:])
	apiV3 := []byte(rand.Text() + "ABCDEF")[:32]
	k := &WeChatKeys{MchID: mchID, AppID: appID, MerchantSerial: strings.ToUpper(hex.EncodeToString(serial[:])),
		MerchantKey: &merchant.PublicKey, PlatformKeyID: "PUB_KEY_ID_01" + mchID + rand.Text()[:8], PlatformKey: platform,
		APIv3Key: apiV3}
	return k, WeChatMerchant{MchID: mchID, AppID: appID, CertSerial: k.MerchantSerial, PrivateKey: merchant,
		PlatformKeyID: k.PlatformKeyID, PlatformKey: &platform.PublicKey, APIv3Key: apiV3}, nil
}

// AlipayMerchant is the app's side of an Alipay channel: what the alipay
// adapter is configured with.
type AlipayMerchant struct {
	AppID      string
	PrivateKey *rsa.PrivateKey // signs the app's requests
	AlipayKey  *rsa.PublicKey  // verifies Alipay's answers and notices
}

// NewAlipay makes the keys of an Alipay channel for app appID: Alipay's
// side (for paysim) and the app's (for the adapter), with two new
// 2048-bit RSA keys.
func NewAlipay(appID string) (*AlipayKeys, AlipayMerchant, error) {
	app, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, AlipayMerchant{}, err
	}
	ali, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, AlipayMerchant{}, err
	}
	return &AlipayKeys{AppID: appID, AppKey: &app.PublicKey, AlipayKey: ali},
		AlipayMerchant{AppID: appID, PrivateKey: app, AlipayKey: &ali.PublicKey}, nil
}
