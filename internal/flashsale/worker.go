package flashsale

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/surge-platform/surge/internal/order"
	"github.com/surge-platform/surge/internal/platform/bus"
	"github.com/surge-platform/surge/internal/platform/errkind"
	"github.com/surge-platform/surge/internal/platform/id"
	"github.com/surge-platform/surge/internal/platform/sqldb"
)

// A ticket's states in flash_tickets. held, ordered and paid hold a unit
// of the sale (they are what sold counts); failed, refused and returned
// do not.
const (
	stHeld     = "held"     // counted; its order is being made
	stOrdered  = "ordered"  // its order exists (the order's id is the ticket's)
	stPaid     = "paid"     // its order was paid
	stFailed   = "failed"   // its order could not be made: the unit went back
	stRefused  = "refused"  // beyond the stock or the buyer's limit (kv admitted it after a loss): no order
	stReturned = "returned" // its order was cancelled or expired unpaid: the unit went back
)

const ticketsConsumer = "flash-tickets"

// The workers' consumers: of tickets, and of the orders of sales.
var (
	// A batch takes well under a second; a worker that dies holding one
	// delays its buyers' orders by the ack wait. (Two deliveries of a
	// batch that do run at once are safe: see told.)
	ticketsCfg = bus.ConsumerConfig{Stream: Tickets.Name, Durable: ticketsConsumer, Workers: 8, MaxDeliver: -1, AckWait: 10 * time.Second}
	ordersCfg  = bus.ConsumerConfig{Stream: order.Stream.Name, Durable: "flash-orders", Workers: 4, MaxDeliver: -1,
		FilterSubjects: order.Types(order.EvPaid, order.EvCancelled), FromNow: true}
)

// Results carries each ticket's outcome to the push centre (the buyer's
// socket): flash.results.<gene of the buyer>.
var Results = bus.StreamConfig{Name: "FLASH_RESULTS", Subjects: []string{"flash.results.>"}, MaxAge: time.Hour}

// Result is a ticket's outcome, as the buyer's socket gets it.
type Result struct {
	Type    string    `json:"type"` // ResultType
	Ticket  int64     `json:"ticket,string"`
	SaleID  int64     `json:"sale_id,string"`
	UserID  int64     `json:"user_id,string"`
	State   string    `json:"state"` // ordered or failed
	OrderID int64     `json:"order_id,string,omitempty"`
	Reason  string    `json:"reason,omitempty"`
	At      time.Time `json:"at"`
}

// ResultType is the type of a ticket's outcome on the buyer's socket.
const ResultType = "flash.ticket"

// Consume turns tickets into orders until ctx is done (the worker role;
// every worker shares the consumer). A worker that dies mid-ticket leaves
// the batch unacknowledged: it is redelivered, and each ticket is applied
// again idempotently (its row, its order by the ticket's id). A ticket
// whose order still fails after maxTries deliveries, for any reason but a
// database that is down, fails for good (its unit goes back), so that one
// poisoned ticket cannot hold up the others, or a recount that waits for
// the stream to drain.
func (s *Service) Consume(ctx context.Context) error {
	return s.bus.Consume(ctx, ticketsCfg,
		func(ctx context.Context, m bus.Msg) error {
			var b ticketBatch
			if err := json.Unmarshal(m.Data, &b); err != nil {
				s.log.Error("undecodable ticket batch dropped", "msg_id", m.ID, "err", err)
				return nil
			}
			for _, t := range b.Tickets {
				if err := s.apply(ctx, t, m.Deliveries >= maxTries); err != nil {
					return err
				}
			}
			return nil
		})
}

// maxTries is how many deliveries a ticket batch gets before its tickets
// that still fail are failed for good (about 5 minutes of backoff).
const maxTries = 20

// sale returns a sale's definition, from this node's memory after the
// first time.
func (s *Service) sale(ctx context.Context, saleID int64) (*Sale, error) {
	l, err := s.live(ctx, saleID)
	if err != nil {
		return nil, err
	}
	return &l.Sale, nil
}

