package flashsale

import (
	"context"
	"database/sql"
	"errors"
	"net/netip"
	"strconv"
	"time"

	"github.com/surge-platform/surge/internal/guard"
	"github.com/surge-platform/surge/internal/platform/bus"
	"github.com/surge-platform/surge/internal/platform/id"
	"github.com/surge-platform/surge/internal/platform/kv"
	"github.com/surge-platform/surge/internal/platform/limit"
)

// Partitions is the number of ticket queues: a buyer's tickets go on
// flash.tickets.<user id mod Partitions>, one stream. Queues on the bus,
// not kv lists: kv is never the only copy of anything, and a JetStream
// message survives a worker that dies holding it (it is redelivered after
// its ack wait), which a popped list item does not. The partitions let an
// operator see the backlog per queue and would let queues be given to
// workers; today every worker shares one durable consumer over all of
// them, so adding workers needs no reassignment. Few: a batch of tickets
// is one message per partition it touches, and each message costs the
// bus about as much as its tickets (16 queues instead of 4 took the
// in-stock purchase rate from 0.44 to 0.37 of hello-world).
const Partitions = 4

func ticketSubject(userID int64) string {
	return "flash.tickets." + strconv.Itoa(int(uint64(userID)%Partitions))
}

// Tickets is the stream of admitted tickets: a ticket is durable once it
// is here (its id is the message id of the batch it opens, and every
// ticket is applied idempotently by its id).
// Tickets older than a week are dropped: workers that are down longer
// than that lose them.
var Tickets = bus.StreamConfig{Name: "FLASH", Subjects: []string{"flash.tickets.>"}, Duplicates: 10 * time.Minute, MaxAge: 7 * 24 * time.Hour}

type ticketMsg struct {
	Ticket int64     `json:"ticket,string"`
	SaleID int64     `json:"sale_id,string"`
	UserID int64     `json:"user_id,string"`
	At     time.Time `json:"at"`
}

type ticketBatch struct {
	Tickets []ticketMsg `json:"tickets"`
}

// publishTimeout bounds a ticket's wait for the bus, counted from before
// its admission; settle (longer) is how long a recount after a kv loss
// waits for tickets admitted before the loss to land.
const (
	publishTimeout = 2 * time.Second
	settle         = 3 * time.Second
)

// Buyer is who attempts a purchase.
type Buyer struct {
	UserID    int64
	IP        netip.Addr
	Challenge string // the X-Challenge header: a solved challenge, when one is asked for
}

// Ticket is the answer to an admitted purchase: the order comes later
// (by push and by polling the ticket).
type Ticket struct {
	Ticket int64  `json:"ticket,string"`
	SaleID int64  `json:"sale_id,string"`
	State  string `json:"state"`
	Left   int64  `json:"left"`
}

// NotStartedError refuses a purchase before the sale's start.
type NotStartedError struct {
	error
	StartsAt time.Time
}

func (e *NotStartedError) Unwrap() error { return e.error }

// ChallengeError asks the buyer to solve a challenge first.
type ChallengeError struct {
	error
	Challenge map[string]any
}

func (e *ChallengeError) Unwrap() error { return e.error }

