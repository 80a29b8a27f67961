package main

import (
	"context"
	"fmt"
	"os/exec"
	"runtime"
	"strconv"
	"time"

	"github.com/surge-platform/surge/internal/platform/kv"
)

// flash measures flash-sale purchase attempts through surge's API, in
// stock and sold out, against the hello-world server in the same rounds:
// embedded (kv in memory) and with kv on Redis, where the admission script
// alone under redis-benchmark is the second baseline. surge runs the api
// role only: the workers that turn tickets into orders run elsewhere in a
// deployment, and here the tickets wait on the embedded bus. The purchase
// limits are raised out of the way (their checks still run on every
// attempt): the load is 5,000 buyers from one IP.
func flash(ctx context.Context) error {
	modes := []struct {
		name   string
		args   []string
		target float64
	}{{"embedded", nil, 0.6}}
	if *redisURL != "" {
		host, port, db := redisParts(*redisURL)
		modes = append(modes, struct {
			name   string
			args   []string
			target float64
		}{"redis", []string{"--kv", fmt.Sprintf("redis://%s:%s/%s?prefix=benchflash%d:", host, port, db, time.Now().UnixNano())}, 0.5})
	} else {
		fmt.Println("  flash: no Redis (--redis or SURGE_TEST_REDIS): embedded mode only")
	}
	for _, m := range modes {
		if err := flashMode(ctx, m.name, m.args, m.target); err != nil {
			return err
		}
	}
	return nil
}

