package payment_test

import (
	"bytes"
	"io"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/surge-platform/surge/internal/order"
	"github.com/surge-platform/surge/internal/payment"
)

// BenchmarkCallbacks measures signed wechatpay callbacks handled per second
// through POST /pay/v1/notify/wechatpay of a whole node (verify, apply the
// payment, pay the order by CAS with its outbox event, acknowledge), each
// the first callback of its payment, from concurrent senders; and GET
// /healthz on the same node as the hello-world baseline of the same run.
func BenchmarkCallbacks(b *testing.B) {
	e := mustStart(b, envOpts{})
	_, uid, err := e.n.Members.Login(e.ctx, "+8613600000001")
	if err != nil {
		b.Fatal(err)
	}
	post := func(b *testing.B, method, path string, h http.Header, body []byte) {
		req, err := http.NewRequestWithContext(e.ctx, method, e.base+path, bytes.NewReader(body))
		if err != nil {
			b.Error(err)
			return
		}
		req.Header = h
		res, err := httpc.Do(req)
		if err != nil {
			b.Error(err)
			return
		}
		got, _ := io.ReadAll(io.LimitReader(res.Body, 4<<10))
		res.Body.Close()
		if res.StatusCode != 200 {
			b.Errorf("%s %s: %d %s", method, path, res.StatusCode, got)
		}
	}

	b.Run("healthz", func(b *testing.B) {
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				post(b, "GET", "/healthz", http.Header{}, nil)
			}
		})
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "req/s")
	})

	b.Run("notify", func(b *testing.B) {
		// b.N orders with a payment started at wechatpay, and their callbacks.
		type cb struct {
			h    http.Header
			body []byte
		}
		cbs := make([]cb, b.N)
		oids := make([]int64, b.N)
		for i := range b.N {
			c, err := e.n.Orders.Create(e.ctx, uid, "", order.Request{StoreID: 1001, Items: []order.RequestLine{{SKU: 1001006, Qty: 1}}})
			if err != nil {
				b.Fatal(err)
			}
			st, err := e.n.Payments.Pay(e.ctx, uid, c.OrderID, payment.PayRequest{Channel: "wechatpay"})
			if err != nil {
				b.Fatal(err)
			}
			ps, err := e.n.Payments.OfOrder(e.ctx, c.OrderID)
			if err != nil || len(ps) != 1 {
				b.Fatalf("payments of order %d: %v %v", c.OrderID, ps, err)
			}
			h, body := e.mustEncode("wechatpay", payment.Notice{Status: payment.Status{PaymentID: st.PaymentID, ChannelTxnID: ps[0].ChannelTxn,
				State: payment.Paid, Amount: c.Payable, PaidAt: time.Now().UTC().Truncate(time.Second)},
				NoticeID: "bench" + ps[0].ChannelTxn, Timestamp: time.Now()})
			cbs[i], oids[i] = cb{h, body}, c.OrderID
		}
		var next atomic.Int64
		b.ResetTimer()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				c := cbs[next.Add(1)-1]
				post(b, "POST", "/pay/v1/notify/wechatpay", c.h.Clone(), c.body)
			}
		})
		b.StopTimer()
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "callbacks/s")
		for _, oid := range oids {
			if o := e.peek(oid); o.Status != order.Paid {
				b.Fatalf("order %d is %s after its callback", oid, o.Status)
			}
		}
	})
}
