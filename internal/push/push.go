// Package push is the push centre: customers' and store POS terminals'
// WebSockets. Order events reach a customer's sockets on whichever push
// node holds them (routed over NATS subjects per customer and per store);
// a customer who reconnects with the last event id gets what was missed
// (a bounded window), and a POS gets everything still unacknowledged in
// its store's queue.
//
// Heartbeats: the server pings a socket idle for Config.Ping and drops one
// silent for Config.Dead; clients send {"type":"ping"} and get
// {"type":"pong"}. A client that does not read fast enough is cut off
// (close code 1008, "slow consumer") instead of growing the node's memory.
package push

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"

	"github.com/surge-platform/surge/internal/fulfil"
	"github.com/surge-platform/surge/internal/member"
	"github.com/surge-platform/surge/internal/platform/bus"
	"github.com/surge-platform/surge/internal/platform/errkind"
	"github.com/surge-platform/surge/internal/platform/web"
)

var (
	ErrBadCursor = errkind.New(errkind.Invalid, "invalid_cursor", "cursor and last_event_id are non-negative integers")
	ErrNoToken   = errkind.New(errkind.Unauthorized, "invalid_token", "missing Authorization: Bearer <token> (or access_token=)") // as REST says (member.ErrToken)
)

// Config tunes the hub; the zero value gets the defaults.
type Config struct {
	Ping     time.Duration // ping a socket idle this long; 0 = 25s
	Dead     time.Duration // drop a socket silent this long; 0 = 3 × Ping
	MaxQueue int           // messages waiting for a slow client before it is cut off; 0 = 256
	Write    time.Duration // longest write of one message; 0 = 10s
}

func (c Config) withDefaults() Config {
	if c.Ping <= 0 {
		c.Ping = 25 * time.Second
	}
	if c.Dead <= 0 {
		c.Dead = 3 * c.Ping
	}
	if c.MaxQueue <= 0 {
		c.MaxQueue = 256
	}
	if c.Write <= 0 {
		c.Write = 10 * time.Second
	}
	return c
}

// Stats counts what a hub did.
type Stats struct {
	Customers  int64 `json:"customers"` // sockets open now
	POS        int64 `json:"pos"`
	Subjects   int64 `json:"subjects"` // live subjects followed
	Sent       int64 `json:"sent"`     // messages written
	Slow       int64 `json:"slow"`     // sockets cut off as slow consumers
	Dead       int64 `json:"dead"`     // sockets dropped for missing heartbeats
	Resumed    int64 `json:"resumed"`  // events replayed to reconnecting customers
	Resyncs    int64 `json:"resyncs"`  // reconnects told to read instead (window passed)
	Direct     int64 `json:"direct"`   // customer events sent straight from their announcement (no window read)
	Revoked    int64 `json:"revoked"`  // POS sockets closed because their key was rotated
	HeapInuse  int64 `json:"heap_inuse"`
	StackInuse int64 `json:"stack_inuse"`
	Sys        int64 `json:"sys"`
	Goroutines int64 `json:"goroutines"`
}

// Hub holds a node's sockets.
type Hub struct {
	cfg    Config
	bus    *bus.Bus
	mux    *bus.Mux
	users  *member.Service
	stores *fulfil.Service
	log    *slog.Logger

	ctx    context.Context // lives until Run returns; sockets use it
	cancel context.CancelFunc

	mu        sync.RWMutex
	bySubject map[string]map[*conn]struct{}

	customers, pos, sent, slow, dead, resumed, resyncs, direct, revoked atomic.Int64

	dropRevocations atomic.Bool // tests: as if every rotation's announcement were lost

	lastMu sync.Mutex // the stream's end, read at most once a second (a reconnect storm)
	last   uint64
	lastAt time.Time
}

// lastSeq returns the end of Stream, as of at most a second ago: a socket
// starting there may be sent events of the second before it connected,
// which its client reads anyway.
func (h *Hub) lastSeq(ctx context.Context) (uint64, error) {
	h.lastMu.Lock()
	defer h.lastMu.Unlock()
	if time.Since(h.lastAt) < time.Second {
		return h.last, nil
	}
	_, last, err := h.bus.StreamInfo(ctx, Stream.Name)
	if err != nil {
		return 0, err
	}
	h.last, h.lastAt = last, time.Now()
	return last, nil
}

// batch is how many entries a catch-up reads at once.
func (h *Hub) batch() int { return min(100, max(1, h.cfg.MaxQueue/2)) }

// New returns a hub that authenticates customers with users and POS
// terminals with stores (whose queues it reads and acknowledges). The
// stream it reads must exist (Prepare).
func New(b *bus.Bus, users *member.Service, stores *fulfil.Service, cfg Config, log *slog.Logger) *Hub {
	ctx, cancel := context.WithCancel(context.Background())
	return &Hub{cfg: cfg.withDefaults(), bus: b, mux: b.NewMux(16384), users: users, stores: stores, log: log,
		ctx: ctx, cancel: cancel, bySubject: map[string]map[*conn]struct{}{}}
}

