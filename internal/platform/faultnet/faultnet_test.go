package faultnet_test

import (
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"

	"github.com/surge-platform/surge/internal/platform/faultnet"
)

// echo starts a TCP server that writes back what it reads.
func echo(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { io.Copy(c, c); c.Close() }()
		}
	}()
	return ln.Addr().String()
}

func dial(t *testing.T, p *faultnet.Proxy) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// roundTrip writes msg and reads as many bytes back within wait.
func roundTrip(c net.Conn, msg string, wait time.Duration) (string, error) {
	c.SetDeadline(time.Now().Add(wait))
	if _, err := c.Write([]byte(msg)); err != nil {
		return "", err
	}
	b := make([]byte, len(msg))
	n, err := io.ReadFull(c, b)
	return string(b[:n]), err
}

// mustEcho fails t unless msg comes back on c.
func mustEcho(t *testing.T, c net.Conn, msg string) {
	t.Helper()
	if got, err := roundTrip(c, msg, 5*time.Second); err != nil || got != msg {
		t.Fatalf("round trip %q = %q, %v", msg, got, err)
	}
}

// silent reports that nothing arrives on c within wait: a read times out.
func silent(t *testing.T, c net.Conn, wait time.Duration) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(wait))
	b := make([]byte, 1)
	if n, err := c.Read(b); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read while stalled: %d bytes %q, err %v; want nothing until the deadline", n, b[:n], err)
	}
}

func TestPassesThrough(t *testing.T) {
	t.Parallel()
	p := faultnet.Start(t, echo(t))
	c := dial(t, p)
	mustEcho(t, c, "ping")
	mustEcho(t, c, "a longer message")
}

func TestCutDropsAndRefusesUntilResume(t *testing.T) {
	t.Parallel()
	p := faultnet.Start(t, echo(t))
	old := dial(t, p)
	mustEcho(t, old, "x")
	p.Cut()
	if _, err := roundTrip(old, "y", 5*time.Second); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("open connection after Cut: err %v; want it closed at once", err)
	}
	// A new connection is accepted by the kernel and reset: the dial or
	// the first round trip fails.
	if fresh, err := net.Dial("tcp", p.Addr()); err == nil {
		_, err = roundTrip(fresh, "z", 5*time.Second)
		fresh.Close()
		if err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("new connection while cut: err %v; want it closed at once", err)
		}
	}
	p.Resume()
	mustEcho(t, dial(t, p), "back")
}

func TestStallHoldsUntilResume(t *testing.T) {
	t.Parallel()
	p := faultnet.Start(t, echo(t))
	old := dial(t, p)
	mustEcho(t, old, "x")
	p.Stall()
	old.SetWriteDeadline(time.Now().Add(5 * time.Second))
	if _, err := old.Write([]byte("held")); err != nil {
		t.Fatal(err)
	}
	fresh := dial(t, p)
	fresh.SetWriteDeadline(time.Now().Add(5 * time.Second))
	if _, err := fresh.Write([]byte("new")); err != nil {
		t.Fatal(err)
	}
	silent(t, old, 300*time.Millisecond)
	silent(t, fresh, 50*time.Millisecond)
	p.Resume()
	for c, want := range map[net.Conn]string{old: "held", fresh: "new"} {
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		b := make([]byte, len(want))
		if _, err := io.ReadFull(c, b); err != nil || string(b) != want {
			t.Fatalf("after Resume: %q, %v; want the held %q", b, err, want)
		}
	}
}

func TestCutEndsAStall(t *testing.T) {
	t.Parallel()
	p := faultnet.Start(t, echo(t))
	c := dial(t, p)
	p.Stall()
	done := make(chan error, 1)
	go func() { _, err := roundTrip(c, "x", 10*time.Second); done <- err }()
	p.Cut()
	select {
	case err := <-done:
		if err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("stalled connection after Cut: %v; want it closed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a stalled connection outlived Cut")
	}
}

func TestCloseEndsEverything(t *testing.T) {
	t.Parallel()
	p, err := faultnet.New(echo(t))
	if err != nil {
		t.Fatal(err)
	}
	c := dial(t, p)
	mustEcho(t, c, "x")
	p.Stall()
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := roundTrip(c, "y", 5*time.Second); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("connection after Close: %v; want it closed", err)
	}
	if c2, err := net.DialTimeout("tcp", p.Addr(), time.Second); err == nil {
		c2.Close()
		t.Fatal("the proxy still accepts after Close")
	}
	if err := p.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}
