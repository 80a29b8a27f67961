package paysim

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
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
