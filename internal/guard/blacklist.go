// Package guard keeps abusers away from the request path: a cluster-wide
// blacklist of users and IP addresses, checked from memory, and challenges
// (a proof of work by default) that risky users must solve before a
// flash-sale purchase.
package guard

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/surge-platform/surge/internal/platform/errkind"
	"github.com/surge-platform/surge/internal/platform/sqldb"
)

// Kind is what a blacklist entry names.
type Kind string

const (
	KindUser Kind = "user" // Value is a user id in decimal
	KindIP   Kind = "ip"   // Value is an IPv4 or IPv6 address, or an IPv6 /64 ("2001:db8:1:2::/64")
)

// Entry is one blacklisted user or address, live until Until.
type Entry struct {
	Kind      Kind      `json:"kind"`
	Value     string    `json:"value"`
	Reason    string    `json:"reason"`
	Until     time.Time `json:"until"`
	CreatedAt time.Time `json:"created_at"`
}

// ErrBadEntry is the error (kind Invalid) of an entry, or a kind and
// value, that does not validate.
var ErrBadEntry = errkind.New(errkind.Invalid, "invalid_blacklist_entry",
	"a blacklist entry needs kind user (a positive decimal id) or ip (an address, or an IPv6 /64), an until in the future and a reason of at most 500 bytes")

// MaxReason is the longest reason an entry may give, in bytes.
const MaxReason = 500

// RefreshEvery is how often Run reads the blacklist from the database.
const RefreshEvery = time.Second

// Blacklist is the blacklist of users and IP addresses. Its truth is the
// blacklist table of the main database, shared by all nodes; each node
// checks an immutable snapshot in memory that Run refreshes every second
// and that Add and Clear change at once, so a node sees its own changes
// at once and other nodes' within about a second. Without Run a node sees
// only its own changes, which it keeps until a refresh.
type Blacklist struct {
	db  *sqldb.Cluster
	log *slog.Logger

	snap atomic.Pointer[snapshot]

	mu      sync.Mutex // serializes changes to snap
	seq     uint64     // guarded by mu: local changes made so far
	read    uint64     // guarded by mu: seq when the refresh published last began
	pending []pending  // guarded by mu: local changes a refresh may not have seen, oldest first

	banning  sync.Map      // "kind:value" -> a Ban being written, or failed within 10 s
	banSlots chan struct{} // Ban's writes in flight
}

// key identifies an entry in memory: a user id, or an address in
// canonical form (not mapped, no zone), or the first address of an IPv6
// /64 (net set).
type key struct {
	user int64
	ip   netip.Addr
	net  bool
}

// snapshot is what checks read. It is never changed once published.
type snapshot struct {
	live  map[key]Entry // live entries at the last refresh
	local map[key]Entry // changes made here that it may have missed; they win. A cleared entry is the zero Entry, never live.
}

// pending is a change made on this node: it is published in the local map
// of each snapshot until a refresh begun after it replaces the snapshot.
type pending struct {
	seq uint64
	k   key
	e   Entry
}

// NewBlacklist returns the blacklist kept in db's main database. It is
// empty until the first refresh of Run (or a local Add).
func NewBlacklist(db *sqldb.Cluster, log *slog.Logger) *Blacklist {
	b := &Blacklist{db: db, log: log, banSlots: make(chan struct{}, 16)}
	b.snap.Store(&snapshot{})
	return b
}

// User reports whether userID is blacklisted at now, and the entry. It
// reads memory only and allocates nothing.
func (b *Blacklist) User(userID int64, now time.Time) (Entry, bool) {
	return b.snap.Load().find(key{user: userID}, now)
}

// IP reports whether ip (in any form: IPv4-in-IPv6, with a zone) is
// blacklisted at now, and the entry. It reads memory only and allocates
// nothing.
func (b *Blacklist) IP(ip netip.Addr, now time.Time) (Entry, bool) {
	s, ip := b.snap.Load(), canonical(ip)
	if e, ok := s.find(key{ip: ip}, now); ok || !ip.Is6() {
		return e, ok
	}
	return s.find(key{ip: net64(ip), net: true}, now)
}

