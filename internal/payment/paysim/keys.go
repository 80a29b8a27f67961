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

	// The channels that speak the real protocols: the provider's side
	// (paysim's) and the merchant's (the adapter's). Nil unless set with
	// WeChatFrom and AlipayFrom.
	WeChat         *WeChatKeys
	WeChatMerchant WeChatMerchant
	Alipay         *AlipayKeys
	AlipayApp      AlipayMerchant
}

var (
	devRSAOnce sync.Once
	devRSA     *rsa.PrivateKey
)

// DevRSA returns the i-th (0..3) of four 2048-bit RSA keys, each made
// once per process when first asked for: proposals for the demo's keys of
// the real protocols' channels (the node keeps the first one stored in the
// database, so that every process of a cluster shares them).
func DevRSA(i int) *rsa.PrivateKey {
	devExtra[i].once.Do(func() {
		k, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			panic("paysim: generate dev RSA key: " + err.Error())
		}
		devExtra[i].key = k
	})
	return devExtra[i].key
}

var devExtra [4]struct {
	once sync.Once
	key  *rsa.PrivateKey
}

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

// Channels returns the paysim side of k: "wxsim" (HMAC) and "alisim"
// (RSA), and "wechatpay" and "alipay" when k has their keys.
func (k Keys) Channels() map[string]ChannelConfig {
	m := map[string]ChannelConfig{
		"wxsim":  {Scheme: HMAC, Secret: k.WXSecret},
		"alisim": {Scheme: RSA, Secret: k.AliSecret, PrivateKey: k.AliPrivateKey},
	}
	if k.WeChat != nil {
		m["wechatpay"] = ChannelConfig{Scheme: WeChatPay, WeChat: k.WeChat}
	}
	if k.Alipay != nil {
		m["alipay"] = ChannelConfig{Scheme: Alipay, Alipay: k.Alipay}
	}
	return m
}

// Demo accounts of the real protocols' channels.
const (
	DemoMchID       = "1900000109"
	DemoWeChatAppID = "wxd678efh567hg6787"
	DemoAlipayAppID = "2021000117600001"
)

// WeChatFrom makes a WeChatPay channel's keys for the demo merchant from
// seed (its certificate serial, platform key id and APIv3 key) and two
// RSA keys: the merchant's API key and WeChat Pay's platform key.
func WeChatFrom(seed string, merchant, platform *rsa.PrivateKey) (*WeChatKeys, WeChatMerchant) {
	sum := sha256.Sum256([]byte("surge paysim dev wechatpay\x00" + seed))
	secret := sha256.Sum256([]byte("surge paysim dev wechatpay apiv3\x00" + seed)) // apart from the public ids
	h := hex.EncodeToString(sum[:])
	k := &WeChatKeys{MchID: DemoMchID, AppID: DemoWeChatAppID, MerchantSerial: strings.ToUpper(h[:40]), MerchantKey: &merchant.PublicKey,
		PlatformKeyID: "PUB_KEY_ID_01" + DemoMchID + strings.ToUpper(h[40:48]), PlatformKey: platform,
		APIv3Key: []byte(hex.EncodeToString(secret[:16]))}
	return k, WeChatMerchant{MchID: k.MchID, AppID: k.AppID, CertSerial: k.MerchantSerial, PrivateKey: merchant,
		PlatformKeyID: k.PlatformKeyID, PlatformKey: &platform.PublicKey, APIv3Key: k.APIv3Key}
}

// AlipayFrom makes an Alipay channel's keys for the demo app from two RSA
// keys: the app's and Alipay's.
func AlipayFrom(app, ali *rsa.PrivateKey) (*AlipayKeys, AlipayMerchant) {
	return &AlipayKeys{AppID: DemoAlipayAppID, AppKey: &app.PublicKey, AlipayKey: ali},
		AlipayMerchant{AppID: DemoAlipayAppID, PrivateKey: app, AlipayKey: &ali.PublicKey}
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
