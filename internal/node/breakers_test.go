package node_test

import (
	"cmp"
	"context"
	"encoding/json"
	"net/url"
	"os"
	"testing"
	"time"

	"github.com/surge-platform/surge/internal/eventually"
	"github.com/surge-platform/surge/internal/node"
	"github.com/surge-platform/surge/internal/nodetest"
	"github.com/surge-platform/surge/internal/order"
	"github.com/surge-platform/surge/internal/platform/breaker/breakertest"
	"github.com/surge-platform/surge/internal/platform/bus/bustest"
	"github.com/surge-platform/surge/internal/platform/faultnet"
	"github.com/surge-platform/surge/internal/platform/sqldb/sqldbtest"
)

func TestMain(m *testing.M) {
	code := m.Run()
	bustest.StopExternal()
	os.Exit(code)
}

// The cluster view shows every circuit breaker of a node: kv, each
// PostgreSQL database ("db:<name>") and the bus; a NATS server that hangs
// shows as the bus's open, and as closed again once it answers.
func TestClusterShowsBreakers(t *testing.T) {
	t.Parallel()
	dbs := sqldbtest.PostgresURLs(t, 2)
	nu, err := url.Parse(bustest.ExternalURL(t))
	if err != nil {
		t.Fatal(err)
	}
	proxy := faultnet.Start(t, nu.Host)
	nu.Host = proxy.Addr()
	kv, err := url.Parse(cmp.Or(os.Getenv("SURGE_TEST_REDIS"), "redis://127.0.0.1:6379/0"))
	if err != nil {
		t.Fatal(err)
	}
	q := kv.Query()
	q.Set("prefix", "breakers"+time.Now().Format("150405.000000")+":")
	kv.RawQuery = q.Encode()
	n := nodetest.Start(t, func(c *node.Config) {
		c.DB, c.Bus, c.KV = dbs, bustest.Namespaced(t, nu.String()), kv.String()
	})
	admin := &nodetest.Client{T: t, Base: n.URL(), Token: nodetest.Admin}
	breakers := func() map[string]string {
		r := admin.Do("GET", "/admin/v1/cluster", "")
		var v struct{ Breakers map[string]string }
		if r.Status != 200 || json.Unmarshal(r.Body, &v) != nil {
			t.Fatalf("cluster view: %d %s", r.Status, r.Body)
		}
		return v.Breakers
	}
	want := []string{"kv", "bus"}
	for _, d := range n.DB.Shards() {
		want = append(want, "db:"+d.Name)
	}
	got := breakers()
	if len(got) != len(want) {
		t.Fatalf("breakers %v, want %v", got, want)
	}
	for _, k := range want {
		if got[k] != "closed" {
			t.Fatalf("breakers %v: %s is not closed", got, k)
		}
	}

	proxy.Stall()
	info := breakertest.Within(300*time.Millisecond, func(ctx context.Context) error {
		_, _, err := n.Bus.StreamInfo(ctx, order.Stream.Name)
		return err
	})
	breakertest.Trip(t, n.Bus.Breaker(), info)
	if got := breakers(); got["bus"] != "open" || got["kv"] != "closed" {
		t.Fatalf("breakers with NATS hung: %v", got)
	}
	proxy.Resume()
	eventually.True(t, 15*time.Second, "the bus's breaker closed in the cluster view", func() bool {
		info()
		return breakers()["bus"] == "closed"
	})
}

// With the main database hung, its breaker opens and the cluster view
// still answers: the breakers (the database's open) and the node's own
// state, with leases_error in place of the leases it cannot read.
func TestClusterViewWithTheDatabaseDown(t *testing.T) {
	t.Parallel()
	db, proxy := sqldbtest.PostgresViaProxy(t)
	n := nodetest.Start(t, func(c *node.Config) { c.DB = []string{db} })
	admin := &nodetest.Client{T: t, Base: n.URL(), Token: nodetest.Admin}
	type view struct {
		Owner       string
		Breakers    map[string]string
		Leases      []json.RawMessage
		LeasesError string `json:"leases_error"`
	}
	get := func() view {
		r := admin.Do("GET", "/admin/v1/cluster", "")
		var v view
		if r.Status != 200 || json.Unmarshal(r.Body, &v) != nil {
			t.Fatalf("cluster view: %d %s", r.Status, r.Body)
		}
		return v
	}
	if v := get(); len(v.Leases) == 0 || v.LeasesError != "" {
		t.Fatalf("cluster view with the database up: %+v", v)
	}
	proxy.Stall()
	main := n.DB.Main()
	breakertest.Trip(t, main.Breaker(), breakertest.Within(300*time.Millisecond, func(ctx context.Context) error {
		return main.W.PingContext(ctx)
	}))
	v := get()
	if v.Breakers["db:"+main.Name] != "open" || v.LeasesError == "" || v.Leases != nil || v.Owner == "" {
		t.Fatalf("cluster view with the database hung: %+v", v)
	}
	proxy.Resume()
}