// Purchase attempts to buy one unit of the sale for b. Nothing here
// touches a database: the sale is this node's copy, the refusals that
// need no kv (blacklisted, before the start, over a rate, sold out) come
// first, and admission is one kv.Admit (the buyer's limit, then the
// stock). An admitted purchase returns once its ticket is on the bus.
// Errors: ErrNoSale, ErrBlacklisted, *NotStartedError, ErrEnded, ErrRate,
// *ChallengeError, ErrPaused, ErrSoldOut, ErrBusy, ErrLimit, and kv's or
// the bus's unavailable.
func (s *Service) Purchase(ctx context.Context, saleID int64, b Buyer) (Ticket, error) {
	l, err := s.live(ctx, saleID)
	if err != nil {
		return Ticket{}, err
	}
	c := &l.c
	c.attempts.Add(1)
	now := s.now()
	if s.blacklist != nil {
		e, ok := s.blacklist.User(b.UserID, now)
		if !ok && b.IP.IsValid() {
			e, ok = s.blacklist.IP(b.IP, now)
		}
		if ok {
			c.blacklist.Add(1)
			return Ticket{}, ErrBlacklisted.With("blocked until %s (%s)", e.Until.UTC().Format(time.RFC3339), e.Reason)
		}
	}
	switch {
	case now.Before(l.StartsAt):
		c.early.Add(1)
		return Ticket{}, &NotStartedError{ErrNotStarted.With("the sale starts at %s", l.StartsAt.Format(time.RFC3339)), l.StartsAt}
	case !now.Before(l.EndsAt):
		c.ended.Add(1)
		return Ticket{}, ErrEnded.With("the sale ended at %s", l.EndsAt.Format(time.RFC3339))
	}
	user, ip := uint64(b.UserID), limit.ClientKey(b.IP)
	if ok, strikes := s.users.Allow(user, now); !ok {
		c.rate.Add(1)
		s.strike(guard.KindUser, strconv.FormatInt(b.UserID, 10), strikes)
		return Ticket{}, ErrRate
	}
	if ok, strikes := s.ips.Allow(ip, now); !ok && b.IP.IsValid() {
		c.rate.Add(1)
		s.strike(guard.KindIP, guard.IPValue(b.IP), strikes)
		return Ticket{}, ErrRate
	}
	if s.challenge != nil && (s.users.Strikes(user, now) >= s.cfg.Risky || s.ips.Strikes(ip, now) >= s.cfg.Risky) {
		scope := strconv.FormatInt(l.ID, 10)
		if !s.challenge.Verify(b.UserID, scope, b.Challenge, now) {
			c.challenge.Add(1)
			return Ticket{}, &ChallengeError{ErrChallenge, s.challenge.Issue(b.UserID, scope, now)}
		}
	}
	if l.paused.Load() {
		c.paused.Add(1)
		return Ticket{}, ErrPaused
	}
	if l.soldOut.Load() {
		c.soldOut.Add(1)
		return Ticket{}, ErrSoldOut
	}
	if ok, _ := s.hot.Allow(uint64(l.SKU), now); !ok {
		c.rate.Add(1)
		return Ticket{}, ErrBusy
	}
	tid, err := s.ids.Next(id.GeneOf(b.UserID))
	if err != nil {
		return Ticket{}, err
	}
	// The ticket reaches the bus within publishTimeout of the moment
	// before its admission, or never: what a recount's settle counts on.
	deadline := time.Now().Add(publishTimeout)
	left, res, err := s.kv.Admit(ctx, leftKey(l.ID), userKey(l.ID, b.UserID), 1, l.PerUser, l.keyTTL(now))
	if err != nil {
		return Ticket{}, err
	}
	switch res {
	case kv.NotLoaded:
		c.paused.Add(1)
		l.paused.Store(true)
		go s.reloadAsync(l)
		return Ticket{}, ErrPaused
	case kv.SoldOut:
		c.soldOut.Add(1)
		if !l.soldOut.Swap(true) {
			s.tell(l.ID, false)
		}
		return Ticket{}, ErrSoldOut
	case kv.OverLimit:
		c.overLimit.Add(1)
		return Ticket{}, ErrLimit.With("one person may buy %d in flash sale %d", l.PerUser, l.ID)
	}
	c.admitted.Add(1)
	l.left.Store(left)
	if left == 0 && !l.soldOut.Swap(true) { // the last unit: the next attempts need not ask kv
		s.tell(l.ID, false)
	}
	// Not cancelled with the request: a buyer who leaves must not leave a
	// unit taken for a ticket that was never sent (it is given back
	// below); Record ends by the deadline all the same.
	err = s.tickets.Record(context.WithoutCancel(ctx), ticketMsg{Ticket: tid, SaleID: l.ID, UserID: b.UserID, At: now.UTC()}, deadline)
	switch {
	case errors.Is(err, bus.ErrNotSent):
		// Certainly not on the stream: the unit goes back at once.
		s.giveBack(context.WithoutCancel(ctx), &l.Sale, b.UserID)
		return Ticket{}, kv.ErrUnavailable.With("the purchase could not be recorded in time, try again")
	case err != nil && ctx.Err() != nil:
		return Ticket{}, ctx.Err() // the buyer went away; the ticket may still land, and they learn of it by push
	case err != nil:
		// It may have reached the stream all the same: the unit stays
		// taken (one fewer sold, never one too many) until a recount
		// (POST /admin/v1/flash-sales/{id}/recount).
		return Ticket{}, kv.ErrUnavailable.With("the purchase could not be recorded, try again: %v", err)
	}
	return Ticket{Ticket: tid, SaleID: l.ID, State: "pending", Left: left}, nil
}

