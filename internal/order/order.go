// Package order owns orders: creation (priced from the catalog, limited stock
// reserved in inventory, idempotent per Idempotency-Key), reads, cancel, and
// the compare-and-set state machine. Orders, their items, idempotency
// records and outbox rows live on the order's shard, chosen by the gene the
// order id shares with its user id.
package order

import (
	"context"
	"encoding/json"
	"strconv"
	"time"

	"github.com/surge-platform/surge/internal/catalog"
	"github.com/surge-platform/surge/internal/inventory"
	"github.com/surge-platform/surge/internal/platform/errkind"
	"github.com/surge-platform/surge/internal/promo"
)

// Status is a state of the order state machine (DESIGN section 5):
//
//	pending_payment -> paid -> accepted -> ready -> completed
//	pending_payment -> cancelled
//	paid|accepted -> refunding -> refunded
//
// (ready and completed orders may be refunded too: a refund that leaves
// nothing of the order takes it to refunding; a refund of some of its
// lines leaves its status as it is, see refund.go.)
type Status string

const (
	PendingPayment Status = "pending_payment"
	Paid           Status = "paid"
	Accepted       Status = "accepted"
	Ready          Status = "ready"
	Completed      Status = "completed"
	Cancelled      Status = "cancelled"
	Refunding      Status = "refunding"
	Refunded       Status = "refunded"
)

// Limits on an order request.
const (
	MaxLines = 50
	MaxQty   = 99
	MaxKey   = 128
)

var (
	ErrNotFound       = errkind.New(errkind.NotFound, "order_not_found", "no such order")
	ErrNoLines        = errkind.New(errkind.Invalid, "no_items", "an order needs 1 to 50 lines")
	ErrQty            = errkind.New(errkind.Invalid, "invalid_qty", "qty must be 1 to 99")
	ErrUnknownSKU     = errkind.New(errkind.Invalid, "unknown_sku", "the item is not on this store's menu")
	ErrUnavailable    = errkind.New(errkind.Conflict, "item_unavailable", "the item is not available now")
	ErrStoreClosed    = errkind.New(errkind.Conflict, "store_closed", "the store is not taking orders")
	ErrNotCancellable = errkind.New(errkind.Conflict, "not_cancellable", "only an unpaid order, or a paid one the store has not accepted, can be cancelled")
	ErrChanged        = errkind.New(errkind.Conflict, "order_changed", "the order changed meanwhile, read it again")
	ErrBadKey         = errkind.New(errkind.Invalid, "invalid_idempotency_key", "Idempotency-Key must be 1 to 128 printable ASCII characters")
	ErrKeyReused      = errkind.New(errkind.Conflict, "idempotency_key_reused", "this Idempotency-Key was used for a different request")
	ErrKeyBusy        = errkind.New(errkind.Conflict, "idempotency_key_in_progress", "a request with this Idempotency-Key is still being processed, retry")
	ErrBadCursor      = errkind.New(errkind.Invalid, "invalid_cursor", "cursor must be an order id from a previous page")
	ErrNotPayable     = errkind.New(errkind.Conflict, "order_not_payable", "the order is not waiting for payment (cancelled, expired or paid)")
)

// Order is an order with its lines. Money is in fen.
type Order struct {
	ID         int64      `json:"order_id,string"`
	UserID     int64      `json:"user_id,string"`
	StoreID    int64      `json:"store_id,string"`
	Status     Status     `json:"status"`
	Version    int64      `json:"version"`
	Total      int64      `json:"total"`
	Discount   int64      `json:"discount"`
	Payable    int64      `json:"payable"`
	Discounts  []Discount `json:"discounts,omitempty"` // on the order; each line has its shares
	Refunded   int64      `json:"refunded,omitempty"`  // refunded to the customer so far, the refunds on their way included
	PickupCode string     `json:"pickup_code,omitempty"`
	PaymentID  int64      `json:"payment_id,string,omitempty"`    // the payment that paid it
	SaleID     int64      `json:"flash_sale_id,string,omitempty"` // the flash sale it was bought in (its id is the ticket's)
	Reason     string     `json:"cancel_reason,omitempty"`        // why it was cancelled: "user" or "expired"
	CreatedAt  time.Time  `json:"created_at"`
	UpdatedAt  time.Time  `json:"updated_at"`
	ExpiresAt  time.Time  `json:"expires_at"`
	Items      []Line     `json:"items"`
	// StockHeld: the order holds limited stock (its reservation becomes a
	// sale when it is paid). Orders from before the column say true.
	StockHeld bool `json:"-"`
}

// Line is one priced line of an order. A gift (GiftOf: the promotion that
// gave it) has price 0. Payable is the line's list amount minus its shares
// of the discounts: what refunding the line gives back.
type Line struct {
	SKU       int64      `json:"sku_id,string"`
	Name      string     `json:"name"`
	Price     int64      `json:"price"`
	Qty       int        `json:"qty"`
	List      int64      `json:"list"`
	Payable   int64      `json:"payable"`
	GiftOf    int64      `json:"gift_of,string,omitempty"`
	Discounts []Discount `json:"discounts,omitempty"`
	Refunded  int64      `json:"refunded,omitempty"`         // Payable once refunded (0 for a line whose payable is 0)
	RefundID  int64      `json:"refund_id,string,omitempty"` // the refund that refunded the line; 0 = not refunded
}

// Request is the body of POST /api/v1/orders and of its preview.
type Request struct {
	StoreID   int64         `json:"store_id,string"`
	Items     []RequestLine `json:"items"`
	CouponIDs promo.IDs     `json:"coupon_ids,omitempty"`
	// ExpectedPayable, when given, is the payable the customer was shown:
	// an order priced otherwise is refused with price_changed.
	ExpectedPayable *int64 `json:"expected_payable,omitempty"`
}

