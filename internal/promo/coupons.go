package promo

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/surge-platform/surge/internal/platform/bus"
	"github.com/surge-platform/surge/internal/platform/errkind"
	"github.com/surge-platform/surge/internal/platform/id"
	"github.com/surge-platform/surge/internal/platform/kv"
	"github.com/surge-platform/surge/internal/platform/sqldb"
	"github.com/surge-platform/surge/internal/pricing"
)

var (
	ErrNoTemplate      = errkind.New(errkind.NotFound, "coupon_template_not_found", "no such coupon template")
	ErrBadTemplate     = errkind.New(errkind.Invalid, "invalid_coupon_template", "the coupon template is invalid")
	ErrClaimNotStarted = errkind.New(errkind.Conflict, "claim_not_started", "coupons of this template cannot be claimed yet")
	ErrClaimEnded      = errkind.New(errkind.Conflict, "claim_ended", "coupons of this template can no longer be claimed")
	ErrCouponsGone     = errkind.New(errkind.Conflict, "coupons_gone", "every coupon of this template has been claimed")
	ErrClaimLimit      = errkind.New(errkind.Conflict, "claim_limit", "you already hold as many coupons of this template as one person may")
	ErrReloading       = errkind.New(errkind.Unavailable, "unavailable", "the coupon counters are being rebuilt, try again in a moment")
)

// Limits on templates.
const (
	MaxQuantity = 100_000_000
	MaxPerUser  = 100
)

// Terms are what a coupon gives and where it can be used: a template's,
// and every coupon claimed from it. StoreID 0 makes platform coupons
// (valid in every store, or in Stores only); a store's makes store coupons.
type Terms struct {
	StoreID int64              `json:"store_id,string"`
	Name    string             `json:"name"`
	Kind    pricing.CouponKind `json:"kind"`
	Off     int64              `json:"off,omitempty"`
	Min     int64              `json:"min,omitempty"`
	Percent int64              `json:"percent,omitempty"`
	Cap     int64              `json:"cap,omitempty"`
	Stores  IDs                `json:"store_ids,omitempty"`
	SKUs    IDs                `json:"sku_ids,omitempty"`
	// ValidFrom, ValidUntil: when a claimed coupon may be used (zero: always).
	ValidFrom  time.Time `json:"valid_from,omitzero"`
	ValidUntil time.Time `json:"valid_until,omitzero"`
}

// rule is the coupon as pricing takes it.
func (t Terms) rule(couponID int64) pricing.Coupon {
	return pricing.Coupon{ID: couponID, Name: t.Name, Kind: t.Kind, StoreID: t.StoreID, Stores: t.Stores, SKUs: t.SKUs,
		Window: pricing.Window{Starts: t.ValidFrom, Ends: t.ValidUntil}, Off: t.Off, Min: t.Min, Percent: t.Percent, Cap: t.Cap}
}

// termsOf is rule's inverse.
func termsOf(r pricing.Coupon) Terms {
	return Terms{StoreID: r.StoreID, Name: r.Name, Kind: r.Kind, Off: r.Off, Min: r.Min, Percent: r.Percent, Cap: r.Cap,
		Stores: r.Stores, SKUs: r.SKUs, ValidFrom: r.Starts, ValidUntil: r.Ends}
}

// Template is a coupon template: operators create it, customers claim
// coupons from it.
type Template struct {
	ID int64 `json:"template_id,string"`
	Terms
	Quantity int64 `json:"quantity"`
	PerUser  int64 `json:"per_user"`
	// ClaimStarts, ClaimEnds: when coupons may be claimed (zero: always).
	ClaimStarts time.Time `json:"claim_starts,omitzero"`
	ClaimEnds   time.Time `json:"claim_ends,omitzero"`
	// Claimed is the durable count of claims (it trails the live count by
	// the claims still on their way to the database).
	Claimed int64 `json:"claimed"`
	// Remaining is what kv says is left to claim (absent while it is not
	// loaded).
	Remaining *int64 `json:"remaining,omitempty"`
}