// net64 is the first address of ip's /64.
func net64(ip netip.Addr) netip.Addr { return netip.PrefixFrom(ip, 64).Masked().Addr() }

// IPValue is the entry value that bans the client at ip: its address, or
// for an IPv6 client the /64 it holds (a client that trips the limits can
// take another address of it at will).
func IPValue(ip netip.Addr) string {
	if ip = canonical(ip); ip.Is6() {
		return netip.PrefixFrom(ip, 64).Masked().String()
	}
	return ip.String()
}

func (s *snapshot) find(k key, now time.Time) (Entry, bool) {
	e, ok := s.local[k]
	if !ok {
		e, ok = s.live[k]
	}
	if !ok || !now.Before(e.Until) {
		return Entry{}, false
	}
	return e, true
}

// Add blacklists e.Value until e.Until. An entry already there for the
// same kind and value is replaced only by a later Until (and then takes
// e's reason and creation time); otherwise it stays as it is. A zero
// CreatedAt is now. Value is stored in canonical form ("007" is user 7,
// "::ffff:192.0.2.1" is 192.0.2.1). Errors: ErrBadEntry (Invalid) for a
// kind, value, reason or Until that does not validate; the database's.
func (b *Blacklist) Add(ctx context.Context, e Entry) error {
	now := time.Now()
	k, value, err := parse(e.Kind, e.Value)
	if err != nil {
		return err
	}
	e.Value = value
	switch {
	case len(e.Reason) > MaxReason:
		return ErrBadEntry.With("reason is %d bytes, at most %d", len(e.Reason), MaxReason)
	case !utf8.ValidString(e.Reason) || strings.IndexByte(e.Reason, 0) >= 0:
		return ErrBadEntry.With("reason must be UTF-8 text without the NUL character")
	case !e.Until.After(now):
		return ErrBadEntry.With("until %s is not in the future", e.Until.Format(time.RFC3339))
	}
	if e.CreatedAt.IsZero() {
		e.CreatedAt = now
	}
	var until, created int64
	err = sqldb.Tx(ctx, b.db.Main(), func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, `INSERT INTO blacklist (kind, value, reason, until_ms, created_at)
			VALUES ($1, $2, $3, $4, $5)
			ON CONFLICT (kind, value) DO UPDATE SET reason = excluded.reason,
				until_ms = excluded.until_ms, created_at = excluded.created_at
			WHERE excluded.until_ms > blacklist.until_ms`,
			string(e.Kind), e.Value, e.Reason, e.Until.UnixMilli(), e.CreatedAt.UnixMilli()); err != nil {
			return err
		}
		// The row as it is now: e's, or a later one that was there.
		return tx.QueryRowContext(ctx, `SELECT reason, until_ms, created_at FROM blacklist WHERE kind = $1 AND value = $2`,
			string(e.Kind), e.Value).Scan(&e.Reason, &until, &created)
	})
	if err != nil {
		return fmt.Errorf("blacklist %s %s: %w", e.Kind, e.Value, err)
	}
	e.Until, e.CreatedAt = time.UnixMilli(until).UTC(), time.UnixMilli(created).UTC()
	b.change(k, e)
	// Rows expired a while ago (so that no node whose clock is behind
	// still counts them) are purged here, in a statement of their own: in
	// the transaction above, two Adds could lock rows in opposite orders.
	// A failed purge is done by the next Add.
	sqldb.Exec(ctx, b.db.Main(), `DELETE FROM blacklist WHERE until_ms <= $1`, now.Add(-purgeAfter).UnixMilli())
	return nil
}

// purgeAfter is how long after its Until a row is deleted.
const purgeAfter = time.Minute

