// Package payment is surge's payments centre: it creates payments of orders
// at payment channels, routes between channels by health, takes the
// channels' signed callbacks, queries payments whose callback is missing,
// refunds duplicate and late payments, and reconciles with the channels'
// daily statements.
package payment

import (
	"context"
	"net/http"
	"time"

	"github.com/surge-platform/surge/internal/platform/errkind"
	"github.com/surge-platform/surge/internal/platform/obs"
)

// Errors channels return (wrapped with detail).
var (
	ErrChannelDown  = errkind.New(errkind.Unavailable, "channel_unavailable", "the payment channel is unavailable, try another")
	ErrBadSignature = errkind.New(errkind.Unauthorized, "bad_signature", "callback signature missing or invalid")
	ErrBadCallback  = errkind.New(errkind.Invalid, "bad_callback", "callback body malformed")
	ErrUnknownTxn   = errkind.New(errkind.NotFound, "unknown_transaction", "the channel has no such transaction")
	// ErrRejected: the provider refused the request (4xx): a transaction id
	// reused with another amount, a refund of an unpaid transaction or over
	// the paid amount, a refund id reused.
	ErrRejected = errkind.New(errkind.Conflict, "channel_rejected", "the payment channel refused the request")
	// ErrMerchantAuth: the provider refused our signature (wrong keys).
	ErrMerchantAuth = errkind.New(errkind.Internal, "channel_auth", "the payment channel refused our credentials")
	// ErrBadStatement: the statement file could not be parsed.
	ErrBadStatement = errkind.New(errkind.Internal, "bad_statement", "the payment channel's statement is malformed")
	// ErrPaidAtChannel: a payment to close is paid at the channel.
	ErrPaidAtChannel = errkind.New(errkind.Conflict, "channel_paid", "the payment is paid at the channel: it cannot be closed")
	// ErrBadAnswer: the provider's answer is not what its protocol says
	// (a bad signature, a malformed body).
	ErrBadAnswer = errkind.New(errkind.Unavailable, "channel_bad_answer", "the payment channel's answer could not be trusted")
)

// State of a payment as a channel reports it.
type State string

const (
	Pending  State = "pending"  // created, not paid
	Paid     State = "paid"     // the payer paid
	Closed   State = "closed"   // closed unpaid at the channel
	Refunded State = "refunded" // paid, then refunded in full or in part (Status.Refunded says how much)
)

// Txn asks a channel to create a transaction. Money in fen.
type Txn struct {
	PaymentID int64 // ours; unique; the channel echoes it as the merchant transaction id
	OrderID   int64
	Amount    int64
	Subject   string
	NotifyURL string    // where the channel posts its callbacks
	PayerIP   string    // the payer's address, as the client saw it (WeChat Pay's H5 pay needs it)
	OpenID    string    // the payer's WeChat openid, when paying in a mini-program (JSAPI); "" = H5
	Expires   time.Time // when the payment may no longer be made (the order expires); zero = the channel's default
}

// Created is the channel's answer to Txn.
type Created struct {
	ChannelTxnID string            // "" when the channel names it only once paid (WeChat Pay)
	PayURL       string            // what the payer opens (on the simulator: one POST pays)
	Params       map[string]string // what a mini-program passes to wx.requestPayment (WeChat Pay JSAPI)
}

// Status is a channel's view of one payment.
type Status struct {
	PaymentID    int64
	ChannelTxnID string
	State        State
	Amount       int64     // captured (or to capture), fen
	Refunded     int64     // fen refunded so far, by anyone (surge or the merchant's console): 1..Amount when State is Refunded, else 0
	PaidAt       time.Time // zero unless paid (or refunded after paying)
}

// Notice is a verified, parsed callback.
type Notice struct {
	Status
	NoticeID  string    // unique per notice sent (a retry of the same notice repeats it)
	Timestamp time.Time // when the channel signed it (replay window)
	// Refund is set when the notice is about one refund of the payment
	// (WeChat Pay notifies each refund on its own): then State is Refunded
	// and Refunded is 0, as such a notice does not say how much of the
	// payment is refunded in all.
	Refund *RefundNote
}

// RefundNote is a channel's word on one refund of a payment.
type RefundNote struct {
	OutRefundNo     string    // the refund's id as its maker gave it (surge's refund id in decimal, for surge's refunds)
	ChannelRefundID string    // the channel's id of the refund
	Amount          int64     // fen of this refund
	Succeeded       bool      // the money went back; false: the refund was closed or failed
	At              time.Time // when it succeeded (zero unless Succeeded)
}

// Refund asks a channel to refund a payment; RefundID makes it idempotent.
type Refund struct {
	RefundID  int64
	PaymentID int64
	Amount    int64
	Total     int64 // the payment's amount (WeChat Pay checks it)
	Reason    string
	NotifyURL string // where the channel posts the refund's notice ("": the payment's)
}

// Line is one row of a channel's daily statement.
type Line struct {
	Kind         string // "payment" or "refund"
	PaymentID    int64
	ChannelTxnID string
	RefundID     int64 // refunds only
	Amount       int64
	At           time.Time
}

// Channel is one payment provider. Implementations talk to the provider over
// HTTP and translate its errors: ErrChannelDown for timeouts, 5xx and
// refused connections, ErrUnknownTxn for a payment the provider never saw.
// All methods are safe for concurrent use.
type Channel interface {
	Name() string
	Create(ctx context.Context, t Txn) (Created, error)
	Query(ctx context.Context, paymentID int64) (Status, error)
	// Close closes an unpaid payment so that it can no longer be paid; one
	// the provider never saw is closed already; a paid one is
	// ErrPaidAtChannel.
	Close(ctx context.Context, paymentID int64) error
	Refund(ctx context.Context, r Refund) error
	// ParseCallback verifies the signature of a callback and parses it. It
	// returns ErrBadSignature or ErrBadCallback for anything it cannot trust,
	// and ErrReplay for one its provider's protocol (or SDK) refuses as too
	// old or too new although it is signed. The caller judges freshness
	// too, by Timestamp and NoticeID.
	ParseCallback(h http.Header, body []byte) (Notice, error)
	// Ack is the answer the provider expects for a callback it must not repeat.
	Ack() (contentType string, body []byte)
	// Statement returns the provider's statement of day (UTC date).
	Statement(ctx context.Context, day time.Time) ([]Line, error)
}

// NewHTTPClient returns a client for calls to a provider: timeout for all
// of one call, a connection pool sized for many concurrent calls to one
// host, and each call passes its context's trace on (traceparent).
func NewHTTPClient(timeout time.Duration) *http.Client {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConnsPerHost = 64
	return &http.Client{Timeout: timeout, Transport: obs.Transport{Base: tr}}
}
