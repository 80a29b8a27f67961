package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"

	"github.com/surge-platform/surge/bench/load"
)

// overload drives one surge node (pinned to one core with GOMAXPROCS=1,
// so that its own CPU saturates and the load generator has the other
// core) past its capacity with an open-loop load: requests at a fixed rate
// whatever the answers, as a crowd does. For each shedder (bbr, failsafe,
// off) it prints the accepted rate (goodput) against the node's peak, the
// p99 of accepted requests against the unloaded p99, the refusals, and how
// long after the overload the node answers at its unloaded latency again.
// The route is a customer's order list (a database read and a render,
// costlier than the cached menu, so that 3x its capacity is a rate this
// load generator can send).
func overload(ctx context.Context) error {
	if _, err := exec.LookPath("taskset"); err != nil || runtime.NumCPU() < 2 {
		fmt.Println("  overload: needs taskset and 2 cores: skipped")
		return nil
	}
	fmt.Printf("\noverload (one node on one core, GOMAXPROCS=1; open-loop load from this process; GET /api/v1/orders)\n")
	// The peak and the unloaded latency are measured once, on a node that
	// sheds nothing (a shedder would refuse some of the peak's closed
	// loop, and be offered less), and every shedder is offered 3x that.
	ref, err := overloadMode(ctx, "off", nil)
	if err != nil {
		return err
	}
	for _, mode := range strings.Split(*shedModes, ",") {
		if mode == "off" {
			continue
		}
		if _, err := overloadMode(ctx, mode, ref); err != nil {
			return err
		}
	}
	return nil
}

// baseline is the node's peak and unloaded latency.
type baseline struct{ unloaded, peak load.Result }

// overloadMode starts a node with shedder mode and offers it 3x ref's
// peak; with ref nil it measures the baseline first and returns it.
func overloadMode(ctx context.Context, mode string, ref *baseline) (*baseline, error) {
	addr := freeAddr()
	data, _ := os.MkdirTemp("", "surge-bench-")
	defer os.RemoveAll(data)
	args := append([]string{"-c", "0", *surgeBin, "serve", "--addr", addr, "--data", data, "--seed-demo", "--log-level", "error", "--admin-token", benchAdmin,
		"--shed", mode, "--ip-rps", "0"}, benchLimits...)
	cmd := exec.Command("taskset", args...)
	cmd.Env = append(os.Environ(), "GOMAXPROCS=1")
	cmd.Stdout, cmd.Stderr = io.Discard, os.Stderr
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	defer stop(cmd)
	base := "http://" + addr
	if err := waitUp(base + "/readyz"); err != nil {
		return nil, err
	}
	tokens, err := logins(base, 50, 3_000_000)
	if err != nil {
		return nil, err
	}
	for _, tok := range tokens { // 10 orders each: the list has something to read
		for range 10 {
			if err := api("POST", base+"/api/v1/orders", tok, `{"store_id":"1001","items":[{"sku_id":"1001006","qty":1}]}`, 201, nil); err != nil {
				return nil, err
			}
		}
	}
	list := func(w, i int) *http.Request {
		r, _ := http.NewRequest("GET", base+"/api/v1/orders?limit=10", nil)
		r.Header.Set("Authorization", "Bearer "+tokens[(w*7+i)%len(tokens)])
		return r
	}
	closedLoop(ctx, 4, 2*time.Second, list) // warm up
	if ref == nil {
		ref = &baseline{unloaded: closedLoop(ctx, 1, 3*time.Second, list), peak: closedLoop(ctx, 16, *dur, list)}
		fmt.Printf("  baseline (shed=off): unloaded p99 %v | peak %.0f/s (16 connections, closed loop) p99 %v\n", ref.unloaded.P99, ref.peak.RPS(), ref.peak.P99)
	}
	unloaded, peak := ref.unloaded, ref.peak
	rate := 3 * peak.RPS()
	over := openLoop(ctx, rate, *dur, list)
	recovery := recoverAfter(ctx, list, 2*unloaded.P99)
	if mode == "bbr" {
		defer func() {
			if err := classes(ctx, base, list, peak.RPS()); err != nil {
				fmt.Println("  classes:", err)
			}
		}()
	}
	fmt.Printf("  shed=%-8s at %6.0f/s offered: accepted %6.0f/s (%.2f of peak), p99 %6v (%.1fx unloaded), 503 %6.0f/s, failed %d | back to unloaded latency in %v\n",
		mode, rate, over.ok, over.ok/peak.RPS(), over.p99,
		float64(over.p99)/float64(unloaded.P99), over.shed, over.failed, recovery)
	return ref, nil
}

func waitUp(url string) error {
	for deadline := time.Now().Add(60 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if r, err := http.Get(url); err == nil {
			r.Body.Close()
			if r.StatusCode == 200 {
				return nil
			}
		}
	}
	return fmt.Errorf("%s did not come up", url)
}

