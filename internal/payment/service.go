package payment

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/surge-platform/surge/internal/order"
	"github.com/surge-platform/surge/internal/platform/errkind"
	"github.com/surge-platform/surge/internal/platform/id"
	"github.com/surge-platform/surge/internal/platform/obs"
	"github.com/surge-platform/surge/internal/platform/sqldb"
	"github.com/surge-platform/surge/internal/platform/web"
)

var (
	ErrNotFound = errkind.New(errkind.NotFound, "payment_not_found", "no such payment")
	ErrReplay   = errkind.New(errkind.Unauthorized, "stale_callback", "callback timestamp outside the accepted window (replayed?)")
)

// Payment states in our ledger.
const (
	stCreated  = "created"  // row written, channel not yet asked
	stPending  = "pending"  // the channel has the transaction; waiting for the payer
	stPaid     = "paid"     // the channel says paid; not yet applied to the order
	stSettled  = "settled"  // applied: this payment paid its order
	stRefund   = "refund"   // paid but must go back (duplicate, or the order was cancelled)
	stReversed = "reversed" // captured, then refunded at the channel outside surge before it was applied: it pays nothing, what is left goes back
	stClosed   = "closed"   // closed unpaid
	stFailed   = "failed"   // the channel refused or never saw it
)

// Kinds of anomalies.
const (
	anomalyDup         = "duplicate_payment"
	anomalyCxl         = "paid_after_cancel"
	anomalyAmt         = "amount_mismatch"
	anomalyOutside     = "refunded_outside"            // refunded at the channel outside surge before surge applied it
	anomalyPaidOutside = "paid_order_refunded_outside" // the payment that paid its order, refunded at the channel outside surge
	anomalyRefused     = "refund_refused"              // the channel refused one of our refunds RefundAttempts times
	anomalyUnknown     = "refunded_amount_unknown"     // the channel says refunded, not how much, and surge knows of no refund
)

// captured reports whether a payment in ledger state st took the payer's
// money at its channel (whatever happened to it since).
func captured(st string) bool {
	return st == stPaid || st == stSettled || st == stRefund || st == stReversed
}

// Orders is what payments need of the order context.
type Orders interface {
	Payable(ctx context.Context, userID, orderID int64) (*order.Order, error)
	Peek(ctx context.Context, orderID int64) (*order.Order, error)
	MarkPaid(ctx context.Context, orderID, paymentID int64) (order.PaidResult, error)
	// PayTx and Paid do MarkPaid inside a transaction on the order's
	// database, which a payment shares with its order.
	PayTx(ctx context.Context, tx *sql.Tx, orderID, paymentID int64) (res order.PaidResult, held bool, err error)
	Paid(ctx context.Context, orderID int64, held bool)
	// PayMatched is PayTx's common case as one update of the order, picked
	// through the payment by the subquery match.
	// PaidMatched finishes it after the commit.
	PayMatched(ctx context.Context, tx *sql.Tx, paymentID int64, match string, args ...any) (m order.Matched, ok bool, err error)
	PaidMatched(ctx context.Context, m order.Matched)
	// RefundTx and Recorded record a refund of an order's lines inside a
	// transaction on the order's database, with the refund's ledger row;
	// RefundedTx and RefundDone tell the order the channel made it, in
	// the transaction that marks it done (see orderrefund.go).
	RefundTx(ctx context.Context, tx *sql.Tx, o *order.Order, rf order.Refund) (*order.RefundRecord, error)
	Recorded(ctx context.Context, r *order.RefundRecord)
	RefundedTx(ctx context.Context, tx *sql.Tx, orderID, refundID int64, last bool) error
	RefundDone(ctx context.Context, orderID int64)
}

// Config tunes the service. Zero values take the defaults.
type Config struct {
	NotifyBase   string        // public base URL the channels call back (…/pay/v1/notify/<channel>)
	QueryAfter   time.Duration // first active query of a pending payment; 0 = 10s
	ReplayWindow time.Duration // accepted callback age; 0 = 5m
	// RefundAttempts is how many times the channel may refuse one of our
	// refunds (unknown payment, over the amount ...) before it is given up
	// as a refund_refused anomaly; 0 = 6 (about 2.5 minutes of back-off).
	RefundAttempts int
}

