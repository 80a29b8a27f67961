package bustest

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/surge-platform/surge/internal/platform/bus"
)

// EnvExternal names the environment variable that points the external-mode
// tests at an existing NATS server (e.g. nats://127.0.0.1:4222) instead of
// the one ExternalURL starts.
const EnvExternal = "SURGE_TEST_NATS"

const (
	toolBuildTimeout = 5 * time.Minute  // first `go tool` build of nats-server
	serverUpTimeout  = 30 * time.Second // process start to port open
	serverStopWait   = 10 * time.Second // SIGTERM to exit, then SIGKILL
)

// external is the one nats-server process of this test binary.
var external struct {
	once sync.Once
	mu   sync.Mutex // guards the fields below against StopExternal
	url  string
	err  error
	cmd  *exec.Cmd
	dir  string
	done chan struct{} // closed when the process has exited
	out  *syncBuffer
}

// ExternalURL returns the URL of an external NATS server for tests: $SURGE_TEST_NATS
// if set, else a `go tool nats-server` (the version pinned in go.mod) that
// it starts once per test binary, with JetStream in a temp dir, listening on
// a free port of 127.0.0.1. Tests sharing it must each use a fresh
// namespace (Namespaced). A package whose tests call ExternalURL must stop
// the server after its tests:
//
//	func TestMain(m *testing.M) {
//		code := m.Run()
//		bustest.StopExternal()
//		os.Exit(code)
//	}
//
// (On Linux the server is also killed if the test binary dies first.)
func ExternalURL(tb testing.TB) string {
	tb.Helper()
	if u := os.Getenv(EnvExternal); u != "" {
		return u
	}
	external.once.Do(startExternal)
	external.mu.Lock()
	defer external.mu.Unlock()
	if external.err != nil {
		tb.Fatalf("bustest: external nats-server: %v", external.err)
	}
	return external.url
}

// StopExternal stops the server ExternalURL started, if any, and removes its
// data. ExternalURL fails after it.
func StopExternal() {
	external.once.Do(func() {}) // nothing may start after this
	external.mu.Lock()
	defer external.mu.Unlock()
	stopExternalLocked()
	if external.err == nil {
		external.err = errors.New("stopped by StopExternal")
	}
}

// stopExternalLocked kills the process and removes its dir.
// external.mu must be held.
func stopExternalLocked() {
	if external.cmd != nil {
		_ = external.cmd.Process.Signal(terminate)
		select {
		case <-external.done:
		case <-time.After(serverStopWait):
			_ = external.cmd.Process.Kill()
			<-external.done
		}
		external.cmd = nil
	}
	if external.dir != "" {
		_ = os.RemoveAll(external.dir)
		external.dir = ""
	}
}

func startExternal() {
	external.mu.Lock()
	defer external.mu.Unlock()
	external.err = runExternalLocked()
	if external.err != nil {
		stopExternalLocked()
	}
}

// runExternalLocked starts the server and waits until its port accepts
// connections. external.mu must be held.
func runExternalLocked() error {
	root, err := moduleRoot()
	if err != nil {
		return err
	}
	// `go tool -n` builds the pinned tool (or finds it in the build cache)
	// and prints its path; running that binary directly, rather than under
	// `go tool`, means killing it leaves no orphan behind.
	ctx, cancel := context.WithTimeout(context.Background(), toolBuildTimeout)
	defer cancel()
	build := exec.CommandContext(ctx, "go", "tool", "-n", "nats-server")
	build.Dir = root
	path, err := build.Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return fmt.Errorf("go tool -n nats-server: %w: %s", err, ee.Stderr)
		}
		return fmt.Errorf("go tool -n nats-server: %w", err)
	}
	bin := strings.TrimSpace(string(path))

	port, err := freePort()
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "bustest-nats-")
	if err != nil {
		return err
	}
	external.dir = dir
	external.out = &syncBuffer{}
	cmd := exec.Command(bin, "-a", "127.0.0.1", "-p", strconv.Itoa(port), "-js", "-sd", dir)
	cmd.Dir = root
	cmd.Stdout, cmd.Stderr = external.out, external.out
	dieWithParent(cmd)
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", bin, err)
	}
	external.cmd = cmd
	external.done = make(chan struct{})
	go func(done chan struct{}) {
		_ = cmd.Wait()
		close(done)
	}(external.done)

	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	deadline := time.Now().Add(serverUpTimeout)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			_ = c.Close()
			break
		}
		select {
		case <-external.done:
			return fmt.Errorf("nats-server exited: %s", external.out.String())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("nats-server not listening on %s after %s: %s", addr, serverUpTimeout, external.out.String())
		}
	}
	external.url = "nats://" + addr
	return nil
}

// moduleRoot walks up from the working directory to the dir holding go.mod.
func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no go.mod above the working directory")
		}
		dir = parent
	}
}

// freePort returns a TCP port of 127.0.0.1 that was free a moment ago.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// syncBuffer collects a process's output for error messages.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.buf.Len() < 64<<10 { // keep the start: it says why the server failed
		b.buf.Write(p)
	}
	return len(p), nil
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// Namespaced returns url with a fresh random namespace (?ns=t<hex>), so that
// tests sharing one server do not see each other's subjects and streams.
func Namespaced(tb testing.TB, url string) string {
	tb.Helper()
	var r [6]byte
	if _, err := rand.Read(r[:]); err != nil {
		tb.Fatalf("bustest: namespace: %v", err)
	}
	sep := "?"
	if strings.Contains(url, "?") {
		sep = "&"
	}
	return url + sep + "ns=t" + hex.EncodeToString(r[:])
}

// MustOpen opens url and closes the Bus when tb ends, failing tb on error.
func MustOpen(tb testing.TB, url string) *bus.Bus {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	b, err := bus.Open(ctx, url)
	if err != nil {
		tb.Fatalf("bustest: open: %v", err)
	}
	tb.Cleanup(func() {
		if err := b.Close(); err != nil {
			tb.Errorf("bustest: close: %v", err)
		}
	})
	return b
}
