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
	"github.com/surge-platform/surge/internal/payment/paysim"
	"github.com/surge-platform/surge/internal/payment/wechatpay"
	"github.com/surge-platform/surge/internal/platform/sqldb"
)

// SimKeys returns the demo keys of the simulated providers, shared by
// every node of the cluster through the main database (the simulator and
// the payment service may run in different processes): four RSA keys kept
// in the settings table as PKCS#8 PEM (the merchant's and WeChat Pay's, the
// app's and Alipay's), and ids and the APIv3 key derived from a seed kept
// there too. Production's keys come from the merchant platforms instead
// (Config.WeChatPay, Config.Alipay).
func SimKeys(ctx context.Context, db *sqldb.Cluster) (paysim.Keys, error) {
	seed, err := member.Secret(ctx, db, "paysim_seed")
	if err != nil {
		return paysim.Keys{}, err
	}
	var keys [4]*rsa.PrivateKey
	for i, name := range []string{"paysim_wechatpay_merchant", "paysim_wechatpay_platform", "paysim_alipay_app", "paysim_alipay"} {
		if keys[i], err = storedKey(ctx, db, name, func() *rsa.PrivateKey { return paysim.DevRSA(i) }); err != nil {
			return paysim.Keys{}, err
		}
	}
	var k paysim.Keys
	k.WeChat, k.WeChatMerchant = paysim.WeChatFrom(hex.EncodeToString(seed), keys[0], keys[1])
	k.Alipay, k.AlipayApp = paysim.AlipayFrom(keys[2], keys[3])
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

// PayChannels are the payment channels: wechatpay and alipay (WeChat Pay's
// and Alipay's protocols, on their SDKs). Given the merchant's credentials
// of either (wxCfg, aliCfg), only the channels with credentials are made,
// each paying at its provider: a channel left at the simulator beside
// real ones would let anyone "pay" with one request. Given none, both pay
// at the simulator at payURL with its demo keys k.
func PayChannels(payURL string, k paysim.Keys, wxCfg *wechatpay.Config, aliCfg *alipay.Config) ([]payment.Channel, error) {
	if wxCfg == nil && aliCfg == nil {
		wxCfg = &wechatpay.Config{BaseURL: strings.TrimRight(payURL, "/"), MchID: k.WeChatMerchant.MchID,
			AppID: k.WeChatMerchant.AppID, CertSerial: k.WeChatMerchant.CertSerial, PrivateKey: k.WeChatMerchant.PrivateKey,
			PlatformKeyID: k.WeChatMerchant.PlatformKeyID, PlatformKey: k.WeChatMerchant.PlatformKey, APIv3Key: string(k.WeChatMerchant.APIv3Key)}
		aliCfg = &alipay.Config{Gateway: strings.TrimRight(payURL, "/") + "/paysim/v1/" + alipay.Name + "/gateway.do",
			AppID: k.AlipayApp.AppID, PrivateKey: k.AlipayApp.PrivateKey, AlipayKey: k.AlipayApp.AlipayKey}
	}
	var chs []payment.Channel
	if wxCfg != nil {
		wx, err := wechatpay.New(*wxCfg)
		if err != nil {
			return nil, err
		}
		chs = append(chs, wx)
	}
	if aliCfg != nil {
		ali, err := alipay.New(*aliCfg)
		if err != nil {
			return nil, err
		}
		chs = append(chs, ali)
	}
	return chs, nil
}