// Service is the payments centre.
type Service struct {
	db       *sqldb.Cluster
	ids      *id.Generator
	orders   Orders
	stores   Stores // nil: refunds of orders are not served
	channels map[string]Channel
	Router   *Router
	log      *slog.Logger
	cfg      Config
	clock    atomic.Pointer[func() time.Time] // nil: time.Now (tests set another, even while jobs run)

	// Counters of callbacks, for operators and tests (see CallbackCounts).
	Callbacks, Refused, Forged, Replayed, Oversized, UnknownChannel atomic.Int64
	// quick counts the notices applied by applyNotice (tests).
	quick atomic.Int64

	soon      sync.Map      // order id -> struct{}: a RefreshSoon under way
	soonSlots chan struct{} // RefreshSoon's concurrency
}

// CallbackCounts are the callback counters of one node: every callback
// that reached Callback, and those refused (not acknowledged), all of them
// and by reason. A callback refused for another reason (its payment is
// not ours, the database failed) counts only in Refused.
type CallbackCounts struct {
	Callbacks      int64 `json:"callbacks"`
	Refused        int64 `json:"refused_callbacks"`
	Forged         int64 `json:"forged_callbacks"`          // bad signature, malformed, or naming another channel's payment
	Replayed       int64 `json:"replayed_callbacks"`        // signed outside the replay window
	Oversized      int64 `json:"oversized_callbacks"`       // body over MaxCallbackBody
	UnknownChannel int64 `json:"unknown_channel_callbacks"` // posted for a channel surge does not have
}

// CallbackCounts returns the callback counters.
func (s *Service) CallbackCounts() CallbackCounts {
	return CallbackCounts{Callbacks: s.Callbacks.Load(), Refused: s.Refused.Load(), Forged: s.Forged.Load(), Replayed: s.Replayed.Load(),
		Oversized: s.Oversized.Load(), UnknownChannel: s.UnknownChannel.Load()}
}

// MaxCallbackBody is the largest callback body Callback reads.
const MaxCallbackBody = 64 << 10

// New returns the payments centre over channels (routed with weights: 1
// for a channel weights does not name).
// stores decides between a customer's cancel and the store's accept (nil:
// no refunds of orders).
func New(db *sqldb.Cluster, ids *id.Generator, orders Orders, stores Stores, channels []Channel, weights map[string]int, log *slog.Logger, cfg Config) *Service {
	if cfg.QueryAfter <= 0 {
		cfg.QueryAfter = 10 * time.Second
	}
	if cfg.ReplayWindow <= 0 {
		cfg.ReplayWindow = 5 * time.Minute
	}
	if cfg.RefundAttempts <= 0 {
		cfg.RefundAttempts = 6
	}
	s := &Service{db: db, ids: ids, orders: orders, stores: stores, channels: map[string]Channel{}, log: log, cfg: cfg,
		soonSlots: make(chan struct{}, 16)}
	w := map[string]int{}
	for _, c := range channels {
		s.channels[c.Name()] = c
		w[c.Name()] = max(weights[c.Name()], 1)
	}
	s.Router = NewRouter(w)
	return s
}

// Payment is one row of the ledger.
type Payment struct {
	ID         int64     `json:"payment_id,string"`
	OrderID    int64     `json:"order_id,string"`
	UserID     int64     `json:"user_id,string"`
	Channel    string    `json:"channel"`
	Amount     int64     `json:"amount"`
	State      string    `json:"state"`
	ChannelTxn string    `json:"channel_txn,omitempty"`
	PayURL     string    `json:"pay_url,omitempty"`
	Refunded   int64     `json:"refunded"` // fen refunded at the channel as far as surge knows: by surge, or outside it
	Kept       int64     `json:"kept"`     // fen this payment holds at its channel: amount - refunded once captured, else 0
	CreatedAt  time.Time `json:"created_at"`
	PaidAt     time.Time `json:"paid_at,omitzero"`
	queries    int
	trace      string // the traceparent of the request that started it
}