func (t *Template) check() error {
	if err := checkName(t.Name); err != nil {
		return err
	}
	switch {
	case t.StoreID < 0:
		return errkind.ErrBadID.With("store_id must be a positive id, or 0 for platform coupons")
	case t.Quantity < 1 || t.Quantity > MaxQuantity:
		return ErrBadTemplate.With("quantity must be 1 to %d", MaxQuantity)
	case t.PerUser < 1 || t.PerUser > MaxPerUser:
		return ErrBadTemplate.With("per_user must be 1 to %d", MaxPerUser)
	case !t.ClaimEnds.IsZero() && !t.ClaimStarts.Before(t.ClaimEnds):
		return ErrBadTemplate.With("claim_starts must be before claim_ends")
	}
	return t.rule(1).Validate()
}

// Keys of a template's live counters in kv; the hash tag keeps them in one
// Redis Cluster slot, as Admit needs.
func leftKey(t int64) string { return "coupon:{t" + strconv.FormatInt(t, 10) + "}:left" }
func userKey(t, user int64) string {
	return "coupon:{t" + strconv.FormatInt(t, 10) + "}:u:" + strconv.FormatInt(user, 10)
}
func loadKey(t int64) string       { return "coupon:{t" + strconv.FormatInt(t, 10) + "}:loading" }
func claimSubject(gene int) string { return "coupons.claims." + strconv.Itoa(gene) }
func (t *Template) keyTTL() time.Duration {
	if t.ClaimEnds.IsZero() {
		return 0
	}
	return time.Until(t.ClaimEnds) + 24*time.Hour
}

// Claims is the stream of claims: a claim is durable once it is here (the
// claim id is its message id); the consumer writes it to the databases.
var Claims = bus.StreamConfig{Name: "COUPONS", Subjects: []string{"coupons.claims.>"}, Duplicates: 10 * time.Minute}

const claimsConsumer = "coupon-claims"

// CreateTemplate checks t and stores it; its counters are loaded into kv
// at once (a new template has no claims to count).
func (s *Service) CreateTemplate(ctx context.Context, t Template) (Template, error) {
	if err := t.check(); err != nil {
		return Template{}, err
	}
	tid, err := s.ids.Next(0)
	if err != nil {
		return Template{}, err
	}
	t.ID, t.Claimed, t.Remaining = tid, 0, nil
	_, err = s.db.Main().W.ExecContext(ctx, `INSERT INTO coupon_templates (id, store_id, name, rule, quantity, per_user,
		claim_starts, claim_ends, claimed, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 0, $9)`,
		t.ID, t.StoreID, t.Name, string(mustJSON(t)), t.Quantity, t.PerUser, millis(t.ClaimStarts), millis(t.ClaimEnds),
		s.now().UnixMilli())
	if err != nil {
		return Template{}, fmt.Errorf("create coupon template: %w", err)
	}
	if err := s.reload(ctx, &t, true); err != nil {
		s.log.Warn("load new coupon template (claims will load it)", "template_id", t.ID, "err", err)
	}
	s.changed()
	left := t.Quantity
	t.Remaining = &left
	return t, nil
}

