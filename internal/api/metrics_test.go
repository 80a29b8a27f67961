package api_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/surge-platform/surge/internal/eventually"
	"github.com/surge-platform/surge/internal/node"
	"github.com/surge-platform/surge/internal/nodetest"
)

// scrape reads a node's /metrics (admin token) into metric families.
func scrape(t *testing.T, base string) map[string]*dto.MetricFamily {
	t.Helper()
	r := (&nodetest.Client{T: t, Base: base, Token: nodetest.Admin}).Do("GET", "/metrics", "")
	if r.Status != 200 {
		t.Fatalf("GET /metrics: %d %s", r.Status, r.Body)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(bytes.NewReader(r.Body))
	if err != nil {
		t.Fatalf("GET /metrics is not the text format: %v", err)
	}
	return fams
}

// series is every sample's name and labels, e.g. `x{a="1"}`, histograms'
// buckets left out.
func series(fams map[string]*dto.MetricFamily) map[string]bool {
	out := map[string]bool{}
	for name, f := range fams {
		for _, m := range f.Metric {
			var ls []string
			for _, l := range m.Label {
				ls = append(ls, l.GetName()+"="+l.GetValue())
			}
			slices.Sort(ls)
			out[name+"{"+strings.Join(ls, ",")+"}"] = true
		}
	}
	return out
}

// value is the sum of the family's samples whose labels include want.
func value(fams map[string]*dto.MetricFamily, name string, want ...string) float64 {
	var v float64
	f := fams[name]
	if f == nil {
		return 0
	}
next:
	for _, m := range f.Metric {
		for i := 0; i+1 < len(want); i += 2 {
			if !slices.ContainsFunc(m.Label, func(l *dto.LabelPair) bool { return l.GetName() == want[i] && l.GetValue() == want[i+1] }) {
				continue next
			}
		}
		switch {
		case m.Counter != nil:
			v += m.Counter.GetValue()
		case m.Gauge != nil:
			v += m.Gauge.GetValue()
		case m.Histogram != nil:
			v += float64(m.Histogram.GetSampleCount())
		}
	}
	return v
}

// TestMetricsLabelsAreBounded drives orders, payments, POS steps, reads of
// existing and missing ids and unknown paths through a node, twice with
// new customers and orders, and checks /metrics: the families an operator
// needs are there and count what happened, no label names an id, no label
// value is one of the ids or paths used, and the second round adds no
// series (a label that took an id or a path would add one per request).
func TestMetricsLabelsAreBounded(t *testing.T) {
	t.Parallel()
	base := startNode(t)
	pos := nodetest.POS(t, base, "1001")
	var used []string // every id and odd path this test sent
	// The series of the scrape's own route exist from here on.
	eventually.True(t, 10*time.Second, "a scrape counted", func() bool {
		return value(scrape(t, base), "surge_http_requests_total", "route", "GET /metrics") > 0
	})
	round := func(r int) {
		for i := range 4 {
			phone := fmt.Sprintf("+86139%04d%04d", r, i)
			c := nodetest.Login(t, base, phone)
			oid := nodetest.PayOrder(t, c, "1001", "1001010")
			used = append(used, oid, phone[1:])
			if g := c.Do("GET", "/api/v1/orders/"+oid, ""); g.Status != 200 {
				t.Fatalf("read order: %d %s", g.Status, g.Body)
			}
			// Accepted once its store has it: an accept before that is a 404,
			// which one round may see and the other not (a series of its own).
			eventually.True(t, 10*time.Second, "the paid order queued for the POS", func() bool {
				return strings.Contains(string(pos.Do("GET", "/pos/v1/orders/new?limit=100", "").Body), `"order_id":"`+oid+`"`)
			})
			if a := pos.Do("POST", "/pos/v1/orders/"+oid+"/accept", ""); a.Status != 200 {
				t.Fatalf("accept: %d %s", a.Status, a.Body)
			}
			missing := fmt.Sprintf("%d%d77123456", r, i)
			unknown := fmt.Sprintf("/api/v1/nothing-%d-%d/98765%d", r, i, i)
			used = append(used, missing, unknown, "nothing-")
			c.Do("GET", "/api/v1/orders/"+missing, "")
			c.Do("GET", unknown, "")
			c.Do("GET", "/api/v1/stores/1001/menu", "")
		}
	}
	round(1)
	var first map[string]*dto.MetricFamily
	eventually.True(t, 15*time.Second, "the ledger counts 4 created, paid and accepted orders", func() bool {
		first = scrape(t, base)
		return value(first, "surge_orders_total", "event", "created") == 4 && value(first, "surge_orders_total", "event", "paid") == 4 &&
			value(first, "surge_orders_total", "event", "accepted") == 4
	})
	for _, name := range []string{"surge_http_requests_total", "surge_http_request_duration_seconds", "surge_edge_requests_total",
		"surge_breaker_state", "surge_menu_cache_total", "surge_outbox_rows", "surge_outbox_oldest_seconds", "surge_consumer_lag",
		"surge_ws_connections", "surge_job_runs_total", "surge_coupon_claims_total", "surge_flash_purchases_total",
		"surge_db_connections", "surge_node_info", "go_goroutines", "process_cpu_seconds_total"} {
		if _, ok := first[name]; !ok && name != "surge_coupon_claims_total" { // a vector with no claim yet has no sample
			t.Errorf("/metrics has no %s", name)
		}
	}
	if v := value(first, "surge_http_requests_total", "route", "POST /api/v1/orders", "code", "201", "class", "app", "role", "api"); v != 4 {
		t.Errorf("order creations counted: %v, want 4", v)
	}
	if v := value(first, "surge_http_requests_total", "route", "unmatched", "code", "404"); v != 4 {
		t.Errorf("unknown paths counted: %v, want 4", v)
	}
	if v := value(first, "surge_http_requests_total", "route", "POST /pos/v1/orders/{order_id}/accept", "code", "200", "class", "pos", "role", "fulfil"); v != 4 {
		t.Errorf("POS accepts counted: %v, want 4", v)
	}
	if v := value(first, "surge_menu_cache_total", "event", "reads"); v < 4 {
		t.Errorf("menu reads counted: %v, want at least 4", v)
	}
	round(2)
	second := scrape(t, base)

	idName := regexp.MustCompile(`(^|_)(id|ids|phone|token|trace|path|url|ip)$`)
	longNumber := regexp.MustCompile(`[0-9]{5,}`)
	for name, f := range second {
		for _, m := range f.Metric {
			for _, l := range m.Label {
				n, v := l.GetName(), l.GetValue()
				if idName.MatchString(n) {
					t.Errorf("%s has a per-id label %q", name, n)
				}
				if n != "le" && n != "quantile" && longNumber.MatchString(v) {
					t.Errorf("%s{%s=%q}: a label value with an id-like number", name, n, v)
				}
				for _, u := range used {
					if strings.Contains(v, u) {
						t.Errorf("%s{%s=%q} carries %q, which a request sent", name, n, v, u)
					}
				}
			}
		}
	}
	s1, s2 := series(first), series(second)
	var grown []string
	for s := range s2 {
		if !s1[s] {
			grown = append(grown, s)
		}
	}
	if len(grown) > 0 {
		slices.Sort(grown)
		t.Errorf("a second round of the same requests with new ids added %d series:\n%s", len(grown), strings.Join(grown, "\n"))
	}
}

// TestStoreFigures: a store's paid orders by where they are now, from its
// fulfilment records; other stores' orders and older ones not counted.
func TestStoreFigures(t *testing.T) {
	t.Parallel()
	base := startNode(t)
	c := nodetest.Login(t, base, "+8613955550042")
	a := nodetest.PayOrder(t, c, "1004", "1004010")
	nodetest.PayOrder(t, c, "1004", "1004010")
	nodetest.PayOrder(t, c, "1005", "1005010")
	pos := nodetest.POS(t, base, "1004")
	eventually.True(t, 10*time.Second, "the first order accepted", func() bool {
		return pos.Do("POST", "/pos/v1/orders/"+a+"/accept", "").Status == 200
	})
	admin := &nodetest.Client{T: t, Base: base, Token: nodetest.Admin}
	var f struct {
		StoreID                                          string `json:"store_id"`
		Paid, New, Accepted, Ready, Completed, Withdrawn int64
	}
	eventually.Saw(t, 10*time.Second, "store 1004: 2 paid, 1 new, 1 accepted", func() (bool, string) {
		r := admin.Do("GET", "/admin/v1/stores/1004/figures", "")
		json.Unmarshal(r.Body, &f)
		return r.Status == 200 && f.StoreID == "1004" && f.Paid == 2 && f.New == 1 && f.Accepted == 1, string(r.Body)
	})
	r := admin.Do("GET", "/admin/v1/stores/1004/figures?since="+time.Now().Add(time.Hour).UTC().Format(time.RFC3339), "")
	if json.Unmarshal(r.Body, &f); r.Status != 200 || f.Paid != 0 {
		t.Errorf("since an hour ahead: %d %s", r.Status, r.Body)
	}
	if r := admin.Do("GET", "/admin/v1/stores/1004/figures?since=yesterday", ""); r.Status != 400 || r.Code() != "invalid_since" {
		t.Errorf("bad since: %d %s", r.Status, r.Body)
	}
	if r := (&nodetest.Client{T: t, Base: base}).Do("GET", "/admin/v1/stores/1004/figures", ""); r.Status != 401 {
		t.Errorf("without the admin token: %d", r.Status)
	}
}

// The dashboard's stream goes through the whole chain: each second's
// snapshot arrives as it is made (flushed, not buffered), past the
// server's read timeout.
func TestDashboardStream(t *testing.T) {
	t.Parallel()
	base := nodetest.Start(t, func(c *node.Config) { c.Roles = append(c.Roles, "monitor") }).URL()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", base+"/dashboard/events?access_token="+nodetest.Admin, nil)
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	if res.StatusCode != 200 || res.Header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("events: %d %s", res.StatusCode, res.Header.Get("Content-Type"))
	}
	sc := bufio.NewScanner(res.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	// Snapshots keep coming, about one a second, until one shows the node
	// green (its first heartbeat and probe take a moment on a busy machine).
	var snaps []string
	start := time.Now()
	green := false
	for !(green && len(snaps) >= 2) && sc.Scan() { // green, and streamed: not one answer
		line := sc.Text()
		if !strings.HasPrefix(line, "data: ") {
			continue
		}
		snaps = append(snaps, line)
		var s struct {
			Nodes []struct{ Health string }
		}
		if err := json.Unmarshal([]byte(strings.TrimPrefix(line, "data: ")), &s); err != nil {
			t.Fatalf("snapshot: %v %s", err, line)
		}
		green = green || len(s.Nodes) == 1 && s.Nodes[0].Health == "green"
	}
	if !green || len(snaps) < 2 {
		t.Fatalf("%d snapshots in %v, none with the node green: %v %v", len(snaps), time.Since(start), sc.Err(), snaps)
	}
	if r := (&nodetest.Client{T: t, Base: base}).Do("GET", "/dashboard", ""); r.Status != 401 {
		t.Errorf("the dashboard without the token: %d", r.Status)
	}
}
