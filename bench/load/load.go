// Package load is a small closed-loop HTTP load generator for the
// benchmarks: W workers, each with its own keep-alive connection, send
// requests back to back for a fixed time and count the answers.
package load

import (
	"context"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
)

// Result of one run.
type Result struct {
	OK, Failed int64
	Elapsed    time.Duration
	P50, P99   time.Duration
}

// RPS is successful requests per second.
func (r Result) RPS() float64 { return float64(r.OK) / r.Elapsed.Seconds() }

// Request builds the i-th request of worker w.
type Request func(w, i int) *http.Request

// Run drives workers for d; a request counts as OK when its status is want.
func Run(ctx context.Context, workers int, d time.Duration, want int, next Request) Result {
	tr := &http.Transport{MaxIdleConnsPerHost: workers, MaxConnsPerHost: workers, DisableCompression: true,
		DialContext: (&net.Dialer{Timeout: 5 * time.Second}).DialContext}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	var ok, failed atomic.Int64
	hists := make([]*hdrhistogram.Histogram, workers)
	var wg sync.WaitGroup
	start := time.Now()
	for w := range workers {
		hists[w] = hdrhistogram.New(1, 10_000_000, 3)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ctx.Err() == nil; i++ {
				req := next(w, i).WithContext(ctx)
				t0 := time.Now()
				res, err := client.Do(req)
				if err != nil {
					if ctx.Err() == nil {
						failed.Add(1)
					}
					continue
				}
				io.Copy(io.Discard, res.Body)
				res.Body.Close()
				if res.StatusCode == want {
					ok.Add(1)
					hists[w].RecordValue(time.Since(t0).Microseconds())
				} else {
					failed.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	all := hdrhistogram.New(1, 10_000_000, 3)
	for _, h := range hists {
		all.Merge(h)
	}
	return Result{OK: ok.Load(), Failed: failed.Load(), Elapsed: time.Since(start),
		P50: time.Duration(all.ValueAtQuantile(50)) * time.Microsecond, P99: time.Duration(all.ValueAtQuantile(99)) * time.Microsecond}
}
