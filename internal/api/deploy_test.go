package api_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// The deploy files' expressions (Prometheus rules, the Grafana dashboard)
// name only metrics a node exports, and promtool accepts the rules and the
// scrape config.
func TestDeployFilesNameRealMetrics(t *testing.T) {
	t.Parallel()
	base := startNode(t)
	scrape(t, base) // a request: the RED families exist from the next scrape
	fams := scrape(t, base)
	name := regexp.MustCompile(`surge_[a-z0-9_]+`)
	for _, f := range []string{"../../deploy/prometheus/surge-rules.yml", "../../deploy/grafana/surge.json"} {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		names := name.FindAllString(string(b), -1)
		if len(names) < 5 {
			t.Fatalf("%s names %d metrics", f, len(names))
		}
		for _, n := range names {
			fam := n
			for _, suf := range []string{"_bucket", "_sum", "_count"} {
				if _, ok := fams[fam]; !ok {
					fam = strings.TrimSuffix(fam, suf)
				}
			}
			if _, ok := fams[fam]; !ok {
				t.Errorf("%s uses %s, which a node does not export", f, n)
			}
		}
	}
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("no promtool: scripts/deps.sh installs Debian's prometheus package for this test")
		}
		t.Skip("no promtool (apt-get install prometheus): the rules are not checked")
	}
	dir := t.TempDir() // the config names a token file: a checkout has none
	for _, f := range []string{"prometheus.yml", "surge-rules.yml"} {
		b, _ := os.ReadFile(filepath.Join("../../deploy/prometheus", f))
		os.WriteFile(filepath.Join(dir, f), b, 0o644)
	}
	os.WriteFile(filepath.Join(dir, "surge-admin-token"), []byte("token"), 0o600)
	for _, args := range [][]string{{"check", "rules", "surge-rules.yml"}, {"check", "config", "prometheus.yml"}} {
		cmd := exec.Command(promtool, args...)
		cmd.Dir = dir
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
}