// Started is the answer to Pay.
type Started struct {
	PaymentID int64  `json:"payment_id,string"`
	Channel   string `json:"channel"`
	PayURL    string `json:"pay_url,omitempty"` // where the payer pays (H5, a QR code); "" for JSAPI
	// Params are what the client passes on to pay in the app (WeChat
	// JSAPI: wx.requestPayment's appId, timeStamp, nonceStr, package,
	// signType, paySign).
	Params map[string]string `json:"params,omitempty"`
}

// PayRequest says where and how to pay.
type PayRequest struct {
	Channel string // "" = routed
	// OpenID is the payer's openid in the merchant's WeChat app (a
	// mini-program): WeChat Pay prepays JSAPI for it, and Started.Params
	// is what the mini-program passes to wx.requestPayment.
	OpenID string
}

// call runs one channel call, timing it for the router. Only the channel's
// availability counts against it: not our bad input, and not a call cut
// short by our own deadline or a caller that went away.
func (s *Service) call(ctx context.Context, name string, f func() error) error {
	start := time.Now()
	err := f()
	if ctx.Err() != nil {
		return err
	}
	var kerr *errkind.Error
	if err == nil || errors.Is(err, ErrChannelDown) || errors.Is(err, context.DeadlineExceeded) || !errors.As(err, &kerr) {
		s.Router.Record(name, err, time.Since(start))
	}
	return err
}

// Pay starts a payment of userID's unpaid order at channel ("" = routed).
// A cancelled, expired or paid order is refused before any channel is
// called (order.ErrNotPayable). When a routed channel fails, the next one is
// tried; a requested one that is down gives ErrChannelDown.
func (s *Service) Pay(ctx context.Context, userID, orderID int64, req PayRequest) (Started, error) {
	channel := req.Channel
	if req.OpenID != "" && channel == "" { // a channel that has no use for it would pay by another way
		return Started{}, errkind.ErrInvalid.With("an openid needs the channel it is for")
	}
	o, err := s.orders.Payable(ctx, userID, orderID)
	if err != nil {
		return Started{}, err
	}
	var tried []string
	for {
		name, err := s.Router.Pick(channel, tried...)
		if err != nil {
			if len(tried) > 0 && errors.Is(err, ErrNoChannel) {
				return Started{}, ErrNoChannel.With("every payment channel failed: %v", tried)
			}
			return Started{}, err
		}
		tried = append(tried, name)
		st, err := s.start(ctx, o, s.channels[name], req.OpenID)
		if err == nil || channel != "" || !errors.Is(err, ErrChannelDown) {
			return st, err
		}
	}
}

func (s *Service) start(ctx context.Context, o *order.Order, ch Channel, openID string) (Started, error) {
	now := s.now()
	pid, err := s.ids.Next(id.Gene(o.ID))
	if err != nil {
		return Started{}, err
	}
	p := Payment{ID: pid, OrderID: o.ID, UserID: o.UserID, Channel: ch.Name(), Amount: o.Payable,
		State: stCreated, CreatedAt: now}
	d := s.db.ForID(p.ID)
	if _, err := d.W.ExecContext(ctx, `INSERT INTO payments (id, order_id, user_id, channel, amount, state, created_at, updated_at, query_at, trace)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $7, $8, $9)`, p.ID, p.OrderID, p.UserID, p.Channel, p.Amount, p.State, now.UnixMilli(),
		now.Add(s.cfg.QueryAfter).UnixMilli(), obs.Traceparent(ctx)); err != nil {
		return Started{}, fmt.Errorf("insert payment: %w", err)
	}
	var c Created
	err = s.call(ctx, ch.Name(), func() (err error) {
		c, err = ch.Create(ctx, Txn{PaymentID: p.ID, OrderID: o.ID, Amount: p.Amount,
			Subject: "order " + strconv.FormatInt(o.ID, 10), NotifyURL: s.cfg.NotifyBase + "/pay/v1/notify/" + ch.Name(),
			PayerIP: payerIP(ctx), OpenID: openID, Expires: o.ExpiresAt})
		return err
	})
	if err != nil {
		// Not marked failed: the channel may have it after all; the active
		// query finds out and closes or settles it.
		return Started{}, fmt.Errorf("create payment at %s: %w", ch.Name(), err)
	}
	n, err := sqldb.Exec(ctx, d, `UPDATE payments SET state = $1, channel_txn = $2, pay_url = $3, updated_at = $4
		WHERE id = $5 AND state = $6`, stPending, c.ChannelTxnID, c.PayURL, s.now().UnixMilli(), p.ID, stCreated)
	if err != nil {
		return Started{}, fmt.Errorf("update payment %d: %w", p.ID, err)
	}
	if n == 0 { // moved while the channel made it: the order was cancelled and the payment closed before the channel had it
		if cerr := s.call(ctx, ch.Name(), func() error { return ch.Close(ctx, p.ID) }); cerr != nil {
			s.log.Warn("close payment of a cancelled order", "payment_id", p.ID, "err", cerr)
		}
		return Started{}, order.ErrNotPayable.With("order %d was cancelled while its payment was being made", o.ID)
	}
	return Started{PaymentID: p.ID, Channel: ch.Name(), PayURL: c.PayURL, Params: c.Params}, nil
}

