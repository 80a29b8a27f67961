// Package e2etest runs the real surge binary: crash safety under kill -9,
// graceful shutdown, roles as separate processes, and the demo.
package e2etest

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"github.com/surge-platform/surge/internal/demo"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/surge-platform/surge/internal/eventually"
	"github.com/surge-platform/surge/internal/platform/bus/bustest"
)

var bin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "surge-e2e-")
	if err != nil {
		panic(err)
	}
	bin = filepath.Join(dir, "surge")
	out, err := exec.Command("go", "build", "-o", bin, "github.com/surge-platform/surge/cmd/surge").CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "build surge: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	bustest.StopExternal()
	os.RemoveAll(dir)
	os.Exit(code)
}

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// proc is a running surge process.
type proc struct {
	t    *testing.T
	cmd  *exec.Cmd
	base string
	out  *syncBuf
	done chan error
}

type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// start runs `surge args...` and waits until /readyz answers 200 on addr.
// perCustomerOff turns off the per-customer limits of `surge serve`: the
// tests drive thousands of orders a second from a handful of customers,
// which production defaults rightly refuse. The rest of the edge (per-IP
// limits, loopback exempt; the in-flight caps; the shedder) stays as
// deployed; a test that sets these flags itself keeps its own values.
var perCustomerOff = []string{"--user-rps", "0", "--route-rps", "none"}

