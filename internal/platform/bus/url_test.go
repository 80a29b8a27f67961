package bus

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"testing"
	"time"
)

func TestParseURL(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		url     string
		want    options
		wantErr bool
	}{
		{"embedded dir", "embedded:./data/nats", options{embedded: true, dir: "./data/nats"}, false},
		{"embedded temp", "embedded:", options{embedded: true}, false},
		{"embedded all params", "embedded:/d?ns=t1&listen=127.0.0.1:0&sync=always",
			options{embedded: true, dir: "/d", ns: "t1", listen: "127.0.0.1:0", syncAlways: true}, false},
		{"external", "nats://127.0.0.1:4222", options{servers: "nats://127.0.0.1:4222"}, false},
		{"cluster with ns", "nats://a:4222,nats://b:4222?ns=shadow",
			options{servers: "nats://a:4222,nats://b:4222", ns: "shadow"}, false},
		{"tls", "tls://a:4222", options{servers: "tls://a:4222"}, false},
		{"empty", "", options{}, true},
		{"unknown scheme", "redis://a:6379", options{}, true},
		{"bare host", "127.0.0.1:4222", options{}, true},
		{"bad ns dot", "embedded:?ns=a.b", options{}, true},
		{"bad ns wildcard", "nats://a:4222?ns=*", options{}, true},
		{"listen on external", "nats://a:4222?listen=:4222", options{}, true},
		{"sync on external", "nats://a:4222?sync=always", options{}, true},
		{"bad sync", "embedded:?sync=sometimes", options{}, true},
		{"bad listen", "embedded:?listen=nope", options{}, true},
		{"unknown param", "embedded:?nss=x", options{}, true},
		{"max deliver", "nats://a:4222?max_deliver=3", options{servers: "nats://a:4222", maxDeliver: 3}, false},
		{"max deliver embedded", "embedded:?max_deliver=1", options{embedded: true, maxDeliver: 1}, false},
		{"max deliver zero", "embedded:?max_deliver=0", options{}, true},
		{"max deliver not a number", "embedded:?max_deliver=many", options{}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseURL(tt.url)
			if (err != nil) != tt.wantErr {
				t.Fatalf("parseURL(%q) err = %v; want error %v", tt.url, err, tt.wantErr)
			}
			if err == nil && got != tt.want {
				t.Errorf("parseURL(%q) = %+v; want %+v", tt.url, got, tt.want)
			}
		})
	}
}

func TestNakDelay(t *testing.T) {
	t.Parallel()
	backoff := []time.Duration{time.Second, 5 * time.Second}
	for deliveries, want := range map[int]time.Duration{0: time.Second, 1: time.Second, 2: 5 * time.Second, 9: 5 * time.Second} {
		if got := nakDelay(backoff, deliveries); got != want {
			t.Errorf("nakDelay(backoff, %d) = %v; want %v", deliveries, got, want)
		}
	}
	for deliveries := 1; deliveries <= 40; deliveries++ {
		full := min(nakBase<<min(deliveries-1, 20), nakMax)
		for range 20 {
			if got := nakDelay(nil, deliveries); got < full/2 || got > full {
				t.Fatalf("nakDelay(nil, %d) = %v; want in [%v, %v]", deliveries, got, full/2, full)
			}
		}
	}
}

func TestEmbeddedTempDirRemoved(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	b, err := Open(ctx, "embedded:?sync=always")
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	dir := b.tmpDir
	if dir == "" {
		t.Fatal("embedded: has no temp dir")
	}
	if err := b.EnsureStream(ctx, StreamConfig{Name: "T", Subjects: []string{"t.>"}}); err != nil {
		t.Errorf("EnsureStream: %v", err)
	}
	if _, err := b.Publish(ctx, Msg{Subject: "t.1", Data: []byte("x")}); err != nil {
		t.Errorf("Publish with sync=always: %v", err)
	}
	if err := b.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if _, err := os.Stat(dir); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("temp dir %s after Close: stat err = %v; want not exist", dir, err)
	}
}

func TestOpenExternalUnreachable(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
	defer cancel()
	// Port 1 on loopback: nothing listens there, the dial is refused at once.
	if b, err := Open(ctx, "nats://127.0.0.1:1"); err == nil {
		b.Close()
		t.Fatal("Open of an unreachable server succeeded")
	}
}
