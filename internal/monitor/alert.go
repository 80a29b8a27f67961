package monitor

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Alert is one problem the rules see now. Key names it across snapshots
// (the rule and what it is about), so it is sent once when it starts and
// once when it ends.
type Alert struct {
	Key      string    `json:"key"`
	Severity string    `json:"severity"` // "critical" or "warning"
	Summary  string    `json:"summary"`
	Since    time.Time `json:"since,omitzero"`
}

// Rules are the alert thresholds (docs/observability.md has each rule);
// a zero threshold turns its rule off.
type Rules struct {
	NodeRed     bool          // a node red
	ErrShare    float64       // a node's 5xx share at or above this
	P99         float64       // a node's p99 above this many seconds
	Lag         uint64        // a consumer this many messages behind
	OutboxAge   float64       // an outbox row older than this many seconds
	DeadLetters int64         // at least this many dead letters waiting
	Resend      time.Duration // an alert still firing is sent again after this (0: never)
}

// DefaultRules are the documented defaults.
var DefaultRules = Rules{NodeRed: true, ErrShare: 0.01, P99: 1, Lag: 10000, OutboxAge: 30, DeadLetters: 1, Resend: time.Hour}

// Eval returns the alerts snap raises, in key order.
func (r Rules) Eval(snap Snapshot) []Alert {
	var out []Alert
	add := func(key, sev, format string, args ...any) {
		out = append(out, Alert{Key: key, Severity: sev, Summary: fmt.Sprintf(format, args...)})
	}
	for _, n := range snap.Nodes {
		name := fmt.Sprintf("node %d (%s, %s)", n.NodeID, strings.Join(n.Roles, ","), n.URL)
		switch {
		case r.NodeRed && n.Health == Red:
			add("node_red/"+n.Key, "critical", "%s is red: %s", name, n.Reason)
		case r.ErrShare > 0 && n.Load.ErrShare >= r.ErrShare && n.Load.RPS >= 1:
			add("errors/"+n.Key, "critical", "%s answers %.1f%% of requests with 5xx", name, 100*n.Load.ErrShare)
		case r.P99 > 0 && n.Load.P99 > r.P99 && n.Load.RPS >= 1:
			add("latency/"+n.Key, "warning", "%s: p99 %s", name, secs(n.Load.P99))
		}
	}
	for _, l := range snap.Figures.Lags {
		if r.Lag > 0 && l.Pending >= r.Lag {
			add("lag/"+l.Stream+"/"+l.Consumer, "warning", "consumer %s of %s is %d messages behind", l.Consumer, l.Stream, l.Pending)
		}
	}
	if r.OutboxAge > 0 && snap.Figures.OutboxOldest > r.OutboxAge {
		add("outbox", "critical", "the oldest unpublished outbox row is %.0f s old (%d rows): events are late", snap.Figures.OutboxOldest,
			snap.Figures.OutboxRows)
	}
	for _, c := range slices.Sorted(maps.Keys(snap.Figures.DeadLetters)) {
		if n := snap.Figures.DeadLetters[c]; r.DeadLetters > 0 && n >= r.DeadLetters {
			add("dead_letters/"+c, "warning", "%d dead letters of consumer %s wait for an operator", n, c)
		}
	}
	slices.SortFunc(out, func(a, b Alert) int { return cmp.Compare(a.Key, b.Key) })
	return out
}

// Target is a chat webhook: Kind is feishu, wecom or slack.
type Target struct{ Kind, URL string }

// ParseTarget reads "kind=URL" (--alert).
func ParseTarget(s string) (Target, error) {
	kind, u, ok := strings.Cut(s, "=")
	if !ok || (kind != "feishu" && kind != "wecom" && kind != "slack") {
		return Target{}, fmt.Errorf("--alert %q: want feishu=URL, wecom=URL or slack=URL", s)
	}
	if p, err := url.Parse(u); err != nil || (p.Scheme != "http" && p.Scheme != "https") || p.Host == "" {
		return Target{}, fmt.Errorf("--alert %q: %q is not an http(s) URL", s, u)
	}
	return Target{Kind: kind, URL: u}, nil
}

// body is a message in the target's bot format: Feishu's and WeCom's text
// messages, Slack's incoming webhook.
func (t Target) body(text string) []byte {
	var v any
	switch t.Kind {
	case "feishu":
		v = map[string]any{"msg_type": "text", "content": map[string]string{"text": text}}
	case "wecom":
		v = map[string]any{"msgtype": "text", "text": map[string]string{"content": text}}
	default:
		v = map[string]string{"text": text}
	}
	b, _ := json.Marshal(v)
	return b
}

