package monitor

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/surge-platform/surge/internal/platform/bus"
)

var t0 = time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)

func beat(at time.Time, l Load, deps map[string]string) Beat {
	return Beat{Key: "n1", NodeID: 1, Roles: []string{"api"}, URL: "http://x", At: at, Load: l, Deps: deps}
}

// The health state machine: each rule's transition, in the order a node
// lives through them, with the reason it gives.
func TestJudgeTransitions(t *testing.T) {
	th := DefaultThresholds
	ok := map[string]string{"db0": "closed", "bus": "closed"}
	steps := []struct {
		name   string
		at     time.Duration // the beat's age
		load   Load
		deps   map[string]string
		fails  int
		health Health
		reason string
	}{
		{"serving", 0, Load{RPS: 100, P99: 0.01}, ok, 0, Green, "serving"},
		{"a baseline learnt, then slow", 0, Load{RPS: 100, P99: 0.1}, ok, 0, Yellow, "p99 100ms, usually 10ms"},
		{"slow but under the floor is no news", 0, Load{RPS: 100, P99: 0.025}, ok, 0, Green, "serving"},
		{"0.1% of 5xx", 0, Load{RPS: 1000, ErrShare: 0.002, P99: 0.01}, ok, 0, Yellow, "0.20% of requests fail (5xx)"},
		{"errors without traffic are not judged", 0, Load{RPS: 0.5, ErrShare: 1}, ok, 0, Green, "serving"},
		{"over 10% of 5xx", 0, Load{RPS: 1000, ErrShare: 0.2, P99: 0.01}, ok, 0, Red, "20.0% of requests fail (5xx)"},
		{"recovered", 0, Load{RPS: 100, P99: 0.01}, ok, 0, Green, "serving"},
		{"one probe failed", 0, Load{RPS: 100, P99: 0.01}, ok, 1, Yellow, "readyz timed out"},
		{"two probes failed: heartbeats but does not serve", 0, Load{RPS: 100, P99: 0.01}, ok, 2, Red, "not serving: readyz timed out"},
		{"a breaker half-open", 0, Load{RPS: 100, P99: 0.01}, map[string]string{"db0": "half-open", "bus": "closed"}, 0, Yellow, "db0 recovering (breaker half-open)"},
		{"a breaker open", 0, Load{RPS: 100, P99: 0.01}, map[string]string{"db0": "open", "bus": "closed"}, 0, Red, "db0 unreachable (breaker open)"},
		{"silent", 5 * time.Second, Load{RPS: 100, P99: 0.01}, ok, 0, Red, "no heartbeat for 5s"},
	}
	var prev *NodeState
	for i, s := range steps {
		now := t0.Add(time.Duration(i) * time.Minute)
		st := judge(th, now, beat(now.Add(-s.at), s.load, s.deps), s.fails, "timed out", prev)
		if st.Health != s.health || st.Reason != s.reason {
			t.Errorf("%s: %s %q, want %s %q", s.name, st.Health, st.Reason, s.health, s.reason)
		}
		if prev != nil && prev.Health == st.Health && !st.Since.Equal(prev.Since) {
			t.Errorf("%s: since moved while the health stayed %s", s.name, st.Health)
		}
		prev = &st
	}
}

// A dependency is red only when every live node finds it unreachable;
// a silent node's word does not count.
func TestTopologyColoursDependencies(t *testing.T) {
	n := func(key string, h Health, reason, db string) NodeState {
		return NodeState{Beat: Beat{Key: key, Deps: map[string]string{"db0": db, "bus": "closed"}}, Health: h, Reason: reason}
	}
	dep := func(tp Topology, name string) DepState {
		for _, d := range tp.Deps {
			if d.Name == name {
				return d
			}
		}
		t.Fatalf("no dependency %s in %+v", name, tp.Deps)
		return DepState{}
	}
	tp := topology(t0, []NodeState{n("n1", Red, "db0 unreachable (breaker open)", "open"), n("n2", Green, "serving", "closed")})
	if d := dep(tp, "db0"); d.Health != Yellow || d.Reason != "unreachable from 1 of 2 nodes" {
		t.Errorf("one of two nodes cut off: %+v", d)
	}
	tp = topology(t0, []NodeState{n("n1", Red, "db0 unreachable (breaker open)", "open"), n("n2", Red, "db0 unreachable (breaker open)", "open")})
	if d := dep(tp, "db0"); d.Health != Red {
		t.Errorf("every node cut off: %+v", d)
	}
	tp = topology(t0, []NodeState{n("n1", Red, "no heartbeat for 9s", "open"), n("n2", Green, "serving", "closed")})
	if d := dep(tp, "db0"); d.Health != Green {
		t.Errorf("a silent node's old breaker coloured the database: %+v", d)
	}
	if len(tp.Edges) != 4 || tp.Edges[0].From != "n1" || tp.Edges[0].To != "bus" || tp.Edges[1].Health != Red {
		t.Errorf("edges: %+v", tp.Edges)
	}
}

