package order

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/surge-platform/surge/internal/platform/id"
	"github.com/surge-platform/surge/internal/platform/sqldb"
)

// SaleOrder is the order a flash sale's worker makes for an admitted
// ticket: Qty of one sku at the sale's price.
type SaleOrder struct {
	OrderID int64 // the ticket's id: it carries the user's gene
	UserID  int64
	StoreID int64
	SKU     int64
	Price   int64
	Qty     int
	SaleID  int64
	TTL     time.Duration // time to pay (a sale's own, short)
}

// PlaceSale writes the order of a flash-sale ticket through the same
// insert as every order (its event, its expiry timer): one line of the
// sale's sku at the sale's price. A sale price stands alone: no
// promotion or coupon applies to it, and no stock is reserved (the sale's
// stock is the sale's own, counted by the sale). Placing the same order id
// again returns the order already there, so a worker that dies between
// writing the order and acknowledging its ticket doubles nothing.
// Errors: catalog.ErrNoStore, ErrStoreClosed and ErrUnknownSKU are final
// (the ticket fails); any other is worth retrying.
func (s *Service) PlaceSale(ctx context.Context, so SaleOrder) (*Order, error) {
	if id.Gene(so.OrderID) != id.GeneOf(so.UserID) {
		return nil, fmt.Errorf("sale order %d is not on the shard of user %d", so.OrderID, so.UserID)
	}
	if o, err := s.head(ctx, s.db.ForID(so.OrderID).W, so.OrderID); err == nil {
		return o, nil
	} else if !errors.Is(err, ErrNotFound) {
		return nil, err
	}
	menu, err := s.menu(ctx, so.StoreID)
	if err != nil {
		return nil, err
	}
	if !menu.Store.Open {
		return nil, ErrStoreClosed.With("store %d is closed", so.StoreID)
	}
	it, ok := menu.Items[so.SKU]
	if !ok {
		return nil, ErrUnknownSKU.With("sku %d is not on the menu of store %d", so.SKU, so.StoreID)
	}
	now := s.now().Truncate(time.Millisecond)
	list := so.Price * int64(so.Qty)
	o := &Order{ID: so.OrderID, UserID: so.UserID, StoreID: so.StoreID, Status: PendingPayment, Version: 1,
		CreatedAt: now, UpdatedAt: now, ExpiresAt: now.Add(so.TTL), Total: list, Payable: list, SaleID: so.SaleID,
		Items: []Line{{SKU: so.SKU, Name: it.Name, Price: so.Price, Qty: so.Qty, List: list, Payable: list}}}
	err = s.insert(ctx, o, claim{}, Created{}, nil)
	if err != nil && sqldb.IsUnique(err) { // placed meanwhile by another delivery of the ticket
		return s.head(ctx, s.db.ForID(so.OrderID).W, so.OrderID)
	}
	if err != nil {
		return nil, err
	}
	return o, nil
}
