package api_test

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/surge-platform/surge/internal/node"
	"github.com/surge-platform/surge/internal/nodetest"
	"github.com/surge-platform/surge/internal/payment/paysim"
	"github.com/surge-platform/surge/internal/push/pushtest"
)

// TestOneTraceAcrossTheOrderFlow follows one trace from the channel's
// payment callback (HTTP) through the outbox row of order.paid, its publish
// on the bus, the fulfilment consumer, the store's POS socket, the POS's
// accept (which sends the socket's traceparent back), the outbox row of
// order.accepted, the push router and the customer's socket: every hop's
// span is in the same trace, each the child of the hop before, and both
// sockets are handed that trace.
func TestOneTraceAcrossTheOrderFlow(t *testing.T) {
	t.Parallel()
	exp := tracetest.NewInMemoryExporter()
	n := nodetest.Start(t, func(c *node.Config) { c.Spans = exp })
	base := n.URL()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cust := nodetest.Login(t, base, "+8613912340001")
	pos := nodetest.POS(t, base, "1002")
	cws, err := pushtest.Dial(ctx, base, "/api/v1/ws", cust.Token, "")
	if err != nil {
		t.Fatal(err)
	}
	defer cws.Close()
	pws, err := pushtest.Dial(ctx, base, "/pos/v1/ws", pos.Token, "")
	if err != nil {
		t.Fatal(err)
	}
	defer pws.Close()
	if _, _, err := pws.Until(5*time.Second, func(m pushtest.Msg) bool { return m.Type == "hello" }); err != nil {
		t.Fatalf("POS hello: %v", err)
	}
	oid := nodetest.PayOrder(t, cust, "1002", "1002010")

	queued, _, err := pws.Until(10*time.Second, func(m pushtest.Msg) bool { return m.Type == "order.new" && m.Order.OrderID == oid })
	if err != nil {
		t.Fatalf("the order on the POS socket: %v", err)
	}
	tp := queued.Traceparent
	if len(tp) != 55 {
		t.Fatalf("the POS socket's order has no traceparent: %s", queued.Raw)
	}
	traceID := tp[3:35]
	if r := pos.Do("POST", "/pos/v1/orders/"+oid+"/accept", "", "Traceparent", tp); r.Status != 200 || r.Header.Get("X-Trace-Id") != traceID {
		t.Fatalf("accept with the socket's traceparent: %d %s, X-Trace-Id %s, want %s", r.Status, r.Body, r.Header.Get("X-Trace-Id"), traceID)
	}
	seen := map[string]string{}
	if _, _, err := cws.Until(10*time.Second, func(m pushtest.Msg) bool {
		if m.OrderID == oid {
			seen[m.Type] = m.Traceparent
		}
		return m.Type == "order.accepted" && m.OrderID == oid
	}); err != nil {
		t.Fatalf("order.accepted on the customer's socket: %v (saw %v)", err, seen)
	}
	for _, typ := range []string{"order.paid", "order.accepted"} {
		if !strings.Contains(seen[typ], traceID) {
			t.Errorf("the customer's %s came with traceparent %q, want trace %s", typ, seen[typ], traceID)
		}
	}

	// The spans of the trace, each hop the child of the one before.
	if err := n.Tracing.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	spans := exp.GetSpans()
	byID := map[string]tracetest.SpanStub{}
	for _, s := range spans {
		if s.SpanContext.TraceID().String() == traceID {
			byID[s.SpanContext.SpanID().String()] = s
		}
	}
	find := func(name, parent string) tracetest.SpanStub {
		t.Helper()
		for _, s := range byID {
			if s.Name == name && (parent == "" || s.Parent.SpanID().String() == parent) {
				return s
			}
		}
		var names []string
		for _, s := range byID {
			names = append(names, s.Name+" <- "+byID[s.Parent.SpanID().String()].Name)
		}
		t.Fatalf("no span %q (child of %s) in trace %s; it has: %s", name, byID[parent].Name, traceID, strings.Join(names, ", "))
		return tracetest.SpanStub{}
	}
	id := func(s tracetest.SpanStub) string { return s.SpanContext.SpanID().String() }
	callback := find("POST /pay/v1/notify/{channel}", "")
	if callback.Parent.IsValid() {
		t.Errorf("the callback's span has a parent: the channel sent no traceparent")
	}
	paid := find("outbox publish order.paid", id(callback))
	fulfil := find("consume fulfil", id(paid))
	accept := find("POST /pos/v1/orders/{order_id}/accept", id(fulfil))
	accepted := find("outbox publish order.accepted", id(accept))
	find("consume push", id(accepted))
	find("consume order-ledger", id(paid))
}

