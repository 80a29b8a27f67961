package payment

import (
	"context"
	"fmt"
	"io"
	"slices"
	"text/tabwriter"
	"time"
)

// Kinds of reconciliation findings.
const (
	FindPaidNotInLedger = "paid_at_channel_not_in_ledger" // fixed: applied as a callback would
	FindNoChannelRecord = "paid_without_channel_record"   // alarm only, never fixed automatically
	FindAmountMismatch  = "amount_mismatch"               // alarm
	FindDuplicate       = "duplicate_payment"             // refunded unless already refunded
	FindUnknownPayment  = "unknown_payment"               // the channel lists a payment we never created: alarm
)

// Finding is one discrepancy between a channel's statement and our ledger.
type Finding struct {
	Kind          string `json:"kind"`
	PaymentID     int64  `json:"payment_id,string"`
	OrderID       int64  `json:"order_id,string,omitempty"`
	ChannelAmount int64  `json:"channel_amount"`
	LedgerAmount  int64  `json:"ledger_amount"`
	Action        string `json:"action"`
}

// Report is the result of one reconciliation.
type Report struct {
	Channel        string    `json:"channel"`
	Date           string    `json:"date"`
	StatementLines int       `json:"statement_lines"`
	LedgerPayments int       `json:"ledger_payments"`
	Findings       []Finding `json:"findings"`
}

// Reconcile compares channel's statement of day (UTC) with the ledger and
// reports every discrepancy, fixing what is safe to fix: a payment the
// channel has as paid but we do not is applied (paying its order, or
// refunding it when the order is cancelled or paid by another payment); a
// duplicate payment not yet refunded is refunded. A payment we have as paid
// that the channel does not list, and a differing amount, are only reported.
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
	paidAtChannel := map[int64]Line{}
	refundedAtChannel := map[int64]bool{}
	for _, l := range lines {
		if l.Kind == "refund" {
			refundedAtChannel[l.PaymentID] = true
		} else {
			paidAtChannel[l.PaymentID] = l
		}
	}
	// Our side: every payment of this channel paid that day.
	ledger := map[int64]*Payment{}
	for _, d := range s.db.Shards() {
		rows, err := d.R.QueryContext(ctx, `SELECT `+paymentCols+` FROM payments WHERE channel = $1 AND paid_at >= $2 AND paid_at < $3`,
			channel, day.UnixMilli(), day.Add(24*time.Hour).UnixMilli())
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
	}
	rep.LedgerPayments = len(ledger)
	add := func(f Finding) { rep.Findings = append(rep.Findings, f) }

	ids := make([]int64, 0, len(paidAtChannel))
	for x := range paidAtChannel {
		ids = append(ids, x)
	}
	slices.Sort(ids)
	for _, x := range ids {
		l := paidAtChannel[x]
		p, err := s.get(ctx, x)
		if err != nil {
			add(Finding{Kind: FindUnknownPayment, PaymentID: x, ChannelAmount: l.Amount, Action: "alarm: the channel lists a payment we never created"})
			continue
		}
		f := Finding{PaymentID: p.ID, OrderID: p.OrderID, ChannelAmount: l.Amount, LedgerAmount: p.Amount}
		if l.Amount != p.Amount {
			f.Kind, f.Action = FindAmountMismatch, "alarm: amounts differ, check with the channel"
			add(f)
			continue
		}
		o, err := s.orders.Peek(ctx, p.OrderID)
		if err != nil {
			return nil, err
		}
		dup := o.PaymentID != 0 && o.PaymentID != p.ID
		switch {
		case p.State == stCreated || p.State == stPending || p.State == stClosed || p.State == stFailed:
			f.Kind = FindPaidNotInLedger
			if dup {
				f.Kind = FindDuplicate
			}
			if err := s.received(ctx, Status{PaymentID: p.ID, ChannelTxnID: l.ChannelTxnID, State: Paid, Amount: l.Amount, PaidAt: l.At}); err != nil {
				return nil, err
			}
			after, _ := s.get(ctx, p.ID)
			f.Action = "fixed: order paid"
			if after != nil && after.State == stRefund {
				f.Action = "fixed: refunded (order cancelled or paid by another payment)"
			}
			add(f)
		case dup && !refundedAtChannel[p.ID]:
			f.Kind = FindDuplicate
			if p.State == stPaid {
				if err := s.settle(ctx, p.ID); err != nil {
					return nil, err
				}
			} else if err := s.sendRefund(ctx, p.ID); err != nil {
				return nil, err
			}
			f.Action = "refund sent"
			add(f)
		}
	}
	lids := make([]int64, 0, len(ledger))
	for x := range ledger {
		lids = append(lids, x)
	}
	slices.Sort(lids)
	for _, x := range lids {
		if _, ok := paidAtChannel[x]; !ok {
			p := ledger[x]
			add(Finding{Kind: FindNoChannelRecord, PaymentID: p.ID, OrderID: p.OrderID, LedgerAmount: p.Amount,
				Action: "alarm: we have it paid, the channel does not; never fixed automatically"})
		}
	}
	return rep, nil
}

// Print writes the report as a table.
func (r *Report) Print(w io.Writer) {
	fmt.Fprintf(w, "reconciliation %s %s: %d statement lines, %d ledger payments, %d findings\n",
		r.Channel, r.Date, r.StatementLines, r.LedgerPayments, len(r.Findings))
	if len(r.Findings) == 0 {
		return
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "KIND\tPAYMENT\tORDER\tCHANNEL FEN\tLEDGER FEN\tACTION")
	for _, f := range r.Findings {
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%d\t%s\n", f.Kind, f.PaymentID, f.OrderID, f.ChannelAmount, f.LedgerAmount, f.Action)
	}
	tw.Flush()
}
