package push

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/surge-platform/surge/internal/platform/bus"
)

// A client that stops reading is cut off once MaxQueue messages wait for
// it, instead of growing the node's memory; one that reads gets them all.
func TestSlowConsumerCutOff(t *testing.T) {
	t.Parallel()
	b, err := bus.Open(context.Background(), "embedded:"+t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	h := New(b, nil, nil, Config{MaxQueue: 16}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	defer h.cancel()
	big := []byte(`{"type":"x","pad":"` + strings.Repeat("x", 64<<10) + `"}`)
	// 600 × 64 KiB = 37.5 MiB: far more than the socket buffers hold. At
	// 12.5 MiB/s a client that reads keeps up even under the race detector
	// on a loaded machine (at 32 MiB/s it fell behind now and then).
	const sends = 600
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c := &conn{subject: "t." + r.URL.Query().Get("name")}
		if !h.accept(w, r, c) {
			return
		}
		go func() {
			for range sends {
				c.send(big)
				time.Sleep(5 * time.Millisecond)
			}
		}()
	}))
	defer srv.Close()
	dial := func(name string) *websocket.Conn {
		ws, _, err := websocket.Dial(context.Background(), strings.Replace(srv.URL, "http", "ws", 1)+"?name="+name, nil)
		if err != nil {
			t.Fatal(err)
		}
		ws.SetReadLimit(1 << 20)
		return ws
	}

	reader := dial("reader")
	defer reader.CloseNow()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for i := range sends {
		if _, _, err := reader.Read(ctx); err != nil {
			t.Fatalf("reading client: message %d: %v", i, err)
		}
	}

	slow := dial("slow")
	defer slow.CloseNow()
	for deadline := time.Now().Add(30 * time.Second); h.Stats().Slow != 1; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the slow client was not cut off: %+v", h.Stats())
		}
	}
	for {
		if _, _, err := slow.Read(ctx); err != nil {
			if websocket.CloseStatus(err) != websocket.StatusPolicyViolation {
				t.Fatalf("slow client saw %v; want close 1008", err)
			}
			break
		}
	}
	if h.Stats().Slow != 1 {
		t.Fatalf("slow cut-offs: %d; want only the slow client", h.Stats().Slow)
	}
}
