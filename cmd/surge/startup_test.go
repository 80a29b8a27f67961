package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/surge-platform/surge/internal/platform/sqldb/sqldbtest"
)

// The real binary, built once per test run (the e2e tests build the same).
var built struct {
	once sync.Once
	path string
	err  error
	out  []byte
}

func surgeBin(t *testing.T) string {
	t.Helper()
	built.once.Do(func() {
		dir, err := os.MkdirTemp("", "surge-startup-")
		if err != nil {
			built.err = err
			return
		}
		os.Chmod(dir, 0o755) // another user runs it in the unwritable-directory case
		built.path = filepath.Join(dir, "surge")
		built.out, built.err = exec.Command("go", "build", "-o", built.path, ".").CombinedOutput()
	})
	if built.err != nil {
		t.Fatalf("build surge: %v\n%s", built.err, built.out)
	}
	return built.path
}

// TestStartupErrors starts the real binary the ways a new user gets wrong
// and wants, for each, one line on stderr that says what failed (with any
// password hidden) and what to do, a non-zero exit (2 for a command line
// that cannot work, 1 for a backend or the machine), soon, and no panic.
func TestStartupErrors(t *testing.T) {
	t.Parallel()
	bin := surgeBin(t)
	busy := listen(t)               // port in use
	silent := silentServer(t)       // accepts connections, never answers
	refused := closedPort(t)        // nothing listens
	oldNATS := fakeNATS(t, "2.9.0") // answers like a NATS server that is too old
	dir := t.TempDir()
	file := filepath.Join(dir, "a-file")
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	pg, _ := url.Parse(sqldbtest.PostgresServer())
	pg.User = url.UserPassword(pg.User.Username(), "secret")
	b := make([]byte, 6)
	rand.Read(b)
	pg.Path = "/surge_missing_" + hex.EncodeToString(b)

	for _, tc := range []struct {
		name string
		args []string
		exit int
		want []string // in the one line, in this order
		user bool     // run as another user (an unwritable directory means nothing to root)
	}{
		{"port in use", []string{"--addr", busy}, 1, []string{"listen on " + busy, "address already in use", "--addr"}, false},
		{"bad addr", []string{"--addr", "nonsense"}, 2, []string{`--addr "nonsense"`, "host:port"}, false},
		{"port out of range", []string{"--addr", "127.0.0.1:99999"}, 2, []string{`--addr "127.0.0.1:99999"`, "0..65535"}, false},
		{"addr not of this machine", []string{"--addr", "192.0.2.1:8080"}, 1, []string{"listen on 192.0.2.1:8080", "not an address of this machine", "--addr"}, false},
		{"data dir is a file", []string{"--data", file}, 1, []string{"data directory " + file, "is a file, not a directory", "--data"}, false},
		{"data dir under a file", []string{"--data", file + "/sub"}, 1, []string{"data directory", file + " is a file", "--data"}, false},
		{"data dir not writable", []string{"--data", filepath.Join(unwritable(t), "data")}, 1, []string{"data directory", "permission denied", "--data"}, true},
		{"node id out of range", []string{"--node-id", "200"}, 2, []string{"--node-id 200", "0..127"}, false},
		{"unknown db", []string{"--db", "mysql://root:secret@db/x"}, 2, []string{`--db "mysql://root:xxxxx@db/x"`, "postgres://"}, false},
		{"unknown kv", []string{"--kv", "memcached://u:secret@x"}, 2, []string{`--kv "memcached://u:xxxxx@x"`, "redis://"}, false},
		{"unknown bus", []string{"--bus", "kafka://x"}, 2, []string{`--bus "kafka://x"`, "nats://"}, false},
		{"db refused", []string{"--db", "postgres://u:secret@" + refused + "/x"}, 1, []string{"database postgres://u:xxxxx@" + refused, "connection refused", "start PostgreSQL", "--db"}, false},
		{"db silent", []string{"--db", "postgres://u:secret@" + silent + "/x"}, 1, []string{"database postgres://u:xxxxx@" + silent, "no answer within", "--db"}, false},
		{"db host unknown", []string{"--db", "postgres://u:secret@nohost.invalid/x"}, 1, []string{"database", `host "nohost.invalid" not found`, "--db"}, false},
		{"database missing", []string{"--db", pg.String()}, 1, []string{"database postgres://", pg.Path[1:], "does not exist", "create it", "--db"}, false},
		{"kv refused", []string{"--kv", "redis://:secret@" + refused + "/0"}, 1, []string{"kv redis://:xxxxx@" + refused, "connection refused", "start Redis", "--kv"}, false},
		{"kv silent", []string{"--kv", "redis://:secret@" + silent + "/0"}, 1, []string{"kv redis://:xxxxx@" + silent, "no answer within", "--kv"}, false},
		{"bus refused", []string{"--bus", "nats://u:secret@" + refused}, 1, []string{"bus nats://u:xxxxx@" + refused, "connection refused", "nats-server -js", "--bus"}, false},
		{"bus cluster refused", []string{"--bus", "nats://u:secret@" + refused + ",nats://v:secret@" + refused}, 1, []string{"bus nats://u:xxxxx@" + refused + ",nats://v:xxxxx@" + refused, "connection refused", "--bus"}, false},
		{"bus silent", []string{"--bus", "nats://u:secret@" + silent}, 1, []string{"bus nats://u:xxxxx@" + silent, "no answer within", "--bus"}, false},
		{"bus too old", []string{"--bus", "nats://u:secret@" + oldNATS}, 1, []string{"bus nats://u:xxxxx@" + oldNATS, "2.9.0 is too old", "2.12"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			args := append([]string{"serve", "--addr", "127.0.0.1:0", "--data", t.TempDir()}, tc.args...)
			ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
			defer cancel()
			cmd := exec.CommandContext(ctx, bin, args...)
			if tc.user {
				if os.Geteuid() == 0 {
					cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
				}
				cmd.Dir = "/"
			}
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			start := time.Now()
			err := cmd.Run()
			took := time.Since(start)
			var exit *exec.ExitError
			if !errors.As(err, &exit) {
				t.Fatalf("surge %q: %v (want exit %d)\n%s", args, err, tc.exit, stderr.String())
			}
			var lines []string // what is not a JSON log record
			sc := bufio.NewScanner(&stderr)
			for sc.Scan() {
				if l := sc.Text(); !strings.HasPrefix(l, "{") {
					lines = append(lines, l)
				}
			}
			out := strings.Join(lines, "\n")
			if exit.ExitCode() != tc.exit || len(lines) != 1 || !strings.HasPrefix(out, "surge: ") {
				t.Fatalf("surge %q: exit %d after %v, want %d and one line 'surge: ...'; stderr:\n%s", args, exit.ExitCode(), took, tc.exit, stderr.String())
			}
			rest := out
			for _, w := range tc.want {
				i := strings.Index(rest, w)
				if i < 0 {
					t.Fatalf("surge %q said\n  %s\nwant, in order: %q", args, out, tc.want)
				}
				rest = rest[i+len(w):]
			}
			if strings.Contains(stderr.String(), "secret") {
				t.Fatalf("a password shows:\n%s", stderr.String())
			}
			if took > 20*time.Second {
				t.Fatalf("took %v to fail; want seconds", took)
			}
		})
	}
}