func TestRulesEval(t *testing.T) {
	snap := Snapshot{
		Topology: Topology{Nodes: []NodeState{
			{Beat: Beat{Key: "n1", NodeID: 1, Roles: []string{"api"}, URL: "http://a"}, Health: Red, Reason: "no heartbeat for 4s"},
			{Beat: Beat{Key: "n2", NodeID: 2, Load: Load{RPS: 50, ErrShare: 0.05}}, Health: Yellow},
			{Beat: Beat{Key: "n3", NodeID: 3, Load: Load{RPS: 50, P99: 2.5}}, Health: Yellow},
			{Beat: Beat{Key: "n4", NodeID: 4, Load: Load{RPS: 50, P99: 0.01}}, Health: Green},
		}},
		Figures: Figures{OutboxOldest: 45, OutboxRows: 900, DeadLetters: map[string]int64{"fulfil": 2, "push": 0},
			Lags: []bus.ConsumerLag{{Stream: "ORDERS", Consumer: "order-ledger", Pending: 20000}, {Stream: "ORDERS", Consumer: "fulfil", Pending: 3}}},
	}
	var keys []string
	for _, a := range DefaultRules.Eval(snap) {
		keys = append(keys, a.Key+" "+a.Severity)
	}
	want := "dead_letters/fulfil warning,errors/n2 critical,lag/ORDERS/order-ledger warning,latency/n3 warning,node_red/n1 critical,outbox critical"
	if got := strings.Join(keys, ","); got != want {
		t.Errorf("alerts:\n %s\nwant\n %s", got, want)
	}
}

// The notifier sends an alert once when it starts, not again while it
// lasts, once when it ends, in each bot's own format.
func TestNotifierDedupAndRecovery(t *testing.T) {
	var mu sync.Mutex
	got := map[string][]string{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		var v struct {
			MsgType string `json:"msg_type"`
			Content struct {
				Text string `json:"text"`
			} `json:"content"`
			Msgtype string `json:"msgtype"`
			TextW   struct {
				Content string `json:"content"`
			} `json:"text"`
		}
		text := ""
		switch r.URL.Path {
		case "/feishu":
			if json.Unmarshal(b, &v) != nil || v.MsgType != "text" {
				t.Errorf("feishu body %s", b)
			}
			text = v.Content.Text
		case "/wecom":
			if json.Unmarshal(b, &v) != nil || v.Msgtype != "text" {
				t.Errorf("wecom body %s", b)
			}
			text = v.TextW.Content
		case "/slack":
			var s struct{ Text string }
			if json.Unmarshal(b, &s) != nil {
				t.Errorf("slack body %s", b)
			}
			text = s.Text
		}
		mu.Lock()
		got[r.URL.Path] = append(got[r.URL.Path], text)
		mu.Unlock()
	}))
	defer srv.Close()
	var targets []Target
	for _, k := range []string{"feishu", "wecom", "slack"} {
		tg, err := ParseTarget(k + "=" + srv.URL + "/" + k)
		if err != nil {
			t.Fatal(err)
		}
		targets = append(targets, tg)
	}
	n := &Notifier{Targets: targets, Resend: time.Hour, Client: srv.Client(), Log: slog.New(slog.DiscardHandler), Prefix: "[test]"}
	red := Alert{Key: "node_red/n1", Severity: "critical", Summary: "node 1 is red"}
	lag := Alert{Key: "lag/ORDERS/x", Severity: "warning", Summary: "x is behind"}
	ctx := context.Background()
	n.Notify(ctx, t0, []Alert{red})
	n.Notify(ctx, t0.Add(time.Second), []Alert{red})
	n.Notify(ctx, t0.Add(2*time.Second), []Alert{red, lag})
	for s := 3; s <= 3602; s++ { // still firing an hour (Resend) after it was sent
		n.Notify(ctx, t0.Add(time.Duration(s)*time.Second), []Alert{lag})
	}
	n.Notify(ctx, t0.Add(3603*time.Second), nil)
	// A monitor that took the job back after a gap (another sent
	// meanwhile) sends what fires again, once.
	n.Notify(ctx, t0.Add(2*time.Hour), []Alert{red})
	n.Notify(ctx, t0.Add(2*time.Hour+time.Second), []Alert{red})
	want := []string{"FIRING [critical] node 1 is red", "FIRING [warning] x is behind", "RESOLVED [critical] node 1 is red",
		"STILL FIRING [warning] x is behind", "RESOLVED [warning] x is behind", "FIRING [critical] node 1 is red"}
	for _, k := range []string{"/feishu", "/wecom", "/slack"} {
		if len(got[k]) != len(want) {
			t.Fatalf("%s got %d messages, want %d: %q", k, len(got[k]), len(want), got[k])
		}
		for i, w := range want {
			if !strings.HasPrefix(got[k][i], "[test] "+w) {
				t.Errorf("%s message %d: %q, want %q...", k, i, got[k][i], w)
			}
		}
	}
	if _, err := ParseTarget("teams=http://x"); err == nil {
		t.Error("an unknown kind was taken")
	}
	if _, err := ParseTarget("slack=ftp://x"); err == nil {
		t.Error("a non-http URL was taken")
	}
}

func TestParseRules(t *testing.T) {
	r, err := ParseRules("errors=5%, p99=250ms,lag=0,outbox=1m,dead=3,resend=0,node-red=false")
	if err != nil {
		t.Fatal(err)
	}
	want := Rules{NodeRed: false, ErrShare: 0.05, P99: 0.25, Lag: 0, OutboxAge: 60, DeadLetters: 3, Resend: 0}
	if r != want {
		t.Fatalf("got %+v, want %+v", r, want)
	}
	if r, _ := ParseRules(""); r != DefaultRules {
		t.Fatalf("no change: %+v", r)
	}
	for _, bad := range []string{"errors=2", "p99=-1s", "lag=x", "mood=bad", "outbox"} {
		if _, err := ParseRules(bad); err == nil {
			t.Errorf("%q was taken", bad)
		}
	}
	// A rule at zero is off.
	snap := Snapshot{Figures: Figures{Lags: []bus.ConsumerLag{{Stream: "S", Consumer: "c", Pending: 1 << 30}}}}
	if a := r.Eval(snap); len(a) != 0 {
		t.Errorf("lag=0 still alerts: %+v", a)
	}
}
