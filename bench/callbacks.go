package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/surge-platform/surge/bench/load"
	"github.com/surge-platform/surge/internal/node"
	"github.com/surge-platform/surge/internal/payment"
	"github.com/surge-platform/surge/internal/payment/paysim"
	"github.com/surge-platform/surge/internal/platform/sqldb"
)

// callbacks measures WeChat Pay notices (TRANSACTION.SUCCESS, signed with
// the platform key, the resource sealed with the APIv3 key) handled per
// second by an embedded surge — signature check, decryption, replay
// window, ledger read, and on
// the first delivery of each payment the paid -> settled -> order paid
// transitions; later deliveries are the duplicates every channel sends —
// against the hello-world server.
func callbacks(ctx context.Context) error {
	helloAddr, addr, data, done, err := pair("--log-level", "error", "--pay-query-after", "1h", "--order-ttl", "1h")
	if err != nil {
		return err
	}
	defer done()
	base := "http://" + addr

	const users, each = 8, 250
	type ref struct{ id, amount int64 }
	var mu sync.Mutex
	var refs []ref
	var wg sync.WaitGroup
	var setupErr atomic.Value
	for u := range users {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tok, err := benchLogin(base, fmt.Sprintf("+86135%08d", u))
			if err != nil {
				setupErr.Store(err)
				return
			}
			for range each {
				var c struct {
					OrderID string `json:"order_id"`
					Payable int64  `json:"payable"`
				}
				if err := post(base+"/api/v1/orders", tok, `{"store_id":"1002","items":[{"sku_id":"1002010","qty":1}]}`, 201, &c); err != nil {
					setupErr.Store(err)
					return
				}
				var p struct {
					PaymentID string `json:"payment_id"`
				}
				if err := post(base+"/api/v1/orders/"+c.OrderID+"/pay", tok, `{"channel":"wechatpay"}`, 201, &p); err != nil {
					setupErr.Store(err)
					return
				}
				x, _ := strconv.ParseInt(p.PaymentID, 10, 64)
				mu.Lock()
				refs = append(refs, ref{x, c.Payable})
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if err, _ := setupErr.Load().(error); err != nil {
		return fmt.Errorf("callbacks setup: %w", err)
	}
	pays := make([]paid, len(refs))
	for i, r := range refs {
		pays[i] = paid{r.id, r.amount}
	}
	cbs, err := signedCallbacks(ctx, data, "bench", pays)
	if err != nil {
		return err
	}
	var next atomic.Int64
	notify := func(int, int) *http.Request {
		e := cbs[int(next.Add(1))%len(cbs)]
		r, _ := http.NewRequest("POST", base+"/pay/v1/notify/wechatpay", bytes.NewReader(e.body))
		r.Header = e.h.Clone()
		return r
	}
	get := func(int, int) *http.Request { r, _ := http.NewRequest("GET", "http://"+helloAddr+"/", nil); return r }
	var bs, ss []float64
	for range *rounds {
		b := load.Run(ctx, *workers, *dur, 200, get)
		s := load.Run(ctx, *workers, *dur, 200, notify)
		if s.Failed > 0 {
			return fmt.Errorf("callbacks: %d failed", s.Failed)
		}
		bs, ss = append(bs, b.RPS()), append(ss, s.RPS())
		fmt.Printf("  callbacks round: surge p50 %v p99 %v\n", s.P50, s.P99)
	}
	report(fmt.Sprintf("payment callbacks (%d connections, %v per round, embedded surge; %d payments, the first delivery of each settles its order, the rest are duplicates)",
		*workers, *dur, len(cbs)), "hello-world", "surge notify/wechatpay", bs, ss, 0)
	return nil
}

// paid is a payment the channel calls back about.
type paid struct{ payment, amount int64 }

// callback is a WeChat Pay notice, encoded ahead of the measurement.
type callback struct {
	h    http.Header
	body []byte
}

// signedCallbacks signs a "paid" callback per payment with the node's
// simulator keys, read from its settings (as the channel holds them).
func signedCallbacks(ctx context.Context, data, tag string, pays []paid) ([]callback, error) {
	return signedCallbacksOn(ctx, surgeMainDB(data, strings.Fields(*surgeArgs)), tag, pays)
}

// surgeMainDB is the main database of a surge started with --data data and
// args: where the simulator's secret is.
func surgeMainDB(data string, args []string) string {
	if i := slices.Index(args, "--db"); i >= 0 && i+1 < len(args) {
		return args[i+1]
	}
	return "sqlite:" + data + "/db"
}

// signedCallbacksOn is signedCallbacks with the simulator's keys read from
// database db.
func signedCallbacksOn(ctx context.Context, db, tag string, pays []paid) ([]callback, error) {
	c, err := sqldb.Open(ctx, []string{db}, sqldb.Options{})
	if err != nil {
		return nil, err
	}
	k, err := node.SimKeys(ctx, c)
	c.Close()
	if err != nil {
		return nil, err
	}
	cc := paysim.ChannelConfig{Scheme: paysim.WeChatPay, WeChat: k.WeChat}
	now := time.Now()
	cbs := make([]callback, len(pays))
	for i, p := range pays {
		h, b, err := paysim.EncodeCallback(cc, payment.Notice{
			Status: payment.Status{PaymentID: p.payment, ChannelTxnID: "4200000000" + tag + strconv.Itoa(i), State: payment.Paid,
				Amount: p.amount, PaidAt: now},
			NoticeID: tag + "-n" + strconv.Itoa(i), Timestamp: now})
		if err != nil {
			return nil, err
		}
		cbs[i] = callback{h, b}
	}
	return cbs, nil
}

func benchLogin(base, phone string) (string, error) {
	var out struct{ Token string }
	err := post(base+"/api/v1/auth/login", "", `{"phone":"`+phone+`"}`, 200, &out)
	return out.Token, err
}

// post posts body and decodes the answer into out. A 503 that says
// nothing was done is tried again, as a client does, for up to a minute:
// overloaded (the node sheds load: every payment's create is RSA-signed),
// after 50 ms; channel_unavailable (the in-process channel's breaker,
// open after its calls ran out of time on the busy machine), after its
// Retry-After. Each retry is counted in retried.
func post(url, token, body string, want int, out any) error {
	for deadline := time.Now().Add(time.Minute); ; {
		req, _ := http.NewRequest("POST", url, strings.NewReader(body))
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			return err
		}
		b, _ := io.ReadAll(res.Body)
		res.Body.Close()
		if wait, ok := retryable(res, b); ok && time.Now().Add(wait).Before(deadline) {
			retried.Add(1)
			time.Sleep(wait)
			continue
		}
		if res.StatusCode != want {
			return fmt.Errorf("POST %s: %d %s", url, res.StatusCode, b)
		}
		return json.Unmarshal(b, out)
	}
}

// retried counts the requests post tried again.
var retried atomic.Int64

// retryable says whether a POST's answer is a 503 that did nothing and
// may be tried again, and after how long.
func retryable(res *http.Response, body []byte) (time.Duration, bool) {
	switch {
	case res.StatusCode != http.StatusServiceUnavailable:
		return 0, false
	case bytes.Contains(body, []byte(`"code":"overloaded"`)):
		return 50 * time.Millisecond, true
	case bytes.Contains(body, []byte(`"code":"channel_unavailable"`)):
		wait := time.Second
		if s, err := strconv.Atoi(res.Header.Get("Retry-After")); err == nil && s > 0 {
			wait = time.Duration(s) * time.Second
		}
		return wait, true
	}
	return 0, false
}
