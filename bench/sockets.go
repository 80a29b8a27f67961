package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/surge-platform/surge/internal/push/pushtest"
)

const benchAdmin = "bench-admin-token"

// sockets measures the memory of idle WebSocket connections in the push
// process — surge's customer sockets against the naive coder/websocket
// server — with the clients in this process, then delivers one event to
// every surge socket through its customer's live subject.
func sockets(ctx context.Context) error {
	var base, subject []float64
	for round := range min(*rounds, 3) {
		b, s, err := socketsRound(ctx, round)
		if err != nil {
			return err
		}
		base, subject = append(base, b), append(subject, s)
	}
	mb, ms := median(base), median(subject)
	fmt.Printf("  median:  naive server %5.1f KiB/socket   surge push %5.1f KiB/socket   ratio %.2f (target: surge < 20 KiB)\n",
		mb, ms, ms/mb)
	return nil
}

func socketsRound(ctx context.Context, round int) (naive, surge float64, err error) {
	busDir, _ := os.MkdirTemp("", "surge-bench-nats-")
	defer os.RemoveAll(busDir)
	natsAddr := freeAddr()
	p, err := startPair("--log-level", "warn", "--admin-token", benchAdmin, "--bus", "embedded:"+busDir+"?listen="+natsAddr)
	if err != nil {
		return 0, 0, err
	}
	defer p.stop()
	surgeBase := "http://" + p.surgeAddr
	n := *nSockets

	// Customers first, so their logins are not counted as socket memory.
	users, tokens, err := loginMany(surgeBase, n)
	if err != nil {
		return 0, 0, err
	}

	// The naive server.
	before := rss(p.hello.Process.Pid)
	naiveConns, err := dialMany("http://"+p.helloAddr, "/ws", make([]string, n))
	if err != nil {
		return 0, 0, fmt.Errorf("naive server: %w", err)
	}
	time.Sleep(time.Second)
	naive = float64(rss(p.hello.Process.Pid)-before) / float64(n)
	closeAll(naiveConns)

	// surge.
	var st0, st1 pushStats
	getJSON(surgeBase+"/push/v1/stats?gc=1", benchAdmin, &st0)
	before = rss(p.surge.Process.Pid)
	start := time.Now()
	conns, err := dialMany(surgeBase, "/api/v1/ws", tokens)
	if err != nil {
		return 0, 0, fmt.Errorf("surge: %w", err)
	}
	defer closeAll(conns)
	connectTook := time.Since(start)
	time.Sleep(time.Second)
	getJSON(surgeBase+"/push/v1/stats?gc=1", benchAdmin, &st1)
	surge = float64(rss(p.surge.Process.Pid)-before) / float64(n)
	goMem := float64(st1.HeapInuse+st1.StackInuse-st0.HeapInuse-st0.StackInuse) / 1024 / float64(n)
	stacks := float64(st1.StackInuse-st0.StackInuse) / 1024 / float64(n)

	// One event to every socket, published as the router publishes them:
	// into the customer's window in the PUSH stream, then announced on the
	// customer's live subject.
	var got atomic.Int64
	var wg sync.WaitGroup
	for _, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rctx, cancel := context.WithTimeout(ctx, 60*time.Second)
			defer cancel()
			for {
				m, err := c.Next(rctx)
				if err != nil {
					return
				}
				if m.Type == "order.paid" {
					got.Add(1)
					return
				}
			}
		}()
	}
	nc, err := nats.Connect("nats://" + natsAddr)
	if err != nil {
		return 0, 0, err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return 0, 0, err
	}
	start = time.Now()
	for i, u := range users { // into the customer's window, then the announcement
		ev := fmt.Sprintf(`{"type":"order.paid","event_id":"%d","order_id":"%d","status":"paid"}`, i+1, i+1)
		ack, err := js.Publish(ctx, "push.log.u."+u, []byte(ev))
		if err != nil {
			return 0, 0, err
		}
		live := fmt.Sprintf(`{"seq":%d,"order_id":%d}`, ack.Sequence, i+1)
		if err := nc.Publish("push.live.u."+u, []byte(live)); err != nil {
			return 0, 0, err
		}
	}
	nc.Flush()
	wg.Wait()
	deliverTook := time.Since(start)
	fmt.Printf("  sockets round %d: %d sockets connected in %v; RSS per idle socket: naive %.1f KiB, surge %.1f KiB (Go heap+stacks %.1f KiB, of it stacks %.1f KiB); one event to each: %d/%d delivered in %v\n",
		round+1, st1.Customers, connectTook.Round(time.Millisecond), naive, surge, goMem, stacks, got.Load(), n, deliverTook.Round(time.Millisecond))
	if got.Load() != int64(n) {
		return 0, 0, fmt.Errorf("sockets: %d of %d events delivered", got.Load(), n)
	}
	return naive, surge, nil
}

