package payment

import (
	"errors"
	"testing"
	"time"
)

func TestRouterTakesFailingChannelOutAndBack(t *testing.T) {
	t.Parallel()
	r := NewRouter(map[string]int{"a": 1, "b": 1})
	now := time.Unix(1_800_000_000, 0)
	r.now = func() time.Time { return now }
	picks := func(n int) map[string]int {
		m := map[string]int{}
		for range n {
			name, err := r.Pick("")
			if err != nil {
				t.Fatal(err)
			}
			m[name]++
		}
		return m
	}
	if m := picks(1000); m["a"] < 400 || m["b"] < 400 {
		t.Fatalf("equal weights picked %v", m)
	}
	boom := errors.New("boom")
	for range MinCalls {
		r.Record("a", boom, time.Millisecond)
	}
	if m := picks(200); m["a"] != 0 {
		t.Fatalf("a failed every call but got %d picks", m["a"])
	}
	if _, err := r.Pick("a"); !errors.Is(err, ErrChannelDown) {
		t.Fatalf("asking for a down channel: %v, want ErrChannelDown", err)
	}
	now = now.Add(Cooldown + time.Second) // cooldown over: probation, a small share
	if m := picks(1000); m["a"] == 0 || m["a"] > 200 {
		t.Fatalf("on probation a got %d of 1000 picks, want a small share", m["a"])
	}
	r.Record("a", nil, time.Millisecond) // proved itself
	if m := picks(1000); m["a"] < 300 {
		t.Fatalf("after a success a got %d of 1000 picks", m["a"])
	}
	off := map[string]bool{"b": true} // the operator's switches
	r.Follow(func(name string) bool { return !off[name] })
	if m := picks(100); m["b"] != 0 {
		t.Fatalf("b switched off but picked %d times", m["b"])
	}
	if _, err := r.Pick("b"); !errors.Is(err, ErrChannelDown) {
		t.Fatalf("asking for a switched-off channel: %v, want ErrChannelDown", err)
	}
	if st := r.States(); st[0].ForcedOff || !st[1].ForcedOff {
		t.Fatalf("states %+v: want b (only) switched off", st)
	}
	off["a"] = true
	if _, err := r.Pick(""); !errors.Is(err, ErrNoChannel) {
		t.Fatalf("all off: %v, want ErrNoChannel", err)
	}
	if _, err := r.Pick("zzz"); !errors.Is(err, ErrUnknownChannel) {
		t.Fatalf("unknown: %v", err)
	}
	if err := r.Check("zzz"); !errors.Is(err, ErrUnknownChannel) || r.Check("a") != nil {
		t.Fatalf("Check: %v, %v", err, r.Check("a"))
	}
}

func TestRouterHalvesSlowChannel(t *testing.T) {
	t.Parallel()
	r := NewRouter(map[string]int{"fast": 1, "slow": 1})
	for range 10 {
		r.Record("slow", nil, 2*SlowLatency)
		r.Record("fast", nil, time.Millisecond)
	}
	m := map[string]int{}
	for range 3000 {
		name, _ := r.Pick("")
		m[name]++
	}
	if m["slow"] > 1300 || m["slow"] < 700 {
		t.Fatalf("slow channel got %d of 3000 picks, want about a third", m["slow"])
	}
}

func TestRouterFollowsWeights(t *testing.T) {
	t.Parallel()
	r := NewRouter(map[string]int{"big": 3, "small": 1})
	m := map[string]int{}
	for range 4000 {
		name, _ := r.Pick("")
		m[name]++
	}
	if m["big"] < 2700 || m["big"] > 3300 {
		t.Fatalf("weights 3:1 picked %v, want about 3000:1000", m)
	}
}

func TestRouterPicksOnlyUntriedChannels(t *testing.T) {
	t.Parallel()
	r := NewRouter(map[string]int{"a": 1, "b": 1})
	for range 100 {
		if name, err := r.Pick("", "a"); err != nil || name != "b" {
			t.Fatalf("pick except a: %q %v", name, err)
		}
	}
	if _, err := r.Pick("", "a", "b"); !errors.Is(err, ErrNoChannel) {
		t.Fatalf("all tried: %v, want ErrNoChannel", err)
	}
}
