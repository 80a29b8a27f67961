package paysim

import (
	"bytes"
	"container/heap"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/surge-platform/surge/internal/payment"
)

// delivery is one callback notice on its way to the merchant. Its retries
// repeat noticeID; each attempt is signed afresh (new timestamp and nonce)
// and says what the transaction is when it is sent: a payment refunded
// before its callback went out is notified as refunded, not as paid.
type delivery struct {
	ch         *channel
	txn        *txn
	refund     *refund // the refund it notifies, nil for a payment's notice
	merchantID int64
	txnID      string
	notifyURL  string
	noticeID   string
	attempt    int       // attempts made so far
	due        time.Time // real clock
	index      int       // in the heap
}

type deliveryHeap []*delivery

func (h deliveryHeap) Len() int           { return len(h) }
func (h deliveryHeap) Less(i, j int) bool { return h[i].due.Before(h[j].due) }
func (h deliveryHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].index, h[j].index = i, j
}
func (h *deliveryHeap) Push(x any) {
	d := x.(*delivery)
	d.index = len(*h)
	*h = append(*h, d)
}
func (h *deliveryHeap) Pop() any {
	old := *h
	d := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	return d
}
func (h *deliveryHeap) push(d *delivery) { heap.Push(h, d) }

// enqueue adds new callbacks to the queue.
func (s *Server) enqueue(ds ...*delivery) {
	if len(ds) == 0 {
		return
	}
	s.qmu.Lock()
	for _, d := range ds {
		d.ch.pending.Add(1)
		s.queue.push(d)
	}
	s.qmu.Unlock()
	s.poke()
}

// requeue puts back deliveries that were taken but not tried (shutdown).
func (s *Server) requeue(ds ...*delivery) {
	s.qmu.Lock()
	for _, d := range ds {
		s.queue.push(d)
	}
	s.qmu.Unlock()
}

func (s *Server) poke() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// Run delivers callbacks until ctx is done, with Config.Workers senders, and
// returns nil. Callbacks not yet delivered stay queued for a later Run.
// Only one Run may be active at a time.
func (s *Server) Run(ctx context.Context) error {
	if !s.running.CompareAndSwap(false, true) {
		return errors.New("paysim: Run is already running")
	}
	defer s.running.Store(false)
	jobs := make(chan []*delivery)
	var wg sync.WaitGroup
	for range s.cfg.Workers {
		wg.Go(func() {
			for job := range jobs {
				s.send(ctx, job)
			}
		})
	}
	s.schedule(ctx, jobs)
	close(jobs)
	wg.Wait()
	return nil
}

// schedule hands due callbacks to the senders until ctx is done.
func (s *Server) schedule(ctx context.Context, jobs chan<- []*delivery) {
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		batch, next := s.due(time.Now())
		for i, job := range batch {
			select {
			case jobs <- job:
			case <-ctx.Done():
				for _, j := range batch[i:] {
					s.requeue(j...)
				}
				return
			}
		}
		if len(batch) > 0 {
			continue // time passed while handing out; look again
		}
		wait := time.Hour
		if !next.IsZero() {
			wait = max(time.Until(next), 0)
		}
		timer.Reset(wait)
		select {
		case <-ctx.Done():
			return
		case <-s.wake:
		case <-timer.C:
		}
	}
}

// due takes the callbacks due at now off the queue and returns them as jobs
// (a reorder batch is one job, sent in order), and when to look next (zero:
// nothing waits).
func (s *Server) due(now time.Time) (jobs [][]*delivery, next time.Time) {
	s.qmu.Lock()
	defer s.qmu.Unlock()
	for len(s.queue) > 0 && !s.queue[0].due.After(now) {
		d := heap.Pop(&s.queue).(*delivery)
		if s.holdBackLocked(d) {
			continue
		}
		ch := d.ch
		if d.attempt == 0 && ch.faults.Load().Reorder {
			if len(ch.held) == 0 {
				ch.heldSince = now
			}
			ch.held = append(ch.held, d)
			if len(ch.held) >= s.cfg.ReorderBatch {
				jobs = append(jobs, reversed(ch.held))
				ch.held = nil
			}
			continue
		}
		jobs = append(jobs, []*delivery{d})
	}
	for _, ch := range s.order {
		if len(ch.held) == 0 {
			continue
		}
		flush := ch.heldSince.Add(s.cfg.ReorderWait)
		if !flush.After(now) {
			jobs = append(jobs, reversed(ch.held))
			ch.held = nil
		} else if next.IsZero() || flush.Before(next) {
			next = flush
		}
	}
	if len(s.queue) > 0 && (next.IsZero() || s.queue[0].due.Before(next)) {
		next = s.queue[0].due
	}
	return jobs, next
}

func reversed(ds []*delivery) []*delivery {
	out := slices.Clone(ds)
	slices.Reverse(out)
	return out
}

// holdBackLocked parks d during an outage or discards it under the drop
// fault, and reports whether it did. It needs qmu.
func (s *Server) holdBackLocked(d *delivery) bool {
	f := d.ch.faults.Load()
	switch {
	case f.Outage:
		d.ch.parked = append(d.ch.parked, d)
		return true
	case f.DropCallbacks:
		d.ch.dropped.Add(1)
		d.ch.pending.Add(-1)
		return true
	}
	return false
}