// payerIP is the address of the client of the request in ctx, if any.
func payerIP(ctx context.Context) string {
	if in := web.InfoOf(ctx); in != nil && in.IP.IsValid() {
		return in.IP.String()
	}
	return ""
}

// Callback takes a channel's callback (POST /pay/v1/notify/{channel}): it reads (at most MaxCallbackBody
// bytes), verifies and parses it, refuses stale ones, and applies what it
// says (idempotently: a callback repeated any number of times changes
// state once). It returns the answer the channel expects; an error means
// "do not acknowledge" (4xx for a forged, stale or oversized callback or
// an unknown channel). Every callback is counted, and every refusal (see
// CallbackCounts).
func (s *Service) Callback(ctx context.Context, channel string, h http.Header, body io.Reader) (string, []byte, error) {
	s.Callbacks.Add(1)
	ct, ack, err := s.notify(ctx, channel, h, body)
	if err != nil {
		s.Refused.Add(1)
	}
	return ct, ack, err
}

func (s *Service) notify(ctx context.Context, channel string, h http.Header, body io.Reader) (string, []byte, error) {
	ch := s.channels[channel]
	if ch == nil {
		s.UnknownChannel.Add(1)
		return "", nil, ErrUnknownChannel.With("no payment channel %q", channel)
	}
	b, err := io.ReadAll(io.LimitReader(body, MaxCallbackBody+1))
	if err != nil {
		return "", nil, ErrBadCallback.With("reading the callback: %v", err)
	}
	if len(b) > MaxCallbackBody {
		s.Oversized.Add(1)
		return "", nil, errkind.ErrTooLarge.With("callback body over %d bytes", MaxCallbackBody)
	}
	n, err := ch.ParseCallback(h, b)
	if errors.Is(err, ErrReplay) { // signed, but outside the channel's own window
		s.Replayed.Add(1)
		return "", nil, err
	}
	if err != nil {
		s.Forged.Add(1)
		return "", nil, err
	}
	if age := s.now().Sub(n.Timestamp); age > s.cfg.ReplayWindow || age < -s.cfg.ReplayWindow {
		s.Replayed.Add(1)
		return "", nil, ErrReplay.With("callback signed at %s is outside the %v window", n.Timestamp.UTC().Format(time.RFC3339), s.cfg.ReplayWindow)
	}
	if n.State == Paid && n.Refunded == 0 && n.Refund == nil {
		done, err := s.applyNotice(ctx, channel, n.Status)
		if err != nil {
			return "", nil, err
		}
		if done {
			ct, ack := ch.Ack()
			return ct, ack, nil
		}
	}
	if n.State == Paid || n.State == Refunded {
		p, err := s.get(ctx, n.PaymentID)
		if err != nil {
			return "", nil, err
		}
		if p.Channel != channel {
			s.Forged.Add(1)
			return "", nil, ErrBadCallback.With("payment %d was made at %s, not %s", p.ID, p.Channel, channel)
		}
		st := n.Status
		if n.Refund != nil {
			if st, err = s.refundNoted(ctx, p, st, *n.Refund); err != nil {
				return "", nil, err
			}
		}
		if err := s.observe(ctx, p, st); err != nil {
			return "", nil, err
		}
	}
	ct, ack := ch.Ack()
	return ct, ack, nil
}

