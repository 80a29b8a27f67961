package paysim

import (
	"context"
	"fmt"
	mrand "math/rand/v2"
	"net/http"
	"time"

	"github.com/surge-platform/surge/internal/payment"
	"github.com/surge-platform/surge/internal/platform/errkind"
	"github.com/surge-platform/surge/internal/platform/web"
)

// ConsoleRefund is a refund made in the provider's merchant console: by an
// operator at the provider's site, not through the merchant API, so the
// merchant's systems (surge) did not ask for it and learn of it only from
// the provider (its refund callback, a query, the bill).
type ConsoleRefund struct {
	Channel         string        `json:"channel"`
	RefundID        int64         `json:"refund_id,string"`  // the merchant's number of it (out_refund_no); always >= 2^62 (see ConsoleRefundID)
	ChannelRefundID string        `json:"channel_refund_id"` // the provider's id of it, as its notices and bill name it
	PaymentID       int64         `json:"payment_id,string"`
	TxnID           string        `json:"txn_id"`
	Amount          int64         `json:"amount"`   // this refund, fen
	Refunded        int64         `json:"refunded"` // of the transaction, all refunds so far
	State           payment.State `json:"state"`    // of the transaction after the refund
	RefundedAt      string        `json:"refunded_at"`
}

// ConsoleRefundID is the least id the console gives its refunds. surge's
// ids stay below it until 2059 (41 bits of milliseconds from 2024 under a
// 63-bit id), so a console refund is never taken for one of surge's.
const ConsoleRefundID = int64(1) << 62

type consoleReq struct {
	PaymentID int64  `json:"payment_id,string"`
	Amount    int64  `json:"amount"`
	Channel   string `json:"channel"`
	Reason    string `json:"reason"`
}

// ConsoleRefund refunds amount fen of payment paymentID (the merchant's
// transaction id) at channel without the merchant asking, as an operator
// does in a provider's merchant console; amount 0 refunds all that is
// left. channel "" is the one channel that has the payment. The refund
// appears in queries, callbacks (a refund notice is sent) and the
// bill like any other, under a refund id of the console's. Errors:
// ErrUnknownChannel, payment.ErrUnknownTxn, ErrAmbiguous (channel "" and
// more than one has the payment), ErrNotPaid, ErrRefundExceeds,
// ErrTooManyRefunds, ErrOutage, errkind.ErrInvalid.
func (s *Server) ConsoleRefund(channel string, paymentID, amount int64, reason string) (ConsoleRefund, error) {
	switch {
	case paymentID <= 0:
		return ConsoleRefund{}, errkind.ErrInvalid.With("payment_id must be a positive decimal string")
	case amount < 0:
		return ConsoleRefund{}, errkind.ErrInvalid.With("amount must be positive, or 0 for all that is left")
	case len(reason) > MaxSubject:
		return ConsoleRefund{}, errkind.ErrInvalid.With("reason is over %d bytes", MaxSubject)
	}
	ch, err := s.channelOf(channel, paymentID)
	if err != nil {
		return ConsoleRefund{}, err
	}
	if ch.faults.Load().Outage {
		return ConsoleRefund{}, ErrOutage
	}
	if reason == "" {
		reason = "merchant console"
	}
	req := refundReq{MerchantTxnID: paymentID, Amount: amount, Reason: reason, console: true}
	ch.mu.Lock()
	for req.RefundID == 0 || ch.refunds[req.RefundID] != nil {
		req.RefundID = ConsoleRefundID | mrand.Int64N(ConsoleRefundID)
	}
	var nothingLeft error
	if t := ch.byMerchant[paymentID]; t != nil && req.Amount == 0 {
		switch req.Amount = t.amount - t.refunded; {
		case t.state != payment.Paid && t.state != payment.Refunded:
			nothingLeft = ErrNotPaid.With("payment_id %d is %s", paymentID, t.state)
		case req.Amount == 0:
			nothingLeft = ErrRefundExceeds.With("payment_id %d is refunded in full already", paymentID)
		}
	}
	ch.mu.Unlock()
	if nothingLeft != nil {
		return ConsoleRefund{}, nothingLeft
	}
	rf, err := s.refundTxn(ch, req)
	if err != nil {
		return ConsoleRefund{}, err
	}
	ch.mu.Lock()
	defer ch.mu.Unlock()
	return ConsoleRefund{Channel: ch.name, RefundID: rf.id, ChannelRefundID: rf.channelID, PaymentID: rf.txn.merchantID, TxnID: rf.txn.id, Amount: rf.amount,
		Refunded: rf.txn.refunded, State: rf.txn.state, RefundedAt: rf.at.Format(time.RFC3339)}, nil
}

// channelOf is channel, or the one channel that has paymentID when channel is "".
func (s *Server) channelOf(name string, paymentID int64) (*channel, error) {
	if name != "" {
		ch := s.chans[name]
		if ch == nil {
			return nil, ErrUnknownChannel.With("paysim has no channel %q", name)
		}
		return ch, nil
	}
	var found *channel
	for _, ch := range s.order {
		ch.mu.Lock()
		t := ch.byMerchant[paymentID]
		ch.mu.Unlock()
		if t == nil {
			continue
		}
		if found != nil {
			return nil, ErrAmbiguous.With("payment_id %d is at %s and %s", paymentID, found.name, ch.name)
		}
		found = ch
	}
	if found == nil {
		return nil, payment.ErrUnknownTxn.With("no channel has payment_id %d", paymentID)
	}
	return found, nil
}

func (s *Server) consoleRefundHTTP(w http.ResponseWriter, r *http.Request) {
	if err := s.controlAuth(r); err != nil {
		fail(w, err)
		return
	}
	var req consoleReq
	if err := web.Decode(w, r, &req); err != nil {
		fail(w, err)
		return
	}
	v, err := s.ConsoleRefund(req.Channel, req.PaymentID, req.Amount, req.Reason)
	if err != nil {
		fail(w, err)
		return
	}
	web.JSON(w, http.StatusOK, v)
}

// Refund refunds amount fen of payment paymentID in the merchant console
// (POST /paysim/v1/console/refunds; see Server.ConsoleRefund): channel ""
// finds the payment's channel, amount 0 refunds all that is left. Errors
// are those of Server.ConsoleRefund as the HTTP client sees them:
// payment.ErrUnknownTxn, payment.ErrChannelDown (outage, transport), and
// ErrRejected for the other refusals.
func (c Control) Refund(ctx context.Context, channel string, paymentID, amount int64) (ConsoleRefund, error) {
	var v ConsoleRefund
	err := c.call(ctx, fmt.Sprintf("paysim console refund of payment %d", paymentID), http.MethodPost, "/paysim/v1/console/refunds",
		consoleReq{PaymentID: paymentID, Amount: amount, Channel: channel}, &v)
	return v, err
}
