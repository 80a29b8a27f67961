package notify

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/failsafe-go/failsafe-go/circuitbreaker"

	"github.com/surge-platform/surge/internal/eventually"
	"github.com/surge-platform/surge/internal/order"
	"github.com/surge-platform/surge/internal/platform/bus"
	"github.com/surge-platform/surge/internal/platform/bus/bustest"
)

const waitFor = 20 * time.Second

var secret = []byte("test-secret")

// fast is a Config whose retries and breaker suit tests.
var fast = Config{Backoff: time.Millisecond, MaxBackoff: 2 * time.Millisecond, BreakerFailures: 100}

var quiet = slog.New(slog.DiscardHandler)

func msg(n int) Message {
	return Message{ID: strconv.Itoa(1000 + n), UserID: 7, OrderID: int64(500 + n), StoreID: 3, Kind: KindReady,
		PickupCode: fmt.Sprintf("%04d", n), Text: fmt.Sprintf("Order %d is ready", 500+n), At: time.Unix(1700000000, 0).UTC()}
}

// mustServe serves h until the test ends and returns its URL.
func mustServe(t *testing.T, h http.Handler) string {
	t.Helper()
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return srv.URL
}

// failFirst answers 503 to the first n POSTs and passes the rest to h,
// counting all of them.
func failFirst(n int64, h http.Handler, hits *atomic.Int64) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if hits.Add(1) <= n {
			http.Error(w, "busy", http.StatusServiceUnavailable)
			return
		}
		h.ServeHTTP(w, r)
	})
}

func post(t *testing.T, url string, body []byte, hdr map[string]string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, url+SinkPath, bytes.NewReader(body))
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var e struct {
		Status string
		Error  struct{ Code string }
	}
	json.NewDecoder(resp.Body).Decode(&e)
	return resp.StatusCode, e.Status + e.Error.Code
}

func TestWebhookAndSink(t *testing.T) {
	t.Parallel()
	sink := NewSink(secret, "sink-token")
	url := mustServe(t, sink.Handler())
	ctx := t.Context()
	m := msg(1)
	if err := NewWebhook(url+SinkPath, secret, 0).Send(ctx, m); err != nil {
		t.Fatalf("Send: %v", err)
	}
	if got := sink.Messages(7); len(got) != 1 || got[0] != m {
		t.Fatalf("Messages(7) = %+v, want [%+v]", got, m)
	}
	resp, err := http.Get(url + SinkPath + "?user_id=7") // no token: pickup codes are not public
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("GET without the token: %d; want 401", resp.StatusCode)
	}
	req, _ := http.NewRequest("GET", url+SinkPath+"?user_id=7", nil)
	req.Header.Set("Authorization", "Bearer sink-token")
	if resp, err = http.DefaultClient.Do(req); err != nil {
		t.Fatal(err)
	}
	var list []Message
	json.NewDecoder(resp.Body).Decode(&list)
	resp.Body.Close()
	if len(list) != 1 || list[0] != m {
		t.Errorf("GET ?user_id=7 = %+v, want [%+v]", list, m)
	}
	if got := sink.Messages(8); len(got) != 0 {
		t.Errorf("Messages(8) = %+v, want none", got)
	}

	body, _ := json.Marshal(msg(2))
	signed := func(b []byte) map[string]string {
		return map[string]string{HeaderSignature: Sign(secret, b), HeaderMessageID: "x1"}
	}
	big := bytes.Repeat([]byte(" "), 70<<10)
	for _, tc := range []struct {
		name     string
		body     []byte
		hdr      map[string]string
		status   int
		response string
	}{
		{"wrong secret", body, map[string]string{HeaderSignature: Sign([]byte("other"), body), HeaderMessageID: "x1"}, 401, "bad_signature"},
		{"no signature", body, map[string]string{HeaderMessageID: "x1"}, 401, "bad_signature"},
		{"no message id", body, map[string]string{HeaderSignature: Sign(secret, body)}, 400, "missing_message_id"},
		{"bad json", []byte(`{"id":`), signed([]byte(`{"id":`)), 400, "invalid_json"},
		{"too large", big, signed(big), 413, "body_too_large"},
		{"stored", body, signed(body), 200, "stored"},
		{"duplicate", body, signed(body), 200, "duplicate"},
	} {
		t.Run(tc.name, func(t *testing.T) { // in order: "duplicate" follows "stored"
			if status, resp := post(t, url, tc.body, tc.hdr); status != tc.status || resp != tc.response {
				t.Errorf("POST = %d %q, want %d %q", status, resp, tc.status, tc.response)
			}
		})
	}
	if n := sink.Count(); n != 2 {
		t.Errorf("Count = %d, want 2", n)
	}
}

