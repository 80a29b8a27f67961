// Package member owns customers: login by phone and the bearer tokens that
// authenticate them.
package member

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"fmt"
	"hash"
	mrand "math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/surge-platform/surge/internal/platform/errkind"
	"github.com/surge-platform/surge/internal/platform/id"
	"github.com/surge-platform/surge/internal/platform/sqldb"
)

var (
	ErrBadPhone = errkind.New(errkind.Invalid, "invalid_phone", "phone must be 6 to 20 digits, optionally starting with +")
	ErrToken    = errkind.New(errkind.Unauthorized, "invalid_token", "missing, malformed, forged or expired token")
)

// TokenTTL is how long a login token is valid.
const TokenTTL = 30 * 24 * time.Hour

// Service logs customers in and verifies their tokens.
type Service struct {
	db     *sqldb.Cluster
	ids    *id.Generator
	secret []byte
	macs   sync.Pool // of hash.Hash: HMACs keyed with secret
	now    func() time.Time
}

// New returns a service signing tokens with the cluster's token secret,
// created in the main database on first use, so every node agrees on it.
func New(ctx context.Context, db *sqldb.Cluster, ids *id.Generator) (*Service, error) {
	secret, err := Secret(ctx, db, "token_secret")
	if err != nil {
		return nil, err
	}
	return &Service{db: db, ids: ids, secret: secret, now: time.Now}, nil
}

// Secret returns the named 32-byte secret from the settings table, creating
// it on first use. Concurrent first uses agree on one value.
func Secret(ctx context.Context, db *sqldb.Cluster, name string) ([]byte, error) {
	b := make([]byte, 32)
	rand.Read(b)
	m := db.Main()
	if _, err := m.W.ExecContext(ctx, `INSERT INTO settings (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING`,
		name, hex.EncodeToString(b)); err != nil {
		return nil, fmt.Errorf("create secret %s: %w", name, err)
	}
	var v string
	if err := m.W.QueryRowContext(ctx, `SELECT value FROM settings WHERE name = $1`, name).Scan(&v); err != nil {
		return nil, fmt.Errorf("read secret %s: %w", name, err)
	}
	return hex.DecodeString(v)
}

// Login returns a token for phone, registering the customer on first login.
func (s *Service) Login(ctx context.Context, phone string) (token string, userID int64, err error) {
	if !validPhone(phone) {
		return "", 0, ErrBadPhone
	}
	m := s.db.Main()
	err = m.R.QueryRowContext(ctx, `SELECT id FROM users WHERE phone = $1`, phone).Scan(&userID)
	if err != nil {
		// A new customer: the user id's low bits (its gene) pick the order shard.
		uid, err := s.ids.Next(mrand.IntN(id.Genes))
		if err != nil {
			return "", 0, err
		}
		if _, err := m.W.ExecContext(ctx, `INSERT INTO users (id, phone, created_at) VALUES ($1, $2, $3) ON CONFLICT (phone) DO NOTHING`,
			uid, phone, s.now().UnixMilli()); err != nil {
			return "", 0, fmt.Errorf("register %s: %w", phone, err)
		}
		if err := m.W.QueryRowContext(ctx, `SELECT id FROM users WHERE phone = $1`, phone).Scan(&userID); err != nil {
			return "", 0, fmt.Errorf("read user %s: %w", phone, err)
		}
	}
	return s.Sign(userID, s.now().Add(TokenTTL)), userID, nil
}

func validPhone(p string) bool {
	p = strings.TrimPrefix(p, "+")
	if len(p) < 6 || len(p) > 20 {
		return false
	}
	for _, c := range p {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

// Sign makes a token "<user_id>.<expiry unix>.<hmac>" for userID.
func (s *Service) Sign(userID int64, exp time.Time) string {
	body := strconv.FormatInt(userID, 10) + "." + strconv.FormatInt(exp.Unix(), 10)
	return body + "." + s.mac(body)
}

func (s *Service) mac(body string) string {
	h := hmac.New(sha256.New, s.secret)
	h.Write([]byte(body))
	return hex.EncodeToString(h.Sum(nil)[:16])
}

// Verify returns the user id of a valid, unexpired token, or ErrToken.
// It reuses keyed MACs (every authenticated request verifies a token).
func (s *Service) Verify(token string) (int64, error) {
	h, _ := s.macs.Get().(hash.Hash)
	if h == nil {
		h = hmac.New(sha256.New, s.secret)
	}
	defer s.macs.Put(h)
	return parseToken(token, h, s.now())
}

// ParseToken checks token against secret at time now.
func ParseToken(token string, secret []byte, now time.Time) (int64, error) {
	return parseToken(token, hmac.New(sha256.New, secret), now)
}

// parseToken checks token with h, an HMAC-SHA256 keyed with the secret.
func parseToken(token string, h hash.Hash, now time.Time) (int64, error) {
	if len(token) > 128 {
		return 0, ErrToken
	}
	i := strings.LastIndexByte(token, '.')
	if i < 0 {
		return 0, ErrToken
	}
	body, sig := token[:i], token[i+1:]
	uidS, expS, ok := strings.Cut(body, ".")
	if !ok || len(sig) != 32 {
		return 0, ErrToken
	}
	var buf [128]byte
	h.Reset()
	h.Write(append(buf[:0], body...))
	var sum [sha256.Size]byte
	var want [32]byte
	hex.Encode(want[:], h.Sum(sum[:0])[:16])
	if subtle.ConstantTimeCompare(append(buf[:0], sig...), want[:]) != 1 {
		return 0, ErrToken
	}
	uid, err1 := strconv.ParseInt(uidS, 10, 64)
	exp, err2 := strconv.ParseInt(expS, 10, 64)
	if err1 != nil || err2 != nil || uid <= 0 || now.Unix() >= exp {
		return 0, ErrToken
	}
	return uid, nil
}