// received applies a channel's word on payment st.PaymentID (paid or
// refunded), read afresh.
func (s *Service) received(ctx context.Context, st Status) error {
	p, err := s.get(ctx, st.PaymentID)
	if err != nil {
		return err
	}
	return s.observe(ctx, p, st)
}

// observe applies what p's channel says of it now (a callback, a query, a
// reconciliation's query): a payment paid and not refunded is applied to
// its order; one the channel refunded, in full or in part, never pays an
// order (see refundedAt). Other states change nothing. Idempotent.
//
// A channel that says a payment is refunded but not how much (a WeChat Pay
// query: Refunded 0) is taken as refunded by what surge knows of it
// (knownRefunded); when surge knows of no refund yet, nothing changes
// until the refund's notice or the bill says how much.
func (s *Service) observe(ctx context.Context, p *Payment, st Status) error {
	if st.State != Paid && st.State != Refunded {
		return nil
	}
	if st.State == Refunded && st.Refunded == 0 {
		known, err := s.knownRefunded(ctx, p.ID)
		if err != nil {
			return err
		}
		if known == 0 { // pays nothing, and the operator knows, until a notice or the bill says how much
			if err := s.anomaly(ctx, Anomaly{Kind: anomalyUnknown, OrderID: p.OrderID, PaymentID: p.ID, Captured: p.Amount,
				Detail: fmt.Sprintf("the channel says payment %d (%d fen, order %d) is refunded, not how much, and surge knows of no refund of it: it pays nothing until the refund's notice or the bill says how much; check it in the merchant platform",
					p.ID, p.Amount, p.OrderID)}); err != nil {
				return err
			}
			// A notice recorded the refund meanwhile and found no anomaly
			// to drop: drop it now, and go on with what is known.
			if known, err = s.knownRefunded(ctx, p.ID); err != nil || known == 0 {
				return err
			}
			if err := s.dropAnomaly(ctx, anomalyUnknown, p.ID); err != nil {
				return err
			}
		}
		st.Refunded = min(known, p.Amount)
	}
	if st.Amount != p.Amount {
		return s.anomaly(ctx, Anomaly{Kind: anomalyAmt, OrderID: p.OrderID, PaymentID: p.ID,
			Detail: fmt.Sprintf("channel says %d fen, ledger %d fen", st.Amount, p.Amount)})
	}
	if st.State == Refunded || st.Refunded > 0 {
		return s.refundedAt(ctx, p, st)
	}
	return s.apply(ctx, p, st)
}

// apply applies a payment its channel says is paid and not refunded, with
// the payment as just read.
func (s *Service) apply(ctx context.Context, p *Payment, st Status) error {
	switch p.State {
	case stSettled, stRefund, stReversed:
		return nil // a repeated callback: already applied (or known refunded, which is newer news)
	case stPaid:
		return s.settleRead(ctx, p) // applied half-way (a crash, or a concurrent callback): finish
	}
	if id.Gene(p.ID) != id.Gene(p.OrderID) { // not made by Pay: no shared database to rely on
		return fmt.Errorf("payment %d and its order %d live on different shards", p.ID, p.OrderID)
	}
	// One transaction on the shard the payment shares with its order: the
	// order paid (with its event) and the payment settled. An order another
	// payment paid, or that was cancelled, leaves this one paid for settle
	// to refund.
	var res order.PaidResult
	var held bool // the order holds limited stock
	var err error
	for range 5 { // the order changed under the compare-and-set: read again
		err = sqldb.Tx(ctx, s.db.ForID(p.ID), func(tx *sql.Tx) error {
			var err error
			res, held, err = s.payTx(ctx, tx, p, st)
			return err
		})
		if !errors.Is(err, order.ErrChanged) {
			break
		}
	}
	switch {
	case errors.Is(err, errMoved):
		return s.settle(ctx, p.ID) // another callback moved the payment meanwhile: finish its way
	case err != nil:
		return err
	case res == order.PaidNow:
		s.orders.Paid(ctx, p.OrderID, held)
		return nil
	case res == order.PaidAlready:
		return nil
	}
	p.State = stPaid
	return s.settleRead(ctx, p) // refund it, with the anomaly
}