func TestDuplicateStoredOnce(t *testing.T) {
	t.Parallel()
	sink := NewSink(secret, "sink-token")
	wh := NewWebhook(mustServe(t, sink.Handler())+SinkPath, secret, 0)
	for range 3 {
		if err := wh.Send(t.Context(), msg(1)); err != nil {
			t.Fatalf("Send: %v", err)
		}
	}
	if n, hits := sink.Count(), sink.Hits(); n != 1 || hits != 3 {
		t.Errorf("Count, Hits = %d, %d; want 1, 3", n, hits)
	}
}

func TestRetries(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name     string
		failures int64
		wantErr  bool
	}{
		{"succeeds on the last attempt", 2, false},
		{"fails after every attempt", 3, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			sink := NewSink(secret, "sink-token")
			var hits atomic.Int64
			url := mustServe(t, failFirst(tc.failures, sink.Handler(), &hits))
			svc := New(fast, NewWebhook(url+SinkPath, secret, 0), quiet)
			err := svc.Send(t.Context(), msg(1))
			if (err != nil) != tc.wantErr || hits.Load() != 3 {
				t.Fatalf("Send = %v after %d attempts; want error %v after 3", err, hits.Load(), tc.wantErr)
			}
			want := Stats{Sent: 1, Breaker: "closed"}
			if tc.wantErr {
				want = Stats{Failed: 1, Breaker: "closed"}
			}
			if got := svc.Stats(); got != want {
				t.Errorf("Stats = %+v, want %+v", got, want)
			}
		})
	}
}

func TestWhatIsRetried(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		status   int
		wantHits int64
	}{
		{400, 1}, {401, 1}, {404, 1}, {422, 1},
		{408, 3}, {429, 3}, {500, 3}, {503, 3},
	} {
		t.Run(strconv.Itoa(tc.status), func(t *testing.T) {
			t.Parallel()
			var hits atomic.Int64
			url := mustServe(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				hits.Add(1)
				w.WriteHeader(tc.status)
			}))
			svc := New(fast, NewWebhook(url, secret, 0), quiet)
			err := svc.Send(t.Context(), msg(1))
			if err == nil || hits.Load() != tc.wantHits || errors.Is(err, ErrRejected) != (tc.wantHits == 1) {
				t.Errorf("Send = %v after %d attempts; want an error after %d", err, hits.Load(), tc.wantHits)
			}
			if st := svc.Stats(); st.Failed != 1 {
				t.Errorf("Stats = %+v, want 1 failed", st)
			}
		})
	}
	t.Run("timeout and refused connection", func(t *testing.T) {
		t.Parallel()
		release := make(chan struct{})
		slow := mustServe(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			io.Copy(io.Discard, r.Body)
			select {
			case <-r.Context().Done():
			case <-release:
			}
		}))
		t.Cleanup(func() { close(release) }) // runs before the server's Close
		closed := httptest.NewServer(http.NotFoundHandler())
		closed.Close()
		for _, url := range []string{slow, closed.URL} {
			err := NewWebhook(url, secret, 50*time.Millisecond).Send(t.Context(), msg(1))
			if err == nil || errors.Is(err, ErrRejected) {
				t.Errorf("Send to %s = %v, want a retryable error", url, err)
			}
		}
	})
}

