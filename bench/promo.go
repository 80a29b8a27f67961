package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/surge-platform/surge/internal/platform/kv"
)

var redisURL = flag.String("redis", os.Getenv("SURGE_TEST_REDIS"), "coupons: Redis URL (redis://host:port/db) for surge's kv and the Lua baseline")

// api calls surge's HTTP API; it fails the bench on an unexpected status.
func api(method, url, token, body string, want int, out any) error {
	req, _ := http.NewRequest(method, url, strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Content-Type", "application/json")
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	if res.StatusCode != want {
		return fmt.Errorf("%s %s: %d %s", method, url, res.StatusCode, b)
	}
	if out != nil {
		return json.Unmarshal(b, out)
	}
	return nil
}

// logins logs n customers in (phones from base) and returns their tokens.
func logins(base string, n, from int) ([]string, error) {
	tokens := make([]string, n)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var first error
	sem := make(chan struct{}, 16)
	for i := range tokens {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			var out struct{ Token string }
			if err := api("POST", base+"/api/v1/auth/login", "", fmt.Sprintf(`{"phone":"+86136%08d"}`, from+i), 200, &out); err != nil {
				mu.Lock()
				first = err
				mu.Unlock()
				return
			}
			tokens[i] = out.Token
		}()
	}
	wg.Wait()
	return tokens, first
}

// template creates a coupon template through the admin API and returns its id.
func template(base, admin, body string) (string, error) {
	var t struct {
		ID string `json:"template_id"`
	}
	err := api("POST", base+"/admin/v1/coupon-templates", admin, body, 201, &t)
	return t.ID, err
}

var rpsRe = regexp.MustCompile(`([0-9.]+) requests per second`)

// coupons measures coupon claims through surge's API (kv on Redis, the
// claim on the embedded bus, the coupon written to SQLite from there)
// against redis-benchmark running the very same admission script against
// the same Redis: the atomic step alone, with nothing around it.
func coupons(ctx context.Context) error {
	if *redisURL == "" {
		return fmt.Errorf("coupons: no Redis (--redis or SURGE_TEST_REDIS)")
	}
	host, port, db := redisParts(*redisURL)
	kvURL := fmt.Sprintf("redis://%s:%s/%s?prefix=bench%d:", host, port, db, time.Now().UnixNano())
	helloAddr, surgeAddr, _, done, err := pair("--log-level", "warn", "--kv", kvURL, "--admin-token", benchAdmin)
	if err != nil {
		return err
	}
	defer done()
	base := "http://" + surgeAddr
	tid, err := template(base, benchAdmin, fmt.Sprintf(`{"name":"bench","kind":"amount","off":100,"quantity":%d,"per_user":100}`, 100_000_000))
	if err != nil {
		return err
	}
	tokens, err := logins(base, 5000, 0)
	if err != nil {
		return err
	}
	lua := postAs(tokens, "/api/v1/coupons/"+tid+"/claim")
	// The baseline: the same script, a stock key large enough, a user key
	// drawn from a million users per call.
	stockKey := "bench:{t1}:left"
	if out, err := exec.CommandContext(ctx, "redis-cli", "-h", host, "-p", port, "-n", db, "SET", stockKey, "100000000000").CombinedOutput(); err != nil {
		return fmt.Errorf("redis-cli: %v %s", err, out)
	}
	defer exec.Command("redis-cli", "-h", host, "-p", port, "-n", db, "DEL", stockKey).Run()
	var bs, ss, hs []float64
	for r := range *rounds {
		h, err := runWrk(ctx, "http://"+helloAddr+"/", *workers, *dur, "")
		if err != nil {
			return err
		}
		hs = append(hs, h.RPS)
		n := strconv.Itoa(int(40_000 * dur.Seconds()))
		cmd := exec.CommandContext(ctx, "redis-benchmark", "-h", host, "-p", port, "--dbnum", db, "-c", strconv.Itoa(*workers),
			"-n", n, "-r", "1000000", "-q", "EVAL", kv.AdmitLua, "2", stockKey, "bench:{t1}:u:__rand_int__", "1", "100", "0")
		out, err := cmd.CombinedOutput()
		if err != nil {
			return fmt.Errorf("redis-benchmark: %v\n%s", err, out)
		}
		m := rpsRe.FindAllSubmatch(out, -1)
		if m == nil {
			return fmt.Errorf("redis-benchmark output has no rate:\n%s", out)
		}
		b, _ := strconv.ParseFloat(string(m[len(m)-1][1]), 64)
		if r == 0 && *profile != "" {
			go saveProfile(base, *dur, *profile)
		}
		s, err := runWrk(ctx, base+"/api/v1/coupons/"+tid+"/claim", *workers, *dur, lua)
		if err != nil {
			return err
		}
		if s.Bad > 0 {
			return fmt.Errorf("coupons round %d: %d failed claims", r+1, s.Bad)
		}
		bs, ss = append(bs, b), append(ss, s.RPS)
		fmt.Printf("  coupons round: surge claim p50 %v p99 %v; wrk used %.0f%% of the cores\n", s.P50, s.P99, 100*s.CPUShare(runtime.NumCPU()))
	}
	report(fmt.Sprintf("coupon claims (wrk, 1 thread, %d connections, %v per round, 5,000 customers, surge embedded with kv on Redis; baseline: redis-benchmark running kv.AdmitLua, %d clients)", *workers, *dur, *workers),
		"redis-benchmark Lua", "surge POST claim", bs, ss, 0.5)
	// For scale: the same claims against a hello-world HTTP server, which
	// does no work at all (the Lua baseline makes no HTTP request).
	report("coupon claims against the hello-world net/http server (same rounds; no target)", "hello-world", "surge POST claim", hs, ss, 0)
	return nil
}

