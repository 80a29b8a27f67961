package web

import (
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"
)

// TestDeadline: a request whose handler waits on a downstream call past
// the deadline answers 503 timeout with Retry-After at the deadline; a
// socket gets no deadline.
func TestDeadline(t *testing.T) {
	h := Chain(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, ok := r.Context().Deadline(); !ok {
			JSON(w, 200, map[string]bool{"deadline": false})
			return
		}
		<-r.Context().Done() // a database that hangs
		Error(w, r, r.Context().Err())
	}), Trace{Log: slog.New(slog.NewTextHandler(io.Discard, nil))}, Recover{}, Deadline{D: 50 * time.Millisecond})
	w := httptest.NewRecorder()
	t0 := time.Now()
	h.ServeHTTP(w, httptest.NewRequest("GET", "/api/v1/orders", nil))
	var b ErrBody
	json.Unmarshal(w.Body.Bytes(), &b)
	if took := time.Since(t0); w.Code != 503 || b.Error.Code != "timeout" || w.Header().Get("Retry-After") == "" || took > 2*time.Second {
		t.Fatalf("a hung call: %d %s %v after %v", w.Code, w.Body, w.Header(), took)
	}
	r := httptest.NewRequest("GET", "/api/v1/ws", nil)
	w = httptest.NewRecorder()
	h.ServeHTTP(w, r)
	if w.Code != 200 {
		t.Fatalf("a socket got a deadline: %d %s", w.Code, w.Body)
	}
}