func TestBreaker(t *testing.T) {
	t.Parallel()
	sink := NewSink(secret, "sink-token")
	sink.SetDown(true)
	url := mustServe(t, sink.Handler())
	svc := New(Config{Attempts: 1, BreakerFailures: 3, BreakerDelay: 200 * time.Millisecond},
		NewWebhook(url+SinkPath, secret, 0), quiet)
	ctx := t.Context()
	for i := range 3 {
		if err := svc.Send(ctx, msg(i)); err == nil || errors.Is(err, circuitbreaker.ErrOpen) {
			t.Fatalf("Send %d = %v, want the sink's 503", i, err)
		}
	}
	if st := svc.Stats(); st.Breaker != "open" || st.Failed != 3 {
		t.Fatalf("Stats = %+v, want 3 failed and the breaker open", st)
	}
	for i := range 10 {
		if err := svc.Send(ctx, msg(10+i)); !errors.Is(err, circuitbreaker.ErrOpen) {
			t.Fatalf("Send while open = %v, want ErrOpen", err)
		}
	}
	if hits, st := sink.Hits(), svc.Stats(); hits != 3 || st.Skipped != 10 {
		t.Fatalf("sink hits = %d, Stats = %+v; want 3 hits, 10 skipped", hits, st)
	}
	sink.SetDown(false)
	eventually.True(t, waitFor, "a send after the half-open delay", func() bool { return svc.Send(ctx, msg(99)) == nil })
	if st := svc.Stats(); st.Breaker != "closed" || st.Sent != 1 || sink.Count() != 1 {
		t.Errorf("Stats = %+v, stored %d; want the breaker closed and 1 sent, stored", st, sink.Count())
	}
}

func TestConcurrentSendsWithFlakySink(t *testing.T) {
	t.Parallel()
	sink := NewSink(secret, "sink-token")
	sink.SetFailing(0.3)
	url := mustServe(t, sink.Handler())
	svc := New(Config{Backoff: time.Millisecond, MaxBackoff: 5 * time.Millisecond, BreakerDelay: 20 * time.Millisecond},
		NewWebhook(url+SinkPath, secret, 0), quiet)
	errs := make([]error, 50)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range errs {
		wg.Go(func() {
			<-start
			errs[i] = svc.Send(t.Context(), msg(i))
		})
	}
	close(start)
	wg.Wait()
	stored := map[string]int{}
	for _, m := range sink.Messages(0) {
		stored[m.ID]++
	}
	for i, err := range errs {
		if n := stored[msg(i).ID]; (err == nil && n != 1) || (err != nil && n != 0) {
			t.Errorf("message %d: Send = %v, stored %d times", i, err, n)
		}
	}
	st := svc.Stats()
	if st.Sent+st.Failed+st.Skipped != 50 || int(st.Sent) != sink.Count() {
		t.Errorf("Stats = %+v, sink stored %d; want sent = stored, sent+failed+skipped = 50", st, sink.Count())
	}
	t.Logf("Stats = %+v, sink hits %d", st, sink.Hits())
}

// warns counts the warnings logged.
type warns struct{ n atomic.Int64 }

func (w *warns) Enabled(context.Context, slog.Level) bool { return true }
func (w *warns) WithAttrs([]slog.Attr) slog.Handler       { return w }
func (w *warns) WithGroup(string) slog.Handler            { return w }
func (w *warns) Handle(_ context.Context, r slog.Record) error {
	if r.Level == slog.LevelWarn {
		w.n.Add(1)
	}
	return nil
}

// startConsume opens an embedded bus, runs svc.Consume on it until the
// test ends, and returns the bus.
func startConsume(t *testing.T, svc *Service) *bus.Bus {
	t.Helper()
	b := bustest.MustOpen(t, "embedded:"+t.TempDir())
	if err := b.EnsureStream(t.Context(), order.Stream); err != nil {
		t.Fatal(err)
	}
	if err := Prepare(t.Context(), b); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- svc.Consume(ctx, b) }()
	t.Cleanup(func() { // before the bus closes
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Consume: %v", err)
		}
	})
	// The consumer starts at the stream's end when first created: publish
	// only once it exists.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if _, err := b.JetStream().Consumer(t.Context(), b.Name(order.Stream.Name), b.Name(Durable)); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("notify consumer not created")
		}
	}
	return b
}

// publish publishes order events the way the outbox relay does and
// returns the last stream sequence.
func publish(t *testing.T, b *bus.Bus, evs ...order.Event) uint64 {
	t.Helper()
	var seq uint64
	for _, ev := range evs {
		data, _ := json.Marshal(ev)
		var err error
		seq, err = b.Publish(t.Context(), bus.Msg{Subject: order.Subject(int(ev.OrderID%8), ev.Type),
			ID: strconv.FormatInt(ev.EventID, 10), Data: data, Header: map[string]string{"Surge-Type": ev.Type}})
		if err != nil {
			t.Fatal(err)
		}
	}
	return seq
}

