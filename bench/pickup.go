package main

import (
	"bytes"
	"context"
	"database/sql"
	"fmt"
	"io"
	"net/http"
	"os"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
)

// pickup measures the seed's main flow end to end on an embedded surge:
// from a signed payment callback to the pickup code on the customer's
// socket, with the store's POS simulated (it accepts each order as its
// socket announces it). Callbacks arrive at a constant rate (open model:
// latency counts from the moment a callback was due, so a stalled sender
// cannot hide a stall).
func pickup(ctx context.Context) error {
	args := append([]string{"--log-level", "error", "--admin-token", benchAdmin, "--pay-query-after", "1h", "--order-ttl", "1h"},
		strings.Fields(*surgeArgs)...)
	var sdb *sql.DB // surge's PostgreSQL database, with --pickup-pg
	if *pickupPG {
		dsn, drop, err := pgDatabase(ctx, benchName()+"_pickup")
		if err != nil {
			return err
		}
		defer drop()
		if sdb, err = sql.Open("pgx", dsn); err != nil {
			return err
		}
		defer sdb.Close()
		args = append(args, "--db", dsn)
	}
	p, err := startPair(args...)
	if err != nil {
		return err
	}
	defer p.stop()
	base := "http://" + p.surgeAddr
	const customers, stores = 200, 20
	roundDur := 5 * time.Second
	per := int(float64(*rate) * roundDur.Seconds())
	total := per * *rounds

	_, tokens, err := loginMany(base, customers)
	if err != nil {
		return err
	}
	// Orders and payments, made before the clock starts.
	type ref struct {
		order   string
		payment int64
		amount  int64
	}
	refs := make([]ref, total)
	setup, setupCPU := time.Now(), cpuTicks(p.surge.Process.Pid)
	err = parallel(32, total, func(i int) error {
		store := 1001 + i%stores
		var c struct {
			OrderID string `json:"order_id"`
			Payable int64  `json:"payable"`
		}
		body := fmt.Sprintf(`{"store_id":"%d","items":[{"sku_id":"%d","qty":1}]}`, store, store*1000+10)
		if err := post(base+"/api/v1/orders", tokens[i%customers], body, 201, &c); err != nil {
			return err
		}
		var pay struct {
			PaymentID string `json:"payment_id"`
		}
		if err := post(base+"/api/v1/orders/"+c.OrderID+"/pay", tokens[i%customers], `{"channel":"wechatpay"}`, 201, &pay); err != nil {
			return err
		}
		x, _ := strconv.ParseInt(pay.PaymentID, 10, 64)
		refs[i] = ref{c.OrderID, x, c.Payable}
		return nil
	})
	if err != nil {
		return fmt.Errorf("pickup setup: %w", err)
	}
	fmt.Printf("  pickup setup: %d orders placed and payments started in %v (%.0f/s, 32 clients, %d requests tried again after a 503); surge CPU per order %v, the in-process payment simulator's share included\n",
		total, time.Since(setup).Round(time.Millisecond), float64(total)/time.Since(setup).Seconds(), retried.Load(),
		(time.Duration(cpuTicks(p.surge.Process.Pid)-setupCPU) * 10 * time.Millisecond / time.Duration(total)).Round(time.Microsecond))
	index := make(map[string]int, total)
	for i, r := range refs {
		index[r.order] = i
	}

	// Signed callbacks, encoded ahead.
	pays := make([]paid, total)
	for i, r := range refs {
		pays[i] = paid{r.payment, r.amount}
	}
	cbs, err := signedCallbacksOn(ctx, surgeMainDB(p.data, args), "pickup", pays)
	if err != nil {
		return err
	}
	notices := make([][]byte, total) // on the wire
	for i, cb := range cbs {
		notices[i] = rawRequest("POST", p.surgeAddr, "/pay/v1/notify/wechatpay", cb.h, cb.body)
	}

	// When each callback was due, and when its pickup code arrived.
	due := make([]atomic.Int64, total)
	took := make([]atomic.Int64, total)
	// The stages in between, as unix nanos: the callback answered, the POS
	// socket announced the order, the POS's accept answered.
	paidAt := make([]atomic.Int64, total)
	newAt := make([]atomic.Int64, total)
	acceptedAt := make([]atomic.Int64, total)

	// The customers' sockets.
	conns, err := dialMany(base, "/api/v1/ws", tokens)
	if err != nil {
		return err
	}
	defer closeAll(conns)
	for _, c := range conns {
		go func() {
			for {
				m, err := c.Next(ctx)
				if err != nil {
					return
				}
				if m.Type == "order.accepted" && m.PickupCode != "" {
					if i, ok := index[m.OrderID]; ok && due[i].Load() != 0 {
						took[i].CompareAndSwap(0, time.Now().UnixNano()-due[i].Load())
					}
				}
			}
		}()
	}

	// The stores' POS terminals: accept what their socket announces. The
	// accepts and the callbacks go through raw keep-alive connections (see
	// rawConn): the load generator's CPU is the machine's too.
	raw := newRawPool(p.surgeAddr, 128)
	defer raw.close()
	accepts := make(chan [2]string, 4096) // order id, key
	stamp := func(at []atomic.Int64, orderID string) {
		if i, ok := index[orderID]; ok && due[i].Load() != 0 {
			at[i].CompareAndSwap(0, time.Now().UnixNano())
		}
	}
	var acceptErr atomic.Value
	var announced atomic.Int64
	for range 32 {
		go func() {
			for a := range accepts {
				status, err := raw.do(rawRequest("POST", p.surgeAddr, "/pos/v1/orders/"+a[0]+"/accept",
					http.Header{"Authorization": {"Bearer " + a[1]}}, nil))
				if err == nil {
					if status != 200 {
						err = fmt.Errorf("accept %s: %d", a[0], status)
					}
					stamp(acceptedAt, a[0])
				}
				if err != nil {
					acceptErr.Store(err)
				}
			}
		}()
	}
	defer close(accepts)
	for s := range stores {
		var st struct {
			POSKey string `json:"pos_key"`
		}
		if err := getJSON(fmt.Sprintf("%s/admin/v1/stores/%d", base, 1001+s), benchAdmin, &st); err != nil {
			return err
		}
		c, err := dial(ctx, base, "/pos/v1/ws", st.POSKey)
		if err != nil {
			return err
		}
		defer c.WS.CloseNow()
		go func() {
			for {
				m, err := c.Next(ctx)
				if err != nil {
					return
				}
				if m.Type == "order.new" {
					announced.Add(1)
					stamp(newAt, m.Order.OrderID)
					accepts <- [2]string{m.Order.OrderID, st.POSKey}
					c.Send(ctx, map[string]string{"type": "ack", "cursor": m.Seq.String()})
				}
			}
		}()
	}

	// The channel's callbacks, at the rate.
	jobs := make(chan int, total)
	var sendErr atomic.Value
	var senders sync.WaitGroup
	for range 64 {
		senders.Add(1)
		go func() {
			defer senders.Done()
			for i := range jobs {
				status, err := raw.do(notices[i])
				if err == nil {
					if status != 200 {
						err = fmt.Errorf("callback: %d", status)
					}
					paidAt[i].Store(time.Now().UnixNano())
				}
				if err != nil {
					sendErr.Store(err)
				}
			}
		}()
	}
	// The setup's own events (orders created, payments started) are still
	// being relayed and consumed: measure from a quiet server.
	quiet := quiesce(p.surge.Process.Pid)
	fmt.Printf("  pickup: %d orders and payments made; %d customer and %d POS sockets open; server quiet after %v\n",
		total, customers, stores, quiet.Round(100*time.Millisecond))
	var p99s []float64
	for r := range *rounds {
		if r == 0 && *profile != "" {
			go saveProfile(base, roundDur, *profile)
			if f, err := os.Create(*profile + ".bench"); err == nil { // the load generator's own
				pprof.StartCPUProfile(f)
				time.AfterFunc(roundDur, pprof.StopCPUProfile)
			}
		}
		var c0 pgCount
		if sdb != nil {
			pgCheckpoint(ctx, sdb)
			if c0, err = pgCounts(ctx, sdb); err != nil {
				return err
			}
		}
		start, cpu0, own0 := time.Now(), cpuTicks(p.surge.Process.Pid), cpuTicks(os.Getpid())
		for k := range per {
			i := r*per + k
			at := start.Add(time.Duration(k) * time.Second / time.Duration(*rate))
			time.Sleep(time.Until(at))
			due[i].Store(at.UnixNano())
			jobs <- i
		}
		sent := time.Since(start)
		deadline := time.Now().Add(60 * time.Second) // a backlog drains late; a code still missing then is lost
		h := hdrhistogram.New(1, int64(time.Minute/time.Microsecond), 3)
		missing := 0
		for k := range per {
			i := r*per + k
			for took[i].Load() == 0 && time.Now().Before(deadline) {
				time.Sleep(5 * time.Millisecond)
			}
			if d := took[i].Load(); d > 0 {
				h.RecordValue(d / 1000)
			} else {
				missing++
			}
		}
		cpu := time.Duration(cpuTicks(p.surge.Process.Pid)-cpu0) * 10 * time.Millisecond
		own := time.Duration(cpuTicks(os.Getpid())-own0) * 10 * time.Millisecond
		q := func(x float64) time.Duration { return time.Duration(h.ValueAtQuantile(x)) * time.Microsecond }
		fmt.Printf("  pickup round %d: %d callbacks in %v (%.0f/s); callback -> pickup code on the customer's socket: p50 %v p99 %v max %v; missing %d; CPU per order: surge %v, load generator %v\n",
			r+1, per, sent.Round(time.Millisecond), float64(per)/sent.Seconds(), q(50), q(99), time.Duration(h.Max())*time.Microsecond, missing,
			(cpu / time.Duration(per)).Round(10*time.Microsecond), (own / time.Duration(per)).Round(10*time.Microsecond))
		if missing > 0 {
			err, _ := acceptErr.Load().(error)
			return fmt.Errorf("pickup: %d pickup codes never reached their customer (POS got %d orders; last accept error: %v)",
				missing, announced.Load(), err)
		}
		p99s = append(p99s, float64(q(99))/float64(time.Millisecond))
		if sdb != nil {
			time.Sleep(settle)
			c1, err := pgCounts(ctx, sdb)
			if err != nil {
				return err
			}
			c, w, l := c1.per(c0, float64(per), 0)
			fmt.Printf("    on PostgreSQL, per order from notice to pickup code (relay, ledger and consumers included): %.2f commits, %.2f write transactions, %.0f bytes of log\n",
				c, w, l)
		}
		// Where the time went: each stage from the end of the one before.
		stages := []struct {
			name     string
			from, to func(i int) int64
		}{
			{"callback answered", func(i int) int64 { return due[i].Load() }, func(i int) int64 { return paidAt[i].Load() }},
			{"POS socket got it", func(i int) int64 { return paidAt[i].Load() }, func(i int) int64 { return newAt[i].Load() }},
			{"accept answered", func(i int) int64 { return newAt[i].Load() }, func(i int) int64 { return acceptedAt[i].Load() }},
			{"code on customer socket", func(i int) int64 { return acceptedAt[i].Load() }, func(i int) int64 { return due[i].Load() + took[i].Load() }},
		}
		line := "   "
		for _, st := range stages {
			sh := hdrhistogram.New(1, int64(time.Minute/time.Microsecond), 3)
			for k := range per {
				if a, b := st.from(r*per+k), st.to(r*per+k); a > 0 && b >= a {
					sh.RecordValue((b - a) / 1000)
				}
			}
			us := func(x float64) time.Duration {
				return (time.Duration(sh.ValueAtQuantile(x)) * time.Microsecond).Round(100 * time.Microsecond)
			}
			line += fmt.Sprintf(" %s p50 %v p99 %v;", st.name, us(50), us(99))
		}
		fmt.Println(line)
	}
	close(jobs)
	senders.Wait()
	if err, ok := sendErr.Load().(error); ok {
		return err
	}
	if err, ok := acceptErr.Load().(error); ok {
		return err
	}
	var st struct{ Sent, Direct, Resyncs, Slow int64 }
	if err := getJSON(base+"/push/v1/stats", benchAdmin, &st); err == nil {
		fmt.Printf("  push: %d socket messages, %d customer events sent straight from their announcement, %d resyncs, %d slow sockets cut off\n",
			st.Sent, st.Direct, st.Resyncs, st.Slow)
	}
	slices.Sort(p99s)
	mode := "embedded surge"
	if sdb != nil {
		mode = "surge on PostgreSQL"
	}
	fmt.Printf("  median p99 %.1f ms at %d callbacks/s (target < 100 ms at 2,000/s, and ≤ 0.6 ms of surge CPU per order; %d customers, %d stores, %s)\n",
		p99s[len(p99s)/2], *rate, customers, stores, mode)
	return nil
}