type pushStats struct {
	Customers  int64 `json:"customers"`
	HeapInuse  int64 `json:"heap_inuse"`
	StackInuse int64 `json:"stack_inuse"`
}

// rss returns a process's resident memory in KiB.
func rss(pid int) int64 {
	f, err := os.Open("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.Fields(v)[0], 10, 64)
			return kb
		}
	}
	return 0
}

// loginMany logs in n customers (phones +86137xxxxxxxx) and returns their
// user ids and tokens.
func loginMany(base string, n int) (users, tokens []string, err error) {
	users, tokens = make([]string, n), make([]string, n)
	err = parallel(32, n, func(i int) error {
		var out struct {
			Token  string `json:"token"`
			UserID string `json:"user_id"`
		}
		if err := post(base+"/api/v1/auth/login", "", fmt.Sprintf(`{"phone":"+86137%08d"}`, i), 200, &out); err != nil {
			return err
		}
		users[i], tokens[i] = out.UserID, out.Token
		return nil
	})
	return users, tokens, err
}

// dialMany opens one socket per token.
func dialMany(base, path string, tokens []string) ([]*pushtest.Conn, error) {
	conns := make([]*pushtest.Conn, len(tokens))
	err := parallel(64, len(tokens), func(i int) error {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		c, err := dial(ctx, base, path, tokens[i])
		conns[i] = c
		return err
	})
	if err != nil {
		closeAll(conns)
	}
	return conns, err
}

// dial opens a socket as a client should: a 503 (the node shedding load,
// as it may just after the bench's set-up) is tried again, for up to a
// minute.
func dial(ctx context.Context, base, path, token string) (*pushtest.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	for {
		c, err := pushtest.Dial(ctx, base, path, token, "")
		var refused *pushtest.RefusedError
		if !errors.As(err, &refused) || refused.Status != http.StatusServiceUnavailable {
			return c, err
		}
		select {
		case <-ctx.Done():
			return nil, err
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func closeAll(conns []*pushtest.Conn) {
	for _, c := range conns {
		if c != nil {
			c.WS.CloseNow()
		}
	}
}

// parallel runs f(0..n-1) on w goroutines and returns the first error.
func parallel(w, n int, f func(i int) error) error {
	var next atomic.Int64
	var first atomic.Value
	var wg sync.WaitGroup
	for range w {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= n || first.Load() != nil {
					return
				}
				if err := f(i); err != nil {
					first.CompareAndSwap(nil, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if err, ok := first.Load().(error); ok {
		return err
	}
	return nil
}

func getJSON(url, token string, out any) error {
	req, _ := http.NewRequest("GET", url, nil)
	req.Header.Set("Authorization", "Bearer "+token)
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer res.Body.Close()
	if res.StatusCode != 200 {
		return fmt.Errorf("GET %s: %d", url, res.StatusCode)
	}
	return json.NewDecoder(res.Body).Decode(out)
}