// apply records one ticket and makes its order; last: this is its last
// try.
func (s *Service) apply(ctx context.Context, t ticketMsg, last bool) error {
	sale, err := s.sale(ctx, t.SaleID)
	if errors.Is(err, ErrNoSale) {
		s.log.Error("ticket of an unknown flash sale dropped", "ticket", t.Ticket, "sale_id", t.SaleID)
		return nil
	}
	if err != nil {
		return err
	}
	state, overLimit, err := s.hold(ctx, sale, t)
	if err != nil {
		return fmt.Errorf("ticket %d: %w", t.Ticket, err)
	}
	if overLimit {
		// kv let the buyer past their limit (a recount raced a return, an
		// evicted key): the stock it took was not sold, so it goes back,
		// and the buyer's count with it.
		s.giveBack(ctx, sale, t.UserID)
	}
	switch state {
	case stRefused:
		return s.tellBuyer(ctx, t, stFailed, "sold out")
	case stHeld:
	default:
		return s.told(ctx, t, state)
	}
	_, err = s.orders.PlaceSale(ctx, order.SaleOrder{OrderID: t.Ticket, UserID: t.UserID, StoreID: sale.StoreID, SKU: sale.SKU,
		Price: sale.Price, Qty: 1, SaleID: sale.ID, TTL: sale.payTTL()})
	if err != nil {
		k := errkind.Of(err)
		if k != nil && k.Kind == errkind.Unavailable || !last && (k == nil || k.Kind == errkind.Internal) {
			// Retried: a database that is down is waited out however
			// long; anything else for maxTries deliveries.
			return fmt.Errorf("ticket %d: order: %w", t.Ticket, err)
		}
		// Final (the store closed, the sku left the menu, or too many
		// tries): the unit goes back, unless another delivery of the
		// ticket made the order meanwhile.
		s.log.Warn("flash-sale ticket failed", "ticket", t.Ticket, "sale_id", sale.ID, "err", err)
		moved, err2 := s.release(ctx, sale, t.Ticket, t.UserID, []string{stHeld}, stFailed, err.Error())
		if err2 != nil {
			return err2
		}
		if !moved {
			return s.told(ctx, t, "")
		}
		return s.tellBuyer(ctx, t, stFailed, err.Error())
	}
	res, err := s.db.Main().W.ExecContext(ctx, `UPDATE flash_tickets SET state = $1, updated_at = $2 WHERE id = $3 AND state = $4`,
		stOrdered, s.now().UnixMilli(), t.Ticket, stHeld)
	if err != nil {
		return fmt.Errorf("ticket %d: %w", t.Ticket, err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return s.told(ctx, t, "")
	}
	return s.tellBuyer(ctx, t, stOrdered, "")
}

// told tells the buyer what became of a ticket another delivery decided
// (state "" = read it). A ticket another delivery failed while this one
// made its order (they ran at once: a redelivery after the ack wait)
// must not keep the order, whose unit went back: it is cancelled.
func (s *Service) told(ctx context.Context, t ticketMsg, state string) error {
	if state == "" {
		if err := s.db.Main().W.QueryRowContext(ctx, `SELECT state FROM flash_tickets WHERE id = $1`, t.Ticket).Scan(&state); err != nil {
			return fmt.Errorf("ticket %d: %w", t.Ticket, err)
		}
	}
	switch state {
	case stFailed:
		if o, err := s.orders.Get(ctx, t.UserID, t.Ticket); err == nil && o.Status == order.PendingPayment {
			if _, err := s.orders.Cancel(ctx, t.UserID, t.Ticket); err != nil && !errors.Is(err, order.ErrNotCancellable) {
				return fmt.Errorf("ticket %d: cancel the order of a failed ticket: %w", t.Ticket, err)
			}
		} else if err != nil && !errors.Is(err, order.ErrNotFound) {
			return fmt.Errorf("ticket %d: %w", t.Ticket, err)
		}
		return s.tellBuyer(ctx, t, stFailed, "the order could not be made")
	case stRefused:
		return s.tellBuyer(ctx, t, stFailed, "sold out")
	case stHeld:
		return fmt.Errorf("ticket %d: still being ordered by another delivery", t.Ticket)
	}
	return s.tellBuyer(ctx, t, stOrdered, "")
}

// hold records the ticket in the main database, counted against the
// sale's stock and the buyer's limit under the sale's row lock: the
// durable guard. kv admits exactly as many after a loss only if its
// recount was right; a ticket beyond either is recorded refused and gets
// no order (overLimit: refused for the buyer's limit, with stock left).
// It returns the ticket's state (that of an earlier delivery when there
// was one).
func (s *Service) hold(ctx context.Context, sale *Sale, t ticketMsg) (state string, overLimit bool, err error) {
	state = stHeld
	now := s.now().UnixMilli()
	err = sqldb.Tx(ctx, s.db.Main(), func(tx *sql.Tx) error {
		overLimit = false
		res, err := tx.ExecContext(ctx, `INSERT INTO flash_tickets (id, sale_id, user_id, state, created_at, updated_at)
			VALUES ($1, $2, $3, $4, $5, $5) ON CONFLICT (id) DO NOTHING`, t.Ticket, sale.ID, t.UserID, stHeld, t.At.UnixMilli())
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n == 0 { // seen before: its state stands
			return tx.QueryRowContext(ctx, `SELECT state FROM flash_tickets WHERE id = $1`, t.Ticket).Scan(&state)
		}
		// The sale's row lock orders its tickets, so the count below sees
		// every ticket decided before this one.
		res, err = tx.ExecContext(ctx, `UPDATE flash_sales SET sold = sold + 1 WHERE id = $1 AND sold < stock`, sale.ID)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n == 0 {
			state = stRefused
		} else {
			var held int64
			if err := tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM flash_tickets WHERE sale_id = $1 AND user_id = $2
				AND state IN ('held', 'ordered', 'paid')`, sale.ID, t.UserID).Scan(&held); err != nil {
				return err
			}
			if held > sale.PerUser { // this ticket is among them
				state, overLimit = stRefused, true
				if _, err := tx.ExecContext(ctx, `UPDATE flash_sales SET sold = sold - 1 WHERE id = $1`, sale.ID); err != nil {
					return err
				}
			}
		}
		if state == stRefused {
			_, err = tx.ExecContext(ctx, `UPDATE flash_tickets SET state = $1, reason = $2, updated_at = $3 WHERE id = $4`,
				stRefused, "beyond the sale's stock or the buyer's limit", now, t.Ticket)
		}
		return err
	})
	if err == nil && state == stRefused {
		s.log.Warn("flash-sale ticket beyond the stock or the buyer's limit refused (kv admitted it after a loss)",
			"ticket", t.Ticket, "sale_id", sale.ID, "user_id", t.UserID, "over_limit", overLimit)
	}
	return state, overLimit && err == nil, err
}

// release takes a ticket in one of the states from (held, ordered) to
// state (failed, returned) and gives its unit back: in the database, then,
// while the sale runs, to kv's live counters. Once per ticket: a repeat
// finds it moved and does nothing (moved false). (A process that dies
// between the two leaves kv one unit short until a recount.)
func (s *Service) release(ctx context.Context, sale *Sale, ticket, userID int64, from []string, state, reason string) (moved bool, err error) {
	in := "'" + strings.Join(from, "', '") + "'"
	err = sqldb.Tx(ctx, s.db.Main(), func(tx *sql.Tx) error {
		moved = false
		res, err := tx.ExecContext(ctx, `UPDATE flash_tickets SET state = $1, reason = $2, updated_at = $3
			WHERE id = $4 AND state IN (`+in+`)`, state, reason, s.now().UnixMilli(), ticket)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return nil
		}
		moved = true
		_, err = tx.ExecContext(ctx, `UPDATE flash_sales SET sold = sold - 1 WHERE id = $1`, sale.ID)
		return err
	})
	if err != nil {
		return false, fmt.Errorf("ticket %d: give back: %w", ticket, err)
	}
	if moved {
		s.giveBack(ctx, sale, userID)
	}
	return moved, nil
}

// tellBuyer puts the ticket's outcome on the results stream (the push
// centre sends it to the buyer's sockets); its id makes a repeat a
// duplicate.
func (s *Service) tellBuyer(ctx context.Context, t ticketMsg, state, reason string) error {
	r := Result{Type: ResultType, Ticket: t.Ticket, SaleID: t.SaleID, UserID: t.UserID, State: state, Reason: reason, At: s.now().UTC()}
	if state == stOrdered {
		r.OrderID = t.Ticket
	}
	_, err := s.bus.Publish(ctx, bus.Msg{Subject: "flash.results." + strconv.Itoa(id.GeneOf(t.UserID)),
		ID: "t" + strconv.FormatInt(t.Ticket, 10), Data: mustJSON(r)})
	if err != nil {
		return fmt.Errorf("ticket %d: tell the buyer: %w", t.Ticket, err)
	}
	return nil
}

// ConsumeOrders follows the orders of sales until ctx is done (the
// worker role): a paid one marks its ticket paid; a cancelled or expired
// one returns its unit to the sale.
func (s *Service) ConsumeOrders(ctx context.Context) error {
	return s.bus.Consume(ctx, ordersCfg,
		func(ctx context.Context, m bus.Msg) error {
			var ev order.Event
			if err := json.Unmarshal(m.Data, &ev); err != nil || ev.SaleID == 0 {
				return nil // not a sale's (the ledger consumer reports undecodable events)
			}
			switch ev.Type {
			case order.EvPaid:
				_, err := s.db.Main().W.ExecContext(ctx, `UPDATE flash_tickets SET state = $1, updated_at = $2
					WHERE id = $3 AND state IN ('held', 'ordered')`, stPaid, s.now().UnixMilli(), ev.OrderID)
				return err
			case order.EvCancelled:
				sale, err := s.sale(ctx, ev.SaleID)
				if errors.Is(err, ErrNoSale) {
					return nil
				}
				if err != nil {
					return err
				}
				_, err = s.release(ctx, sale, ev.OrderID, ev.UserID, []string{stHeld, stOrdered}, stReturned, "order "+ev.Reason)
				return err
			}
			return nil
		})
}