// Clear removes kind and value from the blacklist and reports whether a
// live entry was there (an expired one is removed as well). Errors:
// ErrBadEntry (Invalid) for a kind or value that does not validate; the
// database's.
func (b *Blacklist) Clear(ctx context.Context, kind Kind, value string) (bool, error) {
	k, value, err := parse(kind, value)
	if err != nil {
		return false, err
	}
	var until int64
	err = sqldb.Tx(ctx, b.db.Main(), func(tx *sql.Tx) error {
		err := tx.QueryRowContext(ctx, `DELETE FROM blacklist WHERE kind = $1 AND value = $2 RETURNING until_ms`,
			string(kind), value).Scan(&until)
		if errors.Is(err, sql.ErrNoRows) {
			return nil
		}
		return err
	})
	if err != nil {
		return false, fmt.Errorf("clear blacklist %s %s: %w", kind, value, err)
	}
	b.change(k, Entry{})
	return until > time.Now().UnixMilli(), nil
}

// List returns the live entries from the database, newest first. Errors
// are the database's.
func (b *Blacklist) List(ctx context.Context) ([]Entry, error) {
	rows, _, err := b.load(ctx, time.Now(), `ORDER BY created_at DESC, kind, value`)
	if err != nil {
		return nil, fmt.Errorf("list blacklist: %w", err)
	}
	out := make([]Entry, len(rows))
	for i, r := range rows {
		out[i] = r.e
	}
	return out, nil
}

