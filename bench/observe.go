package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/surge-platform/surge/bench/load"
)

// observe measures what metrics and tracing cost: menu reads and order
// placement (embedded surge, both CPU-bound in the surge process, so a
// cost shows in the rate) on nodes with --telemetry=false (the baseline),
// with telemetry and no exporter (the default), and with spans exported
// to a local OTLP sink at the default --trace-ratio and at 1: the rates
// under wrk, and the surge process's CPU per request under wrk and at a
// fixed open-loop rate. The nodes run side by side and are measured in
// turn within each round, so drift of the machine hits them alike. Shedding is off: wrk's 32 connections
// keep both cores busy, which the shedder rightly answers with 503s.
func observe(ctx context.Context) error {
	sink, batches, err := otlpSink()
	if err != nil {
		return err
	}
	defer sink.Close()
	otlp := "http://" + sink.Addr().String()
	configs := []struct {
		name string
		args []string
	}{
		{"telemetry off", []string{"--telemetry=false"}},
		{"telemetry on", nil},
		{"on, OTLP 1%", []string{"--otlp", otlp}},
		{"on, OTLP 100%", []string{"--otlp", otlp, "--trace-ratio", "1"}},
	}
	type node struct {
		base   string
		pid    int
		tokens []string
		done   func()
	}
	nodes := make([]node, len(configs))
	for i, c := range configs {
		data, _ := os.MkdirTemp("", "surge-bench-")
		addr := freeAddr()
		cmd, err := start("http://"+addr+"/readyz", *surgeBin, append([]string{"serve", "--addr", addr, "--data", data, "--seed-demo",
			"--log-level", "warn", "--ip-rps", "0", "--shed", "off"}, c.args...)...)
		if err != nil {
			return err
		}
		nodes[i] = node{base: "http://" + addr, pid: cmd.Process.Pid, done: func() { stop(cmd); os.RemoveAll(data) }}
		defer nodes[i].done()
		if nodes[i].tokens, err = logins("http://"+addr, *workers, 0); err != nil {
			return err
		}
	}
	body := `{"store_id":"1001","items":[{"sku_id":"1001006","qty":1},{"sku_id":"1001007","qty":2}]}`
	for _, n := range nodes { // warm up
		load.Run(ctx, *workers, time.Second, 200, func(int, int) *http.Request {
			r, _ := http.NewRequest("GET", n.base+"/api/v1/stores/1001/menu", nil)
			return r
		})
	}
	// cpuPer waits until every node is idle (the last one's orders are
	// relayed and consumed for a while after), runs one measurement on n
	// and returns the µs of CPU n's process spent per answer.
	cpuPer := func(n node, run func() (answers float64, err error)) (float64, error) {
		for _, o := range nodes {
			quiesce(o.pid)
		}
		t0 := cpuTicks(n.pid)
		answers, err := run()
		return float64(cpuTicks(n.pid)-t0) * 1e4 / answers, err
	}
	menus := make([][]float64, len(nodes))
	orders := make([][]float64, len(nodes))
	menuCPU := make([][]float64, len(nodes)) // surge's CPU per request, µs
	orderCPU := make([][]float64, len(nodes))
	fixedMenu, fixedOrders := make([][]float64, len(nodes)), make([][]float64, len(nodes))
	const menuRate, orderRate = 6000, 800 // the fixed rates: well below every node's capacity
	for round := range *rounds {
		// Each node's turn comes at another place in each round.
		for k := range nodes {
			i := (round + k) % len(nodes)
			n := nodes[i]
			var m, o wrkResult
			c, err := cpuPer(n, func() (float64, error) {
				var err error
				m, err = runWrk(ctx, n.base+"/api/v1/stores/1001/menu", *workers, *dur, "")
				return m.RPS * m.Elapsed.Seconds(), err
			})
			if err != nil {
				return err
			}
			menuCPU[i] = append(menuCPU[i], c)
			if c, err = cpuPer(n, func() (float64, error) {
				var err error
				o, err = runWrk(ctx, n.base+"/api/v1/orders", *workers, *dur, orderScript(n.tokens, body, fmt.Sprintf("r%d", round)))
				return o.RPS * o.Elapsed.Seconds(), err
			}); err != nil {
				return err
			}
			orderCPU[i] = append(orderCPU[i], c)
			if m.Bad > 0 || o.Bad > 0 {
				return fmt.Errorf("observe %s: %d failed menu reads, %d failed orders", configs[i].name, m.Bad, o.Bad)
			}
			menus[i], orders[i] = append(menus[i], m.RPS), append(orders[i], o.RPS)

			// The same at a fixed rate, from an open loop (requests at fixed
			// times, as a crowd sends them).
			var fm, fo openResult
			c, _ = cpuPer(n, func() (float64, error) {
				fm = openLoop(ctx, menuRate, *dur, func(int, int) *http.Request {
					r, _ := http.NewRequest("GET", n.base+"/api/v1/stores/1001/menu", nil)
					return r
				})
				return fm.ok * dur.Seconds(), nil
			})
			fixedMenu[i] = append(fixedMenu[i], c)
			c, _ = cpuPer(n, func() (float64, error) {
				fo = openLoop(ctx, orderRate, *dur, func(w, j int) *http.Request {
					r, _ := http.NewRequest("POST", n.base+"/api/v1/orders", strings.NewReader(body))
					r.Header.Set("Authorization", "Bearer "+n.tokens[j%len(n.tokens)])
					r.Header.Set("Content-Type", "application/json")
					r.Header.Set("Idempotency-Key", fmt.Sprintf("f%d-%d-%d", round, w, j))
					return r
				}, 201)
				return fo.ok * dur.Seconds(), nil
			})
			fixedOrders[i] = append(fixedOrders[i], c)
			if fm.failed > 0 || fo.failed > 0 {
				return fmt.Errorf("observe %s at a fixed rate: %d menu reads, %d orders failed", configs[i].name, fm.failed, fo.failed)
			}
		}
		fmt.Printf("  observe round %d (OTLP batches so far %d): CPU per menu read / order, µs:", round+1, batches.Load())
		for i := range configs {
			fmt.Printf("  %s %.1f / %.1f", configs[i].name, menuCPU[i][round], orderCPU[i][round])
		}
		fmt.Println()
	}
	for i := 1; i < len(configs); i++ {
		report(fmt.Sprintf("menu reads, %s against telemetry off (wrk, %d connections, %v per round, embedded)", configs[i].name, *workers, *dur),
			"telemetry off", configs[i].name, menus[0], menus[i], 0)
		report(fmt.Sprintf("order placement, %s against telemetry off (wrk, %d connections, a unique Idempotency-Key each, embedded)", configs[i].name, *workers),
			"telemetry off", configs[i].name, orders[0], orders[i], 0)
	}
	// On our 2-core machine every one of these figures moved by 5-15% from
	// run to run: more than what telemetry costs without an exporter (the
	// chain's Go benchmark and a CPU profile resolve that better).
	cpuTable := func(title string, menu, order [][]float64) {
		fmt.Printf("\n  surge's CPU per request, %s (medians of %d rounds; the ratio to telemetry off is the cost):\n", title, *rounds)
		fmt.Printf("  %-16s menu read %6.1f µs            order %7.1f µs\n", configs[0].name, median(menu[0]), median(order[0]))
		for i := 1; i < len(configs); i++ {
			fmt.Printf("  %-16s menu read %6.1f µs (x %.3f)  order %7.1f µs (x %.3f)\n", configs[i].name,
				median(menu[i]), median(menu[i])/median(menu[0]), median(order[i]), median(order[i])/median(order[0]))
		}
	}
	cpuTable("under wrk", menuCPU, orderCPU)
	// The share of each node's CPU profile spent in telemetry's own code:
	// a measurement within one run of one process, which the drift between
	// runs that blurs the ratios above cannot reach.
	fmt.Printf("\n  telemetry's share of the node's CPU under wrk (perf's cpu-clock samples with a telemetry function on the stack; the cost as a ratio is 1/(1-share)):\n")
	for i := 1; i < len(configs); i++ {
		n := nodes[i]
		quiesce(n.pid)
		m, err := telemetryShare(n.pid, func() error {
			_, err := runWrk(ctx, n.base+"/api/v1/stores/1001/menu", *workers, *dur, "")
			return err
		})
		if err != nil {
			fmt.Printf("  %-16s not measured: %v\n", configs[i].name, err)
			break
		}
		quiesce(n.pid)
		o, err := telemetryShare(n.pid, func() error {
			_, err := runWrk(ctx, n.base+"/api/v1/orders", *workers, *dur, orderScript(n.tokens, body, "profile"))
			return err
		})
		if err != nil {
			return err
		}
		fmt.Printf("  %-16s menu read %4.1f%% of %d samples (x %.3f)  order %4.1f%% of %d samples (x %.3f)\n", configs[i].name,
			100*m.share(), m.samples, 1/(1-m.share()), 100*o.share(), o.samples, 1/(1-o.share()))
	}
	cpuTable(fmt.Sprintf("at a fixed rate (%d menu reads/s, %d orders/s, open loop)", menuRate, orderRate), fixedMenu, fixedOrders)
	fmt.Println("  targets: a cost under 5% with no exporter (CPU x <= 1.05), under 10% with the OTLP sink (x <= 1.10)")
	return nil
}