// send tries the deliveries of one job in order.
func (s *Server) send(ctx context.Context, job []*delivery) {
	for i, d := range job {
		if ctx.Err() != nil {
			s.requeue(job[i:]...)
			return
		}
		s.qmu.Lock()
		held := s.holdBackLocked(d) // faults may have changed since it was taken
		s.qmu.Unlock()
		if held {
			continue
		}
		ok := s.try(ctx, d)
		switch {
		case ok:
			d.ch.acked.Add(1)
			d.ch.pending.Add(-1)
		case ctx.Err() != nil:
			s.requeue(d) // cut short by shutdown: not an attempt that failed
		default:
			s.retry(d)
		}
	}
}

// try posts one attempt of d and reports whether the merchant acknowledged it.
func (s *Server) try(ctx context.Context, d *delivery) bool {
	d.ch.mu.Lock()
	st := payment.Status{PaymentID: d.merchantID, ChannelTxnID: d.txnID, State: d.txn.state, Amount: d.txn.amount,
		Refunded: d.txn.refunded, PaidAt: d.txn.paidAt}
	var info *wxTxn
	if d.txn.wx != nil {
		c := *d.txn.wx
		info = &c
	}
	d.ch.mu.Unlock()
	n := payment.Notice{Status: st, NoticeID: d.noticeID, Timestamp: s.now()}
	if rf := d.refund; rf != nil {
		n.Refund = &payment.RefundNote{OutRefundNo: strconv.FormatInt(rf.id, 10), ChannelRefundID: rf.channelID,
			Amount: rf.amount, Succeeded: true, At: rf.at}
	}
	h, body, err := encodeCallback(d.ch.cfg, n, info)
	if err != nil {
		s.cfg.Log.Error("paysim: encode callback", "channel", d.ch.name, "err", err)
		return false
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, d.notifyURL, bytes.NewReader(body))
	if err != nil {
		return false
	}
	req.Header = h
	d.ch.attempts.Add(1)
	resp, err := s.cfg.Client.Do(req)
	if err != nil {
		if ctx.Err() == nil {
			d.ch.failed.Add(1)
			s.cfg.Log.Debug("paysim: callback failed", "channel", d.ch.name, "merchant_txn_id", d.merchantID,
				"attempt", d.attempt+1, "err", err)
		}
		return false
	}
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<10))
	io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10)) // let the connection be reused
	resp.Body.Close()
	if !acked(d.ch.cfg.Scheme, resp.StatusCode, b) {
		d.ch.failed.Add(1)
		s.cfg.Log.Debug("paysim: callback not acknowledged", "channel", d.ch.name, "merchant_txn_id", d.merchantID,
			"attempt", d.attempt+1, "status", resp.StatusCode, "body", string(b))
		return false
	}
	return true
}

// retry schedules the next attempt of d after the back-off, or abandons it
// after MaxAttempts.
func (s *Server) retry(d *delivery) {
	d.attempt++
	if s.cfg.MaxAttempts > 0 && d.attempt >= s.cfg.MaxAttempts {
		d.ch.gaveUp.Add(1)
		d.ch.pending.Add(-1)
		s.cfg.Log.Warn("paysim: callback abandoned", "channel", d.ch.name, "merchant_txn_id", d.merchantID,
			"notice_id", d.noticeID, "attempts", d.attempt)
		return
	}
	d.due = time.Now().Add(s.cfg.Backoff[min(d.attempt, len(s.cfg.Backoff))-1])
	s.qmu.Lock()
	s.queue.push(d)
	s.qmu.Unlock()
	s.poke()
}

// EncodeCallback signs notice n as channel cc sends it and returns the
// request's headers and body. Tests use it to make real callbacks.
//
// WeChatPay: a JSON notice (WXEvent) whose resource is sealed under the
// APIv3 key, signed by the platform key (Wechatpay-Timestamp, -Nonce,
// -Serial, -Signature); see encodeWeChat. The merchant acknowledges with
// 200 or 204.
//
// Alipay: a form-encoded trade_status_sync notice signed RSA2 by Alipay's
// key; see encodeAlipay. The merchant answers 200 with the body "success".
func EncodeCallback(cc ChannelConfig, n payment.Notice) (http.Header, []byte, error) {
	return encodeCallback(cc, n, nil)
}

// encodeCallback is EncodeCallback with what a WeChat Pay prepay said
// (nil: not known).
func encodeCallback(cc ChannelConfig, n payment.Notice, info *wxTxn) (http.Header, []byte, error) {
	switch cc.Scheme {
	case WeChatPay:
		return encodeWeChat(cc.WeChat, n, info)
	case Alipay:
		return encodeAlipay(cc.Alipay, n)
	}
	return nil, nil, fmt.Errorf("paysim: unknown scheme %q", cc.Scheme)
}

// acked reports whether a callback answer means success under scheme.
func acked(scheme Scheme, status int, body []byte) bool {
	switch scheme {
	case WeChatPay:
		return status == http.StatusOK || status == http.StatusNoContent
	case Alipay:
		return status == http.StatusOK && string(body) == "success"
	}
	return false
}
