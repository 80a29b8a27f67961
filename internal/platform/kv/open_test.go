package kv_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/surge-platform/surge/internal/platform/kv"
)

func TestOpenMem(t *testing.T) {
	t.Parallel()
	for _, u := range []string{"mem:", "mem://", "mem:?prefix=x:"} {
		s, err := kv.Open(t.Context(), u)
		if err != nil {
			t.Fatalf("Open(%q): %v", u, err)
		}
		if _, ok := s.(*kv.Memory); !ok {
			t.Errorf("Open(%q) = %T, want *kv.Memory", u, s)
		}
		if err := s.Ping(t.Context()); err != nil {
			t.Errorf("Open(%q).Ping: %v", u, err)
		}
		s.Close()
	}
}

func TestOpenErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		url     string
		wantErr string
	}{
		{"empty", "", "unknown scheme"},
		{"unknown scheme", "memcached://127.0.0.1:11211", "unknown scheme"},
		{"no scheme", "127.0.0.1:6379", "invalid url"},
		{"mem unknown parameter", "mem:?size=3", "unknown parameter"},
		{"bad pipeline", "redis://127.0.0.1:6379/0?pipeline=maybe", "pipeline"},
		{"bad db", "redis://127.0.0.1:6379/x", "database"},
		{"unreachable", "redis://u:hunter2@127.0.0.1:1/0", "127.0.0.1:1"},
		{"bad url", "redis://u:hunter2@127.0.0.1:6379/%zz", "invalid url"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
			defer cancel()
			s, err := kv.Open(ctx, tt.url)
			if err == nil {
				s.Close()
				t.Fatalf("Open(%q): no error", tt.url)
			}
			if !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("Open(%q) error %q does not mention %q", tt.url, err, tt.wantErr)
			}
			if strings.Contains(err.Error(), "hunter2") {
				t.Errorf("Open(%q) error leaks the password: %q", tt.url, err)
			}
		})
	}
}
