package push

import (
	"context"
	"encoding/json"
	"errors"
	"math"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"

	"github.com/surge-platform/surge/internal/fulfil"
	"github.com/surge-platform/surge/internal/platform/bus"
)

// conn is one socket. An idle socket costs its reader goroutine and
// buffers only: writers and pings run in goroutines started on demand.
type conn struct {
	h       *Hub
	ws      *websocket.Conn
	subject string
	user    int64  // customer sockets
	store   int64  // POS sockets
	key     string // POS sockets: the key they opened with (checked again on each heartbeat)

	seen     atomic.Int64 // unix nanos of the last frame from the client
	probed   atomic.Int64 // unix nanos of the last catch-up the heartbeat started
	pinging  atomic.Bool
	checking atomic.Bool // POS: a check of the key is running
	recheck  atomic.Bool // POS: a check of the key was asked for since the running one began

	mu      sync.Mutex
	queue   [][]byte // waiting to be written
	writing bool     // a writer goroutine is running
	closed  bool
	// The highest seq sent (customers: the id in the window; POS: the place
	// in the store's queue), the highest announced, and whether a goroutine
	// is catching up.
	cursor, want int64
	catching     bool
	greeted      bool // POS: hello is out (what comes outside the queue waits for it)
	// POS: the trace of each order announced and not sent yet (order id ->
	// traceparent), sent with the order; at most maxTraces.
	traces map[int64]string
}

// maxTraces bounds a POS socket's traces of orders not sent yet: past it
// they are forgotten (the orders go out without one).
const maxTraces = 256

// send queues b for the client; a client that lets MaxQueue messages pile
// up is cut off.
func (c *conn) send(b []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.sendLocked(b)
}

// sendLocked is send with c.mu held.
func (c *conn) sendLocked(b []byte) {
	if c.closed {
		return
	}
	if len(c.queue) >= c.h.cfg.MaxQueue {
		c.h.slow.Add(1)
		c.closeLocked(websocket.StatusPolicyViolation, "slow consumer")
		return
	}
	c.queue = append(c.queue, b)
	if !c.writing {
		c.writing = true
		go c.flush()
	}
}

func (c *conn) sendJSON(v any) {
	b, _ := json.Marshal(v)
	c.send(b)
}

// flush writes the queue until it is empty.
func (c *conn) flush() {
	for {
		c.mu.Lock()
		batch := c.queue
		c.queue = nil
		if len(batch) == 0 || c.closed {
			c.writing = false
			c.announceLocked(c.want) // a catch-up paused for this client resumes
			c.mu.Unlock()
			return
		}
		c.mu.Unlock()
		for _, b := range batch {
			ctx, cancel := context.WithTimeout(c.h.ctx, c.h.cfg.Write)
			err := c.ws.Write(ctx, websocket.MessageText, b)
			cancel()
			if err != nil {
				c.mu.Lock()
				c.writing = false
				c.mu.Unlock()
				c.kill()
				return
			}
			c.h.sent.Add(1)
		}
	}
}

