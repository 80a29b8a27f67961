package payment

import (
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"fmt"
	"os"
	"slices"
	"strings"
)

// A Spec is a channel's credentials as a flag names them: key=value pairs
// joined with commas (--wechatpay mchid=…,key-file=/etc/…). Secrets are
// never in the flag itself: a key comes from a file (…-file=PATH) or an
// environment variable (…-env=NAME), and neither a secret nor a file's
// content is ever in an error.
type Spec map[string]string

// ParseSpec parses s, refusing keys not in known and a key given twice.
func ParseSpec(flag, s string, known ...string) (Spec, error) {
	sp := Spec{}
	for part := range strings.SplitSeq(s, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(part), "=")
		if !ok || k == "" || v == "" {
			return nil, fmt.Errorf("--%s: %q is not key=value", flag, part)
		}
		if !slices.Contains(known, k) {
			return nil, fmt.Errorf("--%s: unknown key %q (known: %s)", flag, k, strings.Join(known, ", "))
		}
		if _, twice := sp[k]; twice {
			return nil, fmt.Errorf("--%s: %s given twice", flag, k)
		}
		sp[k] = v
	}
	return sp, nil
}

// Need returns the values of keys, or an error naming every one missing.
func (sp Spec) Need(flag string, keys ...string) error {
	var missing []string
	for _, k := range keys {
		if sp[k] == "" {
			missing = append(missing, k)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("--%s: missing %s", flag, strings.Join(missing, ", "))
	}
	return nil
}

// Secret reads the secret named by name-file (a file's content, trimmed)
// or name-env (an environment variable, read with getenv): exactly one of
// them must be given.
func (sp Spec) Secret(flag, name string, getenv func(string) string) (string, error) {
	file, env := sp[name+"-file"], sp[name+"-env"]
	switch {
	case file != "" && env != "":
		return "", fmt.Errorf("--%s: give %s-file or %s-env, not both", flag, name, name)
	case file != "":
		b, err := os.ReadFile(file)
		if err != nil {
			return "", fmt.Errorf("--%s: %s-file: %w", flag, name, err)
		}
		return strings.TrimSpace(string(b)), nil
	case env != "":
		v := getenv(env)
		if v == "" {
			return "", fmt.Errorf("--%s: %s-env: environment variable %s is not set", flag, name, env)
		}
		return strings.TrimSpace(v), nil
	}
	return "", fmt.Errorf("--%s: missing %s-file or %s-env", flag, name, name)
}

// PrivateKey reads an RSA private key (PEM: PKCS#8 or PKCS#1) named by
// name-file or name-env.
func (sp Spec) PrivateKey(flag, name string, getenv func(string) string) (*rsa.PrivateKey, error) {
	s, err := sp.Secret(flag, name, getenv)
	if err != nil {
		return nil, err
	}
	der, err := pemDER(s, "PRIVATE KEY", "RSA PRIVATE KEY")
	if err != nil {
		return nil, fmt.Errorf("--%s: %s: %w", flag, name, err)
	}
	if k, err := x509.ParsePKCS8PrivateKey(der); err == nil {
		if rk, ok := k.(*rsa.PrivateKey); ok {
			return rk, nil
		}
		return nil, fmt.Errorf("--%s: %s is not an RSA key", flag, name)
	}
	rk, err := x509.ParsePKCS1PrivateKey(der)
	if err != nil {
		return nil, fmt.Errorf("--%s: %s is not an RSA private key in PKCS#8 or PKCS#1", flag, name)
	}
	return rk, nil
}

// PublicKey reads an RSA public key (PEM: PKIX "PUBLIC KEY", or a bare
// base64 body as the providers' consoles show it) named by name-file or
// name-env.
func (sp Spec) PublicKey(flag, name string, getenv func(string) string) (*rsa.PublicKey, error) {
	s, err := sp.Secret(flag, name, getenv)
	if err != nil {
		return nil, err
	}
	der, err := pemDER(s, "PUBLIC KEY")
	if err != nil {
		return nil, fmt.Errorf("--%s: %s: %w", flag, name, err)
	}
	k, err := x509.ParsePKIXPublicKey(der)
	if err != nil {
		return nil, fmt.Errorf("--%s: %s is not a PKIX public key", flag, name)
	}
	rk, ok := k.(*rsa.PublicKey)
	if !ok {
		return nil, fmt.Errorf("--%s: %s is not an RSA key", flag, name)
	}
	return rk, nil
}

// pemDER returns the DER of a PEM block of one of types, or of a bare
// base64 body (as Alipay's console shows keys).
func pemDER(s string, types ...string) ([]byte, error) {
	if strings.HasPrefix(s, "-----") {
		b, _ := pem.Decode([]byte(s))
		if b == nil || !slices.Contains(types, b.Type) {
			return nil, fmt.Errorf("not a PEM block of %s", strings.Join(types, " or "))
		}
		return b.Bytes, nil
	}
	der, err := base64.StdEncoding.DecodeString(strings.Join(strings.Fields(s), ""))
	if err != nil {
		return nil, fmt.Errorf("neither PEM nor base64")
	}
	return der, nil
}
