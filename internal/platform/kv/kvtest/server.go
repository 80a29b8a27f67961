package kvtest

import (
	"net"
	"os"
	"os/exec"
	"syscall"
	"testing"
	"time"
)

// Server is a private redis-server started by a test, never the shared
// one: the test may freeze it (SIGSTOP) and restart it empty. It keeps
// nothing on disk (no RDB, no AOF), like a cache-only deployment.
type Server struct {
	tb   testing.TB
	Addr string // host:port
	dir  string
	cmd  *exec.Cmd
	done chan struct{}
}

// StartRedis starts a redis-server on a free port and stops it when the
// test ends. A missing redis-server fails the test unless
// SURGE_TEST_SKIP_REDIS=1.
func StartRedis(tb testing.TB) *Server {
	tb.Helper()
	if _, err := exec.LookPath("redis-server"); err != nil {
		if os.Getenv("SURGE_TEST_SKIP_REDIS") == "1" {
			tb.Skip("redis-server not installed, skipped by SURGE_TEST_SKIP_REDIS=1")
		}
		tb.Fatal("redis-server not installed (apt-get install redis-server, or SURGE_TEST_SKIP_REDIS=1 to skip)")
	}
	s := &Server{tb: tb, dir: tb.TempDir()}
	for attempt := 0; ; attempt++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			tb.Fatal(err)
		}
		s.Addr = l.Addr().String()
		l.Close()
		if s.start() {
			break
		}
		if attempt == 5 {
			tb.Fatalf("redis-server did not start on a free port")
		}
	}
	tb.Cleanup(s.stop)
	return s
}

// URL is the redis:// URL of database 0 with the given query ("" for none).
func (s *Server) URL(query string) string {
	u := "redis://" + s.Addr + "/0"
	if query != "" {
		u += "?" + query
	}
	return u
}

// start runs redis-server on s.Addr and waits until it accepts
// connections; false if it exited first (the port was taken).
func (s *Server) start() bool {
	s.tb.Helper()
	_, port, _ := net.SplitHostPort(s.Addr)
	s.cmd = exec.Command("redis-server", "--bind", "127.0.0.1", "--port", port, "--save", "", "--appendonly", "no",
		"--dir", s.dir, "--loglevel", "warning")
	if err := s.cmd.Start(); err != nil {
		s.tb.Fatal(err)
	}
	done := make(chan struct{})
	s.done = done
	go func() { s.cmd.Wait(); close(done) }()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		select {
		case <-done:
			return false
		default:
		}
		if c, err := net.DialTimeout("tcp", s.Addr, time.Second); err == nil {
			c.Close()
			return true
		}
	}
	s.tb.Fatalf("redis-server on %s not accepting after 10s", s.Addr)
	return false
}

func (s *Server) signal(sig syscall.Signal) {
	s.tb.Helper()
	if err := s.cmd.Process.Signal(sig); err != nil {
		s.tb.Fatalf("redis-server %s: signal %v: %v", s.Addr, sig, err)
	}
}

// Freeze stops the server with SIGSTOP: connections stay open and nothing
// is answered, as with a server stuck or a network that drops packets.
func (s *Server) Freeze() { s.signal(syscall.SIGSTOP) }

// Thaw resumes a frozen server (SIGCONT).
func (s *Server) Thaw() { s.signal(syscall.SIGCONT) }

// Kill stops the server with SIGKILL and waits for it to exit.
func (s *Server) Kill() {
	s.tb.Helper()
	s.cmd.Process.Signal(syscall.SIGCONT)
	s.signal(syscall.SIGKILL)
	<-s.done
}

// Restart kills the server and starts it again on the same address,
// empty: a restart without persistence.
func (s *Server) Restart() {
	s.tb.Helper()
	s.Kill()
	s.Start()
}

// Start starts a killed server again on its address, empty.
func (s *Server) Start() {
	s.tb.Helper()
	for attempt := 0; !s.start(); attempt++ {
		if attempt == 20 { // the port may linger for a moment
			s.tb.Fatalf("redis-server did not start again on %s", s.Addr)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (s *Server) stop() {
	if s.cmd.Process != nil {
		s.cmd.Process.Signal(syscall.SIGCONT)
		s.cmd.Process.Kill()
		<-s.done
	}
}
