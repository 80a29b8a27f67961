package paysim

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/hex"
	"strings"
	"sync"
)

// Keys are both halves of the keys of the two channels, "wechatpay" and
// "alipay": the provider's (WeChat, Alipay), which paysim holds, and the
// merchant's (WeChatMerchant, AlipayApp), which the adapters are
// configured with.
//
// Production does not use them: the merchant's halves come from the
// merchant consoles of WeChat Pay and Alipay (see docs/payments.md), and
// the provider's halves stay with the providers. Against paysim, both
// come from DevKeys, or from WeChatFrom and AlipayFrom with stored RSA
// keys, which every process that talks to the same paysim must share:
// DevKeys' RSA keys are made once per process.
type Keys struct {
	WeChat         *WeChatKeys
	WeChatMerchant WeChatMerchant
	Alipay         *AlipayKeys
	AlipayApp      AlipayMerchant
}

// DevRSA returns the i-th (0..3) of four 2048-bit RSA keys, each made
// once per process when first asked for: the RSA keys of DevKeys.
func DevRSA(i int) *rsa.PrivateKey {
	devRSA[i].once.Do(func() {
		k, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			panic("paysim: generate dev RSA key: " + err.Error())
		}
		devRSA[i].key = k
	})
	return devRSA[i].key
}

var devRSA [4]struct {
	once sync.Once
	key  *rsa.PrivateKey
}

// DevKeys returns demo keys: WeChatFrom(seed, DevRSA(0), DevRSA(1)) and
// AlipayFrom(DevRSA(2), DevRSA(3)). They are the same for one seed in one
// process; another process has other RSA keys (Go cannot derive one from
// a seed).
func DevKeys(seed string) Keys {
	wx, merchant := WeChatFrom(seed, DevRSA(0), DevRSA(1))
	ali, app := AlipayFrom(DevRSA(2), DevRSA(3))
	return Keys{WeChat: wx, WeChatMerchant: merchant, Alipay: ali, AlipayApp: app}
}

// Channels returns paysim's side of k: the channels "wechatpay" and
// "alipay".
func (k Keys) Channels() map[string]ChannelConfig {
	return map[string]ChannelConfig{
		"wechatpay": {Scheme: WeChatPay, WeChat: k.WeChat},
		"alipay":    {Scheme: Alipay, Alipay: k.Alipay},
	}
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
