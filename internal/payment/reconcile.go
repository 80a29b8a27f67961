package payment

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"strconv"
	"text/tabwriter"
	"time"
)

// Kinds of reconciliation findings.
const (
	FindPaidNotInLedger     = "paid_at_channel_not_in_ledger"     // fixed: applied as the channel's word would be
	FindRefundedNotInLedger = "refunded_at_channel_not_in_ledger" // fixed: recorded; never pays an order, never unpays one
	FindNoChannelRecord     = "paid_without_channel_record"       // alarm only, never fixed automatically
	FindAmountMismatch      = "amount_mismatch"                   // alarm
	FindDuplicate           = "duplicate_payment"                 // refunded unless already refunded
	FindUnknownPayment      = "unknown_payment"                   // the channel lists a payment we never created: alarm
)

// Finding is one discrepancy between a channel's statement and our ledger,
// per payment. The channel's figures are the statement's lines of that
// payment (its capture, if that day's, and the refunds listed); the
// ledger's are as found, before any fix. Net = captured - refunded.
type Finding struct {
	Kind            string `json:"kind"`
	PaymentID       int64  `json:"payment_id,string"`
	OrderID         int64  `json:"order_id,string,omitempty"`
	ChannelAmount   int64  `json:"channel_amount"`
	ChannelRefunded int64  `json:"channel_refunded"`
	ChannelNet      int64  `json:"channel_net"`
	LedgerAmount    int64  `json:"ledger_amount"`
	LedgerRefunded  int64  `json:"ledger_refunded"`
	LedgerNet       int64  `json:"ledger_net"` // what the ledger keeps of it: 0 unless captured
	Action          string `json:"action"`
}

// Report is the result of one reconciliation.
type Report struct {
	Channel        string    `json:"channel"`
	Date           string    `json:"date"`
	StatementLines int       `json:"statement_lines"`
	LedgerPayments int       `json:"ledger_payments"`
	Findings       []Finding `json:"findings"`
}

// moves are one payment's lines in a statement.
type moves struct {
	capture *Line  // nil when captured on another day
	refunds []Line // in the order listed
}

func (m *moves) refunded() (n int64) {
	for _, l := range m.refunds {
		n += l.Amount
	}
	return n
}

// settledPayments reads the payments of channel $1 settled in [$2, $3).
// paid_at > 0 is the condition of the payments_settled index, written as
// it is there: a partial index serves only a query that names its
// condition.
const settledPayments = `SELECT ` + paymentCols + ` FROM payments WHERE channel = $1 AND paid_at >= $2 AND paid_at < $3 AND paid_at > 0`