func listen(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l.Addr().String()
}

func closedPort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

// fakeServer accepts connections on a new listener and hands each to h until
// the test ends.
func fakeServer(t *testing.T, h func(net.Conn)) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var conns sync.WaitGroup
	t.Cleanup(func() {
		l.Close()
		conns.Wait()
	})
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			conns.Add(1)
			go func() {
				defer conns.Done()
				defer c.Close()
				h(c)
			}()
		}
	}()
	return l.Addr().String()
}

// silentServer accepts connections and reads them without ever answering,
// as a frozen or black-holed server does.
func silentServer(t *testing.T) string {
	return fakeServer(t, func(c net.Conn) {
		var b [512]byte
		c.SetDeadline(time.Now().Add(time.Minute))
		for {
			if _, err := c.Read(b[:]); err != nil {
				return
			}
		}
	})
}

// fakeNATS answers a NATS client's handshake as a server of version would.
func fakeNATS(t *testing.T, version string) string {
	return fakeServer(t, func(c net.Conn) {
		c.SetDeadline(time.Now().Add(time.Minute))
		c.Write([]byte(`INFO {"server_id":"FAKE","version":"` + version + `","proto":1,"headers":true,"max_payload":1048576}` + "\r\n"))
		sc := bufio.NewScanner(c)
		for sc.Scan() {
			if strings.HasPrefix(sc.Text(), "PING") {
				c.Write([]byte("PONG\r\n"))
			}
		}
	})
}

// unwritable returns a directory that the user running the binary in the
// "not writable" case cannot write to.
func unwritable(t *testing.T) string {
	dir := filepath.Join(t.TempDir(), "ro")
	if err := os.Mkdir(dir, 0o555); err != nil {
		t.Fatal(err)
	}
	for p := filepath.Dir(dir); p != "/"; p = filepath.Dir(p) { // let that user reach it
		if fi, err := os.Stat(p); err == nil && fi.Mode().Perm()&0o005 != 0o005 {
			os.Chmod(p, fi.Mode().Perm()|0o005)
		}
	}
	return dir
}