// templatesAll reads every template that can still be claimed (cached).
func (s *Service) templatesAll(ctx context.Context) (map[int64]*Template, error) {
	s.mu.Lock()
	if s.templates != nil && s.now().Sub(s.tmplAt) < refresh {
		m := s.templates
		s.mu.Unlock()
		return m, nil
	}
	s.mu.Unlock()
	rows, err := s.db.Main().R.QueryContext(ctx, `SELECT rule, claimed FROM coupon_templates
		WHERE claim_ends = 0 OR claim_ends > $1 ORDER BY id`, s.now().UnixMilli())
	if err != nil {
		s.mu.Lock()
		defer s.mu.Unlock()
		if s.templates != nil {
			return s.templates, nil
		}
		return nil, fmt.Errorf("read coupon templates: %w", err)
	}
	defer rows.Close()
	m := map[int64]*Template{}
	for rows.Next() {
		t, err := scanTemplate(rows)
		if err != nil {
			return nil, err
		}
		m[t.ID] = t
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	s.mu.Lock()
	s.templates, s.tmplAt = m, s.now()
	s.mu.Unlock()
	return m, nil
}

func scanTemplate(sc interface{ Scan(...any) error }) (*Template, error) {
	var rule string
	var claimed int64
	if err := sc.Scan(&rule, &claimed); err != nil {
		return nil, err
	}
	var t Template
	if err := json.Unmarshal([]byte(rule), &t); err != nil {
		return nil, fmt.Errorf("stored coupon template: %w", err)
	}
	t.Claimed = claimed
	return &t, nil
}

// Template returns one template from the database, with its live count.
func (s *Service) Template(ctx context.Context, templateID int64) (*Template, error) {
	t, err := scanTemplate(s.db.Main().R.QueryRowContext(ctx, `SELECT rule, claimed FROM coupon_templates WHERE id = $1`, templateID))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, ErrNoTemplate.With("no coupon template %d", templateID)
	}
	if err != nil {
		return nil, err
	}
	s.remaining(ctx, t)
	return t, nil
}

func (s *Service) remaining(ctx context.Context, t *Template) {
	if b, err := s.kv.Get(ctx, leftKey(t.ID)); err == nil {
		if v, err := strconv.ParseInt(string(b), 10, 64); err == nil {
			t.Remaining = &v
		}
	}
}

// Claimable lists the templates a customer can claim from now in storeID
// (its store coupons and the platform's that cover it; 0: every one), with
// what is left of each.
func (s *Service) Claimable(ctx context.Context, storeID int64) ([]Template, error) {
	all, err := s.templatesAll(ctx)
	if err != nil {
		return nil, err
	}
	now := s.now()
	out := []Template{}
	for _, t := range all {
		if !t.ClaimStarts.IsZero() && now.Before(t.ClaimStarts) || !t.ClaimEnds.IsZero() && !now.Before(t.ClaimEnds) {
			continue
		}
		if storeID != 0 && t.StoreID != storeID && (t.StoreID != 0 || len(t.Stores) > 0 && !slices.Contains(t.Stores, storeID)) {
			continue
		}
		c := *t
		s.remaining(ctx, &c)
		if c.Remaining != nil && *c.Remaining == 0 {
			continue
		}
		out = append(out, c)
	}
	sortTemplates(out)
	return out, nil
}

// Claimed is the answer to a claim.
type Claimed struct {
	CouponID   int64 `json:"coupon_id,string"`
	TemplateID int64 `json:"template_id,string"`
	Remaining  int64 `json:"remaining"`
}

// claimMsg is a claim on the bus.
type claimMsg struct {
	CouponID   int64     `json:"coupon_id,string"`
	TemplateID int64     `json:"template_id,string"`
	UserID     int64     `json:"user_id,string"`
	At         time.Time `json:"at"`
}

// publishTimeout bounds the claim's wait for the bus; settle (longer) is
// how long a reload waits for claims admitted before a kv loss to land.
const (
	publishTimeout = 2 * time.Second
	settle         = 3 * time.Second
	reloadTimeout  = 2 * time.Minute // the lock outlives it
)

// Claim takes one coupon of template for userID: the check and the take
// (what is left, the user's count) are one atomic step in kv, and the
// coupon is durable once its claim is on the bus (acknowledged by
// JetStream) — the database gets it from there. Errors: ErrNoTemplate,
// ErrClaimNotStarted, ErrClaimEnded, ErrCouponsGone, ErrClaimLimit,
// ErrReloading and kv's or the bus's unavailable.
func (s *Service) Claim(ctx context.Context, userID, templateID int64) (Claimed, error) {
	c, err := s.claim(ctx, userID, templateID)
	result := "claimed"
	if err != nil {
		result = errkind.Of(err).Code
	}
	s.claimed.WithLabelValues(result).Inc()
	return c, err
}