type openResult struct {
	ok, shed float64 // per second: answered 200; answered 503
	limited  int64   // answered 429
	failed   int64   // errors, timeouts, other statuses, unsent (over 4096 in flight)
	p99      time.Duration
}

// openLoop sends rate requests a second for d, whatever the answers (as a
// crowd does), and reports them: good are the statuses whose latency
// counts. Each request goes on an idle connection of its own, or on a new
// one (up to 4096 open: beyond that it counts as failed, unsent), written
// and read raw: net/http's client costs the load generator more CPU a
// request than the node spends on a cheap route, and a generator that is
// the bottleneck measures itself.
func openLoop(ctx context.Context, rate float64, d time.Duration, next load.Request, good ...int) openResult {
	if len(good) == 0 {
		good = []int{200}
	}
	var ok, shed, limited, failed, open atomic.Int64
	var mu sync.Mutex
	hist := hdrhistogram.New(1, 10_000_000, 3)
	idle := make(chan *rawConn, 4096)
	var wg sync.WaitGroup
	record := func(status int, took time.Duration, late bool) {
		switch {
		case slices.Contains(good, status):
			if !late {
				ok.Add(1)
			}
			mu.Lock()
			hist.RecordValue(took.Microseconds())
			mu.Unlock()
		case status == 503:
			shed.Add(1)
		case status == 429:
			limited.Add(1)
		default:
			failed.Add(1)
		}
	}
	var end time.Time // the window's end: answers after it are not goodput
	serve := func(c *rawConn, i int, at time.Time) {
		defer wg.Done()
		if c.conn == nil {
			conn, err := net.DialTimeout("tcp", c.host, 5*time.Second)
			if err != nil {
				failed.Add(1)
				open.Add(-1)
				return
			}
			c.conn, c.br = conn, bufio.NewReader(conn)
		}
		status, _, err := c.do(next(i%1024, i).WithContext(ctx))
		if err != nil {
			failed.Add(1)
			c.conn.Close()
			open.Add(-1)
			return
		}
		// From when the request was due, not when it was written: the
		// generator's own delays (a dial, a late tick) count against the
		// node, as a crowd would see them.
		record(status, time.Since(at), time.Now().After(end))
		idle <- c
	}
	host := next(0, 0).URL.Host
	start := time.Now()
	end = start.Add(d)
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	sent := 0
	for now := start; now.Sub(start) < d; now = <-tick.C {
		for due := int(rate * now.Sub(start).Seconds()); sent < due; sent++ {
			var c *rawConn
			select {
			case c = <-idle:
			default:
				if open.Load() >= 4096 {
					failed.Add(1)
					continue
				}
				open.Add(1)
				c = &rawConn{host: host}
			}
			wg.Add(1)
			go serve(c, sent, start.Add(time.Duration(float64(sent)/rate*float64(time.Second))))
		}
	}
	wg.Wait()
	for len(idle) > 0 {
		(<-idle).conn.Close()
	}
	secs := d.Seconds()
	return openResult{ok: float64(ok.Load()) / secs, shed: float64(shed.Load()) / secs, limited: limited.Load(), failed: failed.Load(),
		p99: time.Duration(hist.ValueAtQuantile(99)) * time.Microsecond}
}

