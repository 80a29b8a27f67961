package e2etest

import (
	"context"
	"encoding/hex"
	"strconv"
	"testing"

	"github.com/surge-platform/surge/internal/member"
	"github.com/surge-platform/surge/internal/payment"
	"github.com/surge-platform/surge/internal/payment/paysim"
	"github.com/surge-platform/surge/internal/platform/sqldb"
)

// simQuery asks the payment simulator of a node (whose embedded database is
// in dataDir) about a payment, with the merchant keys the node keeps in its
// settings: the channel's own view, independent of our ledger.
func simQuery(t *testing.T, dataDir, base string) func(channel, paymentID string) payment.Status {
	t.Helper()
	ctx := context.Background()
	c, err := sqldb.Open(ctx, []string{"sqlite:" + dataDir + "/db"}, sqldb.Options{})
	if err != nil {
		t.Fatal(err)
	}
	seed, err := member.Secret(ctx, c, "paysim_seed")
	c.Close()
	if err != nil {
		t.Fatal(err)
	}
	keys := paysim.DevKeys(hex.EncodeToString(seed))
	clients := map[string]*paysim.Client{
		"wxsim":  paysim.NewClient(paysim.ClientConfig{BaseURL: base, Channel: "wxsim", Secret: keys.WXSecret}),
		"alisim": paysim.NewClient(paysim.ClientConfig{BaseURL: base, Channel: "alisim", Secret: keys.AliSecret}),
	}
	return func(channel, paymentID string) payment.Status {
		x, _ := strconv.ParseInt(paymentID, 10, 64)
		st, err := clients[channel].Query(ctx, x)
		if err != nil {
			t.Logf("simulator query %s %s: %v", channel, paymentID, err)
		}
		return st
	}
}
