package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// wrkResult is one run of wrk.
type wrkResult struct {
	RPS      float64       // answers per second (all of them)
	Bad      int64         // answers that were not 2xx/3xx, and socket errors
	P50, P99 time.Duration // latency
	CPU      time.Duration // wrk's own CPU time (user + system)
	Elapsed  time.Duration
}

// CPUShare is the load generator's share of the machine's cores.
func (r wrkResult) CPUShare(cores int) float64 {
	return r.CPU.Seconds() / r.Elapsed.Seconds() / float64(cores)
}

var (
	wrkRPS  = regexp.MustCompile(`Requests/sec:\s+([0-9.]+)`)
	wrkBad  = regexp.MustCompile(`Non-2xx or 3xx responses:\s+([0-9]+)`)
	wrkErrs = regexp.MustCompile(`Socket errors: connect ([0-9]+), read ([0-9]+), write ([0-9]+), timeout ([0-9]+)`)
	wrkPct  = regexp.MustCompile(`(?m)^\s+(50|99)%\s+([0-9.]+)(us|ms|s)\s*$`)
)

// runWrk drives url with wrk: one thread (the load generator must cost the
// 2-core machine little), conns keep-alive connections, for d. script is
// a Lua script (request/response hooks) or "" for plain GETs.
func runWrk(ctx context.Context, url string, conns int, d time.Duration, script string) (wrkResult, error) {
	args := []string{"-t1", "-c" + strconv.Itoa(conns), "-d" + strconv.Itoa(int(d.Seconds())) + "s", "--latency", "--timeout", "10s"}
	if script != "" {
		f := filepath.Join(os.TempDir(), fmt.Sprintf("surge-bench-%d.lua", os.Getpid()))
		if err := os.WriteFile(f, []byte(script), 0o644); err != nil {
			return wrkResult{}, err
		}
		defer os.Remove(f)
		args = append(args, "-s", f)
	}
	cmd := exec.CommandContext(ctx, "wrk", append(args, url)...)
	t0 := time.Now()
	out, err := cmd.CombinedOutput()
	if err != nil {
		return wrkResult{}, fmt.Errorf("wrk: %v\n%s", err, out)
	}
	r := wrkResult{Elapsed: time.Since(t0), CPU: cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()}
	m := wrkRPS.FindSubmatch(out)
	if m == nil {
		return r, fmt.Errorf("wrk output has no rate:\n%s", out)
	}
	r.RPS, _ = strconv.ParseFloat(string(m[1]), 64)
	if m := wrkBad.FindSubmatch(out); m != nil {
		r.Bad, _ = strconv.ParseInt(string(m[1]), 10, 64)
	}
	if m := wrkErrs.FindSubmatch(out); m != nil {
		for _, x := range m[1:] {
			n, _ := strconv.ParseInt(string(x), 10, 64)
			r.Bad += n
		}
	}
	for _, m := range wrkPct.FindAllSubmatch(out, -1) {
		v, _ := strconv.ParseFloat(string(m[2]), 64)
		unit := map[string]time.Duration{"us": time.Microsecond, "ms": time.Millisecond, "s": time.Second}[string(m[3])]
		if string(m[1]) == "50" {
			r.P50 = time.Duration(v * float64(unit))
		} else {
			r.P99 = time.Duration(v * float64(unit))
		}
	}
	return r, nil
}

// luaString quotes s for a Lua script.
func luaString(s string) string {
	return `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`).Replace(s) + `"`
}