func (s *Service) claim(ctx context.Context, userID, templateID int64) (Claimed, error) {
	all, err := s.templatesAll(ctx)
	if err != nil {
		return Claimed{}, err
	}
	t, ok := all[templateID]
	if !ok {
		if t, err = s.Template(ctx, templateID); err != nil { // created on another node a moment ago, or ended
			return Claimed{}, err
		}
	}
	now := s.now()
	switch {
	case !t.ClaimStarts.IsZero() && now.Before(t.ClaimStarts):
		return Claimed{}, ErrClaimNotStarted.With("coupons of template %d can be claimed from %s", t.ID, t.ClaimStarts.Format(time.RFC3339))
	case !t.ClaimEnds.IsZero() && !now.Before(t.ClaimEnds):
		return Claimed{}, ErrClaimEnded.With("coupons of template %d could be claimed until %s", t.ID, t.ClaimEnds.Format(time.RFC3339))
	case s.bus == nil:
		return Claimed{}, kv.ErrUnavailable.With("this node does not take claims")
	}
	cid, err := s.ids.Next(id.GeneOf(userID))
	if err != nil {
		return Claimed{}, err
	}
	// The claim reaches the bus within publishTimeout of the moment before
	// its admission, or never: what a reload's settle counts on.
	deadline := time.Now().Add(publishTimeout)
	left, res, err := s.kv.Admit(ctx, leftKey(t.ID), userKey(t.ID, userID), 1, t.PerUser, t.keyTTL())
	if err != nil {
		return Claimed{}, err
	}
	switch res {
	case kv.NotLoaded:
		go s.reloadAsync(t)
		return Claimed{}, ErrReloading
	case kv.SoldOut:
		return Claimed{}, ErrCouponsGone.With("all %d coupons of template %d have been claimed", t.Quantity, t.ID)
	case kv.OverLimit:
		return Claimed{}, ErrClaimLimit.With("one person may hold %d coupon(s) of template %d", t.PerUser, t.ID)
	}
	// From here the unit is taken. If the bus does not take the claim it
	// stays taken (a coupon fewer, never one too many: the message may
	// have reached the stream all the same); an operator's reload counts
	// it back from the durable claims.
	if err := s.record(ctx, claimMsg{CouponID: cid, TemplateID: t.ID, UserID: userID, At: now.UTC()}, deadline); err != nil {
		if ctx.Err() != nil {
			return Claimed{}, ctx.Err() // the client went away
		}
		return Claimed{}, kv.ErrUnavailable.With("the claim could not be recorded, try again: %v", err)
	}
	return Claimed{CouponID: cid, TemplateID: t.ID, Remaining: left}, nil
}

// batch is the message of a batch of claims.
type batch struct {
	Claims []claimMsg `json:"claims"`
}

// record makes a claim durable: it returns once the message that carries
// it is acknowledged by JetStream. Claims go in batches (bus.Batcher): in
// the claims benchmark's profile that cut the stream's share of surge's
// CPU from 13% to 7%.
func (s *Service) record(ctx context.Context, c claimMsg, deadline time.Time) error {
	s.startBatching.Do(func() {
		s.claims = &bus.Batcher[claimMsg]{Bus: s.bus, Message: func(cs []claimMsg) bus.Msg {
			return bus.Msg{Subject: claimSubject(id.Gene(cs[0].CouponID)), ID: strconv.FormatInt(cs[0].CouponID, 10),
				Data: mustJSON(batch{Claims: cs})}
		}}
	})
	return s.claims.Record(ctx, c, deadline)
}

