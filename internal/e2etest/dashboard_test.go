package e2etest

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/surge-platform/surge/internal/platform/bus/bustest"
)

// chromium finds Debian's headless browser (scripts/deps.sh installs it).
func chromium(t *testing.T) string {
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Getenv("CI") != "" {
		t.Fatal("no chromium: scripts/deps.sh installs Debian's chromium for this test")
	}
	t.Skip("no chromium (apt-get install chromium): the dashboard's browser test is skipped")
	return ""
}

// browse loads url in headless chromium, lets its script fetch the state
// and render, and returns the rendered DOM (and, with shot, saves a
// screenshot there).
func browse(t *testing.T, chrome, url, shot string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	args := []string{"--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--virtual-time-budget=500",
		"--user-data-dir=" + t.TempDir()}
	if shot != "" {
		args = append(args, "--window-size=1400,900", "--screenshot="+shot)
	} else {
		args = append(args, "--dump-dom")
	}
	var out bytes.Buffer
	cmd := exec.CommandContext(ctx, chrome, append(args, url)...)
	cmd.Stdout = &out
	if err := cmd.Run(); err != nil {
		t.Fatalf("chromium %s: %v", url, err)
	}
	return out.String()
}

var nodeRe = regexp.MustCompile(`<g class="node" data-key="(n[0-9]+)" data-health="(green|yellow|red)">`)

// health reads the colour of each node the rendered page shows.
func health(dom string) map[string]string {
	out := map[string]string{}
	for _, m := range nodeRe.FindAllStringSubmatch(dom, -1) {
		out[m[1]] = m[2]
	}
	return out
}

// TestDashboardInBrowser runs three nodes on shared PostgreSQL and NATS,
// loads GET /dashboard of one in headless Chromium and finds every node
// green, then kills another with kill -9 and finds it red on the page
// within 10 s, and saves a screenshot of the page then.
//
// Not parallel: Chromium and three nodes take the machine's cores, and the
// rate measurements of the parallel tests (the cluster cap's) must not
// share them.
func TestDashboardInBrowser(t *testing.T) {
	chrome := chromium(t)
	const admin = "e2e-admin"
	dbs := pgURLs(t, 1)
	common := []string{"--admin-token", admin, "--db", dbs[0], "--db-max-conns", "4", "--kv", "mem:",
		"--bus", bustest.Namespaced(t, bustest.ExternalURL(t))}
	var procs []*proc
	for i := range 3 {
		addr := freeAddr(t)
		args := append([]string{"serve", "--addr", addr, "--data", t.TempDir(), "--roles", "api,worker,monitor"}, common...)
		if i == 0 {
			args = append(args, "--seed-demo")
		}
		procs = append(procs, start(t, addr, args...))
	}
	keys := make([]string, len(procs))
	for i, p := range procs {
		keys[i] = "n" + strconv.Itoa(getCluster(t, p.base, admin).NodeID)
	}
	page := procs[0].base + "/dashboard?access_token=" + admin

	var dom string
	deadline := time.Now().Add(20 * time.Second)
	for {
		dom = browse(t, chrome, page, "")
		h := health(dom)
		if len(h) == 3 && h[keys[0]] == "green" && h[keys[1]] == "green" && h[keys[2]] == "green" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the page does not show three green nodes %v: %v\n%s", keys, h, tail(dom, 3000))
		}
		time.Sleep(500 * time.Millisecond)
	}
	for _, want := range []string{`data-name="db0"`, `data-name="bus"`, "orders / min"} {
		if !strings.Contains(dom, want) {
			t.Errorf("the page lacks %s", want)
		}
	}

	killed := time.Now()
	killNine(t, procs[2])
	for {
		h := health(browse(t, chrome, page, ""))
		if h[keys[2]] == "red" {
			t.Logf("node %s red on the page %s after kill -9", keys[2], time.Since(killed).Round(100*time.Millisecond))
			if h[keys[0]] != "green" || h[keys[1]] != "green" {
				t.Errorf("the others: %v, want green", h)
			}
			break
		}
		if time.Since(killed) > 10*time.Second {
			t.Fatalf("node %s not red on the page 10 s after kill -9: %v", keys[2], h)
		}
	}
	// Why it is red, as the monitor says it.
	_, b, err := call(procs[0].base, "GET", "/dashboard/state", admin, "")
	if err != nil {
		t.Fatal(err)
	}
	var st struct {
		Nodes []struct {
			Key, Health, Reason string
		}
	}
	json.Unmarshal(b, &st)
	for _, n := range st.Nodes {
		if n.Key == keys[2] && (n.Health != "red" || !strings.Contains(n.Reason, "readyz") && !strings.Contains(n.Reason, "heartbeat")) {
			t.Errorf("the killed node: %s %q", n.Health, n.Reason)
		}
	}

	dir := os.Getenv("SURGE_ARTIFACTS")
	if dir == "" {
		dir = os.TempDir()
	}
	shot := filepath.Join(dir, "surge-dashboard.png")
	browse(t, chrome, page, shot)
	if fi, err := os.Stat(shot); err != nil || fi.Size() < 10000 {
		t.Fatalf("screenshot %s: %v", shot, err)
	}
	t.Logf("screenshot of the dashboard with a node killed: %s", shot)
}