// cpuProfile is what telemetryShare counted.
type cpuProfile struct{ samples, telemetry int }

func (p cpuProfile) share() float64 { return float64(p.telemetry) / float64(max(p.samples, 1)) }

// telemetryFrame names telemetry's own code: the OpenTelemetry and
// Prometheus libraries, package obs, and the chain's span naming.
var telemetryFrame = regexp.MustCompile(`go\.opentelemetry\.io/|github\.com/prometheus/|/internal/platform/obs\.|/internal/platform/web\.endSpan`)

// telemetryShare samples process pid's CPU with perf (cpu-clock, 499 Hz,
// with call stacks) while run runs, and counts the samples that have a
// telemetry frame on their stack (what telemetry code and the allocations
// it makes cost). It fails when perf is missing or may not sample.
func telemetryShare(pid int, run func() error) (cpuProfile, error) {
	out := filepath.Join(os.TempDir(), fmt.Sprintf("surge-bench-%d.perf", pid))
	defer os.Remove(out)
	rec := exec.Command("perf", "record", "-q", "-F", "499", "-e", "cpu-clock", "-g", "-p", strconv.Itoa(pid), "-o", out)
	var stderr strings.Builder
	rec.Stderr = &stderr
	if err := rec.Start(); err != nil {
		return cpuProfile{}, fmt.Errorf("perf (linux-perf): %w", err)
	}
	time.Sleep(300 * time.Millisecond) // attached
	err := run()
	rec.Process.Signal(os.Interrupt)
	werr := rec.Wait() // perf writes its data on SIGINT, then dies of it
	if st, ok := rec.ProcessState.Sys().(syscall.WaitStatus); werr != nil && !(ok && st.Signaled() && st.Signal() == syscall.SIGINT) {
		return cpuProfile{}, fmt.Errorf("perf record: %v: %s", werr, strings.TrimSpace(stderr.String()))
	}
	if err != nil {
		return cpuProfile{}, err
	}
	script := exec.Command("perf", "script", "-i", out)
	stdout, err := script.StdoutPipe()
	if err != nil {
		return cpuProfile{}, err
	}
	if err := script.Start(); err != nil {
		return cpuProfile{}, err
	}
	var p cpuProfile
	in, hit := false, false
	sc := bufio.NewScanner(stdout)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.TrimSpace(line) == "": // a sample's end
			if in {
				p.samples++
				if hit {
					p.telemetry++
				}
			}
			in, hit = false, false
		case line[0] != ' ' && line[0] != '\t': // a sample's header
			in = true
		default:
			hit = hit || telemetryFrame.MatchString(line)
		}
	}
	if err := sc.Err(); err != nil {
		script.Process.Kill() // it would block on a full pipe
		script.Wait()
		return cpuProfile{}, fmt.Errorf("perf script: %w", err)
	}
	if err := script.Wait(); err != nil {
		return cpuProfile{}, fmt.Errorf("perf script: %w", err)
	}
	if p.samples < 100 {
		return cpuProfile{}, fmt.Errorf("perf took %d samples: too few to count", p.samples)
	}
	return p, nil
}

// orderScript is wrk's script for order placement: the customers in turn,
// a unique Idempotency-Key per request (run makes them unique per run).
func orderScript(tokens []string, body, run string) string {
	var lua strings.Builder
	lua.WriteString("local tokens = {")
	for _, t := range tokens {
		lua.WriteString(luaString("Bearer "+t) + ",")
	}
	lua.WriteString("}\nlocal n = 0\nlocal body = " + luaString(body) + "\nlocal run = " + luaString(run) + "\n")
	lua.WriteString(`request = function()
	n = n + 1
	return wrk.format("POST", "/api/v1/orders", {["Authorization"] = tokens[n % #tokens + 1],
		["Content-Type"] = "application/json", ["Idempotency-Key"] = run .. "-" .. n}, body)
end
`)
	return lua.String()
}

// otlpSink is a local OTLP/HTTP receiver that reads and drops what it is
// sent, and counts the requests (batches of spans) it took.
func otlpSink() (net.Listener, *atomic.Int64, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, nil, err
	}
	var n atomic.Int64
	go http.Serve(ln, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		n.Add(1)
		w.Header().Set("Content-Type", "application/x-protobuf")
		w.WriteHeader(http.StatusOK)
	}))
	return ln, &n, nil
}