// postAs is a wrk script that POSTs to path with an empty body, each
// request as the next of the customers' tokens in turn.
func postAs(tokens []string, path string) string {
	var lua strings.Builder
	lua.WriteString("local tokens = {")
	for _, t := range tokens {
		lua.WriteString(luaString("Bearer "+t) + ",")
	}
	lua.WriteString("}\nlocal n = 0\n")
	lua.WriteString(`request = function()
	n = n + 1
	return wrk.format("POST", "` + path + `", {["Authorization"] = tokens[n % #tokens + 1]}, "")
end
`)
	return lua.String()
}

func redisParts(u string) (host, port, db string) {
	rest := strings.TrimPrefix(u, "redis://")
	hp, db, _ := strings.Cut(rest, "/")
	db, _, _ = strings.Cut(db, "?")
	if db == "" {
		db = "0"
	}
	host, port, _ = strings.Cut(hp, ":")
	if port == "" {
		port = "6379"
	}
	return host, port, db
}

// promoOrders measures order placement with two promotions and a coupon
// against plain order placement, on two embedded surges side by side (one
// loaded at a time): the plain one has every promotion disabled, the other
// a percentage discount on a sku of the cart and the demo's tiered 满减
// (and its special price, not in the cart but read), and each of its
// orders uses a coupon of its own, claimed beforehand.
func promoOrders(ctx context.Context) error {
	const cart = `"store_id":"1001","items":[{"sku_id":"1001006","qty":1},{"sku_id":"1001007","qty":2}]`
	plain, err := startPair("--log-level", "warn", "--admin-token", benchAdmin)
	if err != nil {
		return err
	}
	defer plain.stop()
	promo, err := startPair("--log-level", "warn", "--admin-token", benchAdmin)
	if err != nil {
		return err
	}
	defer promo.stop()
	pb, sb := "http://"+plain.surgeAddr, "http://"+promo.surgeAddr
	var list struct {
		Promotions []struct {
			ID string `json:"promotion_id"`
		} `json:"promotions"`
	}
	if err := api("GET", pb+"/admin/v1/promotions", benchAdmin, "", 200, &list); err != nil {
		return err
	}
	for _, p := range list.Promotions {
		if err := api("POST", pb+"/admin/v1/promotions/"+p.ID+"/disable", benchAdmin, "", 200, nil); err != nil {
			return err
		}
	}
	if err := api("POST", sb+"/admin/v1/promotions", benchAdmin,
		`{"store_id":"1001","kind":"percent","name":"10% off Jasmine Tea","sku_ids":["1001006"],"percent":10}`, 201, nil); err != nil {
		return err
	}
	tid, err := template(sb, benchAdmin, `{"name":"1.00 off","kind":"amount","off":100,"quantity":100000000,"per_user":100}`)
	if err != nil {
		return err
	}
	// How many orders the rounds will place, from a short plain run.
	ptok, err := logins(pb, *workers, 0)
	if err != nil {
		return err
	}
	warm, err := runWrk(ctx, pb+"/api/v1/orders", *workers, 2*time.Second, ordersLua(ptok, nil, cart, "warm"))
	if err != nil {
		return err
	}
	need := int(warm.RPS*dur.Seconds()*float64(*rounds)*1.5) + 1000
	users := (need + 99) / 100
	stok, err := logins(sb, users, 0)
	if err != nil {
		return err
	}
	fmt.Printf("  promo orders: claiming %d coupons for %d customers (plain warm-up ran %.0f orders/s)\n", users*100, users, warm.RPS)
	pairs, err := claimAll(sb, tid, stok, 100)
	if err != nil {
		return err
	}
	var check struct{ Payable, Total int64 }
	if err := api("POST", sb+"/api/v1/orders/preview", pairs[0].token, `{`+cart+`,"coupon_ids":["`+pairs[0].coupon+`"]}`, 200, &check); err != nil {
		return err
	}
	fmt.Printf("  promo orders: a cart of %d fen comes to %d with the promotions and a coupon\n", check.Total, check.Payable)
	var bs, ss []float64
	used := 0
	for r := range *rounds {
		b, err := runWrk(ctx, pb+"/api/v1/orders", *workers, *dur, ordersLua(ptok, nil, cart, fmt.Sprintf("p%d", r)))
		if err != nil {
			return err
		}
		if r == 0 && *profile != "" {
			go saveProfile(sb, *dur, *profile)
		}
		s, err := runWrk(ctx, sb+"/api/v1/orders", *workers, *dur, ordersLua(nil, pairs[used:], cart, fmt.Sprintf("s%d", r)))
		if err != nil {
			return err
		}
		used += int(s.RPS*s.Elapsed.Seconds()) + *workers
		if b.Bad > 0 || s.Bad > 0 {
			return fmt.Errorf("promo orders round %d: %d plain and %d promo requests failed", r+1, b.Bad, s.Bad)
		}
		bs, ss = append(bs, b.RPS), append(ss, s.RPS)
		fmt.Printf("  promo orders round: plain p99 %v, with promotions p99 %v\n", b.P99, s.P99)
	}
	report(fmt.Sprintf("order placement with 2 promotions and a coupon vs plain (wrk, 1 thread, %d connections, %v per round, embedded SQLite, both surges side by side, one loaded at a time)", *workers, *dur),
		"plain orders", "orders with promotions", bs, ss, 0.8)
	return nil
}