// Notifier sends each alert to every target when it starts and when it
// ends (dedup by key), and again every Resend while it lasts. It keeps
// what it sent in memory: the monitor that takes over after a failover
// sends the alerts still firing once more.
type Notifier struct {
	Targets []Target
	Resend  time.Duration
	Client  *http.Client
	Log     *slog.Logger
	Prefix  string // the message's first words, e.g. "[surge prod]"

	mu     sync.Mutex
	active map[string]sent
	last   time.Time // the last Notify: a long gap means another monitor sent meanwhile
}

type sent struct {
	alert Alert
	at    time.Time
}

// Notify compares alerts with what is firing and sends the changes.
func (n *Notifier) Notify(ctx context.Context, now time.Time, alerts []Alert) {
	n.mu.Lock()
	if n.active == nil || now.Sub(n.last) > 5*time.Second {
		// First call, or this node (re)took the alerts job after another
		// monitor sent meanwhile: what it sent is stale. Alerts firing now
		// are sent again once rather than missed.
		n.active = map[string]sent{}
	}
	n.last = now
	var msgs []string
	now = now.UTC()
	firing := map[string]bool{}
	for _, a := range alerts {
		firing[a.Key] = true
		s, ok := n.active[a.Key]
		switch {
		case !ok:
			n.active[a.Key] = sent{a, now}
			msgs = append(msgs, fmt.Sprintf("%s FIRING [%s] %s (since %s)", n.Prefix, a.Severity, a.Summary, now.Format(time.RFC3339)))
		case n.Resend > 0 && now.Sub(s.at) >= n.Resend:
			n.active[a.Key] = sent{a, now}
			msgs = append(msgs, fmt.Sprintf("%s STILL FIRING [%s] %s", n.Prefix, a.Severity, a.Summary))
		}
	}
	for k, s := range n.active {
		if !firing[k] {
			delete(n.active, k)
			msgs = append(msgs, fmt.Sprintf("%s RESOLVED [%s] %s (at %s)", n.Prefix, s.alert.Severity, s.alert.Summary, now.Format(time.RFC3339)))
		}
	}
	n.mu.Unlock()
	slices.Sort(msgs)
	for _, m := range msgs {
		for _, t := range n.Targets {
			if err := n.send(ctx, t, strings.TrimSpace(m)); err != nil {
				n.Log.Warn("alert not sent", "target", t.Kind, "err", err)
			}
		}
	}
}

func (n *Notifier) send(ctx context.Context, t Target, text string) error {
	req, err := http.NewRequestWithContext(ctx, "POST", t.URL, bytes.NewReader(t.body(text)))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	res, err := n.Client.Do(req)
	if err != nil {
		return err
	}
	res.Body.Close()
	if res.StatusCode/100 != 2 {
		return fmt.Errorf("%s answered %d", t.Kind, res.StatusCode)
	}
	return nil
}

// ParseRules reads --alert-rules: comma-separated name=value changes to
// DefaultRules: errors (a 5xx share, 0.01 or 1%), p99 (a duration), lag
// (messages), outbox (a duration), dead (dead letters), resend (a
// duration, 0: never), node-red (true or false).
func ParseRules(s string) (Rules, error) {
	r := DefaultRules
	for _, kv := range strings.Split(s, ",") {
		if kv = strings.TrimSpace(kv); kv == "" {
			continue
		}
		k, v, _ := strings.Cut(kv, "=")
		var err error
		switch k {
		case "errors":
			pct := strings.HasSuffix(v, "%")
			r.ErrShare, err = strconv.ParseFloat(strings.TrimSuffix(v, "%"), 64)
			if pct {
				r.ErrShare /= 100
			}
			if err == nil && (r.ErrShare < 0 || r.ErrShare > 1) {
				err = errors.New("want a share 0..1 or a percentage")
			}
		case "p99", "outbox":
			var d time.Duration
			if d, err = time.ParseDuration(v); err == nil && d < 0 {
				err = errors.New("want a positive duration")
			}
			if k == "p99" {
				r.P99 = d.Seconds()
			} else {
				r.OutboxAge = d.Seconds()
			}
		case "lag":
			r.Lag, err = strconv.ParseUint(v, 10, 64)
		case "dead":
			r.DeadLetters, err = strconv.ParseInt(v, 10, 64)
		case "resend":
			r.Resend, err = time.ParseDuration(v)
		case "node-red":
			r.NodeRed, err = strconv.ParseBool(v)
		default:
			err = errors.New("unknown rule (errors, p99, lag, outbox, dead, resend, node-red)")
		}
		if err != nil {
			return Rules{}, fmt.Errorf("--alert-rules %q: %v", kv, err)
		}
	}
	return r, nil
}