// Routes returns the hub's HTTP routes (pattern -> handler).
func (h *Hub) Routes() map[string]http.Handler {
	return map[string]http.Handler{
		"GET /api/v1/ws": http.HandlerFunc(h.customerWS),
		"GET /pos/v1/ws": http.HandlerFunc(h.posWS),
	}
}

// Run delivers live messages and keeps heartbeats until ctx is done, then
// closes every socket (code 1001: the client reconnects elsewhere).
func (h *Hub) Run(ctx context.Context) error {
	go h.mux.Run(h.ctx, h.dispatch)
	t := time.NewTicker(min(h.cfg.Ping/4, time.Second))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			h.shutdown()
			return nil
		case now := <-t.C:
			h.heartbeat(now)
		}
	}
}

func (h *Hub) shutdown() {
	var wg sync.WaitGroup
	for _, c := range h.all() {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.close(websocket.StatusGoingAway, "server shutting down")
		}()
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(3 * time.Second):
	}
	h.cancel()
}

func (h *Hub) all() []*conn {
	h.mu.RLock()
	defer h.mu.RUnlock()
	var out []*conn
	for _, cs := range h.bySubject {
		for c := range cs {
			out = append(out, c)
		}
	}
	return out
}

// heartbeat pings sockets that have been idle and drops silent ones.
func (h *Hub) heartbeat(now time.Time) {
	for _, c := range h.all() {
		idle := now.Sub(time.Unix(0, c.seen.Load()))
		switch {
		case idle > h.cfg.Dead:
			h.dead.Add(1)
			c.kill()
		case idle > h.cfg.Ping && c.pinging.CompareAndSwap(false, true):
			go c.ping()
		}
		if now.UnixNano()-c.probed.Load() > int64(h.cfg.Ping) {
			// An announcement lost on the way (a bus reconnect, a full
			// buffer, a failed read) is made good here at the latest: the
			// socket catches up, and a POS socket's key is checked again
			// (a rotation's announcement lost).
			c.probed.Store(now.UnixNano())
			c.announce(math.MaxInt64)
			if c.store != 0 {
				go c.checkKey()
			}
		}
	}
}

// Stats returns the hub's counters and the process's memory.
func (h *Hub) Stats() Stats {
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return Stats{Customers: h.customers.Load(), POS: h.pos.Load(), Subjects: int64(h.mux.Len()), Sent: h.sent.Load(),
		Slow: h.slow.Load(), Dead: h.dead.Load(), Resumed: h.resumed.Load(), Resyncs: h.resyncs.Load(), Direct: h.direct.Load(),
		Revoked:   h.revoked.Load(),
		HeapInuse: int64(m.HeapInuse), StackInuse: int64(m.StackInuse), Sys: int64(m.Sys),
		Goroutines: int64(runtime.NumGoroutine())}
}

// join registers c under its subject, following the subject on the first.
func (h *Hub) join(c *conn) error {
	h.mu.Lock()
	cs := h.bySubject[c.subject]
	if cs == nil {
		cs = map[*conn]struct{}{}
		h.bySubject[c.subject] = cs
	}
	cs[c] = struct{}{}
	h.mu.Unlock()
	if err := h.mux.Add(c.subject); err != nil {
		h.leave(c, false)
		return err
	}
	if c.store != 0 {
		h.pos.Add(1)
	} else {
		h.customers.Add(1)
	}
	return nil
}

func (h *Hub) leave(c *conn, followed bool) {
	h.mu.Lock()
	if cs := h.bySubject[c.subject]; cs != nil {
		delete(cs, c)
		if len(cs) == 0 {
			delete(h.bySubject, c.subject)
		}
	}
	h.mu.Unlock()
	if followed {
		h.mux.Remove(c.subject)
		if c.store != 0 {
			h.pos.Add(-1)
		} else {
			h.customers.Add(-1)
		}
	}
}

// dispatch hands one live message to the sockets following its subject.
func (h *Hub) dispatch(subject string, data []byte) {
	h.mu.RLock()
	cs := make([]*conn, 0, len(h.bySubject[subject]))
	for c := range h.bySubject[subject] {
		cs = append(cs, c)
	}
	h.mu.RUnlock()
	var n news
	if len(cs) == 0 || json.Unmarshal(data, &n) != nil {
		return
	}
	for _, c := range cs {
		c.offer(n)
	}
}

// customerWS serves GET /api/v1/ws: the events of the token's customer.
// ?last_event_id=N replays the customer's events after N first.
func (h *Hub) customerWS(w http.ResponseWriter, r *http.Request) {
	userID, err := h.customer(r)
	if err != nil {
		web.Error(w, r, err)
		return
	}
	last, err := param(r, "last_event_id")
	if err != nil {
		web.Error(w, r, err)
		return
	}
	// catching until the replay has set the cursor
	c := &conn{subject: userSubject(userID), user: userID, catching: true}
	if !h.accept(w, r, c) {
		return
	}
	go c.replay(uint64(last), r.URL.Query().Has("last_event_id"))
	go c.readLoop()
}