// closedLoop drives workers raw connections (as openLoop's), each sending
// its next request when the last is answered, for d: the node's peak
// (with 16) and its unloaded latency (with 1). net/http's client would
// be the bottleneck of the peak.
func closedLoop(ctx context.Context, workers int, d time.Duration, next load.Request) load.Result {
	var ok, failed atomic.Int64
	var mu sync.Mutex
	hist := hdrhistogram.New(1, 10_000_000, 3)
	host := next(0, 0).URL.Host
	start := time.Now()
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			c := &rawConn{host: host}
			defer func() {
				if c.conn != nil {
					c.conn.Close()
				}
			}()
			for i := 0; time.Since(start) < d; i++ {
				if c.conn == nil {
					conn, err := net.DialTimeout("tcp", host, 5*time.Second)
					if err != nil {
						failed.Add(1)
						continue
					}
					c.conn, c.br = conn, bufio.NewReader(conn)
				}
				status, took, err := c.do(next(w, i).WithContext(ctx))
				if err != nil || status != 200 {
					failed.Add(1)
					if err != nil {
						c.conn.Close()
						c.conn = nil
					}
					continue
				}
				ok.Add(1)
				mu.Lock()
				hist.RecordValue(took.Microseconds())
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	return load.Result{OK: ok.Load(), Failed: failed.Load(), Elapsed: time.Since(start),
		P50: time.Duration(hist.ValueAtQuantile(50)) * time.Microsecond, P99: time.Duration(hist.ValueAtQuantile(99)) * time.Microsecond}
}

// rawConn is one keep-alive connection of openLoop.
type rawConn struct {
	host string
	conn net.Conn
	br   *bufio.Reader
	buf  bytes.Buffer
}

// do sends r and reads its answer: its status, and how long it took.
func (c *rawConn) do(r *http.Request) (int, time.Duration, error) {
	c.buf.Reset()
	if err := r.Write(&c.buf); err != nil {
		return 0, 0, err
	}
	t0 := time.Now()
	status, err := c.send(c.buf.Bytes())
	return status, time.Since(t0), err
}

// send writes a request in its wire form (dialling first if need be) and
// reads the answer's status, its body read and dropped.
func (c *rawConn) send(req []byte) (int, error) {
	if c.conn == nil {
		conn, err := net.DialTimeout("tcp", c.host, 5*time.Second)
		if err != nil {
			return 0, err
		}
		c.conn, c.br = conn, bufio.NewReader(conn)
	}
	c.conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.conn.Write(req); err != nil {
		return 0, err
	}
	res, err := http.ReadResponse(c.br, nil)
	if err != nil {
		return 0, err
	}
	_, err = io.Copy(io.Discard, res.Body)
	res.Body.Close()
	if err != nil {
		return 0, err
	}
	if res.Close { // the next request dials again
		c.conn.Close()
		c.conn = nil
	}
	return res.StatusCode, nil
}

// classes floods one node (as overloadMode starts it, shed=bbr) with
// customers' order-list reads at 2x, then 5x its capacity while POS terminals poll
// for new orders and a payment channel sends callbacks (unsigned ones: the
// node refuses them with a 4xx after the whole chain, as it would a real
// one's forgery; what counts is that the edge neither limits nor sheds
// them), and compares their answers and p99 with the same traffic alone.
func classes(ctx context.Context, base string, list load.Request, capacity float64) error {
	var pos struct {
		POSKey string `json:"pos_key"`
	}
	if err := getJSON(base+"/admin/v1/stores/1001", benchAdmin, &pos); err != nil {
		return err
	}
	pull := func(int, int) *http.Request {
		r, _ := http.NewRequest("GET", base+"/pos/v1/orders/new", nil)
		r.Header.Set("Authorization", "Bearer "+pos.POSKey)
		return r
	}
	callback := func(_, i int) *http.Request {
		r, _ := http.NewRequest("POST", base+"/pay/v1/notify/wechatpay", strings.NewReader(`{"id":"`+strconv.Itoa(i)+`"}`))
		return r
	}
	staff := func() (p, c openResult) {
		var wg sync.WaitGroup
		wg.Go(func() { p = openLoop(ctx, 200, *dur, pull, 200) })
		wg.Go(func() { c = openLoop(ctx, 200, *dur, callback, 400, 401, 403) })
		wg.Wait()
		return p, c
	}
	p0, c0 := staff()
	for _, times := range []float64{2, 5} {
		time.Sleep(2 * time.Second) // the last flood's shedding has decayed
		var flood openResult
		var p1, c1 openResult
		var wg sync.WaitGroup
		wg.Go(func() { flood = openLoop(ctx, times*capacity, *dur, list) })
		wg.Go(func() { time.Sleep(200 * time.Millisecond); p1, c1 = staff() })
		wg.Wait()
		fmt.Printf("  classes: customers flood at %.0f/s (%.0fx): %.0f/s served, %.0f/s shed, %d failed\n", times*capacity, times, flood.ok, flood.shed, flood.failed)
		for _, x := range []struct {
			name         string
			alone, flood openResult
		}{{"POS pulls", p0, p1}, {"callbacks", c0, c1}} {
			fmt.Printf("  classes: %-10s 200/s alone p99 %7v; under the flood p99 %7v (%.1fx), 429 %d, 503 %.0f/s, failed %d\n",
				x.name, x.alone.p99, x.flood.p99, float64(x.flood.p99)/float64(x.alone.p99), x.flood.limited, x.flood.shed, x.flood.failed)
		}
	}
	return nil
}

// recoverAfter is how long after an overload a lone client's requests
// take less than within again (5 in a row), up to 10 s.
func recoverAfter(ctx context.Context, next load.Request, within time.Duration) time.Duration {
	client := &http.Client{Timeout: 10 * time.Second}
	start := time.Now()
	good := 0
	for i := 0; time.Since(start) < 10*time.Second; i++ {
		t0 := time.Now()
		res, err := client.Do(next(0, i).WithContext(ctx))
		if err == nil {
			io.Copy(io.Discard, res.Body)
			res.Body.Close()
		}
		if err == nil && res.StatusCode == 200 && time.Since(t0) <= within {
			if good++; good == 5 {
				return time.Since(start).Round(time.Millisecond)
			}
		} else {
			good = 0
		}
		time.Sleep(20 * time.Millisecond)
	}
	return -1
}