// TestActiveQueryJoinsThePayTrace: with the channel's callback lost, the
// payment centre's active query (a job, seconds later) finds the payment
// and pays the order in the trace of the customer's pay request: the
// order.paid on the customer's socket carries the pay request's trace id.
func TestActiveQueryJoinsThePayTrace(t *testing.T) {
	t.Parallel()
	n := nodetest.Start(t, func(c *node.Config) { c.PayQuery = 300 * time.Millisecond })
	base := n.URL()
	if err := n.Sim.SetFaults("wechatpay", paysim.Faults{DropCallbacks: true}); err != nil {
		t.Fatal(err)
	}
	cust, cws, created, _ := orderOnSocket(t, base, "+8613912340002")
	p := cust.Do("POST", "/api/v1/orders/"+created.OrderID+"/pay", `{"channel":"wechatpay"}`)
	var st struct {
		PayURL string `json:"pay_url"`
	}
	json.Unmarshal(p.Body, &st)
	payTrace := p.Header.Get("X-Trace-Id")
	if p.Status != 201 || len(payTrace) != 32 {
		t.Fatalf("pay: %d %s (trace %q)", p.Status, p.Body, payTrace)
	}
	res, err := http.Post(st.PayURL, "", nil) // the customer pays; the callback is dropped
	if err != nil || res.StatusCode != 200 {
		t.Fatalf("payer pays: %v %v", res, err)
	}
	res.Body.Close()
	paid, _, err := cws.Until(15*time.Second, func(m pushtest.Msg) bool { return m.Type == "order.paid" && m.OrderID == created.OrderID })
	if err != nil {
		t.Fatalf("order.paid by the active query: %v", err)
	}
	if !strings.Contains(paid.Traceparent, payTrace) {
		t.Errorf("order.paid came with traceparent %q, want the pay request's trace %s", paid.Traceparent, payTrace)
	}
}

// TestExpiryJoinsTheOrderTrace: an unpaid order's expiry, fired later by
// its JetStream timer, is in the trace of the request that placed it.
func TestExpiryJoinsTheOrderTrace(t *testing.T) {
	t.Parallel()
	n := nodetest.Start(t, func(c *node.Config) { c.OrderTTL = time.Second })
	base := n.URL()
	_, cws, created, placed := orderOnSocket(t, base, "+8613912340003")
	m, _, err := cws.Until(15*time.Second, func(m pushtest.Msg) bool { return m.Type == "order.cancelled" && m.OrderID == created.OrderID })
	if err != nil {
		t.Fatalf("order.cancelled by expiry: %v", err)
	}
	if !strings.Contains(m.Traceparent, placed) {
		t.Errorf("the expiry's order.cancelled came with traceparent %q, want the placing request's trace %s", m.Traceparent, placed)
	}
}

// orderOnSocket logs a customer in, opens their events socket (closed when
// the test ends) and places an order; it returns the order and the trace
// id of the request that placed it.
func orderOnSocket(t *testing.T, base, phone string) (*nodetest.Client, *pushtest.Conn, placed, string) {
	t.Helper()
	cust := nodetest.Login(t, base, phone)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cws, err := pushtest.Dial(ctx, base, "/api/v1/ws", cust.Token, "")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cws.Close() })
	r := cust.Do("POST", "/api/v1/orders", `{"store_id":"1003","items":[{"sku_id":"1003010","qty":1}]}`)
	var created placed
	json.Unmarshal(r.Body, &created)
	trace := r.Header.Get("X-Trace-Id")
	if r.Status != 201 || len(trace) != 32 {
		t.Fatalf("order: %d %s", r.Status, r.Body)
	}
	return cust, cws, created, trace
}

// placed is an order as its creation answers it.
type placed struct {
	OrderID string `json:"order_id"`
}
