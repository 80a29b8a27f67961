package node

import (
	"context"
	"crypto/rsa"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"fmt"

	"github.com/surge-platform/surge/internal/member"
	"github.com/surge-platform/surge/internal/payment/paysim"
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
	der, err := x509.MarshalPKCS8PrivateKey(k.AliPrivateKey)
	if err != nil {
		return paysim.Keys{}, err
	}
	m := db.Main()
	if _, err := m.W.ExecContext(ctx, `INSERT INTO settings (name, value) VALUES ('paysim_rsa', $1) ON CONFLICT (name) DO NOTHING`,
		string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}))); err != nil {
		return paysim.Keys{}, fmt.Errorf("store simulator key: %w", err)
	}
	var stored string
	if err := m.W.QueryRowContext(ctx, `SELECT value FROM settings WHERE name = 'paysim_rsa'`).Scan(&stored); err != nil {
		return paysim.Keys{}, fmt.Errorf("read simulator key: %w", err)
	}
	block, _ := pem.Decode([]byte(stored))
	if block == nil {
		return paysim.Keys{}, fmt.Errorf("simulator key in settings is not PEM")
	}
	key, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return paysim.Keys{}, fmt.Errorf("simulator key: %w", err)
	}
	rk, ok := key.(*rsa.PrivateKey)
	if !ok {
		return paysim.Keys{}, fmt.Errorf("simulator key is not RSA")
	}
	k.AliPrivateKey = rk
	return k, nil
}
