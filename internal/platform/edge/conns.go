package edge

import (
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// LimitListener returns ln accepting at most max connections at once (0:
// no cap). A connection over the cap is answered with a bare 503 and
// closed at once, never queued: the client (or nginx) tries another node.
func LimitListener(ln net.Listener, max int) *Listener {
	return &Listener{Listener: ln, max: int64(max)}
}

// Listen is LimitListener, with the connection counts in e's Stats.
func (e *Edge) Listen(ln net.Listener, max int) net.Listener {
	e.conns = LimitListener(ln, max)
	return e.conns
}

// Listener is a listener with a cap on open connections.
type Listener struct {
	net.Listener
	max     int64
	open    atomic.Int64
	refused atomic.Int64
}

var busyReply = []byte("HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\nConnection: close\r\nContent-Length: 81\r\n\r\n" +
	`{"error":{"code":"too_many_connections","message":"too many connections, retry"}}`)

func (l *Listener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if n := l.open.Add(1); l.max > 0 && n > l.max {
			l.open.Add(-1)
			l.refused.Add(1)
			go func() { // off the accept loop: a slow client must not hold it
				c.SetWriteDeadline(time.Now().Add(time.Second))
				c.Write(busyReply)
				c.Close()
			}()
			continue
		}
		return &counted{Conn: c, l: l}, nil
	}
}

// Open returns the connections open now and those refused so far.
func (l *Listener) Open() (open, refused int64) { return l.open.Load(), l.refused.Load() }

type counted struct {
	net.Conn
	l    *Listener
	once sync.Once
}

func (c *counted) Close() error {
	c.once.Do(func() { c.l.open.Add(-1) })
	return c.Conn.Close()
}

// CloseWrite half-closes the connection when the one below can: net/http
// does that before closing one it answered, so that a client still
// sending gets the answer rather than a reset.
func (c *counted) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}
