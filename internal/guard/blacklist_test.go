package guard_test

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/surge-platform/surge/internal/eventually"
	"github.com/surge-platform/surge/internal/guard"
	"github.com/surge-platform/surge/internal/platform/errkind"
	"github.com/surge-platform/surge/internal/platform/sqldb"
	"github.com/surge-platform/surge/internal/platform/sqldb/sqldbtest"
)

// engines runs f on SQLite and PostgreSQL: the blacklist lives in the
// main database only, so one shard is enough.
func engines(t *testing.T, f func(t *testing.T, db *sqldb.Cluster)) {
	for _, e := range sqldbtest.Engines() {
		if !strings.HasSuffix(e.Name, "/1") {
			continue
		}
		t.Run(e.Name, func(t *testing.T) {
			t.Parallel()
			f(t, e.Open(t))
		})
	}
}

// running returns a blacklist on db whose Run loop runs until the test ends.
func running(t *testing.T, db *sqldb.Cluster) *guard.Blacklist {
	t.Helper()
	b := guard.NewBlacklist(db, slog.New(slog.DiscardHandler))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- b.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return b
}

// TestTwoNodes: what one node adds or clears, the other sees after its
// refresh; the node that made the change sees it at once.
func TestTwoNodes(t *testing.T) {
	t.Parallel()
	engines(t, func(t *testing.T, db *sqldb.Cluster) {
		ctx := t.Context()
		a, b := running(t, db), running(t, db)
		until := time.Now().Add(time.Hour)
		ip := netip.MustParseAddr("192.0.2.7")
		if err := a.Add(ctx, guard.Entry{Kind: guard.KindUser, Value: "42", Reason: "bot", Until: until}); err != nil {
			t.Fatal(err)
		}
		if err := a.Add(ctx, guard.Entry{Kind: guard.KindIP, Value: "::ffff:192.0.2.7", Reason: "scraper", Until: until}); err != nil {
			t.Fatal(err)
		}
		if e, ok := a.User(42, time.Now()); !ok || e.Reason != "bot" || e.Value != "42" {
			t.Fatalf("node a does not see its own Add at once: %+v %v", e, ok)
		}
		eventually.True(t, 5*time.Second, "node b sees user 42", func() bool { _, ok := b.User(42, time.Now()); return ok })
		eventually.True(t, 5*time.Second, "node b sees 192.0.2.7", func() bool { _, ok := b.IP(ip, time.Now()); return ok })
		e, ok := b.IP(netip.MustParseAddr("::ffff:192.0.2.7"), time.Now())
		if !ok || e.Value != "192.0.2.7" || e.Kind != guard.KindIP || e.Reason != "scraper" || !e.Until.Equal(until.Truncate(time.Millisecond)) {
			t.Errorf("node b: %+v %v for the mapped form", e, ok)
		}
		if _, ok := b.User(43, time.Now()); ok {
			t.Error("user 43 blacklisted")
		}
		if _, ok := b.IP(netip.MustParseAddr("192.0.2.8"), time.Now()); ok {
			t.Error("192.0.2.8 blacklisted")
		}

		if was, err := b.Clear(ctx, guard.KindUser, "42"); !was || err != nil {
			t.Fatalf("Clear on node b = %v, %v; want true", was, err)
		}
		if _, ok := b.User(42, time.Now()); ok {
			t.Fatal("node b still sees the user it cleared")
		}
		eventually.True(t, 5*time.Second, "node a no longer sees user 42", func() bool { _, ok := a.User(42, time.Now()); return !ok })
		if was, err := a.Clear(ctx, guard.KindUser, "42"); was || err != nil {
			t.Fatalf("second Clear = %v, %v; want false", was, err)
		}
		if _, ok := a.IP(ip, time.Now()); !ok {
			t.Error("clearing the user cleared the address")
		}
	})
}

