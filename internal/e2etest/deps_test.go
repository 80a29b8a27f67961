package e2etest

import (
	"crypto/rand"
	"encoding/hex"
	"os"
	"testing"

	"github.com/surge-platform/surge/internal/platform/sqldb/sqldbtest"
)

func pgURLs(t *testing.T, n int) []string { return sqldbtest.PostgresURLs(t, n) }

// redisURL returns the test Redis with a fresh key prefix.
func redisURL(t *testing.T) string {
	u := os.Getenv("SURGE_TEST_REDIS")
	if u == "" {
		u = "redis://127.0.0.1:6379/0"
	}
	b := make([]byte, 4)
	rand.Read(b)
	return u + "?prefix=e2e" + hex.EncodeToString(b) + ":"
}