// replay sends a reconnecting customer the events after last, from the
// window in Stream. When the window cannot tell what was missed it sends
// {"type":"resync"}: the client reads its orders instead. Without last, the
// socket starts at the stream's end. Events announced meanwhile follow.
func (c *conn) replay(last uint64, resume bool) {
	ctx, cancel := context.WithTimeout(c.h.ctx, 10*time.Second)
	defer cancel()
	var msgs []bus.Msg
	complete, err := true, error(nil)
	if resume {
		var end uint64
		msgs, complete, end, err = c.h.bus.Replay(ctx, Stream.Name, logSubject(c.user), last, Window)
		if err == nil && last > end { // an id from before the stream was lost
			last = end
		}
	} else {
		last, err = c.h.lastSeq(ctx)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.cursor = int64(last)
	if err != nil || !complete {
		c.h.resyncs.Add(1)
		c.sendLocked(mustJSON(map[string]string{"type": "resync", "reason": resyncReason(err)}))
	}
	for _, m := range msgs {
		c.h.resumed.Add(1)
		c.deliverLocked(m)
	}
	c.sendLocked(mustJSON(map[string]string{"type": "hello", "user_id": strconv.FormatInt(c.user, 10),
		"last_event_id": strconv.FormatInt(c.cursor, 10)}))
	c.catching = false
	c.announceLocked(c.want)
}

// deliverLocked sends one event of the customer's window.
func (c *conn) deliverLocked(m bus.Msg) {
	c.cursor = max(c.cursor, int64(m.Seq))
	var ev Event
	if json.Unmarshal(m.Data, &ev) != nil {
		return
	}
	ev.ID = m.Seq
	c.sendLocked(mustJSON(ev))
}

func resyncReason(err error) string {
	if err != nil {
		return "events unavailable; read your orders"
	}
	return "more was missed than the window holds; read your orders"
}

// offer hands a socket an announcement: a customer's event that follows
// exactly what the socket has sent, with nothing else pending, is sent at
// once; anything else is caught up from the window.
func (c *conn) offer(n news) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.store != 0 && n.Revoked {
		if !c.h.dropRevocations.Load() {
			go c.checkKey() // a socket opened with the new key stays
		}
		return
	}
	if c.store != 0 && n.Seq == 0 {
		if len(n.Msg) > 0 && c.greeted {
			c.sendLocked(n.Msg) // a store's message outside its queue
		}
		return
	}
	if c.store != 0 && n.Trace != "" && n.OrderID != 0 {
		if c.traces == nil || len(c.traces) >= maxTraces {
			c.traces = make(map[int64]string)
		}
		c.traces[n.OrderID] = n.Trace
	}
	if n.Prev > 0 && len(n.Msg) > 0 && c.store == 0 && !c.closed && !c.catching && c.cursor == n.Prev && c.want <= c.cursor {
		c.cursor, c.want = n.Seq, n.Seq
		c.h.direct.Add(1)
		c.sendLocked(n.Msg)
		return
	}
	c.announceLocked(n.Seq)
}

// announce tells a socket that its stream (the customer's window, or the
// store's queue) has reached seq. The socket catches up from the stream, so
// a lost or reordered announcement is made good by the next one.
func (c *conn) announce(seq int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.announceLocked(seq)
}

func (c *conn) announceLocked(seq int64) {
	if c.closed {
		return
	}
	c.want = max(c.want, seq)
	if c.want > c.cursor && !c.catching {
		c.catching = true
		go c.catchUp()
	}
}

// catchUp sends what follows the socket's cursor until it reaches the
// highest announced seq.
func (c *conn) catchUp() {
	for {
		c.mu.Lock()
		if c.cursor >= c.want || c.closed || len(c.queue) > c.h.cfg.MaxQueue/2 {
			// Done, or the client is behind: flush resumes once it drains.
			c.catching = false
			c.mu.Unlock()
			return
		}
		cursor, target := c.cursor, c.want
		c.mu.Unlock()
		ctx, cancel := context.WithTimeout(c.h.ctx, 10*time.Second)
		var n int
		var send func()
		var err error
		if c.store != 0 {
			var list []fulfil.NewOrder
			list, err = c.h.stores.Queued(ctx, c.store, cursor, c.h.batch())
			n, send = len(list), func() {
				for _, e := range list {
					c.cursor = max(c.cursor, e.Seq)
					tp := c.traces[e.Order.ID]
					delete(c.traces, e.Order.ID)
					c.sendLocked(mustJSON(posOrder{Type: "order.new", NewOrder: e, Trace: tp}))
				}
			}
		} else {
			var msgs []bus.Msg
			// An announced seq is where the window ends (as far as this
			// socket knows): no need to ask past it.
			upto := uint64(target)
			if target == math.MaxInt64 {
				upto = 0
			}
			msgs, err = c.h.bus.After(ctx, Stream.Name, logSubject(c.user), uint64(cursor), upto, c.h.batch())
			n, send = len(msgs), func() {
				for _, m := range msgs {
					c.deliverLocked(m)
				}
			}
		}
		cancel()
		c.mu.Lock()
		if err != nil {
			c.h.log.Warn("push: catch up", "store_id", c.store, "user_id", c.user, "err", err)
			c.catching = false // the next announcement, a reconnect or the poll retries
			c.mu.Unlock()
			return
		}
		send()
		if n == 0 && c.want == target {
			// Nothing more (acknowledged by another terminal, or aged out of
			// the window), and nothing announced while we read.
			c.want = c.cursor
		}
		c.mu.Unlock()
	}
}

// posOrder is a new order as a POS socket receives it: the pull API's
// entry with a type.
type posOrder struct {
	Type string `json:"type"`
	fulfil.NewOrder
	// Trace is the trace that queued the order (W3C traceparent), when
	// this node was told it: a POS that sends it back as the traceparent
	// header of its accept puts the store's steps in the same trace.
	Trace string `json:"traceparent,omitempty"`
}

