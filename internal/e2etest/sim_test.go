package e2etest

import (
	"context"
	"strconv"
	"testing"

	"github.com/surge-platform/surge/internal/node"
	"github.com/surge-platform/surge/internal/payment"
	"github.com/surge-platform/surge/internal/platform/sqldb"
)

// simQuery asks the payment simulator of a node (whose embedded database is
// in dataDir) about a payment, through the channel's protocol with the
// merchant keys the node keeps in its settings: the channel's own view,
// independent of our ledger.
func simQuery(t *testing.T, dataDir, base string) func(channel, paymentID string) payment.Status {
	t.Helper()
	ctx := context.Background()
	c, err := sqldb.Open(ctx, []string{"sqlite:" + dataDir + "/db"}, sqldb.Options{})
	if err != nil {
		t.Fatal(err)
	}
	keys, err := node.SimKeys(ctx, c)
	c.Close()
	if err != nil {
		t.Fatal(err)
	}
	chs, err := node.PayChannels(base, keys, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	byName := map[string]payment.Channel{}
	for _, ch := range chs {
		byName[ch.Name()] = ch
	}
	return func(channel, paymentID string) payment.Status {
		x, _ := strconv.ParseInt(paymentID, 10, 64)
		st, err := byName[channel].Query(ctx, x)
		if err != nil {
			t.Logf("simulator query %s %s: %v", channel, paymentID, err)
		}
		return st
	}
}