type couponPair struct{ token, coupon string }

// claimAll has every customer claim per coupons and waits until each is in
// its wallet; it returns (token, coupon) pairs.
func claimAll(base, tid string, tokens []string, per int) ([]couponPair, error) {
	var mu sync.Mutex
	var out []couponPair
	var first error
	var wg sync.WaitGroup
	sem := make(chan struct{}, 32)
	for _, tok := range tokens {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			for range per {
				var c struct {
					CouponID string `json:"coupon_id"`
				}
				if err := api("POST", base+"/api/v1/coupons/"+tid+"/claim", tok, "", 201, &c); err != nil {
					mu.Lock()
					first = err
					mu.Unlock()
					return
				}
				mu.Lock()
				out = append(out, couponPair{tok, c.CouponID})
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if first != nil {
		return nil, first
	}
	// The wallets fill from the bus: wait until the template counts them all.
	for deadline := time.Now().Add(3 * time.Minute); ; time.Sleep(200 * time.Millisecond) {
		var t struct{ Claimed int }
		if err := api("GET", base+"/admin/v1/coupon-templates/"+tid, benchAdmin, "", 200, &t); err != nil {
			return nil, err
		}
		if t.Claimed >= len(out) {
			break
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("claims did not reach the wallets: %d of %d", t.Claimed, len(out))
		}
	}
	return out, nil
}

// ordersLua is a wrk script placing orders of cart with a unique
// Idempotency-Key each: by the customers in turn, or (pairs) each with a
// coupon of its own.
func ordersLua(tokens []string, pairs []couponPair, cart, run string) string {
	var b bytes.Buffer
	b.WriteString("local n = 0\nlocal run = " + luaString(run) + "\n")
	if pairs == nil {
		b.WriteString("local tokens = {")
		for _, t := range tokens {
			b.WriteString(luaString("Bearer "+t) + ",")
		}
		b.WriteString("}\nlocal body = " + luaString("{"+cart+"}") + "\n")
		b.WriteString(`request = function()
	n = n + 1
	return wrk.format("POST", "/api/v1/orders", {["Authorization"] = tokens[n % #tokens + 1],
		["Content-Type"] = "application/json", ["Idempotency-Key"] = run .. "-" .. n}, body)
end
`)
		return b.String()
	}
	b.WriteString("local toks = {")
	for _, p := range pairs {
		b.WriteString(luaString("Bearer "+p.token) + ",")
	}
	b.WriteString("}\nlocal cps = {")
	for _, p := range pairs {
		b.WriteString(luaString(p.coupon) + ",")
	}
	b.WriteString("}\nlocal cart = " + luaString(cart) + "\n")
	b.WriteString(`request = function()
	n = n + 1
	return wrk.format("POST", "/api/v1/orders", {["Authorization"] = toks[n],
		["Content-Type"] = "application/json", ["Idempotency-Key"] = run .. "-" .. n},
		"{" .. cart .. ",\"coupon_ids\":[\"" .. cps[n] .. "\"]}")
end
`)
	return b.String()
}
