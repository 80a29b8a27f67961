package kv_test

import (
	"testing"

	"github.com/surge-platform/surge/internal/platform/kv"
	"github.com/surge-platform/surge/internal/platform/kv/kvtest"
)

func TestMemory(t *testing.T) {
	t.Parallel()
	kvtest.Run(t, func(t *testing.T) kv.Store {
		m := kv.NewMemory()
		t.Cleanup(func() { m.Close() })
		return m
	})
}

func TestMemoryPingAfterClose(t *testing.T) {
	t.Parallel()
	m := kv.NewMemory()
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if err := m.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if err := m.Ping(t.Context()); err == nil {
		t.Fatal("Ping after Close: no error")
	}
}
