// Package pushtest is a WebSocket client of the push centre for tests and
// benchmarks: it dials a customer or POS socket and decodes what arrives.
package pushtest

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/coder/websocket"
)

// Msg is any message a push socket sends, decoded loosely.
type Msg struct {
	Type        string      `json:"type"`
	ID          string      `json:"id"` // customer events: resume with last_event_id=
	EventID     string      `json:"event_id"`
	OrderID     string      `json:"order_id"`
	StoreID     string      `json:"store_id"`
	Status      string      `json:"status"`
	PickupCode  string      `json:"pickup_code"`
	Seq         json.Number `json:"seq"` // POS: place in the store's queue
	LastEventID string      `json:"last_event_id"`
	Reason      string      `json:"reason"`
	RefundID    string      `json:"refund_id"` // refund events: the refund, its amount, the order's refunded after it
	Amount      int64       `json:"amount"`
	Refunded    int64       `json:"refunded"`
	Traceparent string      `json:"traceparent"` // the trace of the request that caused it
	Order       struct {
		OrderID string `json:"order_id"`
		StoreID string `json:"store_id"`
		UserID  string `json:"user_id"`
	} `json:"order"`
	Error struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
	Raw []byte `json:"-"`
}

// Conn is one client socket.
type Conn struct {
	WS *websocket.Conn
}

// Dial opens base+path (http:// or ws://) with the bearer token; query is
// added as is ("last_event_id=5"). A refused upgrade returns the HTTP
// status and body in the error.
func Dial(ctx context.Context, base, path, token, query string) (*Conn, error) {
	u := strings.Replace(base, "http", "ws", 1) + path
	if query != "" {
		u += "?" + query
	}
	h := http.Header{}
	if token != "" {
		h.Set("Authorization", "Bearer "+token)
	}
	ws, res, err := websocket.Dial(ctx, u, &websocket.DialOptions{HTTPHeader: h})
	if err != nil {
		if res != nil {
			return nil, &RefusedError{Status: res.StatusCode, Err: err}
		}
		return nil, err
	}
	ws.SetReadLimit(1 << 20)
	return &Conn{WS: ws}, nil
}

// RefusedError is an upgrade the server answered with an HTTP status.
type RefusedError struct {
	Status int
	Err    error
}

func (e *RefusedError) Error() string { return fmt.Sprintf("refused with %d: %v", e.Status, e.Err) }

// Next reads one message.
func (c *Conn) Next(ctx context.Context) (Msg, error) {
	_, b, err := c.WS.Read(ctx)
	if err != nil {
		return Msg{}, err
	}
	var m Msg
	if err := json.Unmarshal(b, &m); err != nil {
		return Msg{}, fmt.Errorf("undecodable message %q: %w", b, err)
	}
	m.Raw = b
	return m, nil
}

// Until reads messages until one satisfies ok or d passes; it returns that
// message and every message read before it.
func (c *Conn) Until(d time.Duration, ok func(Msg) bool) (Msg, []Msg, error) {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	var seen []Msg
	for {
		m, err := c.Next(ctx)
		if err != nil {
			return Msg{}, seen, err
		}
		if ok(m) {
			return m, seen, nil
		}
		seen = append(seen, m)
	}
}

// Send writes v as JSON.
func (c *Conn) Send(ctx context.Context, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return c.WS.Write(ctx, websocket.MessageText, b)
}

// Close closes the socket normally.
func (c *Conn) Close() error { return c.WS.Close(websocket.StatusNormalClosure, "") }

// Query builds a query string from pairs.
func Query(kv ...string) string {
	v := url.Values{}
	for i := 0; i+1 < len(kv); i += 2 {
		v.Set(kv[i], kv[i+1])
	}
	return v.Encode()
}
