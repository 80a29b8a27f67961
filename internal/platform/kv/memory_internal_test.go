package kv

import (
	"bytes"
	"math/rand/v2"
	"strconv"
	"testing"
	"time"
)

// size counts the entries of every shard, expired or not.
func (m *Memory) size() int {
	n := 0
	for i := range m.shards {
		s := &m.shards[i]
		s.mu.Lock()
		n += len(s.m)
		s.mu.Unlock()
	}
	return n
}

func TestMemoryJanitorDropsUnreadKeys(t *testing.T) {
	t.Parallel()
	m := newMemory(10 * time.Millisecond)
	t.Cleanup(func() { m.Close() })
	ctx := t.Context()
	for i := range 500 {
		if err := m.Set(ctx, "short-"+strconv.Itoa(i), []byte("v"), time.Millisecond); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 10 {
		if err := m.Set(ctx, "kept-"+strconv.Itoa(i), []byte("v"), 0); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(3 * time.Second)
	for m.size() != 10 {
		if time.Now().After(deadline) {
			t.Fatalf("%d entries left, want the 10 without ttl", m.size())
		}
		time.Sleep(5 * time.Millisecond)
	}
	// Once swept clean, no shard needs sweeping any more.
	deadline = time.Now().Add(3 * time.Second)
	for m.shardsToSweep() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d shards still marked for sweeping", m.shardsToSweep())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func (m *Memory) shardsToSweep() int {
	n := 0
	for i := range m.shards {
		s := &m.shards[i]
		s.mu.Lock()
		if s.mayExpire {
			n++
		}
		s.mu.Unlock()
	}
	return n
}

func TestMemoryCloseStopsJanitor(t *testing.T) {
	t.Parallel()
	m := newMemory(time.Millisecond)
	done := make(chan struct{})
	go func() {
		m.Close()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not return")
	}
	select {
	case <-m.done:
	default:
		t.Fatal("janitor still running after Close")
	}
}

func TestParseInt(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in   string
		want int64
		ok   bool
	}{
		{"0", 0, true},
		{"7", 7, true},
		{"-7", -7, true},
		{"9223372036854775807", 1<<63 - 1, true},
		{"-9223372036854775808", -1 << 63, true},
		{"9223372036854775808", 0, false},
		{"-9223372036854775809", 0, false},
		{"99999999999999999999", 0, false},
		{"", 0, false},
		{"-", 0, false},
		{"-0", 0, false},
		{"007", 0, false},
		{"+1", 0, false},
		{" 1", 0, false},
		{"1 ", 0, false},
		{"1.5", 0, false},
		{"abc", 0, false},
	}
	for _, tt := range tests {
		got, ok := parseInt([]byte(tt.in))
		if got != tt.want || ok != tt.ok {
			t.Errorf("parseInt(%q) = %d, %v; want %d, %v", tt.in, got, ok, tt.want, tt.ok)
		}
	}
}

// FuzzParseInt checks that parseInt accepts exactly the canonical decimal
// form of an int64, as Redis does.
func FuzzParseInt(f *testing.F) {
	for _, s := range []string{"0", "-1", "42", "007", "-0", "+3", "9223372036854775808", "-9223372036854775808", "1e3"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		got, ok := parseInt(b)
		want, err := strconv.ParseInt(string(b), 10, 64)
		canonical := err == nil && bytes.Equal(strconv.AppendInt(nil, want, 10), b)
		if ok != canonical || (ok && got != want) {
			t.Fatalf("parseInt(%q) = %d, %v; strconv says %d, canonical %v", b, got, ok, want, canonical)
		}
	})
}

// TestZsetModel checks a zset against a plain map after every step of a
// random mix of adds (new members, moves, repeats) and trims.
func TestZsetModel(t *testing.T) {
	t.Parallel()
	r := rand.New(rand.NewPCG(1, 2))
	z := newZset()
	model := make(map[string]int64)
	for step := range 20000 {
		switch op := r.IntN(10); {
		case op < 8:
			member := "m" + strconv.Itoa(r.IntN(3000))
			score := int64(step/4 + r.IntN(200) - 100)
			z.add(score, member)
			model[member] = score
		default:
			upTo := int64(step/4 - 150 + r.IntN(50))
			want := 0
			for m, sc := range model {
				if sc <= upTo {
					delete(model, m)
					want++
				}
			}
			if got := z.trim(upTo); got != want {
				t.Fatalf("step %d: trim(%d) = %d, want %d", step, upTo, got, want)
			}
		}
		if step%97 == 0 || step > 19900 {
			checkZset(t, z, model)
		}
	}
}

func checkZset(t *testing.T, z *zset, model map[string]int64) {
	t.Helper()
	if len(z.items) != len(model) || len(z.score) != len(model) {
		t.Fatalf("%d items, %d scores, want %d", len(z.items), len(z.score), len(model))
	}
	for i, it := range z.items {
		if sc, ok := model[it.Member]; !ok || sc != it.Score || z.score[it.Member] != sc {
			t.Fatalf("item %v: model has %d, %v; map has %d", it, sc, ok, z.score[it.Member])
		}
		if i > 0 && compareScored(z.items[i-1], it) >= 0 {
			t.Fatalf("items %d and %d out of order: %v, %v", i-1, i, z.items[i-1], it)
		}
	}
}

// TestZsetTrimCompacts checks that a queue drained to a few members does not
// keep the slice of its peak.
func TestZsetTrimCompacts(t *testing.T) {
	t.Parallel()
	z := newZset()
	const n = 50000
	for i := range int64(n) {
		z.add(i, strconv.FormatInt(i, 10))
	}
	if got := z.trim(n - 11); got != n-10 {
		t.Fatalf("trim removed %d, want %d", got, n-10)
	}
	if c := cap(z.items); c > 4*zsetCompactMin {
		t.Fatalf("cap %d after trimming to 10 members", c)
	}
	checkZset(t, z, func() map[string]int64 {
		m := make(map[string]int64)
		for i := int64(n - 10); i < n; i++ {
			m[strconv.FormatInt(i, 10)] = i
		}
		return m
	}())
}
