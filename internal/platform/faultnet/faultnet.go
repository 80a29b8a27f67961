// Package faultnet is a TCP proxy for tests that injects network faults
// between a client and a real server (PostgreSQL, Redis, NATS): Cut drops
// every connection as a stopped server would, Stall lets nothing through
// as a hung server or a partitioned network would, Resume heals both.
package faultnet

import (
	"net"
	"sync"
	"testing"
)

// Proxy forwards connections accepted on Addr to a target address. The
// zero value is not usable; call New or Start.
type Proxy struct {
	target string
	ln     net.Listener

	mu      sync.Mutex
	cut     bool
	stalled bool
	closed  bool
	healed  chan struct{} // closed (and replaced) when a stall ends, the proxy is cut or closed
	conns   map[*link]struct{}
	wg      sync.WaitGroup
}

// link is one proxied connection: the client's and the target's ends.
type link struct {
	client net.Conn
	mu     sync.Mutex
	server net.Conn // nil until dialled
	closed bool
}

// setServer records the target's end; false when l was closed meanwhile.
func (l *link) setServer(s net.Conn) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return false
	}
	l.server = s
	return true
}

// close closes both ends; the client sees a reset (RST), not an orderly
// end of stream, as when a server process dies.
func (l *link) close() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return
	}
	l.closed = true
	reset(l.client)
	if l.server != nil {
		l.server.Close()
	}
}

func reset(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		tc.SetLinger(0)
	}
	c.Close()
}

// New starts a proxy on 127.0.0.1 (a free port) to target (host:port).
// The caller must Close it.
func New(target string) (*Proxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &Proxy{target: target, ln: ln, healed: make(chan struct{}), conns: map[*link]struct{}{}}
	p.wg.Add(1)
	go p.accept()
	return p, nil
}

// Start is New for a test: it fails tb on error and closes the proxy when
// the test ends.
func Start(tb testing.TB, target string) *Proxy {
	tb.Helper()
	p, err := New(target)
	if err != nil {
		tb.Fatalf("faultnet: %v", err)
	}
	tb.Cleanup(func() { p.Close() })
	return p
}

// Addr is the proxy's host:port, to give clients instead of the target's.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// Cut closes every proxied connection (the client sees a reset) and
// resets every new one at once, until Resume. The proxy keeps its
// address, so clients reconnect to the same place after Resume.
func (p *Proxy) Cut() {
	p.mu.Lock()
	p.cut = true
	conns := p.conns
	p.conns = map[*link]struct{}{}
	p.wakeLocked()
	p.mu.Unlock()
	for l := range conns {
		l.close()
	}
}

// Stall holds every byte in both directions, and every new connection
// before it reaches the target, until Resume (or Cut): connections stay
// open and silent, as with a hung server. Bytes held are delivered, in
// order, after Resume.
func (p *Proxy) Stall() {
	p.mu.Lock()
	p.stalled = true
	p.mu.Unlock()
}

// Resume ends a Cut or a Stall: new connections reach the target again and
// held bytes flow on.
func (p *Proxy) Resume() {
	p.mu.Lock()
	p.cut, p.stalled = false, false
	p.wakeLocked()
	p.mu.Unlock()
}

// Close stops the proxy and closes every connection. It is idempotent.
func (p *Proxy) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	conns := p.conns
	p.conns = nil
	p.wakeLocked()
	p.mu.Unlock()
	err := p.ln.Close()
	for l := range conns {
		l.close()
	}
	p.wg.Wait()
	return err
}

// wakeLocked wakes everything waiting in pass. p.mu must be held.
func (p *Proxy) wakeLocked() {
	close(p.healed)
	p.healed = make(chan struct{})
}

// pass waits while the proxy is stalled and reports whether l may go on
// (false: cut or closed, or l was closed meanwhile).
func (p *Proxy) pass(l *link) bool {
	for {
		p.mu.Lock()
		_, live := p.conns[l]
		if p.closed || p.cut || !live {
			p.mu.Unlock()
			return false
		}
		if !p.stalled {
			p.mu.Unlock()
			return true
		}
		healed := p.healed
		p.mu.Unlock()
		<-healed
	}
}

func (p *Proxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return // closed
		}
		l := &link{client: c}
		p.mu.Lock()
		if p.closed || p.cut {
			p.mu.Unlock()
			reset(c)
			continue
		}
		p.conns[l] = struct{}{}
		p.wg.Add(1)
		p.mu.Unlock()
		go p.serve(l)
	}
}

// serve dials the target for l (once the proxy lets it through) and copies
// both ways until either side ends.
func (p *Proxy) serve(l *link) {
	defer p.wg.Done()
	defer p.drop(l)
	if !p.pass(l) {
		return
	}
	s, err := net.Dial("tcp", p.target)
	if err != nil {
		return // the client sees its connection end, as if the target refused
	}
	if !l.setServer(s) {
		s.Close()
		return
	}
	done := make(chan struct{}, 2)
	go func() { p.copy(l, s, l.client); done <- struct{}{} }()
	go func() { p.copy(l, l.client, s); done <- struct{}{} }()
	<-done
	l.close()
	<-done
}

// copy forwards src to dst, passing each chunk through the stall gate.
func (p *Proxy) copy(l *link, dst, src net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if !p.pass(l) {
				return
			}
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return // either end closed: serve closes the other
		}
	}
}

// drop forgets l and closes it.
func (p *Proxy) drop(l *link) {
	p.mu.Lock()
	delete(p.conns, l)
	p.mu.Unlock()
	l.close()
}
