package kv_test

import (
	"net/url"
	"strconv"
	"testing"

	"github.com/surge-platform/surge/internal/platform/kv"
)

// BenchmarkTake measures Take(1) from many goroutines on one hot key, the
// flash-sale stock pattern.
func BenchmarkTake(b *testing.B) {
	stores := []struct {
		name string
		open func(b *testing.B) kv.Store
	}{
		{"memory", func(b *testing.B) kv.Store {
			m := kv.NewMemory()
			b.Cleanup(func() { m.Close() })
			return m
		}},
		{"redis", func(b *testing.B) kv.Store {
			s, _ := mustRedis(b, nil)
			return s
		}},
		{"redis-nopipeline", func(b *testing.B) kv.Store {
			s, _ := mustRedis(b, url.Values{"pipeline": {"off"}})
			return s
		}},
	}
	for _, st := range stores {
		b.Run(st.name, func(b *testing.B) {
			s := st.open(b)
			ctx := b.Context()
			if err := s.Set(ctx, "stock", []byte("1000000000000"), 0); err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			b.SetParallelism(8)
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if _, ok, err := s.Take(ctx, "stock", 1); err != nil || !ok {
						b.Errorf("Take = %v, %v", ok, err)
						return
					}
				}
			})
		})
	}
}

// BenchmarkMemoryZQueue measures the new-order queue pattern on a set that
// holds about 50,000 members: add one above the top, read a page after a
// cursor, trim the oldest.
func BenchmarkMemoryZQueue(b *testing.B) {
	m := kv.NewMemory()
	b.Cleanup(func() { m.Close() })
	ctx := b.Context()
	const backlog = 50000
	for i := range int64(backlog) {
		if err := m.ZAdd(ctx, "queue", i, strconv.FormatInt(i, 10)); err != nil {
			b.Fatal(err)
		}
	}
	next := int64(backlog)
	b.ReportAllocs()
	for b.Loop() {
		if err := m.ZAdd(ctx, "queue", next, strconv.FormatInt(next, 10)); err != nil {
			b.Fatal(err)
		}
		if _, err := m.ZAfter(ctx, "queue", next-backlog/2, 20); err != nil {
			b.Fatal(err)
		}
		if _, err := m.ZTrim(ctx, "queue", next-backlog); err != nil {
			b.Fatal(err)
		}
		next++
	}
}
