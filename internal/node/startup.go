package node

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/surge-platform/surge/internal/platform/id"
	"github.com/surge-platform/surge/internal/platform/sqldb"
)

// OpenTimeout bounds the opening of each backend at start (connect and
// first answer): an unreachable or silent server fails the start within
// seconds instead of hanging it.
const OpenTimeout = 10 * time.Second

// StartError is a failure to start a node, said in one line: what failed
// (URLs with their password hidden), why, and what to do about it.
type StartError struct {
	What string // "database postgres://u:xxxxx@db:5432/surge"
	Why  string // "connection refused (nothing listens there)"
	Do   string // "start PostgreSQL there or fix --db"
	Err  error  // the cause, for errors.Is/As
}

func (e *StartError) Error() string { return e.What + ": " + e.Why + "; " + e.Do }
func (e *StartError) Unwrap() error { return e.Err }

// checkConfig refuses flag values that cannot work, before anything is opened.
func checkConfig(c *Config) error {
	host, port, err := net.SplitHostPort(c.Addr)
	if err != nil {
		return fmt.Errorf("--addr %q: want host:port, e.g. 127.0.0.1:8080 (port 0 picks a free one)", c.Addr)
	}
	if p, err := strconv.Atoi(port); err != nil || p < 0 || p > 65535 {
		if _, lerr := net.LookupPort("tcp", port); lerr != nil {
			return fmt.Errorf("--addr %q: port %q is not a number 0..65535", c.Addr, port)
		}
	}
	if strings.ContainsAny(host, " /") {
		return fmt.Errorf("--addr %q: host %q is not a host name or IP address", c.Addr, host)
	}
	for _, u := range c.DB {
		if !strings.HasPrefix(u, "sqlite:") && !strings.HasPrefix(u, "postgres://") && !strings.HasPrefix(u, "postgresql://") {
			return fmt.Errorf("--db %q: unsupported database; want sqlite:DIR or postgres://user:password@host:5432/name", sqldb.Mask(u))
		}
	}
	if !strings.HasPrefix(c.KV, "mem:") && !strings.HasPrefix(c.KV, "redis://") && !strings.HasPrefix(c.KV, "rediss://") {
		return fmt.Errorf("--kv %q: unsupported; want mem: or redis://[:password@]host:6379/0", sqldb.Mask(c.KV))
	}
	if !strings.HasPrefix(c.Bus, "embedded:") {
		for u := range strings.SplitSeq(c.Bus, ",") {
			if u = strings.TrimSpace(u); !strings.HasPrefix(u, "nats://") && !strings.HasPrefix(u, "tls://") {
				return fmt.Errorf("--bus %q: unsupported; want embedded:DIR or nats://host:4222 (several separated by commas)", sqldb.Mask(c.Bus))
			}
		}
	}
	if c.NodeID < -1 || c.NodeID > id.MaxNode {
		return fmt.Errorf("--node-id %d: want 0..%d, or -1 to lease a free one", c.NodeID, id.MaxNode)
	}
	return nil
}

// listen opens the HTTP listener on addr.
func listen(addr string) (net.Listener, error) {
	ln, err := net.Listen("tcp", addr)
	if err == nil {
		return ln, nil
	}
	e := &StartError{What: "listen on " + addr, Why: oneLine(err), Do: "fix --addr", Err: err}
	var dns *net.DNSError
	switch {
	case errors.Is(err, syscall.EADDRINUSE):
		e.Why = "address already in use (another process listens there)"
		e.Do = "stop that process or pass --addr with another port (port 0 picks a free one)"
	case errors.Is(err, syscall.EADDRNOTAVAIL):
		e.Why = "cannot assign requested address (not an address of this machine)"
		e.Do = "pass --addr with an address of this machine, e.g. 127.0.0.1:8080 or :8080"
	case errors.Is(err, syscall.EACCES):
		e.Why = "permission denied (ports below 1024 need privileges)"
		e.Do = "pass --addr with a port of 1024 or more"
	case errors.As(err, &dns):
		e.Why = fmt.Sprintf("host %q not found", dns.Name)
		e.Do = "pass --addr with an IP address or a known host name"
	}
	return nil, e
}