// inbound is a message from a client.
type inbound struct {
	Type   string      `json:"type"`
	Cursor json.Number `json:"cursor"` // a number or a string holding one
}

// readLoop reads the client's messages until the socket ends.
func (c *conn) readLoop() {
	defer c.kill()
	for {
		_, b, err := c.ws.Read(c.h.ctx)
		if err != nil {
			return
		}
		c.seen.Store(time.Now().UnixNano())
		var in inbound
		if json.Unmarshal(b, &in) != nil {
			c.sendJSON(errMsg("invalid_message", "messages are JSON objects with a type"))
			continue
		}
		switch {
		case in.Type == "ping":
			c.send([]byte(`{"type":"pong"}`))
		case in.Type == "ack" && c.store != 0:
			cur, err := in.Cursor.Int64()
			if err != nil || cur < 0 {
				c.sendJSON(errMsg("invalid_cursor", "ack needs a cursor: a non-negative integer"))
				continue
			}
			ctx, cancel := context.WithTimeout(c.h.ctx, 5*time.Second)
			_, err = c.h.stores.Ack(ctx, c.store, cur)
			cancel()
			if err != nil {
				c.sendJSON(errMsg("unavailable", "acknowledgement not stored; send it again"))
			}
		default:
			c.sendJSON(errMsg("unknown_message", "unknown message type "+strconv.Quote(in.Type)))
		}
	}
}

func errMsg(code, msg string) map[string]any {
	return map[string]any{"type": "error", "error": map[string]string{"code": code, "message": msg}}
}

// checkKey closes a POS socket whose key no longer opens its store (it
// was rotated), with StatusKeyRotated. A check that cannot tell (the
// database away) leaves the socket open: the next heartbeat asks again.
//
// One check runs at a time, so a slow database does not pile them up; a
// check asked for meanwhile (a rotation announced while a heartbeat's check
// reads) runs again after it, as the running one may have read the key
// before the rotation.
func (c *conn) checkKey() {
	c.recheck.Store(true)
	for c.recheck.Load() && c.checking.CompareAndSwap(false, true) {
		for c.recheck.Swap(false) {
			ctx, cancel := context.WithTimeout(c.h.ctx, 5*time.Second)
			store, err := c.h.stores.Store(ctx, c.key)
			cancel()
			if errors.Is(err, fulfil.ErrBadKey) || err == nil && store != c.store {
				c.h.revoked.Add(1)
				c.close(StatusKeyRotated, "the POS key was rotated: connect with the new key")
				c.checking.Store(false)
				return
			}
		}
		c.checking.Store(false) // then a check asked for just before this is not lost
	}
}

// StatusKeyRotated is the close status of a POS socket whose key was
// rotated.
const StatusKeyRotated websocket.StatusCode = 4001

// ping checks a quiet client.
func (c *conn) ping() {
	defer c.pinging.Store(false)
	ctx, cancel := context.WithTimeout(c.h.ctx, c.h.cfg.Write)
	defer cancel()
	if err := c.ws.Ping(ctx); err == nil {
		c.seen.Store(time.Now().UnixNano())
	}
}

// kill drops the socket at once (no close handshake).
func (c *conn) kill() {
	c.mu.Lock()
	ended := c.endLocked()
	c.mu.Unlock()
	if ended {
		c.h.leave(c, true)
		c.ws.CloseNow()
	}
}

// close ends the socket with a status the client sees; it waits for the
// close handshake (a few seconds at most).
func (c *conn) close(code websocket.StatusCode, reason string) {
	c.mu.Lock()
	ended := c.endLocked()
	c.mu.Unlock()
	if ended {
		c.h.leave(c, true)
		if c.ws.Close(code, reason) != nil {
			c.ws.CloseNow()
		}
	}
}

// closeLocked is close with c.mu held: unregistering (which may wait on the
// bus) and the handshake run on their own.
func (c *conn) closeLocked(code websocket.StatusCode, reason string) {
	if c.endLocked() {
		go func() {
			c.h.leave(c, true)
			if c.ws.Close(code, reason) != nil {
				c.ws.CloseNow()
			}
		}()
	}
}

// endLocked marks the socket closed; false if it was already. The caller
// then unregisters it (h.leave) without holding c.mu.
func (c *conn) endLocked() bool {
	if c.closed {
		return false
	}
	c.closed = true
	return true
}

func mustJSON(v any) []byte {
	b, _ := json.Marshal(v)
	return b
}
