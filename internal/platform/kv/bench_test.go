package kv_test

import (
	"net/url"
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