// localDirs returns the directories the embedded backends of c write to,
// with the flag that names each.
func localDirs(c *Config) map[string]string {
	dirs := map[string]string{}
	for _, u := range c.DB {
		if dir, ok := strings.CutPrefix(u, "sqlite:"); ok {
			dir, _, _ = strings.Cut(dir, "?")
			dirs[cmpOr(dir, ".")] = "--db"
		}
	}
	if dir, ok := strings.CutPrefix(c.Bus, "embedded:"); ok {
		if dir, _, _ = strings.Cut(dir, "?"); dir != "" {
			dirs[dir] = "--bus"
		}
	}
	return dirs
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// checkDirs makes sure every local directory of c exists (creating it) and
// is writable, and says which flag to change when one is not.
func checkDirs(c *Config) error {
	dirs := localDirs(c)
	for _, dir := range slices.Sorted(maps.Keys(dirs)) {
		flag := dirs[dir]
		if err := writableDir(dir); err != nil {
			do := "pass --data with a directory you can write to"
			if !strings.HasPrefix(dir, c.Data) {
				do = "pass " + flag + " with a directory you can write to"
			}
			return &StartError{What: "data directory " + dir, Why: err.Error(), Do: do, Err: err}
		}
	}
	return nil
}

// writableDir creates dir when missing and checks that files can be made in it.
func writableDir(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		var pe *os.PathError
		switch {
		case errors.Is(err, syscall.ENOTDIR), errors.Is(err, syscall.EEXIST):
			for p := dir; ; p = filepath.Dir(p) { // name the file in the way
				if fi, serr := os.Stat(p); serr == nil && !fi.IsDir() {
					return fmt.Errorf("%s is a file, not a directory", p)
				}
				if p == filepath.Dir(p) {
					break
				}
			}
			return errors.New("not a directory")
		case errors.As(err, &pe):
			return fmt.Errorf("cannot create %s: %v", pe.Path, pe.Err)
		}
		return err
	}
	f, err := os.CreateTemp(dir, ".surge-write-test-")
	if err != nil {
		var pe *os.PathError
		if errors.As(err, &pe) {
			return fmt.Errorf("not writable: %v", pe.Err)
		}
		return fmt.Errorf("not writable: %v", err)
	}
	f.Close()
	os.Remove(f.Name())
	return nil
}

// openError explains why a backend could not be opened (trying since
// start): what ("database", "kv", "bus"), its URLs (masked), the flag that
// names it, what to start.
func openError(what string, urls []string, flag, server string, start time.Time, err error) error {
	masked := make([]string, len(urls))
	for i, u := range urls {
		masked[i] = sqldb.Mask(u)
	}
	e := &StartError{What: what + " " + strings.Join(masked, " "), Why: oneLine(err), Err: err,
		Do: "check " + flag}
	var dns *net.DNSError
	var nerr net.Error
	switch {
	case errors.Is(err, sqldb.ErrNoDatabase):
		e.Why = "the database does not exist on that server"
		e.Do = "create it (e.g. createdb, or CREATE DATABASE) or fix the database name in " + flag
	case errors.Is(err, sqldb.ErrAuth):
		e.Why = "authentication failed"
		e.Do = "fix the user or password in " + flag
	case errors.Is(err, syscall.ECONNREFUSED), strings.Contains(err.Error(), "no servers available"):
		e.Why = "connection refused (nothing listens there)"
		e.Do = "start " + server + " there or fix " + flag
	case errors.As(err, &dns):
		e.Why = fmt.Sprintf("host %q not found", dns.Name)
		e.Do = "fix the host in " + flag
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &nerr) && nerr.Timeout(),
		strings.Contains(err.Error(), "timeout"), strings.Contains(err.Error(), "timed out"):
		e.Why = fmt.Sprintf("no answer within %v", time.Since(start).Round(time.Second))
		e.Do = "check that " + server + " runs there and that a firewall lets it through, or fix " + flag
	case strings.Contains(err.Error(), "jetstream not enabled"):
		e.Why = "JetStream is not enabled on that NATS server"
		e.Do = "start it with JetStream (nats-server -js) or use --bus embedded:DIR"
	case errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.ENETUNREACH):
		e.Why = "host unreachable"
		e.Do = "check the host in " + flag + " and the network"
	}
	return e
}

// oneLine makes err's message fit on one line.
func oneLine(err error) string {
	return strings.Join(strings.Fields(err.Error()), " ")
}

const natsServer = "a NATS server with JetStream (nats-server -js)"

// MinNATS is the oldest NATS server surge works with (message schedules,
// several filter subjects per consumer).
const MinNATS = "2.12"

// checkNATS refuses a NATS server older than MinNATS (version "2.9.25").
func checkNATS(bus, version string) error {
	var major, minor int
	if _, err := fmt.Sscanf(version, "%d.%d", &major, &minor); err != nil {
		return nil // unknown: let the first use tell
	}
	if major > 2 || major == 2 && minor >= 12 {
		return nil
	}
	return &StartError{What: "bus " + sqldb.Mask(bus), Why: "nats-server " + version + " is too old (surge needs " + MinNATS + " or later)",
		Do: "upgrade it (the version surge is tested with: go tool nats-server in this module) or use --bus embedded:DIR"}
}
