package e2etest

import (
	"bytes"
	"net"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// natsServer starts a private nats-server of the pinned version on addr.
func natsServer(t *testing.T, addr, dir string) *exec.Cmd {
	t.Helper()
	out, err := exec.Command("go", "tool", "-n", "nats-server").Output()
	if err != nil {
		t.Fatalf("go tool -n nats-server: %v", err)
	}
	host, port, _ := net.SplitHostPort(addr)
	cmd := exec.Command(strings.TrimSpace(string(out)), "-a", host, "-p", port, "-js", "-sd", dir)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			return cmd
		}
		if time.Now().After(deadline) {
			t.Fatal("nats-server did not start")
		}
	}
}

func pollReady(t *testing.T, base string, want int) []byte {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		status, b, err := call(base, "GET", "/readyz", "", "")
		if err == nil && status == want {
			return b
		}
		if time.Now().After(deadline) {
			t.Fatalf("readyz: %d %s %v, want %d", status, b, err, want)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestReadyzFollowsTheBus(t *testing.T) {
	t.Parallel()
	natsAddr, natsDir := freeAddr(t), t.TempDir()
	nats := natsServer(t, natsAddr, natsDir)
	addr := freeAddr(t)
	p := start(t, addr, "serve", "--addr", addr, "--data", t.TempDir(), "--bus", "nats://"+natsAddr)
	nats.Process.Kill()
	nats.Wait()
	b := pollReady(t, p.base, 503)
	if !bytes.Contains(b, []byte(`"bus"`)) || !bytes.Contains(b, []byte(`"db":"ok"`)) {
		t.Fatalf("readyz with the bus down: %s", b)
	}
	if status, _, _ := call(p.base, "GET", "/healthz", "", ""); status != 200 {
		t.Fatalf("healthz %d while the process lives", status)
	}
	natsServer(t, natsAddr, natsDir)
	pollReady(t, p.base, 200)
}