func start(t *testing.T, addr string, args ...string) *proc {
	t.Helper()
	if len(args) > 0 && args[0] == "serve" {
		args = append(slices.Clone(args[:1]), append(slices.Clone(perCustomerOff), args[1:]...)...) // flags given later win
	}
	p := &proc{t: t, base: "http://" + addr, out: &syncBuf{}, done: make(chan error, 1)}
	p.cmd = exec.Command(bin, args...)
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.done <- p.cmd.Wait() }()
	t.Cleanup(func() {
		p.cmd.Process.Kill()
		<-p.done
		if t.Failed() {
			t.Logf("output of surge %s:\n%s", strings.Join(args, " "), tail(p.out.String(), 4000))
		}
	})
	deadline := time.Now().Add(60 * time.Second)
	for {
		select {
		case err := <-p.done:
			p.done <- err
			t.Fatalf("surge exited early: %v\n%s", err, p.out.String())
		default:
		}
		if r, err := http.Get(p.base + "/readyz"); err == nil {
			r.Body.Close()
			if r.StatusCode == 200 {
				return p
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("surge not ready after 60s:\n%s", p.out.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// wait waits for the process to exit and returns its error.
func (p *proc) wait(d time.Duration) error {
	select {
	case err := <-p.done:
		p.done <- err
		return err
	case <-time.After(d):
		p.t.Fatalf("surge did not exit within %v", d)
		return nil
	}
}

var httpc = &http.Client{Timeout: 10 * time.Second}

func call(base, method, path, token, body string, hdr ...string) (int, []byte, error) {
	req, err := http.NewRequest(method, base+path, strings.NewReader(body))
	if err != nil {
		return 0, nil, err
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	res, err := httpc.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	return res.StatusCode, b, err
}

func mustLogin(t *testing.T, base, phone string) string {
	t.Helper()
	tok, err := login(base, phone)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// login logs phone in, and tries again, as a client would, while the
// server answers 503 or 429 (a loaded machine's shedder), for up to 10 s.
func login(base, phone string) (string, error) {
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		status, b, err := call(base, "POST", "/api/v1/auth/login", "", `{"phone":"`+phone+`"}`)
		var out struct{ Token string }
		json.Unmarshal(b, &out)
		if err == nil && status == 200 && out.Token != "" {
			return out.Token, nil
		}
		if err != nil || (status != 503 && status != 429) || time.Now().After(deadline) {
			return "", fmt.Errorf("login: %d %s %v", status, b, err)
		}
	}
}

// placeUntil places orders from `workers` customers until stop is closed or
// the server goes away; it returns the ids of the orders that got a 201,
// and counts them in acked as they come (acked may be nil).
func placeUntil(t *testing.T, base string, workers int, stop <-chan struct{}, acked *atomic.Int64) []string {
	t.Helper()
	var mu sync.Mutex
	var ids []string
	var wg sync.WaitGroup
	// Every worker logs in before any places an order: a caller that
	// crashes the server once enough orders are acknowledged must not find
	// a worker still logging in (a loaded machine's CI saw that login cut).
	toks := make([]string, workers)
	for w := range workers {
		// Not mustLogin: placeUntil runs in a goroutine of its own, where a
		// t.Fatal would end it without an answer and hang its caller.
		tok, err := login(base, fmt.Sprintf("+86139%08d", w))
		if err != nil {
			t.Error(err)
			return nil
		}
		toks[w] = tok
	}
	for w, tok := range toks {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				store := 1001 + (w+i)%20
				body := fmt.Sprintf(`{"store_id":"%d","items":[{"sku_id":"%d","qty":1},{"sku_id":"%d","qty":2}]}`,
					store, store*1000+6+i%20, store*1000+7)
				status, b, err := call(base, "POST", "/api/v1/orders", tok, body, "Idempotency-Key", fmt.Sprintf("w%d-%d", w, i))
				if err != nil {
					return // the server died
				}
				if status == 201 {
					var c struct {
						OrderID string `json:"order_id"`
					}
					json.Unmarshal(b, &c)
					mu.Lock()
					ids = append(ids, c.OrderID)
					mu.Unlock()
					if acked != nil {
						acked.Add(1)
					}
				}
			}
		}()
	}
	wg.Wait()
	return ids
}

type stats struct {
	Seen    int64 `json:"events_seen"`
	Stream  int64 `json:"stream_messages"`
	Pending int64 `json:"outbox_pending"`
}

func getStats(t *testing.T, base, admin string) stats {
	t.Helper()
	status, b, err := call(base, "GET", "/admin/v1/events/stats", admin, "")
	var s stats
	if err != nil || status != 200 || json.Unmarshal(b, &s) != nil {
		t.Fatalf("stats: %d %s %v", status, b, err)
	}
	return s
}

// checkOrdersAndEvents asserts that every acknowledged order exists and
// that its order.created event reached the consumer, and that the stream
// holds no duplicate: one message per distinct event.
func checkOrdersAndEvents(t *testing.T, base, admin string, ids []string) {
	t.Helper()
	for _, oid := range ids {
		status, b, err := call(base, "GET", "/admin/v1/orders/"+oid, admin, "")
		if err != nil || status != 200 {
			t.Fatalf("acknowledged order %s lost: %d %s %v", oid, status, b, err)
		}
	}
	deadline := time.Now().Add(60 * time.Second)
	var s stats
	for {
		s = getStats(t, base, admin)
		if s.Pending == 0 && s.Seen == s.Stream && s.Seen >= int64(len(ids)) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("events did not settle: %+v for %d orders", s, len(ids))
		}
		time.Sleep(100 * time.Millisecond)
	}
	for _, oid := range ids {
		_, b, err := call(base, "GET", "/admin/v1/events?order_id="+oid, admin, "")
		if err != nil || bytes.Count(b, []byte(`"order.created"`)) != 1 {
			t.Fatalf("order %s: order.created not seen exactly once: %s %v", oid, b, err)
		}
	}
	t.Logf("%d acknowledged orders all present; events seen %d = stream messages %d, outbox empty", len(ids), s.Seen, s.Stream)
}

func killNine(t *testing.T, p *proc) {
	t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	p.wait(10 * time.Second)
}

func crashTest(t *testing.T, args []string) {
	const admin = "e2e-admin"
	addr := freeAddr(t)
	args = append([]string{"serve", "--addr", addr, "--admin-token", admin, "--seed-demo"}, args...)
	p := start(t, addr, args...)
	stop := make(chan struct{})
	result := make(chan []string, 1)
	var acked atomic.Int64
	go func() { result <- placeUntil(t, p.base, 12, stop, &acked) }()
	// Orders flowing, then a crash mid-stream.
	eventually.True(t, 30*time.Second, "100 orders acknowledged before the crash", func() bool { return acked.Load() >= 100 })
	killNine(t, p)
	close(stop)
	ids := <-result
	if len(ids) < 50 {
		t.Fatalf("only %d orders acknowledged before the crash; the test proves little", len(ids))
	}
	p2 := start(t, addr, args...)
	checkOrdersAndEvents(t, p2.base, admin, ids)
}

func TestCrashEmbedded(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	crashTest(t, []string{"--data", dir})
}

func TestCrashDistributed(t *testing.T) {
	t.Parallel()
	dbs := pgURLs(t, 2)
	crashTest(t, []string{"--data", t.TempDir(), "--db", dbs[0], "--db", dbs[1], "--db-max-conns", "6",
		"--kv", redisURL(t), "--bus", bustest.Namespaced(t, bustest.ExternalURL(t))})
}

func TestGracefulShutdown(t *testing.T) {
	t.Parallel()
	const admin = "e2e-admin"
	dir := t.TempDir()
	addr := freeAddr(t)
	args := []string{"serve", "--addr", addr, "--admin-token", admin, "--seed-demo", "--data", dir}
	p := start(t, addr, args...)
	stop := make(chan struct{})
	result := make(chan []string, 1)
	var acked atomic.Int64
	go func() { result <- placeUntil(t, p.base, 8, stop, &acked) }()
	eventually.True(t, 30*time.Second, "50 orders acknowledged before the shutdown", func() bool { return acked.Load() >= 50 })
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	defer func() { t.Logf("exit took %v", time.Since(t0)) }()
	if err := p.wait(30 * time.Second); err != nil {
		t.Fatalf("exit after SIGTERM: %v, want 0", err)
	}
	close(stop)
	ids := <-result
	p2 := start(t, addr, args...)
	checkOrdersAndEvents(t, p2.base, admin, ids)
}

func TestSeparateRoles(t *testing.T) {
	t.Parallel()
	const admin = "e2e-admin"
	dbs := pgURLs(t, 2)
	apiAddr, workerAddr, simAddr := freeAddr(t), freeAddr(t), freeAddr(t)
	common := []string{"--admin-token", admin, "--db", dbs[0], "--db", dbs[1], "--db-max-conns", "6", "--kv", redisURL(t),
		"--bus", bustest.Namespaced(t, bustest.ExternalURL(t)), "--pay-url", "http://" + simAddr}
	sim := start(t, simAddr, append([]string{"serve", "--roles", "paysim", "--addr", simAddr, "--data", t.TempDir()}, common...)...)
	api := start(t, apiAddr, append([]string{"serve", "--roles", "api", "--addr", apiAddr, "--seed-demo", "--data", t.TempDir()}, common...)...)
	// The worker's backstop poll is 10 minutes: events arrive in time only
	// because the api node's commits wake the worker's relay over the bus.
	start(t, workerAddr, append([]string{"serve", "--roles", "worker", "--addr", workerAddr, "--relay-poll", "10m",
		"--data", t.TempDir()}, common...)...)
	stop := make(chan struct{})
	var acked atomic.Int64
	go func() { // not eventually.True: it may not end the test from this goroutine
		for deadline := time.Now().Add(30 * time.Second); acked.Load() < 20 && time.Now().Before(deadline); {
			time.Sleep(eventually.Every)
		}
		close(stop)
	}()
	ids := placeUntil(t, api.base, 4, stop, &acked)
	if len(ids) < 20 {
		t.Fatalf("only %d orders placed in 30 s", len(ids))
	}
	checkOrdersAndEvents(t, api.base, admin, ids)
	// A worker-only node serves no customer API.
	if status, _, _ := call("http://"+workerAddr, "GET", "/api/v1/stores", "", ""); status != 404 {
		t.Fatalf("worker node answered the customer API: %d", status)
	}
	// A payment crosses three processes: api -> simulator (create), payer ->
	// simulator (pay), simulator -> api (signed callback).
	tok := mustLogin(t, api.base, "+8613900000099")
	oid := placeN(t, api.base, tok, 1)[0]
	for _, ch := range []string{"wechatpay", "alipay"} {
		if ch == "alipay" {
			oid = placeN(t, api.base, tok, 1)[0]
		}
		status, b, err := call(api.base, "POST", "/api/v1/orders/"+oid+"/pay", tok, `{"channel":"`+ch+`"}`)
		var st struct {
			PayURL string `json:"pay_url"`
		}
		json.Unmarshal(b, &st)
		if err != nil || status != 201 || !strings.HasPrefix(st.PayURL, sim.base) {
			t.Fatalf("pay at %s: %d %s %v", ch, status, b, err)
		}
		if status, b, err := call(st.PayURL, "POST", "", "", ""); err != nil || status != 200 {
			t.Fatalf("payer pays: %d %s %v", status, b, err)
		}
		deadline := time.Now().Add(15 * time.Second)
		for {
			_, b, _ := call(api.base, "GET", "/admin/v1/orders/"+oid, admin, "")
			if bytes.Contains(b, []byte(`"status":"paid"`)) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("order paid at %s never became paid: %s", ch, b)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}

func TestDemo(t *testing.T) {
	t.Parallel()
	cmd := exec.Command(bin, "demo", "--addr", "127.0.0.1:0", "--sim-duration", "5s", "--sim-customers", "12")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr syncBuf
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	var out strings.Builder
	sc := bufio.NewScanner(stdout)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	go func() { <-ctx.Done(); cmd.Process.Kill() }()
	for sc.Scan() {
		out.WriteString(sc.Text() + "\n")
		if strings.HasPrefix(sc.Text(), "still serving") {
			break
		}
	}
	text := out.String()
	for _, want := range []string{"curl -s http://127.0.0.1:", "/api/v1/orders", "orders placed", "create order", "p99"} {
		if !strings.Contains(text, want) {
			t.Fatalf("demo output lacks %q:\n%s\n%s", want, text, stderr.String())
		}
	}
	var placed int
	for _, line := range strings.Split(text, "\n") {
		if strings.HasPrefix(line, "simulation:") {
			fmt.Sscanf(line[strings.Index(line, "), ")+3:], "%d orders placed", &placed)
		}
	}
	if placed == 0 {
		t.Fatalf("the simulation placed no order:\n%s", text)
	}
	// The demo promotions and coupons are used: the simulation claims
	// coupons and orders with them.
	var discounted, claimed, withCoupon int
	var yuan float64
	for _, line := range strings.Split(text, "\n") {
		if strings.HasPrefix(line, "discounts:") {
			fmt.Sscanf(line, "discounts: %d orders discounted, %f yuan taken off; %d coupons claimed, %d orders with a coupon",
				&discounted, &yuan, &claimed, &withCoupon)
		}
	}
	if discounted == 0 || yuan <= 0 || claimed == 0 || withCoupon == 0 {
		t.Fatalf("the simulation gave no discount or used no coupon (%d discounted, %.2f yuan, %d claimed, %d with a coupon):\n%s",
			discounted, yuan, claimed, withCoupon, text)
	}
	// The demo's flash sale sells exactly its stock, each ticket an order,
	// and the simulated customers pay them.
	var attempts, tickets, orders, paid int
	for _, line := range strings.Split(text, "\n") {
		if strings.HasPrefix(line, "flash sale:") {
			fmt.Sscanf(line, "flash sale: %d attempts, %d tickets, %d orders, %d paid", &attempts, &tickets, &orders, &paid)
		}
	}
	if tickets != demo.FlashStock || orders != tickets || paid != orders || attempts <= tickets {
		t.Fatalf("the demo's flash sale of %d: %d attempts, %d tickets, %d orders, %d paid:\n%s", demo.FlashStock,
			attempts, tickets, orders, paid, text)
	}
	cmd.Process.Signal(os.Interrupt)
	go io.Copy(io.Discard, stdout)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("demo exit after Ctrl-C: %v, want 0\n%s", err, stderr.String())
	}
}