// Reconcile compares channel's statement of day (UTC) with the ledger,
// payment by payment, and reports every discrepancy, fixing only what the
// channel's net says:
//   - a payment the statement has captured (or refunds of which it lists)
//     where the ledger lacks the capture or a refund made outside surge:
//     the channel is asked for the payment's figures now (captured minus
//     refunded, later refunds included) and they are applied as a callback
//     would be: a payment paid and not refunded pays its order (or is
//     refunded when the order is cancelled or paid by another payment); one
//     refunded in full or in part never pays an order, and one that paid
//     its order and was refunded outside surge since raises an anomaly;
//   - a duplicate payment not yet refunded is refunded.
//
// A payment we have as captured that the channel does not list, a
// differing amount and a payment we never created are only reported.
// Refunds the statement lists under surge's own refund ids are surge's;
// any other is a refund made outside surge.
func (s *Service) Reconcile(ctx context.Context, channel string, day time.Time) (*Report, error) {
	ch := s.channels[channel]
	if ch == nil {
		return nil, ErrUnknownChannel.With("no payment channel %q", channel)
	}
	day = time.Date(day.Year(), day.Month(), day.Day(), 0, 0, 0, 0, time.UTC)
	var lines []Line
	if err := s.call(ctx, channel, func() (err error) { lines, err = ch.Statement(ctx, day); return err }); err != nil {
		return nil, fmt.Errorf("statement of %s for %s: %w", channel, day.Format(time.DateOnly), err)
	}
	rep := &Report{Channel: channel, Date: day.Format(time.DateOnly), StatementLines: len(lines), Findings: []Finding{}}
	byPayment := map[int64]*moves{}
	for _, l := range lines {
		m := byPayment[l.PaymentID]
		if m == nil {
			m = &moves{}
			byPayment[l.PaymentID] = m
		}
		if l.Kind == "refund" {
			m.refunds = append(m.refunds, l)
		} else {
			m.capture = &l
		}
	}
	// Our side: every payment of this channel captured that day.
	ledger := map[int64]*Payment{}
	for _, d := range s.db.Shards() {
		rows, err := d.R.QueryContext(ctx, settledPayments, channel, day.UnixMilli(), day.Add(24*time.Hour).UnixMilli())
		if err != nil {
			return nil, fmt.Errorf("ledger of %s: %w", d.Name, err)
		}
		for rows.Next() {
			p, err := scanPayment(rows)
			if err != nil {
				rows.Close()
				return nil, err
			}
			ledger[p.ID] = p
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return nil, fmt.Errorf("ledger of %s: %w", d.Name, err)
		}
	}
	rep.LedgerPayments = len(ledger)

	for _, x := range slices.Sorted(maps.Keys(byPayment)) {
		f, err := s.reconcileOne(ctx, ch, x, byPayment[x])
		if err != nil {
			return nil, err
		}
		if f != nil {
			rep.Findings = append(rep.Findings, *f)
		}
	}
	for _, x := range slices.Sorted(maps.Keys(ledger)) {
		if m := byPayment[x]; m == nil || m.capture == nil {
			p := ledger[x]
			rep.Findings = append(rep.Findings, Finding{Kind: FindNoChannelRecord, PaymentID: p.ID, OrderID: p.OrderID, LedgerAmount: p.Amount,
				LedgerRefunded: p.Refunded, LedgerNet: p.Kept, Action: "alarm: we have it captured, the channel does not; never fixed automatically"})
		}
	}
	return rep, nil
}

// reconcileOne reconciles payment x with its lines m of the statement of
// channel ch, and returns the finding, if any.
func (s *Service) reconcileOne(ctx context.Context, ch Channel, x int64, m *moves) (*Finding, error) {
	f := Finding{PaymentID: x, ChannelRefunded: m.refunded()}
	if m.capture != nil {
		f.ChannelAmount = m.capture.Amount
	}
	f.ChannelNet = f.ChannelAmount - f.ChannelRefunded
	p, err := s.get(ctx, x)
	if errors.Is(err, ErrNotFound) {
		f.Kind, f.Action = FindUnknownPayment, "alarm: the channel lists a payment we never created"
		return &f, nil
	}
	if err != nil {
		return nil, err
	}
	f.OrderID, f.LedgerAmount, f.LedgerRefunded, f.LedgerNet = p.OrderID, p.Amount, p.Refunded, p.Kept
	if m.capture != nil && m.capture.Amount != p.Amount {
		f.Kind, f.Action = FindAmountMismatch, "alarm: amounts differ, check with the channel"
		return &f, nil
	}
	ourRefunds, ourState, err := s.refundsOf(ctx, p.ID)
	if err != nil {
		return nil, err
	}
	var outside, ours bool
	for _, l := range m.refunds {
		if ourRefunds[l.RefundID] {
			ours = true
			continue
		}
		outside = true
		if l.RefundID > 0 { // kept one at a time, under the number its notice gives it (see refundnote.go)
			if err := s.channelRefund(ctx, p.ID, strconv.FormatInt(l.RefundID, 10), l.Amount, l.At); err != nil {
				return nil, err
			}
		}
	}
	o, err := s.orders.Peek(ctx, p.OrderID)
	if err != nil {
		return nil, err
	}
	dup := o.PaymentID != 0 && o.PaymentID != p.ID
	missing := m.capture != nil && !captured(p.State)
	if missing || outside {
		// The channel's figures now decide the fix (a refund made since
		// the statement's day counts too).
		var st Status
		if err := s.call(ctx, ch.Name(), func() (err error) { st, err = ch.Query(ctx, p.ID); return err }); err != nil {
			return nil, fmt.Errorf("query %s payment %d: %w", ch.Name(), p.ID, err)
		}
		// A query may not say how much is refunded (WeChat Pay), or not a
		// refund in part (Alipay): what surge knows one refund at a time,
		// the statement's included, counts as much.
		known, err := s.knownRefunded(ctx, p.ID)
		if err != nil {
			return nil, err
		}
		if known > st.Refunded && (st.State == Paid || st.State == Refunded) {
			st.State, st.Refunded = Refunded, min(known, p.Amount)
		}
		if !missing && st.Refunded <= p.Refunded {
			return nil, nil // the ledger knows of the refunds made outside surge
		}
		switch {
		case st.Refunded > 0:
			f.Kind = FindRefundedNotInLedger
		case dup:
			f.Kind = FindDuplicate
		default:
			f.Kind = FindPaidNotInLedger
		}
		if st.State != Paid && st.State != Refunded {
			f.Action = fmt.Sprintf("not fixed: the channel's query says %s", st.State)
			return &f, nil
		}
		if err := s.observe(ctx, p, st); err != nil {
			return nil, err
		}
		after, err := s.get(ctx, p.ID)
		if err != nil {
			return nil, err
		}
		f.Action = fixed(p, after, st)
		return &f, nil
	}
	if dup && m.capture != nil && !ours && (p.State == stPaid || p.State == stRefund) && ourState != "done" {
		f.Kind = FindDuplicate
		if p.State == stPaid {
			if err := s.settle(ctx, p.ID); err != nil {
				return nil, err
			}
		} else if err := s.sendPaymentRefund(ctx, p.ID); err != nil {
			return nil, err
		}
		f.Action = "refund sent"
		return &f, nil
	}
	return nil, nil
}