// errMoved: the payment's state changed since it was read.
var errMoved = errors.New("payment moved meanwhile")

// payTx is apply's transaction on the database the payment shares with its
// order: the order paid (with its event), and the payment settled, or left
// paid when the order was paid by another payment or cancelled (settle
// refunds it). held: the order holds limited stock (for order.Paid).
func (s *Service) payTx(ctx context.Context, tx *sql.Tx, p *Payment, st Status) (res order.PaidResult, held bool, err error) {
	if res, held, err = s.orders.PayTx(ctx, tx, p.OrderID, p.ID); err != nil {
		return 0, false, err
	}
	to := stPaid // for settle to refund
	if res == order.PaidNow || res == order.PaidAlready {
		to = stSettled
	}
	if err := s.markPaid(ctx, tx, p.ID, st, to, ""); err != nil {
		return 0, false, err
	}
	return res, held, nil
}

// markPaid moves payment paymentID, of which st says it is paid, from a
// state payTx moves from to state to, where cond (SQL, "" or " AND ...")
// holds too; errMoved when it matched nothing.
func (s *Service) markPaid(ctx context.Context, tx *sql.Tx, paymentID int64, st Status, to, cond string) error {
	paidAt := st.PaidAt
	if paidAt.IsZero() {
		paidAt = s.now()
	}
	r, err := tx.ExecContext(ctx, `UPDATE payments SET state = $1, paid_at = $2, updated_at = $3, channel_txn = CASE WHEN channel_txn = '' THEN $4 ELSE channel_txn END
		WHERE id = $5 AND state IN ($6, $7, $8, $9)`+cond, to, paidAt.UnixMilli(), s.now().UnixMilli(), st.ChannelTxnID, paymentID,
		stCreated, stPending, stClosed, stFailed)
	if err != nil {
		return fmt.Errorf("mark payment %d %s: %w", paymentID, to, err)
	}
	n, err := r.RowsAffected()
	if err != nil {
		return fmt.Errorf("mark payment %d %s: %w", paymentID, to, err)
	}
	if n != 1 {
		return errMoved // nothing of this transaction stays
	}
	return nil
}

// applyNotice is the common case of a notice that says a payment is paid:
// a payment of this channel, of this amount, not applied before, paying an
// order that waits for it. It applies it in three statements and no read
// (more when the order holds discounts, whose holds are used):
// the order's compare-and-set picks the order through the payment, only if
// the payment says what the notice says (order.PayMatched); the event; and
// the payment's compare-and-set. Anything else (the payment unknown,
// another channel's or another amount, applied or refunded before, its
// order paid by another payment, cancelled, or on another database) rolls
// back and reports false, having changed nothing: the caller then takes
// the full way (get, observe), which tells those apart.
func (s *Service) applyNotice(ctx context.Context, channel string, st Status) (bool, error) {
	var m order.Matched
	err := sqldb.Tx(ctx, s.db.ForID(st.PaymentID), func(tx *sql.Tx) error {
		var paid bool
		var err error
		m, paid, err = s.orders.PayMatched(ctx, tx, st.PaymentID,
			`SELECT order_id FROM payments WHERE id = $3 AND channel = $5 AND amount = $6 AND refunded = 0
				AND state IN ($7, $8, $9, $10)`,
			channel, st.Amount, stCreated, stPending, stClosed, stFailed)
		switch {
		case err != nil:
			return err
		case !paid || id.Gene(m.OrderID) != id.Gene(st.PaymentID): // the latter not made by Pay: apply refuses it
			return errFullWay
		}
		// Settled, if still in a state payTx moves from and with no refund
		// (else errMoved: rolled back).
		return s.markPaid(ctx, tx, st.PaymentID, st, stSettled, " AND refunded = 0")
	})
	switch {
	case errors.Is(err, errFullWay), errors.Is(err, errMoved):
		return false, nil
	case err != nil:
		return false, err
	}
	s.quick.Add(1)
	s.orders.PaidMatched(ctx, m)
	return true, nil
}

// errFullWay: applyNotice leaves a notice to the full way.
var errFullWay = errors.New("payment notice: not the common case")