// TestExpiry: an entry is not reported once its Until has passed, by the
// checks (at the time given) or by List; a later Until wins.
func TestExpiry(t *testing.T) {
	t.Parallel()
	engines(t, func(t *testing.T, db *sqldb.Cluster) {
		ctx := t.Context()
		a, b := running(t, db), running(t, db)
		start := time.Now()
		created := start
		add := func(value, reason string, until time.Time) {
			t.Helper()
			created = created.Add(time.Millisecond) // an order for List, whatever the clock's resolution
			if err := a.Add(ctx, guard.Entry{Kind: guard.KindUser, Value: value, Reason: reason, Until: until, CreatedAt: created}); err != nil {
				t.Fatal(err)
			}
		}
		add("7", "short", start.Add(time.Second))
		add("8", "two hours", start.Add(2*time.Hour))
		add("8", "one hour", start.Add(time.Hour)) // earlier: changes nothing
		add("9", "one hour", start.Add(time.Hour))
		add("9", "three hours", start.Add(3*time.Hour)) // later: wins
		eventually.True(t, 5*time.Second, "node b sees the last entry of user 9", func() bool {
			e, _ := b.User(9, time.Now())
			return e.Reason == "three hours"
		})
		for _, n := range []*guard.Blacklist{a, b} {
			if _, ok := n.User(7, start.Add(time.Second)); ok {
				t.Error("user 7 reported at its Until")
			}
			if e, ok := n.User(8, start); !ok || e.Reason != "two hours" {
				t.Errorf("user 8: %+v %v; want the later Until kept", e, ok)
			}
			if e, ok := n.User(9, start); !ok || e.Reason != "three hours" {
				t.Errorf("user 9: %+v %v; want the later Until", e, ok)
			}
			if _, ok := n.User(9, start.Add(4*time.Hour)); ok {
				t.Error("user 9 reported after its Until")
			}
		}
		eventually.Saw(t, 5*time.Second, "List without user 7", func() (bool, string) {
			list, err := b.List(ctx)
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, e := range list {
				got = append(got, e.Value+" "+e.Reason)
			}
			// Newest first: 9 was last replaced, 8 kept its first entry.
			return strings.Join(got, ", ") == "9 three hours, 8 two hours", strings.Join(got, ", ")
		})
		if _, ok := b.User(7, time.Now()); ok {
			t.Error("user 7 reported after its Until")
		}
	})
}

// logBuffer collects a logger's lines for a test to read.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// TestRefreshFails: when the database cannot be read, checks go on with
// the last snapshot, and the failure is logged at warn.
func TestRefreshFails(t *testing.T) {
	t.Parallel()
	db := sqldbtest.Open(t, sqldbtest.SQLiteURL(t, 1))
	var logs logBuffer
	b := guard.NewBlacklist(db, slog.New(slog.NewTextHandler(&logs, nil)))
	if err := b.Add(t.Context(), guard.Entry{Kind: guard.KindUser, Value: "1", Until: time.Now().Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- b.Run(ctx) }()
	if _, err := db.Main().W.ExecContext(t.Context(), `DROP TABLE blacklist`); err != nil {
		t.Fatal(err)
	}
	eventually.True(t, 5*time.Second, "a warning", func() bool {
		return strings.Contains(logs.String(), `level=WARN msg="blacklist refresh failed`)
	})
	if _, ok := b.User(1, time.Now()); !ok {
		t.Error("user 1 forgotten when the database could not be read")
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Run: %v", err)
	}
}

func TestBadInput(t *testing.T) {
	t.Parallel()
	db := sqldbtest.Open(t, sqldbtest.SQLiteURL(t, 1))
	b := guard.NewBlacklist(db, slog.New(slog.DiscardHandler))
	ctx := t.Context()
	until := time.Now().Add(time.Hour)
	cases := []struct {
		name string
		e    guard.Entry
	}{
		{"no kind", guard.Entry{Value: "1", Until: until}},
		{"another kind", guard.Entry{Kind: "group", Value: "1", Until: until}},
		{"user 0", guard.Entry{Kind: guard.KindUser, Value: "0", Until: until}},
		{"negative user", guard.Entry{Kind: guard.KindUser, Value: "-5", Until: until}},
		{"user not a number", guard.Entry{Kind: guard.KindUser, Value: "abc", Until: until}},
		{"user with a fraction", guard.Entry{Kind: guard.KindUser, Value: "1.5", Until: until}},
		{"user beyond int64", guard.Entry{Kind: guard.KindUser, Value: "99999999999999999999", Until: until}},
		{"empty user", guard.Entry{Kind: guard.KindUser, Until: until}},
		{"bad ip", guard.Entry{Kind: guard.KindIP, Value: "300.1.1.1", Until: until}},
		{"ip prefix", guard.Entry{Kind: guard.KindIP, Value: "10.0.0.0/8", Until: until}},
		{"ipv6 prefix not /64", guard.Entry{Kind: guard.KindIP, Value: "2001:db8::/48", Until: until}},
		{"mapped prefix", guard.Entry{Kind: guard.KindIP, Value: "::ffff:10.0.0.0/64", Until: until}},
		{"empty ip", guard.Entry{Kind: guard.KindIP, Until: until}},
		{"long value", guard.Entry{Kind: guard.KindIP, Value: strings.Repeat("1", 65), Until: until}},
		{"no until", guard.Entry{Kind: guard.KindUser, Value: "1"}},
		{"until past", guard.Entry{Kind: guard.KindUser, Value: "1", Until: time.Now().Add(-time.Second)}},
		{"long reason", guard.Entry{Kind: guard.KindUser, Value: "1", Until: until, Reason: strings.Repeat("x", guard.MaxReason+1)}},
		{"NUL in reason", guard.Entry{Kind: guard.KindUser, Value: "1", Until: until, Reason: "a\x00b"}},
		{"reason not UTF-8", guard.Entry{Kind: guard.KindUser, Value: "1", Until: until, Reason: "\xff"}},
	}
	invalid := func(t *testing.T, what string, err error) {
		t.Helper()
		if k := errkind.Of(err); k == nil || k.Kind != errkind.Invalid || !errors.Is(err, guard.ErrBadEntry) {
			t.Errorf("%s: error %v, want ErrBadEntry (Invalid)", what, err)
		}
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			invalid(t, "Add", b.Add(ctx, c.e))
			if c.e.Kind != guard.KindUser || c.e.Value != "1" { // the entry's value itself is fine in the others
				_, err := b.Clear(ctx, c.e.Kind, c.e.Value)
				invalid(t, "Clear", err)
			}
		})
	}
	if list, err := b.List(ctx); err != nil || len(list) != 0 {
		t.Fatalf("List after bad input: %v %v", list, err)
	}

	// Values are kept in canonical form.
	for _, v := range []struct {
		kind     guard.Kind
		in, want string
	}{
		{guard.KindUser, "007", "7"},
		{guard.KindUser, "+8", "8"},
		{guard.KindIP, "::FFFF:10.1.2.3", "10.1.2.3"},
		{guard.KindIP, "fe80::0001%eth0", "fe80::1"},
		{guard.KindIP, "2001:DB8:0:0::1", "2001:db8::1"},
		{guard.KindIP, "2001:DB8:0:9:1::7/64", "2001:db8:0:9::/64"},
	} {
		if err := b.Add(ctx, guard.Entry{Kind: v.kind, Value: v.in, Until: until}); err != nil {
			t.Fatalf("Add %s %q: %v", v.kind, v.in, err)
		}
	}
	list, err := b.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range list {
		got = append(got, string(e.Kind)+" "+e.Value)
	}
	slices.Sort(got)
	if want := "ip 10.1.2.3, ip 2001:db8:0:9::/64, ip 2001:db8::1, ip fe80::1, user 7, user 8"; strings.Join(got, ", ") != want {
		t.Errorf("List: %s, want %s", strings.Join(got, ", "), want)
	}
	if _, ok := b.User(7, time.Now()); !ok {
		t.Error("user 007 not found as 7")
	}
	if _, ok := b.IP(netip.MustParseAddr("fe80::1%eth1"), time.Now()); !ok {
		t.Error("fe80::1 not found with another zone")
	}
	for ip, want := range map[string]bool{"2001:db8:0:9::1": true, "2001:db8:0:9:ffff::": true, "2001:db8:0:a::1": false, "2001:db8::2": false} {
		if e, ok := b.IP(netip.MustParseAddr(ip), time.Now()); ok != want || ok && e.Value != "2001:db8:0:9::/64" {
			t.Errorf("IP(%s) = %+v %v, want %v (the /64 entry)", ip, e, ok, want)
		}
	}
	if got, want := guard.IPValue(netip.MustParseAddr("2001:db8:0:9:1::7")), "2001:db8:0:9::/64"; got != want {
		t.Errorf("IPValue of an IPv6 address: %s, want %s", got, want)
	}
	if got, want := guard.IPValue(netip.MustParseAddr("::ffff:10.1.2.3")), "10.1.2.3"; got != want {
		t.Errorf("IPValue of an IPv4 address: %s, want %s", got, want)
	}
	if was, err := b.Clear(ctx, guard.KindIP, "2001:db8:0:9::/64"); !was || err != nil {
		t.Errorf("Clear of the /64 = %v %v, want true", was, err)
	}
	if was, err := b.Clear(ctx, guard.KindIP, "::ffff:10.1.2.3"); !was || err != nil {
		t.Errorf("Clear of the mapped form = %v %v, want true", was, err)
	}
}