// giveBack returns a unit to the sale's live counters while it runs, and
// tells every node the sale has stock again.
func (s *Service) giveBack(ctx context.Context, sale *Sale, userID int64) {
	if !s.now().Before(sale.EndsAt) {
		return
	}
	if _, err := s.kv.Unadmit(ctx, leftKey(sale.ID), userKey(sale.ID, userID), 1); err != nil {
		s.log.Warn("give a unit back to a flash sale (a recount will)", "sale_id", sale.ID, "user_id", userID, "err", err)
		return
	}
	s.tell(sale.ID, true)
}

// strike blacklists a user or IP refused by its rate Ban times within the
// limiter's window, once (in the background: the request path does not
// wait for the database).
func (s *Service) strike(kind guard.Kind, value string, strikes int) {
	if s.blacklist == nil || strikes < s.cfg.Ban {
		return
	}
	s.blacklist.Ban(kind, value, s.cfg.Blacklist, "flash-sale purchases over the rate limit "+strconv.Itoa(strikes)+" times in 10 s")
}

// TicketView is a ticket as its buyer polls it: pending (not yet an
// order), ordered (OrderID is its order, which says the rest: paid,
// cancelled) or failed (Reason).
type TicketView struct {
	Ticket  int64  `json:"ticket,string"`
	SaleID  int64  `json:"sale_id,string"`
	State   string `json:"state"`
	OrderID int64  `json:"order_id,string,omitempty"`
	Reason  string `json:"reason,omitempty"`
}

// pendingFor is how long a ticket the workers have not recorded yet is
// reported pending; after that an unknown ticket is not found.
const pendingFor = time.Hour

// Ticket returns userID's ticket of the sale.
func (s *Service) Ticket(ctx context.Context, userID, saleID, ticket int64) (TicketView, error) {
	if ticket <= 0 || id.Gene(ticket) != id.GeneOf(userID) {
		return TicketView{}, ErrNoTicket.With("no ticket %d", ticket)
	}
	if ok, _ := s.polls.Allow(uint64(userID), s.now()); !ok {
		return TicketView{}, ErrRate
	}
	v := TicketView{Ticket: ticket, SaleID: saleID}
	var sale, user int64
	var state string
	ctx, cancel := context.WithTimeout(ctx, readTimeout)
	defer cancel()
	err := s.db.Main().R.QueryRowContext(ctx, `SELECT sale_id, user_id, state, reason FROM flash_tickets WHERE id = $1`, ticket).
		Scan(&sale, &user, &state, &v.Reason)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		if s.now().Sub(id.Time(ticket)) > pendingFor {
			return TicketView{}, ErrNoTicket.With("no ticket %d", ticket)
		}
		if _, err := s.live(ctx, saleID); err != nil {
			return TicketView{}, err
		}
		v.State = "pending"
		return v, nil
	case err != nil:
		return TicketView{}, unavailable(err)
	case sale != saleID || user != userID:
		return TicketView{}, ErrNoTicket.With("no ticket %d", ticket)
	}
	v.State = buyerState(state)
	if v.State == "ordered" {
		v.OrderID = ticket
	}
	return v, nil
}

// buyerState is what a ticket's state means to its buyer.
func buyerState(state string) string {
	switch state {
	case stHeld:
		return "pending"
	case stOrdered, stPaid, stReturned:
		return "ordered"
	}
	return "failed"
}
