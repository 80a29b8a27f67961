package main

import (
	"bytes"
	"fmt"
	"net/http"
)

// rawRequest is the wire form of a request to host, for rawConn.send.
func rawRequest(method, host, path string, h http.Header, body []byte) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "%s %s HTTP/1.1\r\nHost: %s\r\nContent-Length: %d\r\n", method, path, host, len(body))
	h.Write(&b)
	b.WriteString("\r\n")
	b.Write(body)
	return b.Bytes()
}

// rawPool hands out raw keep-alive connections to host (the pickup
// bench's callbacks and accepts): net/http's client spends two goroutines
// and their hand-offs on each connection, and the load generator shares
// the two cores with surge.
type rawPool struct {
	host string
	idle chan *rawConn
}

func newRawPool(host string, size int) *rawPool {
	return &rawPool{host: host, idle: make(chan *rawConn, size)}
}

// do sends req on an idle connection, or a new one, and returns the
// answer's status. A connection that failed is closed, not reused.
func (p *rawPool) do(req []byte) (int, error) {
	var c *rawConn
	select {
	case c = <-p.idle:
	default:
		c = &rawConn{host: p.host}
	}
	status, err := c.send(req)
	if err != nil {
		if c.conn != nil {
			c.conn.Close()
		}
		return 0, err
	}
	select {
	case p.idle <- c:
	default:
		if c.conn != nil {
			c.conn.Close()
		}
	}
	return status, nil
}

func (p *rawPool) close() {
	for {
		select {
		case c := <-p.idle:
			if c.conn != nil {
				c.conn.Close()
			}
		default:
			return
		}
	}
}
