package e2etest

import (
	"cmp"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/surge-platform/surge/internal/platform/bus/bustest"
	"github.com/surge-platform/surge/internal/platform/kv/kvtest"
)

// TestClusterCapAcrossNodes: 3 api processes share a cap of 300 customer
// requests a second (--global-rps) through a private Redis. Offered 600/s
// spread over them, they admit 300/s together (within 5%); with Redis
// killed each falls back to its share (100/s, "mode": "local") and the
// total holds (within 10%); with Redis back, empty, they share again.
func TestClusterCapAcrossNodes(t *testing.T) {
	t.Parallel()
	const capRPS = 300
	dbs := pgURLs(t, 1)
	redis := kvtest.StartRedis(t)
	common := []string{"--admin-token", "e2e-admin", "--db", dbs[0], "--kv", redis.URL("prefix=cap:"),
		"--bus", bustest.Namespaced(t, bustest.ExternalURL(t)), "--global-rps", "300", "--global-nodes", "3", "--log-level", "error"}
	var bases []string
	for i := range 3 {
		addr := freeAddr(t)
		args := []string{"serve", "--roles", "api", "--addr", addr, "--data", t.TempDir()}
		if i == 0 {
			args = append(args, "--seed-demo")
		}
		start(t, addr, append(args, common...)...)
		bases = append(bases, "http://"+addr)
	}
	type capStats struct {
		Mode                        string
		Allowed, Refused, Fallbacks int64
	}
	admin := &http.Client{Timeout: 5 * time.Second}
	stats := func(base string) (capStats, error) {
		req, _ := http.NewRequest("GET", base+"/admin/v1/edge", nil)
		req.Header.Set("Authorization", "Bearer e2e-admin")
		res, err := admin.Do(req)
		if err != nil {
			return capStats{}, err
		}
		defer res.Body.Close()
		if res.StatusCode != http.StatusOK {
			return capStats{}, fmt.Errorf("GET /admin/v1/edge: %s", res.Status)
		}
		var st struct{ Cap capStats }
		err = json.NewDecoder(res.Body).Decode(&st)
		return st.Cap, err
	}
	mode := func(base string) string {
		st, err := stats(base)
		if err != nil {
			return err.Error()
		}
		return st.Mode
	}
	// offer sends 2x the cap, spread over the nodes, for d and returns the
	// rate admitted after the first half second.
	offer := func(d time.Duration) float64 {
		tr := &http.Transport{MaxIdleConnsPerHost: 64}
		defer tr.CloseIdleConnections()
		client := &http.Client{Transport: tr, Timeout: 5 * time.Second}
		var ok, other atomic.Int64
		var wg sync.WaitGroup
		var before [3]capStats
		var beforeErr [3]error
		for j, b := range bases {
			before[j], beforeErr[j] = stats(b)
		}
		var late, sent int
		var maxLate time.Duration
		t0 := time.Now()
		from := t0.Add(500 * time.Millisecond)
		// Sent by the clock, not by ticks: a ticker drops the ticks a busy
		// machine did not take in time (a loaded make test admitted 211/s).
		for i := 0; time.Since(t0) < d; i++ {
			due := t0.Add(time.Duration(i) * time.Second / (2 * capRPS))
			time.Sleep(time.Until(due))
			if l := time.Since(due); l > 10*time.Millisecond {
				late++
				maxLate = max(maxLate, l)
			}
			sent++
			wg.Go(func() {
				res, err := client.Get(bases[i%3] + "/api/v1/stores")
				if err != nil {
					other.Add(1)
					return
				}
				io.Copy(io.Discard, res.Body)
				res.Body.Close()
				switch {
				case res.StatusCode == 200 && time.Now().After(from):
					ok.Add(1)
				case res.StatusCode == 200 || res.StatusCode == 429:
				default:
					other.Add(1)
				}
			})
		}
		wg.Wait()
		rate := float64(ok.Load()) / time.Since(from).Seconds()
		// What each node did over the whole phase, its first half second
		// included: a kv call slower than 50ms shows as a fallback, a
		// stall of the sender as late sends.
		for j, b := range bases {
			st, err := stats(b)
			if err = cmp.Or(beforeErr[j], err); err != nil {
				t.Logf("%s: no stats: %v", b, err)
				continue
			}
			t.Logf("%s: %s, allowed %d, refused %d, fallbacks %d", b, st.Mode, st.Allowed-before[j].Allowed,
				st.Refused-before[j].Refused, st.Fallbacks-before[j].Fallbacks)
		}
		t.Logf("sender: %d of %d sends more than 10ms late, the latest by %v", late, sent, maxLate)
		if other.Load() > 0 {
			t.Errorf("%d answers neither 200 nor 429", other.Load())
		}
		return rate
	}
	within := func(what string, got, want, tol float64) {
		t.Helper()
		t.Logf("%s: %.0f/s admitted (cap %d/s)", what, got, capRPS)
		if got < want*(1-tol) || got > want*(1+tol) {
			t.Errorf("%s: %.0f/s admitted, want %.0f/s within %.0f%%", what, got, want, 100*tol)
		}
	}
	for _, b := range bases {
		if m := mode(b); m != "shared" {
			t.Fatalf("%s: cap mode %q at start, want shared", b, m)
		}
	}
	// Each phase is measured over 7 s: a stall of a loaded machine longer
	// than the cap's burst (200 ms of it: 60 permits shared, each node's 20
	// in local mode) loses permits, and over 3.5 s one stall moved the rate
	// by up to 9% (328/s shared; 261/s local in a clean-clone CI run; the
	// burst was 50 ms then). Permits saved before a phase's first half
	// second may land in its window: 60 of them, +3% at most. The bounds
	// are the same.
	const window = 7 * time.Second
	within("shared, offered 2x", offer(window), capRPS, 0.05)

	redis.Kill()
	for _, b := range bases {
		waitUntil(t, 5*time.Second, b+" in local mode", func() bool { return mode(b) == "local" })
	}
	within("Redis killed, each node at its share", offer(window), capRPS, 0.10)

	redis.Start()
	for _, b := range bases {
		waitUntil(t, 10*time.Second, b+" shared again", func() bool { return mode(b) == "shared" })
	}
	within("Redis back (empty), offered 2x", offer(window), capRPS, 0.05)
}

func waitUntil(t *testing.T, d time.Duration, what string, ok func() bool) {
	t.Helper()
	for deadline := time.Now().Add(d); !ok(); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, d)
		}
	}
}
