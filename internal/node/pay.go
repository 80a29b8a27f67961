package node

import (
	"context"
	"crypto/rsa"
	"crypto/x509"
	"database/sql"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"strings"

	"github.com/surge-platform/surge/internal/member"
	"github.com/surge-platform/surge/internal/payment"
	"github.com/surge-platform/surge/internal/payment/alipay"
	"github.com/surge-platform/surge/internal/payment/alisim"
	"github.com/surge-platform/surge/internal/payment/paysim"
	"github.com/surge-platform/surge/internal/payment/wechatpay"
	"github.com/surge-platform/surge/internal/payment/wxsim"
	"github.com/surge-platform/surge/internal/platform/sqldb"
)

// simKeys returns the keys of the simulated channels, shared by every node
// of the cluster through the main database (the simulator and the payment
// service may run in different processes): secrets derived from a seed in
// the settings table, and an RSA key pair kept there as PKCS#8 PEM. Real
// providers' keys would come from configuration instead.
func simKeys(ctx context.Context, db *sqldb.Cluster) (paysim.Keys, error) {
	seed, err := member.Secret(ctx, db, "paysim_seed")
	if err != nil {
		return paysim.Keys{}, err
	}
	k := paysim.DevKeys(hex.EncodeToString(seed))
	var keys [5]*rsa.PrivateKey
	for i, name := range []string{"paysim_rsa", "paysim_wechatpay_merchant", "paysim_wechatpay_platform", "paysim_alipay_app", "paysim_alipay"} {
		proposal := func() *rsa.PrivateKey { return k.AliPrivateKey }
		if i > 0 {
			proposal = func() *rsa.PrivateKey { return paysim.DevRSA(i - 1) }
		}
		if keys[i], err = storedKey(ctx, db, name, proposal); err != nil {
			return paysim.Keys{}, err
		}
	}
	k.AliPrivateKey = keys[0]
	k.WeChat, k.WeChatMerchant = paysim.WeChatFrom(hex.EncodeToString(seed), keys[1], keys[2])
	k.Alipay, k.AlipayApp = paysim.AlipayFrom(keys[3], keys[4])
	return k, nil
}

// storedKey returns the RSA key stored in settings as name (PKCS#8 PEM),
// storing proposal's there first when there is none (a key is costly to
// make: only then is proposal called): the first process to store one
// decides for the cluster.
func storedKey(ctx context.Context, db *sqldb.Cluster, name string, proposal func() *rsa.PrivateKey) (*rsa.PrivateKey, error) {
	m := db.Main()
	var stored string
	err := m.W.QueryRowContext(ctx, `SELECT value FROM settings WHERE name = $1`, name).Scan(&stored)
	if errors.Is(err, sql.ErrNoRows) {
		der, merr := x509.MarshalPKCS8PrivateKey(proposal())
		if merr != nil {
			return nil, merr
		}
		if _, err := m.W.ExecContext(ctx, `INSERT INTO settings (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING`,
			name, string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}))); err != nil {
			return nil, fmt.Errorf("store simulator key %s: %w", name, err)
		}
		err = m.W.QueryRowContext(ctx, `SELECT value FROM settings WHERE name = $1`, name).Scan(&stored)
	}
	if err != nil {
		return nil, fmt.Errorf("read simulator key %s: %w", name, err)
	}
	block, _ := pem.Decode([]byte(stored))
	if block == nil {
		return nil, fmt.Errorf("simulator key %s in settings is not PEM", name)
	}
	key, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("simulator key %s: %w", name, err)
	}
	rk, ok := key.(*rsa.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("simulator key %s is not RSA", name)
	}
	return rk, nil
}

// simChannels are the payment channels: wxsim and alisim (protocols of
// our own) at the simulator at payURL, and wechatpay and alipay (WeChat
// Pay's and Alipay's, on their SDKs) with the merchant's credentials when
// given (wx, ali), else at the simulator with the demo's keys.
func simChannels(payURL string, k paysim.Keys, wxCfg *wechatpay.Config, aliCfg *alipay.Config) ([]payment.Channel, error) {
	if wxCfg == nil {
		wxCfg = &wechatpay.Config{BaseURL: strings.TrimRight(payURL, "/"), MchID: k.WeChatMerchant.MchID,
			AppID: k.WeChatMerchant.AppID, CertSerial: k.WeChatMerchant.CertSerial, PrivateKey: k.WeChatMerchant.PrivateKey,
			PlatformKeyID: k.WeChatMerchant.PlatformKeyID, PlatformKey: k.WeChatMerchant.PlatformKey, APIv3Key: string(k.WeChatMerchant.APIv3Key)}
	}
	wx, err := wechatpay.New(*wxCfg)
	if err != nil {
		return nil, err
	}
	if aliCfg == nil {
		aliCfg = &alipay.Config{Gateway: strings.TrimRight(payURL, "/") + "/paysim/v1/" + alipay.Name + "/gateway.do",
			AppID: k.AlipayApp.AppID, PrivateKey: k.AlipayApp.PrivateKey, AlipayKey: k.AlipayApp.AlipayKey}
	}
	ali, err := alipay.New(*aliCfg)
	if err != nil {
		return nil, err
	}
	return []payment.Channel{
		wxsim.New(wxsim.Config{BaseURL: payURL, Secret: k.WXSecret}),
		alisim.New(alisim.Config{BaseURL: payURL, Secret: k.AliSecret, PublicKey: &k.AliPrivateKey.PublicKey}),
		wx, ali,
	}, nil
}