// refundsOf returns the ids of surge's refunds of paymentID, and the state
// of its refund of all the payment held ("" when it has none).
func (s *Service) refundsOf(ctx context.Context, paymentID int64) (map[int64]bool, string, error) {
	rows, err := s.db.ForID(paymentID).W.QueryContext(ctx, `SELECT id, state, kind FROM refunds WHERE payment_id = $1`, paymentID)
	if err != nil {
		return nil, "", fmt.Errorf("refunds of payment %d: %w", paymentID, err)
	}
	defer rows.Close()
	ids := map[int64]bool{}
	whole := ""
	for rows.Next() {
		var rid int64
		var state, kind string
		if err := rows.Scan(&rid, &state, &kind); err != nil {
			return nil, "", err
		}
		ids[rid] = true
		if kind == refundPayment {
			whole = state
		}
	}
	return ids, whole, rows.Err()
}

// fixed says what applying the channel's figures st did to payment
// before (as it was), now after.
func fixed(before, after *Payment, st Status) string {
	switch {
	case after.State == stSettled && before.State != stSettled && st.Refunded == 0:
		return "fixed: order paid"
	case after.State == stSettled:
		return fmt.Sprintf("fixed: recorded %d of %d fen refunded outside surge; the order stays paid (anomaly %s: the operator decides)",
			st.Refunded, st.Amount, anomalyPaidOutside)
	case after.State == stReversed && st.Refunded < st.Amount:
		return fmt.Sprintf("fixed: recorded %d of %d fen refunded outside surge; the order not paid by it, the %d fen left refunded",
			st.Refunded, st.Amount, st.Amount-st.Refunded)
	case after.State == stReversed:
		return fmt.Sprintf("fixed: recorded %d fen captured and refunded outside surge (net 0); the order not paid by it", st.Amount)
	case after.State == stRefund:
		return "fixed: refunded (order cancelled or paid by another payment)"
	}
	return "fixed: " + after.State
}

// Print writes the report as a table.
func (r *Report) Print(w io.Writer) {
	fmt.Fprintf(w, "reconciliation %s %s: %d statement lines, %d ledger payments, %d findings\n",
		r.Channel, r.Date, r.StatementLines, r.LedgerPayments, len(r.Findings))
	if len(r.Findings) == 0 {
		return
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "KIND\tPAYMENT\tORDER\tCHANNEL FEN (REFUNDED)\tLEDGER FEN (REFUNDED)\tNET CHANNEL/LEDGER\tACTION")
	for _, f := range r.Findings {
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d (%d)\t%d (%d)\t%d/%d\t%s\n", f.Kind, f.PaymentID, f.OrderID, f.ChannelAmount, f.ChannelRefunded,
			f.LedgerAmount, f.LedgerRefunded, f.ChannelNet, f.LedgerNet, f.Action)
	}
	tw.Flush()
}