func event(n int, typ string) order.Event {
	return order.Event{EventID: int64(9000 + n), Type: typ, OrderID: int64(100 + n), UserID: int64(40 + n%2), StoreID: 3,
		PickupCode: fmt.Sprintf("%04d", n), At: time.Now().UTC()}
}

// drained reports whether the notify consumer acked everything it takes up
// to seq (the stream sequence of the last such event) without
// redelivering anything.
func drained(t *testing.T, b *bus.Bus, seq uint64) bool {
	c, err := b.JetStream().Consumer(t.Context(), b.Name(order.Stream.Name), b.Name(Durable))
	if err != nil {
		return false
	}
	info, err := c.Info(t.Context())
	if err != nil {
		return false
	}
	if info.NumRedelivered != 0 {
		t.Fatalf("consumer redelivered %d messages", info.NumRedelivered)
	}
	return info.NumPending == 0 && info.NumAckPending == 0 && info.AckFloor.Stream >= seq
}

func TestConsumeSendsAcceptedAndReady(t *testing.T) {
	t.Parallel()
	sink := NewSink(secret, "sink-token")
	url := mustServe(t, sink.Handler())
	svc := New(fast, NewWebhook(url+SinkPath, secret, 0), quiet)
	b := startConsume(t, svc)
	var evs []order.Event
	for i := range 6 {
		evs = append(evs, event(i, order.EvReady))
	}
	evs = append(evs, event(10, order.EvAccepted))
	seq := publish(t, b, evs...) // the last event it takes
	// Events it does not notify are not even delivered to it (the
	// consumer's filters).
	publish(t, b, event(11, order.EvPaid), event(12, order.EvCompleted))
	publish(t, b, evs[0]) // a relay's replay: deduplicated by the bus

	eventually.True(t, waitFor, "7 messages in the sink", func() bool { return sink.Count() == 7 })
	eventually.True(t, waitFor, "the consumer to ack everything", func() bool { return drained(t, b, seq) })
	if c, err := b.JetStream().Consumer(t.Context(), b.Name(order.Stream.Name), b.Name(Durable)); err != nil {
		t.Fatal(err)
	} else if info, err := c.Info(t.Context()); err != nil || info.Delivered.Stream != seq {
		t.Errorf("last message delivered to the consumer: %+v, %v; want seq %d (the paid and completed events after it are filtered out)",
			info.Delivered, err, seq)
	}
	msgs := sink.Messages(41)
	if len(msgs) != 3 {
		t.Fatalf("user 41 got %d messages, want 3: %+v", len(msgs), msgs)
	}
	for _, m := range append(msgs, sink.Messages(40)...) {
		if m.Kind != KindReady && m.Kind != KindAccepted || !strings.Contains(m.Text, m.PickupCode) ||
			m.ID != strconv.FormatInt(int64(9000+m.OrderID-100), 10) {
			t.Errorf("unexpected message %+v", m)
		}
	}
	if st := svc.Stats(); st.Sent != 7 || st.Failed+st.Skipped != 0 {
		t.Errorf("Stats = %+v, want 7 sent", st)
	}
}

func TestConsumeAcksWhenSinkIsDown(t *testing.T) {
	t.Parallel()
	sink := NewSink(secret, "sink-token")
	sink.SetDown(true)
	url := mustServe(t, sink.Handler())
	var w warns
	svc := New(Config{Attempts: 2, Backoff: time.Millisecond, BreakerFailures: 3, BreakerDelay: time.Hour},
		NewWebhook(url+SinkPath, secret, 0), slog.New(&w))
	b := startConsume(t, svc)
	var evs []order.Event
	for i := range 20 {
		evs = append(evs, event(i, order.EvReady))
	}
	seq := publish(t, b, evs...)

	eventually.True(t, waitFor, "the consumer to ack everything", func() bool { return drained(t, b, seq) })
	st := svc.Stats()
	if st.Failed < 1 || st.Failed+st.Skipped != 20 || st.Sent != 0 || st.Breaker != "open" {
		t.Errorf("Stats = %+v, want 20 failed or skipped, some failed, breaker open", st)
	}
	if n := w.n.Load(); n != 20 {
		t.Errorf("%d warnings logged, want 20 (one per message)", n)
	}
	if hits := sink.Hits(); hits > 3+3 { // 3 to open the breaker, at most one in flight per other worker
		t.Errorf("sink hit %d times after the breaker opened at 3", hits)
	}
}