// RequestLine asks for qty of one SKU.
type RequestLine struct {
	SKU int64 `json:"sku_id,string"`
	Qty int   `json:"qty"`
}

// Check validates the shape of a request (not what it refers to). MaxQty
// bounds each sku in the order: lines of the same sku add up.
func (r Request) Check() error {
	switch {
	case r.StoreID == 0:
		return errkind.ErrInvalid.With("store_id is required")
	case r.StoreID < 0:
		return errkind.ErrBadID.With("store_id %q is not a valid id: ids are positive decimal strings", strconv.FormatInt(r.StoreID, 10))
	}
	if r.ExpectedPayable != nil && *r.ExpectedPayable < 0 {
		return errkind.ErrInvalid.With("expected_payable must not be negative, got %d", *r.ExpectedPayable)
	}
	if len(r.Items) == 0 || len(r.Items) > MaxLines {
		return ErrNoLines.With("an order needs 1 to %d lines, got %d", MaxLines, len(r.Items))
	}
	for i, l := range r.Items {
		switch {
		case l.SKU == 0:
			return ErrUnknownSKU.With("items[%d]: sku_id is required", i)
		case l.SKU < 0:
			return errkind.ErrBadID.With("items[%d]: sku_id %q is not a valid id: ids are positive decimal strings", i, strconv.FormatInt(l.SKU, 10))
		case l.Qty < 1 || l.Qty > MaxQty:
			return ErrQty.With("items[%d]: qty must be 1 to %d, got %d", i, MaxQty, l.Qty)
		}
	}
	for i, l := range r.Items { // quadratic, but in at most 50 lines: no map on the hot path
		sum := l.Qty
		for _, m := range r.Items[:i] {
			if m.SKU == l.SKU {
				sum += m.Qty
			}
		}
		if sum > MaxQty {
			return ErrQty.With("items[%d]: sku %d comes to %d over its lines; at most %d of one sku per order", i, l.SKU, sum, MaxQty)
		}
	}
	return nil
}

// Created is the answer to a successful create; a replay with the same
// Idempotency-Key gets the very same value.
type Created struct {
	OrderID   int64     `json:"order_id,string"`
	Status    Status    `json:"status"`
	Total     int64     `json:"total"`
	Discount  int64     `json:"discount"`
	Payable   int64     `json:"payable"`
	ExpiresAt time.Time `json:"expires_at"`
}

// Event is the payload of every order event on the bus.
type Event struct {
	EventID    int64  `json:"event_id,string"`
	Type       string `json:"type"`
	OrderID    int64  `json:"order_id,string"`
	UserID     int64  `json:"user_id,string"`
	StoreID    int64  `json:"store_id,string"`
	Status     Status `json:"status"`
	Version    int64  `json:"version"`
	Payable    int64  `json:"payable"`
	PickupCode string `json:"pickup_code,omitempty"`
	PaymentID  int64  `json:"payment_id,string,omitempty"`
	Reason     string `json:"reason,omitempty"`
	// Refund events (order.refunding, order.refunded) name the refund,
	// its amount, the order's refunded after it, and its lines' skus;
	// order.refunding carries the limited stock to give back (lines
	// refunded before the store accepted the order). By says who asked
	// (a refund, order.withdrawn).
	RefundID int64         `json:"refund_id,string,omitempty"`
	Amount   int64         `json:"amount,omitempty"`
	Refunded int64         `json:"refunded,omitempty"`
	SKUs     promo.IDs     `json:"sku_ids,omitempty"`
	Restock  []RestockLine `json:"restock,omitempty"`
	By       string        `json:"by,omitempty"`
	SaleID   int64         `json:"flash_sale_id,string,omitempty"` // an order of a flash sale
	At       time.Time     `json:"at"`
}

// RestockLine is limited stock a refund gives back.
type RestockLine struct {
	SKU int64 `json:"sku_id,string"`
	Qty int64 `json:"qty"`
}

// Event types.
const (
	EvCreated   = "order.created"
	EvCancelled = "order.cancelled"
	EvPaid      = "order.paid"
	// Fulfilment steps, announced by the fulfil context and applied here.
	EvAccepted  = "order.accepted"
	EvReady     = "order.ready"
	EvCompleted = "order.completed"
	// A refund recorded on the order (its lines marked, the money on its
	// way: order.refunding) and made by the channel (order.refunded).
	EvRefunding = "order.refunding"
	EvRefunded  = "order.refunded"
	// The store's fulfilment withdrew a paid order it had not accepted
	// (the customer cancelled it, or all of it is refunded): the payments
	// centre refunds it, if the request that withdrew it did not finish.
	EvWithdrawn = "order.withdrawn"
)

// Cancel reasons.
const (
	ByUser   = "user"
	ByExpiry = "expired"
)

// Who asks for a refund.
const (
	ByCustomer = "customer"
	ByStore    = "store"
	ByOperator = "operator"
)

// Catalog prices orders: FreshMenu never gives the stale copy browsing
// customers may be shown while the catalog's backends are down.
type Catalog interface {
	FreshMenu(ctx context.Context, storeID int64) (*catalog.Menu, error)
}

// Stock reserves limited items against orders.
type Stock interface {
	Reserve(ctx context.Context, orderID int64, lines []inventory.Line) error
	Release(ctx context.Context, orderID int64) (int64, error)
	Commit(ctx context.Context, orderID int64) error
	// Return gives back refunded lines' stock, once per refund and sku.
	Return(ctx context.Context, refundID, orderID int64, lines []inventory.Line) (int64, error)
}

func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err) // only our own plain structs are marshalled
	}
	return b
}