// saveProfile writes a CPU profile of surge over d to file.
func saveProfile(base string, d time.Duration, file string) {
	req, _ := http.NewRequest("GET", fmt.Sprintf("%s/debug/pprof/profile?seconds=%d", base, int(d.Seconds())), nil)
	req.Header.Set("Authorization", "Bearer "+benchAdmin)
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		fmt.Println("  profile:", err)
		return
	}
	defer res.Body.Close()
	f, err := os.Create(file)
	if err == nil {
		_, err = io.Copy(f, res.Body)
		f.Close()
	}
	fmt.Println("  profile:", file, err)
}

// quiesce waits (at most a minute) until process pid uses less than 6% of
// a CPU over half a second, and returns how long that took.
func quiesce(pid int) time.Duration {
	start := time.Now()
	for time.Since(start) < time.Minute {
		a := cpuTicks(pid)
		time.Sleep(500 * time.Millisecond)
		b := cpuTicks(pid)
		if a < 0 || b < 0 || b-a < 3 { // clock ticks are 10 ms: under 30 ms in 500 ms
			break
		}
	}
	return time.Since(start)
}

// cpuTicks is the CPU time process pid has used, in clock ticks (10 ms).
func cpuTicks(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return -1
	}
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+2:]))
	u, _ := strconv.ParseInt(f[11], 10, 64) // utime, stime: fields 14, 15
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return u + st
}