func flashMode(ctx context.Context, mode string, kvArgs []string, target float64) error {
	args := append([]string{"--log-level", "warn", "--roles", "api", "--admin-token", benchAdmin,
		"--flash-user-rps", "1000000", "--flash-ip-rps", "1000000", "--flash-hot-rps", "100000000"}, kvArgs...)
	p, err := startPair(args...)
	if err != nil {
		return err
	}
	defer p.stop()
	base := "http://" + p.surgeAddr
	tokens, err := logins(base, 5000, 2_000_000)
	if err != nil {
		return err
	}
	script := func(sale string) string { return postAs(tokens, "/api/v1/flash-sales/"+sale+"/purchase") }
	newSale := func(stock int) (string, error) {
		var s struct {
			ID string `json:"sale_id"`
		}
		now := time.Now().UTC()
		err := api("POST", base+"/admin/v1/flash-sales", benchAdmin, fmt.Sprintf(`{"store_id":"1001","sku_id":"1001001","price":990,
			"stock":%d,"per_user_limit":100,"starts_at":"%s","ends_at":"%s"}`, stock, now.Add(-time.Second).Format(time.RFC3339Nano),
			now.Add(time.Hour).Format(time.RFC3339Nano)), 201, &s)
		return s.ID, err
	}
	// The sold-out sale: its one unit bought before the rounds.
	soldOut, err := newSale(1)
	if err != nil {
		return err
	}
	if err := api("POST", base+"/api/v1/flash-sales/"+soldOut+"/purchase", tokens[0], "", 202, nil); err != nil {
		return err
	}
	var redisB []float64
	host, port, db := "", "", ""
	if len(kvArgs) > 0 {
		host, port, db = redisParts(*redisURL)
		stockKey := "benchflash:{s1}:left"
		if out, err := exec.CommandContext(ctx, "redis-cli", "-h", host, "-p", port, "-n", db, "SET", stockKey, "100000000000").CombinedOutput(); err != nil {
			return fmt.Errorf("redis-cli: %v %s", err, out)
		}
		defer exec.Command("redis-cli", "-h", host, "-p", port, "-n", db, "DEL", stockKey).Run()
	}
	var hs, ins, outs []float64
	var sales []string
	var p99s []time.Duration
	var sent, sentOut float64
	for r := range *rounds {
		h, err := runWrk(ctx, "http://"+p.helloAddr+"/", *workers, *dur, "")
		if err != nil {
			return err
		}
		hs = append(hs, h.RPS)
		if host != "" {
			n := strconv.Itoa(int(40_000 * dur.Seconds()))
			out, err := exec.CommandContext(ctx, "redis-benchmark", "-h", host, "-p", port, "--dbnum", db, "-c", strconv.Itoa(*workers),
				"-n", n, "-r", "1000000", "-q", "EVAL", kv.AdmitLua, "2", "benchflash:{s1}:left", "benchflash:{s1}:u:__rand_int__", "1", "100", "0").CombinedOutput()
			if err != nil {
				return fmt.Errorf("redis-benchmark: %v\n%s", err, out)
			}
			m := rpsRe.FindAllSubmatch(out, -1)
			if m == nil {
				return fmt.Errorf("redis-benchmark output has no rate:\n%s", out)
			}
			b, _ := strconv.ParseFloat(string(m[len(m)-1][1]), 64)
			redisB = append(redisB, b)
		}
		// In stock: a fresh sale each round, large enough never to sell out.
		sale, err := newSale(10_000_000)
		if err != nil {
			return err
		}
		sales = append(sales, sale)
		if r == 0 && *profile != "" {
			go saveProfile(base, *dur, *profile+"."+mode)
		}
		s, err := runWrk(ctx, base+"/api/v1/flash-sales/"+sale+"/purchase", *workers, *dur, script(sale))
		if err != nil {
			return err
		}
		if s.Bad > 0 {
			return fmt.Errorf("flash %s round %d: %d purchases in stock were refused", mode, r+1, s.Bad)
		}
		ins, p99s = append(ins, s.RPS), append(p99s, s.P99)
		sent += s.RPS * dur.Seconds()
		o, err := runWrk(ctx, base+"/api/v1/flash-sales/"+soldOut+"/purchase", *workers, *dur, script(soldOut))
		if err != nil {
			return err
		}
		outs = append(outs, o.RPS)
		sentOut += o.RPS * dur.Seconds()
		fmt.Printf("  flash %s round: in stock p50 %v p99 %v, sold out p50 %v p99 %v; wrk used %.0f%% of the cores\n",
			mode, s.P50, s.P99, o.P50, o.P99, 100*s.CPUShare(runtime.NumCPU()))
	}
	// Every in-stock attempt was admitted and every sold-out one refused as
	// sold out (not by an error): the figures the nodes flush say so.
	time.Sleep(2500 * time.Millisecond)
	var admitted, refused int64
	for _, sale := range append(sales, soldOut) {
		var f struct {
			Admitted int64
			Refused  struct {
				SoldOut int64 `json:"sold_out"`
			}
		}
		if err := getJSON(base+"/admin/v1/flash-sales/"+sale, benchAdmin, &f); err != nil {
			return err
		}
		admitted, refused = admitted+f.Admitted, refused+f.Refused.SoldOut
	}
	fmt.Printf("  flash %s: %d admitted (wrk counted about %.0f in stock), %d refused as sold out (about %.0f sold out); admission p99 median %v\n",
		mode, admitted, sent, refused, sentOut, medianDur(p99s))
	what := fmt.Sprintf("flash-sale purchases, %s (wrk, 1 thread, %d connections, %v per round, 5,000 buyers, surge --roles api)", mode, *workers, *dur)
	report(what+": in stock", "hello-world", "surge purchase", hs, ins, target)
	report(what+": sold out", "hello-world", "surge purchase", hs, outs, target)
	if len(redisB) > 0 {
		report(what+": in stock against redis-benchmark of kv.AdmitLua (no target)", "redis-benchmark Lua", "surge purchase", redisB, ins, 0)
	}
	return nil
}

func medianDur(ds []time.Duration) time.Duration {
	xs := make([]float64, len(ds))
	for i, d := range ds {
		xs[i] = float64(d)
	}
	return time.Duration(median(xs))
}