func TestChecksDoNotAllocate(t *testing.T) {
	// Not parallel: AllocsPerRun counts the whole process's allocations.
	db := sqldbtest.Open(t, sqldbtest.SQLiteURL(t, 1))
	b := guard.NewBlacklist(db, slog.New(slog.DiscardHandler))
	until := time.Now().Add(time.Hour)
	for _, e := range []guard.Entry{{Kind: guard.KindUser, Value: "5", Until: until}, {Kind: guard.KindIP, Value: "2001:db8::5", Until: until}} {
		if err := b.Add(t.Context(), e); err != nil {
			t.Fatal(err)
		}
	}
	hit, miss, miss6 := netip.MustParseAddr("2001:db8::5"), netip.MustParseAddr("::ffff:192.0.2.1"), netip.MustParseAddr("2001:db8:1::5")
	now := time.Now()
	allocs := testing.AllocsPerRun(1000, func() {
		_, u := b.User(5, now)
		_, i := b.IP(hit, now)
		_, u2 := b.User(6, now)
		_, i2 := b.IP(miss, now)
		_, i3 := b.IP(miss6, now) // the /64 looked up too
		if !u || !i || u2 || i2 || i3 {
			t.Fatal("wrong answers")
		}
	})
	if allocs != 0 {
		t.Errorf("%v allocations per 5 checks", allocs)
	}
}
