// Package nodetest runs a whole embedded node in a test and talks to it
// over HTTP like a client would.
package nodetest

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"

	"github.com/surge-platform/surge/internal/demo"
	"github.com/surge-platform/surge/internal/node"
	"github.com/surge-platform/surge/internal/platform/edge"
)

// Admin is the operator token of nodes started here.
const Admin = "test-admin-token"

// Start runs an embedded node with every role on a free port, seeded with
// the demo data, until the test ends; edit changes its config first.
func Start(t *testing.T, edit ...func(*node.Config)) *node.Node {
	t.Helper()
	dir := t.TempDir()
	cfg := node.Defaults()
	cfg.Addr, cfg.Data, cfg.AdminToken = "127.0.0.1:0", dir, Admin
	cfg.DB = []string{"sqlite:" + dir + "/db?shards=2"}
	// The edge's limits and shedder are off: tests race hundreds of
	// requests from one customer on two busy cores, which production
	// defaults rightly refuse. Tests of the edge turn them on.
	cfg.Edge, cfg.MaxConns = edge.Config{}, 0
	// Every role but the monitor: dozens of test nodes probing themselves
	// every second load the machine other packages' timing tests run on.
	// Tests of the monitor add it.
	cfg.Roles = []string{"api", "worker", "paysim", "fulfil", "push"}
	for _, e := range edit {
		e(&cfg)
	}
	ctx, cancel := context.WithCancel(context.Background())
	n, err := node.New(ctx, cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	if err := demo.Seed(ctx, n.Catalog, n.Members); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- n.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("node run: %v", err)
		}
		n.Close()
	})
	return n
}

// Client calls a node's HTTP API with a bearer token.
type Client struct {
	T     testing.TB
	Base  string
	Token string
}

// Resp is an HTTP answer.
type Resp struct {
	Status int
	Header http.Header
	Body   []byte
}

// Code returns the error code of a JSON error answer.
func (r Resp) Code() string {
	var e struct {
		Error struct{ Code string } `json:"error"`
	}
	json.Unmarshal(r.Body, &e)
	return e.Error.Code
}

// Do sends a request; hdr holds extra header name/value pairs.
func (c *Client) Do(method, path, body string, hdr ...string) Resp {
	c.T.Helper()
	req, err := http.NewRequest(method, c.Base+path, strings.NewReader(body))
	if err != nil {
		c.T.Fatal(err)
	}
	if c.Token != "" {
		req.Header.Set("Authorization", "Bearer "+c.Token)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		c.T.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return Resp{res.StatusCode, res.Header, b}
}

// Login logs a customer in by phone.
func Login(t testing.TB, base, phone string) *Client {
	t.Helper()
	c := &Client{T: t, Base: base}
	r := c.Do("POST", "/api/v1/auth/login", `{"phone":"`+phone+`"}`)
	var out struct{ Token string }
	if err := json.Unmarshal(r.Body, &out); err != nil || r.Status != 200 || out.Token == "" {
		t.Fatalf("login: %d %s", r.Status, r.Body)
	}
	c.Token = out.Token
	return c
}

// PayOrder places an order of one sku and pays it at the simulated
// channel; it returns the order id.
func PayOrder(t testing.TB, c *Client, store, sku string) string {
	t.Helper()
	r := c.Do("POST", "/api/v1/orders", `{"store_id":"`+store+`","items":[{"sku_id":"`+sku+`","qty":1}]}`)
	var created struct {
		OrderID string `json:"order_id"`
	}
	json.Unmarshal(r.Body, &created)
	if r.Status != 201 {
		t.Fatalf("order: %d %s", r.Status, r.Body)
	}
	p := c.Do("POST", "/api/v1/orders/"+created.OrderID+"/pay", `{"channel":"wechatpay"}`)
	var st struct {
		PayURL string `json:"pay_url"`
	}
	json.Unmarshal(p.Body, &st)
	if p.Status != 201 {
		t.Fatalf("pay: %d %s", p.Status, p.Body)
	}
	res, err := http.Post(st.PayURL, "", nil)
	if err != nil || res.StatusCode != 200 {
		t.Fatalf("payer pays: %v %v", res, err)
	}
	res.Body.Close()
	return created.OrderID
}

// POS returns a client with the store's POS key.
func POS(t testing.TB, base, store string) *Client {
	t.Helper()
	a := &Client{T: t, Base: base, Token: Admin}
	r := a.Do("GET", "/admin/v1/stores/"+store, "")
	var st struct {
		POSKey string `json:"pos_key"`
	}
	json.Unmarshal(r.Body, &st)
	if st.POSKey == "" {
		t.Fatalf("no pos key: %s", r.Body)
	}
	return &Client{T: t, Base: base, Token: st.POSKey}
}