// posWS serves GET /pos/v1/ws: new orders of the key's store. ?cursor=N
// acknowledges the queue up to N (as the pull API does) and sends every
// entry after it, then each new one as it comes.
func (h *Hub) posWS(w http.ResponseWriter, r *http.Request) {
	key, ok := web.Token(r)
	if !ok {
		web.Error(w, r, fulfil.ErrBadKey.With("missing Authorization: Bearer <store POS key> (or access_token=)"))
		return
	}
	storeID, err := h.stores.Store(r.Context(), key)
	if err != nil {
		web.Error(w, r, err)
		return
	}
	cursor, err := param(r, "cursor")
	if err != nil {
		web.Error(w, r, err)
		return
	}
	// A cursor from before the queue was lost reads from the start.
	if cursor, err = h.stores.Ack(r.Context(), storeID, cursor); err != nil {
		web.Error(w, r, err)
		return
	}
	// catching until hello is out, so hello comes first
	c := &conn{subject: storeSubject(storeID), store: storeID, key: key, cursor: cursor, catching: true}
	if !h.accept(w, r, c) {
		return
	}
	c.mu.Lock()
	c.sendLocked(mustJSON(map[string]string{"type": "hello", "store_id": strconv.FormatInt(storeID, 10)}))
	c.catching, c.greeted = false, true
	c.announceLocked(math.MaxInt64) // send what is queued already
	c.mu.Unlock()
	go c.readLoop()
}

// accept upgrades the request and registers c (whose subject and owner are
// set); false means it failed (and was answered).
func (h *Hub) accept(w http.ResponseWriter, r *http.Request, c *conn) bool {
	// The server's read/write timeouts were set on the connection for HTTP;
	// a socket lives on heartbeats instead.
	rc := http.NewResponseController(w)
	_ = rc.SetReadDeadline(time.Time{})
	_ = rc.SetWriteDeadline(time.Time{})
	// Clients authenticate with a token, not a cookie, so a page of another
	// origin cannot borrow a customer's session: any origin may connect.
	ws, err := websocket.Accept(smallBuffers{w}, r, &websocket.AcceptOptions{InsecureSkipVerify: true})
	if err != nil {
		return false // Accept answered the request
	}
	ws.SetReadLimit(4096)
	c.h, c.ws = h, ws
	c.seen.Store(time.Now().UnixNano())
	c.probed.Store(time.Now().UnixNano())
	if err := h.join(c); err != nil {
		h.log.Warn("push: follow subject", "subject", c.subject, "err", err)
		ws.Close(websocket.StatusTryAgainLater, "try again later")
		return false
	}
	return true
}

// smallBuffers hands the socket smaller buffers than net/http's 4 KiB
// reader and writer: clients send only small messages, and the server's
// are written through. It saves about 6 KiB per idle socket.
type smallBuffers struct{ http.ResponseWriter }

func (s smallBuffers) Unwrap() http.ResponseWriter { return s.ResponseWriter }

func (s smallBuffers) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	conn, brw, err := http.NewResponseController(s.ResponseWriter).Hijack()
	if err != nil {
		return nil, nil, err
	}
	if err := brw.Writer.Flush(); err != nil {
		conn.Close()
		return nil, nil, err
	}
	r := bufio.NewReaderSize(conn, 512)
	if n := brw.Reader.Buffered(); n > 0 {
		// The client wrote ahead of our answer: keep those bytes buffered,
		// where the websocket library looks for them.
		b, _ := brw.Reader.Peek(n)
		r = bufio.NewReaderSize(io.MultiReader(bytes.NewReader(bytes.Clone(b)), conn), max(512, n))
		if _, err := r.Peek(n); err != nil {
			conn.Close()
			return nil, nil, err
		}
	}
	return conn, bufio.NewReadWriter(r, bufio.NewWriterSize(conn, 1024)), nil
}

// customer is the customer whose token r carries: as the chain's
// authentication step found it (it checks a token once, for every route),
// or checked here when r did not pass the chain.
func (h *Hub) customer(r *http.Request) (int64, error) {
	if in := web.InfoOf(r.Context()); in != nil && (in.UserID != 0 || in.AuthErr != nil) {
		return in.UserID, in.AuthErr
	}
	tok, ok := web.Token(r)
	if !ok {
		return 0, ErrNoToken
	}
	return h.users.Verify(tok)
}

func param(r *http.Request, name string) (int64, error) {
	v := r.URL.Query().Get(name)
	if v == "" {
		return 0, nil
	}
	x, err := strconv.ParseInt(v, 10, 64)
	if err != nil || x < 0 {
		return 0, ErrBadCursor.With("%s %q is not a non-negative integer", name, v)
	}
	return x, nil
}