// Run refreshes the snapshot from the database at once and then every
// RefreshEvery until ctx is done; it returns nil then. A failed refresh
// keeps the snapshot it had (entries in it still expire on time) and is
// logged at warn: on the first failure and then once a minute.
func (b *Blacklist) Run(ctx context.Context) error {
	t := time.NewTicker(RefreshEvery)
	defer t.Stop()
	var (
		failures       int
		warned, loaded time.Time
	)
	for {
		err := b.refresh(ctx)
		switch {
		case ctx.Err() != nil:
			return nil
		case err != nil:
			failures++
			if failures == 1 || time.Since(warned) >= time.Minute {
				read := "never"
				if !loaded.IsZero() {
					read = time.Since(loaded).Round(time.Second).String() + " ago"
				}
				b.log.Warn("blacklist refresh failed; checking the last one read", "read", read, "failures", failures, "err", err)
				warned = time.Now()
			}
		default:
			if failures > 0 {
				b.log.Info("blacklist refresh works again", "failures", failures)
			}
			failures, loaded = 0, time.Now()
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// refresh reads the live entries and publishes them as the snapshot.
func (b *Blacklist) refresh(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 5*RefreshEvery)
	defer cancel()
	from := b.begin()
	rows, skipped, err := b.load(ctx, time.Now(), "")
	if err != nil {
		return err
	}
	if skipped > 0 {
		b.log.Warn("blacklist rows that do not validate are ignored", "rows", skipped)
	}
	b.publish(from, rows)
	return nil
}

// begin is called before a refresh reads: it returns the local changes
// made so far, which the read will see (each was committed before).
func (b *Blacklist) begin() (from uint64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.seq
}

// publish makes rows, read by a refresh that began at from, the snapshot.
// It keeps as local the changes made after from, which the read may have
// missed. Refreshes may run at once: one that began before the last one
// published publishes nothing (it may have missed changes that one let go).
func (b *Blacklist) publish(from uint64, rows []row) {
	live := make(map[key]Entry, len(rows))
	for _, r := range rows {
		live[r.k] = r.e
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if from < b.read {
		return
	}
	b.read = from
	i := 0
	for i < len(b.pending) && b.pending[i].seq <= from {
		i++
	}
	b.pending = append(b.pending[:0], b.pending[i:]...)
	b.snap.Store(&snapshot{live: live, local: b.localLocked()})
}

// change publishes a snapshot with k's entry set to e (the zero Entry: cleared).
func (b *Blacklist) change(k key, e Entry) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.seq++
	b.pending = append(b.pending, pending{seq: b.seq, k: k, e: e})
	b.snap.Store(&snapshot{live: b.snap.Load().live, local: b.localLocked()})
}

// localLocked returns the map of the pending changes, the latest of a key
// winning. b.mu must be held.
func (b *Blacklist) localLocked() map[key]Entry {
	m := make(map[key]Entry, len(b.pending))
	for _, p := range b.pending {
		m[p.k] = p.e
	}
	return m
}

// row is an entry read from the database, with its key.
type row struct {
	k key
	e Entry
}

// load reads the entries live at now, in the given order, leaving out (and
// counting) rows that do not validate.
func (b *Blacklist) load(ctx context.Context, now time.Time, order string) (out []row, skipped int, err error) {
	rows, err := b.db.Main().R.QueryContext(ctx, `SELECT kind, value, reason, until_ms, created_at
		FROM blacklist WHERE until_ms > $1 `+order, now.UnixMilli())
	if err != nil {
		return nil, 0, err
	}
	defer rows.Close()
	for rows.Next() {
		var e Entry
		var until, created int64
		if err := rows.Scan(&e.Kind, &e.Value, &e.Reason, &until, &created); err != nil {
			return nil, 0, err
		}
		k, v, err := parse(e.Kind, e.Value)
		if err != nil || v != e.Value {
			skipped++
			continue
		}
		e.Until, e.CreatedAt = time.UnixMilli(until).UTC(), time.UnixMilli(created).UTC()
		out = append(out, row{k, e})
	}
	return out, skipped, rows.Err()
}

// parse checks kind and value and returns the entry's key and value in
// canonical form, or ErrBadEntry.
func parse(kind Kind, value string) (key, string, error) {
	if len(value) > 64 {
		return key{}, "", ErrBadEntry.With("%s value of %d bytes is too long", kind, len(value))
	}
	switch kind {
	case KindUser:
		id, err := strconv.ParseInt(value, 10, 64)
		if err != nil || id <= 0 {
			return key{}, "", ErrBadEntry.With("user %q is not a positive decimal id", value)
		}
		return key{user: id}, strconv.FormatInt(id, 10), nil
	case KindIP:
		if strings.Contains(value, "/") {
			p, err := netip.ParsePrefix(value)
			if err != nil || !p.Addr().Is6() || p.Addr().Is4In6() || p.Bits() != 64 {
				return key{}, "", ErrBadEntry.With("ip %q: a prefix must be an IPv6 /64", value)
			}
			p = p.Masked()
			return key{ip: p.Addr(), net: true}, p.String(), nil
		}
		ip, err := netip.ParseAddr(value)
		if err != nil {
			return key{}, "", ErrBadEntry.With("ip %q is not an IP address", value)
		}
		ip = canonical(ip)
		return key{ip: ip}, ip.String(), nil
	}
	return key{}, "", ErrBadEntry.With("kind %q: want %q or %q", kind, KindUser, KindIP)
}

// canonical is the form addresses are kept in: IPv4 not mapped into IPv6,
// no zone.
func canonical(ip netip.Addr) netip.Addr { return ip.Unmap().WithZone("") }

// Ban blacklists kind and value for d with reason, in the background (the
// caller is on a request path): one write at a time per entry, however
// many requests trip the limit meanwhile. A failed write is logged; the
// next strike tries again.
//
// At most 16 writes run at once (a botnet's thousands of addresses must
// not queue on the main database): a strike that finds them all busy is
// dropped, and the client's next strike tries again. After a failed write
// the entry is not tried again for 10 s.
func (b *Blacklist) Ban(kind Kind, value string, d time.Duration, reason string) {
	k := string(kind) + ":" + value
	if _, busy := b.banning.LoadOrStore(k, struct{}{}); busy {
		return
	}
	select {
	case b.banSlots <- struct{}{}:
	default:
		b.banning.Delete(k)
		return
	}
	go func() {
		defer func() { <-b.banSlots }()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		now := time.Now()
		e := Entry{Kind: kind, Value: value, Reason: reason, Until: now.Add(d), CreatedAt: now}
		if err := b.Add(ctx, e); err != nil {
			b.log.Warn("blacklist", "kind", kind, "value", value, "err", err)
			time.AfterFunc(10*time.Second, func() { b.banning.Delete(k) })
			return
		}
		b.banning.Delete(k)
		b.log.Info("blacklisted", "kind", kind, "value", value, "until", e.Until, "reason", reason)
	}()
}
