package monitor

import (
	_ "embed"
	"encoding/json"
	"fmt"
	"net/http"
	"time"
)

//go:embed page/dashboard.html
var page []byte

// Page serves GET /dashboard: one HTML page, its script and styles inline
// (no CDN), that follows /dashboard/events.
func (m *Monitor) Page(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.Write(page)
}

// State serves GET /dashboard/state: the last snapshot as JSON.
func (m *Monitor) State(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(m.Snapshot())
}

// Close ends the dashboards' streams (the server is shutting down: an open
// stream would hold the shutdown for its whole grace period).
func (m *Monitor) Close() { m.closeOnce.Do(func() { close(m.closing) }) }

// Events serves GET /dashboard/events: a server-sent event with each new
// snapshot (every second) until the client goes.
func (m *Monitor) Events(w http.ResponseWriter, r *http.Request) {
	rc := http.NewResponseController(w)
	rc.SetReadDeadline(time.Time{}) // the server's read timeout would end the stream (and cancel r's context)
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("X-Accel-Buffering", "no") // nginx: do not hold the stream
	ch, stop := m.follow()
	defer stop()
	send := func() bool {
		b, _ := json.Marshal(m.Snapshot())
		rc.SetWriteDeadline(time.Now().Add(10 * time.Second))
		if _, err := fmt.Fprintf(w, "data: %s\n\n", b); err != nil {
			return false
		}
		return rc.Flush() == nil
	}
	if !send() {
		return
	}
	for {
		select {
		case <-r.Context().Done():
			return
		case <-m.closing:
			return
		case <-ch:
			if !send() {
				return
			}
		}
	}
}
