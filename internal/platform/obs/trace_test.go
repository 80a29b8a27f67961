package obs

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"

	"go.opentelemetry.io/otel/sdk/trace/tracetest"
)

const parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

// The carrier writes traceparent in lower case and reads it in any case
// (a NATS header written by another client as "Traceparent").
func TestCarrierCase(t *testing.T) {
	ctx := Extract(context.Background(), map[string]string{"Traceparent": parent})
	if got := Traceparent(ctx); got != parent {
		t.Fatalf("read back %q, want %q", got, parent)
	}
	h := map[string]string{"Surge-Type": "x"}
	Inject(ctx, h)
	if h["traceparent"] != parent || len(h) != 2 {
		t.Fatalf("injected %v, want a lower-case traceparent beside Surge-Type", h)
	}
	empty := map[string]string{}
	Inject(context.Background(), empty)
	if len(empty) != 0 || Traceparent(context.Background()) != "" || WithTraceparent(context.Background(), "") != context.Background() {
		t.Fatal("a context without a trace wrote or read one")
	}
}

// A recorded trace: spans are exported; without an exporter nothing is,
// and ids are made all the same.
func TestTracingRecordsOnlyWithAnExporter(t *testing.T) {
	exp := tracetest.NewInMemoryExporter()
	on := NewTracing("api", exp, 1)
	_, sp := on.Tracer().Start(context.Background(), "x")
	sp.End()
	on.Flush(context.Background())
	if len(exp.GetSpans()) != 1 {
		t.Fatalf("%d spans exported, want 1", len(exp.GetSpans()))
	}
	off := NewTracing("api", nil, 1)
	ctx, sp := off.Tracer().Start(context.Background(), "y")
	if sp.IsRecording() || Traceparent(ctx) == "" {
		t.Fatalf("without an exporter: recording %v, traceparent %q", sp.IsRecording(), Traceparent(ctx))
	}
	sp.End()
	// A caller's trace is continued, recorded or not.
	ctx, sp = off.Tracer().Start(WithTraceparent(context.Background(), parent), "z")
	if got := Traceparent(ctx)[3:35]; got != parent[3:35] {
		t.Fatalf("child of %s has trace %s", parent, got)
	}
	sp.End()
}

func TestTransportSendsTraceparent(t *testing.T) {
	got := make(chan string, 2)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { got <- r.Header.Get("Traceparent") }))
	defer srv.Close()
	c := &http.Client{Transport: Transport{}}
	for _, ctx := range []context.Context{WithTraceparent(context.Background(), parent), context.Background()} {
		req, _ := http.NewRequestWithContext(ctx, "GET", srv.URL, nil)
		res, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
	}
	if a, b := <-got, <-got; a != parent || b != "" {
		t.Fatalf("sent %q and %q, want %q and none", a, b, parent)
	}
}

// LogHandler adds trace_id to lines logged with a traced context, once.
func TestLogHandlerAddsTraceID(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(LogHandler{Handler: slog.NewJSONHandler(&buf, nil)})
	ctx := WithTraceparent(context.Background(), parent)
	log.InfoContext(ctx, "a")
	log.With("trace_id", "given").InfoContext(ctx, "b")
	log.Info("c")
	var lines []map[string]any
	for _, l := range bytes.Split(bytes.TrimSpace(buf.Bytes()), []byte("\n")) {
		var m map[string]any
		json.Unmarshal(l, &m)
		lines = append(lines, m)
	}
	if lines[0]["trace_id"] != parent[3:35] || lines[1]["trace_id"] != "given" || lines[2]["trace_id"] != nil ||
		bytes.Count(buf.Bytes(), []byte("trace_id")) != 2 {
		t.Fatalf("lines: %s", buf.Bytes())
	}
}