// settle applies a paid payment to its order: it pays the order, or, when
// the order was already paid by another payment or was cancelled, refunds
// this one and records the anomaly. Idempotent; re-run by the worker for
// payments left paid-but-unapplied by a crash.
func (s *Service) settle(ctx context.Context, paymentID int64) error {
	p, err := s.get(ctx, paymentID)
	if err != nil {
		return err
	}
	return s.settleRead(ctx, p)
}

// settleRead is settle with the payment as just read.
func (s *Service) settleRead(ctx context.Context, p *Payment) error {
	if p.State != stPaid {
		return nil // settled or refunding already, or not paid
	}
	if p.Refunded > 0 {
		return s.reverse(ctx, p) // refunded at the channel in part: it pays nothing
	}
	res, err := s.orders.MarkPaid(ctx, p.OrderID, p.ID)
	if err != nil {
		return err
	}
	switch res {
	case order.PaidNow, order.PaidAlready:
		return s.setState(ctx, p.ID, stPaid, stSettled)
	case order.PaidByOther:
		o, err := s.orders.Peek(ctx, p.OrderID)
		if err != nil {
			return err
		}
		if err := s.anomaly(ctx, Anomaly{Kind: anomalyDup, OrderID: p.OrderID, PaymentID: p.ID, OtherID: o.PaymentID,
			Detail: "the order was already paid by payment " + strconv.FormatInt(o.PaymentID, 10)}); err != nil {
			return err
		}
		return s.refund(ctx, p, anomalyDup)
	default: // order.NotPayable
		if err := s.anomaly(ctx, Anomaly{Kind: anomalyCxl, OrderID: p.OrderID, PaymentID: p.ID, Detail: "paid after the order was cancelled"}); err != nil {
			return err
		}
		return s.refund(ctx, p, anomalyCxl)
	}
}

func (s *Service) setState(ctx context.Context, paymentID int64, from, to string) error {
	_, err := s.db.ForID(paymentID).W.ExecContext(ctx, `UPDATE payments SET state = $1, updated_at = $2 WHERE id = $3 AND state = $4`,
		to, s.now().UnixMilli(), paymentID, from)
	if err != nil {
		return fmt.Errorf("payment %d %s -> %s: %w", paymentID, from, to, err)
	}
	return nil
}

const paymentCols = `id, order_id, user_id, channel, amount, state, channel_txn, pay_url, created_at, paid_at, queries, refunded, trace`

func scanPayment(sc interface{ Scan(...any) error }) (*Payment, error) {
	var p Payment
	var created, paid int64
	if err := sc.Scan(&p.ID, &p.OrderID, &p.UserID, &p.Channel, &p.Amount, &p.State, &p.ChannelTxn, &p.PayURL, &created, &paid,
		&p.queries, &p.Refunded, &p.trace); err != nil {
		return nil, err
	}
	if captured(p.State) {
		p.Kept = p.Amount - p.Refunded
	}
	p.CreatedAt = time.UnixMilli(created).UTC()
	if paid > 0 {
		p.PaidAt = time.UnixMilli(paid).UTC()
	}
	return &p, nil
}

func (s *Service) get(ctx context.Context, paymentID int64) (*Payment, error) {
	p, err := scanPayment(s.db.ForID(paymentID).R.QueryRowContext(ctx, `SELECT `+paymentCols+` FROM payments WHERE id = $1`, paymentID))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, ErrNotFound.With("no payment %d", paymentID)
	}
	if err != nil {
		return nil, fmt.Errorf("read payment %d: %w", paymentID, err)
	}
	return p, nil
}

// OfOrder lists the payments of an order.
func (s *Service) OfOrder(ctx context.Context, orderID int64) ([]*Payment, error) {
	rows, err := s.db.ForID(orderID).R.QueryContext(ctx, `SELECT `+paymentCols+` FROM payments WHERE order_id = $1 ORDER BY id`, orderID)
	if err != nil {
		return nil, fmt.Errorf("payments of order %d: %w", orderID, err)
	}
	defer rows.Close()
	var out []*Payment
	for rows.Next() {
		p, err := scanPayment(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, p)
	}
	return out, rows.Err()
}

// now is the service's clock.
func (s *Service) now() time.Time {
	if f := s.clock.Load(); f != nil {
		return (*f)()
	}
	return time.Now()
}