// Consume writes claims from the bus into the databases until ctx is done.
func (s *Service) Consume(ctx context.Context) error {
	return s.bus.Consume(ctx, bus.ConsumerConfig{Stream: Claims.Name, Durable: claimsConsumer, Workers: 4, MaxDeliver: -1},
		func(ctx context.Context, m bus.Msg) error {
			var b batch
			if err := json.Unmarshal(m.Data, &b); err != nil {
				return fmt.Errorf("claims %s: %w", m.ID, err)
			}
			for _, c := range b.Claims { // each idempotent: a redelivery redoes none twice
				if err := s.apply(ctx, c); err != nil {
					return err
				}
			}
			return nil
		})
}

// apply records one claim, idempotently: the claim in the main database,
// counted against the template's quantity and the user's limit there too
// (the durable guard: a claim kv admitted beyond them, after a loss, is
// recorded as refused and its coupon as void), then the coupon in the
// user's wallet on their shard.
func (s *Service) apply(ctx context.Context, c claimMsg) error {
	// What apply reads of a template (its rule, quantity, limit) never
	// changes: the cached copy does when it has it.
	all, err := s.templatesAll(ctx)
	t := all[c.TemplateID]
	if err != nil || t == nil {
		t, err = scanTemplate(s.db.Main().W.QueryRowContext(ctx, `SELECT rule, claimed FROM coupon_templates WHERE id = $1`, c.TemplateID))
		if err != nil {
			return fmt.Errorf("claim %d: template %d: %w", c.CouponID, c.TemplateID, err)
		}
	}
	state := "ok"
	err = sqldb.Tx(ctx, s.db.Main(), func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `INSERT INTO coupon_claims (id, template_id, user_id, state, created_at)
			VALUES ($1, $2, $3, 'pending', $4) ON CONFLICT (id) DO NOTHING`, c.CouponID, c.TemplateID, c.UserID, c.At.UnixMilli())
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n == 0 { // seen before: its outcome stands
			return tx.QueryRowContext(ctx, `SELECT state FROM coupon_claims WHERE id = $1`, c.CouponID).Scan(&state)
		}
		// The template's row lock orders the claims of one template, so the
		// count below sees every claim decided before this one.
		res, err = tx.ExecContext(ctx, `UPDATE coupon_templates SET claimed = claimed + 1 WHERE id = $1 AND claimed < quantity`, c.TemplateID)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n == 0 {
			state = "refused"
		} else {
			var held int64
			if err := tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM coupon_claims WHERE template_id = $1 AND user_id = $2 AND state = 'ok'`,
				c.TemplateID, c.UserID).Scan(&held); err != nil {
				return err
			}
			if held >= t.PerUser {
				state = "refused"
				if _, err := tx.ExecContext(ctx, `UPDATE coupon_templates SET claimed = claimed - 1 WHERE id = $1`, c.TemplateID); err != nil {
					return err
				}
			}
		}
		_, err = tx.ExecContext(ctx, `UPDATE coupon_claims SET state = $1 WHERE id = $2`, state, c.CouponID)
		return err
	})
	if err != nil {
		return fmt.Errorf("claim %d: %w", c.CouponID, err)
	}
	if state == "refused" {
		s.log.Warn("claim beyond the template's quantity or the user's limit refused (kv admitted it after a loss)",
			"coupon_id", c.CouponID, "template_id", c.TemplateID, "user_id", c.UserID)
	}
	wallet := "available"
	if state != "ok" {
		wallet = "void"
	}
	_, err = s.db.ForGene(id.GeneOf(c.UserID)).W.ExecContext(ctx, `INSERT INTO coupons (id, user_id, template_id, store_id, name, rule,
		state, valid_from, valid_until, claimed_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $10)
		ON CONFLICT (id) DO NOTHING`, c.CouponID, c.UserID, t.ID, t.StoreID, t.Name, string(mustJSON(t.rule(0))), wallet,
		millis(t.ValidFrom), millis(t.ValidUntil), c.At.UnixMilli())
	if err != nil {
		return fmt.Errorf("claim %d: wallet: %w", c.CouponID, err)
	}
	return nil
}

func (s *Service) reloadAsync(t *Template) {
	if _, busy := s.loading.LoadOrStore(t.ID, struct{}{}); busy {
		return
	}
	defer s.loading.Delete(t.ID)
	ctx, cancel := context.WithTimeout(context.Background(), reloadTimeout)
	defer cancel()
	if err := s.reload(ctx, t, false); err != nil {
		s.log.Warn("reload coupon counters", "template_id", t.ID, "err", err)
	}
}

// reload puts a template's counters back into kv from the durable claims:
// what is left, and each claimant's count. One process does it at a time
// (a lock in kv). Unless the template is new, it first waits for the
// claims admitted before the loss to reach the database: settle for those
// still being published, then until the claims consumer has nothing
// pending. Claims meanwhile find the template not loaded (503).
func (s *Service) reload(ctx context.Context, t *Template, fresh bool) error {
	if ok, err := s.kv.SetNX(ctx, loadKey(t.ID), []byte("1"), reloadTimeout+time.Minute); err != nil || !ok {
		return err // another process reloads it
	}
	defer s.kv.Del(context.WithoutCancel(ctx), loadKey(t.ID))
	if _, err := s.kv.Get(ctx, leftKey(t.ID)); err == nil {
		return nil // loaded meanwhile
	} else if !errors.Is(err, kv.ErrNotFound) {
		return err
	}
	if !fresh {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(settle):
		}
		if err := s.drained(ctx); err != nil {
			return err
		}
	}
	rows, err := s.db.Main().W.QueryContext(ctx, `SELECT user_id, COUNT(*) FROM coupon_claims
		WHERE template_id = $1 AND state <> 'refused' GROUP BY user_id`, t.ID)
	if err != nil {
		return fmt.Errorf("count claims of template %d: %w", t.ID, err)
	}
	type held struct{ user, n int64 }
	var holders []held
	var claimed int64
	for rows.Next() {
		var h held
		if err := rows.Scan(&h.user, &h.n); err != nil {
			rows.Close()
			return err
		}
		holders = append(holders, h)
		claimed += h.n
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return err
	}
	ttl := t.keyTTL()
	for _, h := range holders {
		if err := s.kv.Set(ctx, userKey(t.ID, h.user), []byte(strconv.FormatInt(h.n, 10)), ttl); err != nil {
			return err
		}
	}
	left := max(0, t.Quantity-claimed)
	if _, err := s.kv.SetNX(ctx, leftKey(t.ID), []byte(strconv.FormatInt(left, 10)), ttl); err != nil {
		return err
	}
	s.log.Info("coupon counters loaded", "template_id", t.ID, "claimed", claimed, "left", left, "claimants", len(holders))
	return nil
}

// drained waits until the claims consumer has applied every claim on the
// stream now.
func (s *Service) drained(ctx context.Context) error {
	if s.bus == nil {
		return nil
	}
	return s.bus.Drained(ctx, Claims.Name, claimsConsumer)
}

// Forget drops the live counters of every claimable template, so that the
// next claim of each reloads them from the durable claims. The kv loss
// watch calls it: after a failover to a replica that was behind, the
// counters that survived may be stale.
func (s *Service) Forget(ctx context.Context) error {
	ids, err := sqldb.IDs(ctx, s.db.Main().R, `SELECT id FROM coupon_templates WHERE claim_ends = 0 OR claim_ends > $1`, s.now().UnixMilli())
	if err != nil {
		return fmt.Errorf("forget coupon counters: %w", err)
	}
	for _, t := range ids {
		if err := s.kv.Del(ctx, leftKey(t)); err != nil {
			return err
		}
	}
	return nil
}

// Reload makes a template's live counters be counted again from the
// durable claims (operators: after the bus refused claims kv had admitted).
func (s *Service) Reload(ctx context.Context, templateID int64) error {
	t, err := s.Template(ctx, templateID)
	if err != nil {
		return err
	}
	if err := s.kv.Del(ctx, leftKey(t.ID)); err != nil {
		return err
	}
	return s.reload(ctx, t, false)
}
