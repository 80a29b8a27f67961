package switches_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/surge-platform/surge/internal/platform/bus"
	"github.com/surge-platform/surge/internal/platform/bus/bustest"
	"github.com/surge-platform/surge/internal/platform/switches"
	"github.com/surge-platform/surge/internal/platform/web"
)

func TestMain(m *testing.M) {
	code := m.Run()
	bustest.StopExternal()
	os.Exit(code)
}

var defs = switches.Defs("wechatpay", "alipay")

// mustPanel opens a Panel of defs on url (a fresh Bus).
func mustPanel(tb testing.TB, url string) (*switches.Panel, *bus.Bus) {
	tb.Helper()
	b := bustest.MustOpen(tb, url)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	p, err := switches.New(ctx, b, 0, defs)
	if err != nil {
		tb.Fatalf("switches.New: %v", err)
	}
	return p, b
}

// threeNodes opens three Panels, each on its own connection, sharing one
// fresh namespace of the test NATS server.
func threeNodes(tb testing.TB) []*switches.Panel {
	url := bustest.Namespaced(tb, bustest.ExternalURL(tb))
	var nodes []*switches.Panel
	for range 3 {
		p, _ := mustPanel(tb, url)
		nodes = append(nodes, p)
	}
	return nodes
}

// watch runs p.Watch until the test ends.
func watch(tb testing.TB, p *switches.Panel) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Watch(ctx) }()
	tb.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			tb.Errorf("Watch: %v", err)
		}
	})
}

// waitFor polls cond until it holds or d passes, and returns how long it took.
func waitFor(tb testing.TB, d time.Duration, what string, cond func() bool) time.Duration {
	tb.Helper()
	start := time.Now()
	for !cond() {
		if time.Since(start) > d {
			tb.Fatalf("%s: not within %v", what, d)
		}
		time.Sleep(time.Millisecond)
	}
	return time.Since(start)
}

func TestDeclaredSwitches(t *testing.T) {
	t.Parallel()
	seen := map[string]bool{}
	for _, d := range defs {
		if seen[d.Name] || d.Description == "" || d.WhenOff == "" {
			t.Errorf("switch %+v: repeated or undescribed", d)
		}
		if !d.Default {
			t.Errorf("switch %s defaults to off: a nil Panel would answer wrongly", d.Name)
		}
		seen[d.Name] = true
	}
	for _, name := range []string{switches.OrdersHistoryFull, switches.OrdersReadPayQuery, switches.NotifySend,
		switches.PromoCouponList, "pay.channel.wechatpay", "pay.channel.alipay"} {
		if !seen[name] {
			t.Errorf("%s not declared", name)
		}
	}
	var nilPanel *switches.Panel
	if !nilPanel.On(switches.NotifySend) {
		t.Error("a nil Panel has a switch off")
	}
}

// TestPropagationThreeNodes: a change made on one of three nodes (three
// connections to one NATS server) is seen by all three within a second.
func TestPropagationThreeNodes(t *testing.T) {
	t.Parallel()
	nodes := threeNodes(t)
	for _, p := range nodes {
		watch(t, p)
	}
	var worst time.Duration
	for i, on := range []bool{false, true, false, true, false, true} {
		from := nodes[i%3]
		start := time.Now()
		if _, err := from.Set(t.Context(), switches.NotifySend, on, fmt.Sprintf("ops%d", i)); err != nil {
			t.Fatalf("Set: %v", err)
		}
		for j, p := range nodes {
			waitFor(t, time.Second, fmt.Sprintf("node %d sees %s=%v", j, switches.NotifySend, on), func() bool {
				return p.On(switches.NotifySend) == on
			})
		}
		took := time.Since(start)
		worst = max(worst, took)
		t.Logf("change %d (%v) from node %d: all 3 nodes within %v (Set included)", i, on, i%3, took)
	}
	fmt.Printf("switch propagation on 3 nodes: worst %v of 6 changes (Set round trip included)\n", worst)
	for j, p := range nodes {
		for _, s := range p.List() {
			if s.Name == switches.NotifySend && (s.ChangedBy != "ops5" || s.ChangedAt == nil || s.Revision == 0 || !s.On) {
				t.Errorf("node %d lists %+v", j, s)
			}
		}
	}
}

// TestConcurrentSetsAllRecorded: changes racing on one switch from three
// nodes all succeed, each is recorded once, and every record's old value is
// the value the record before it set.
func TestConcurrentSetsAllRecorded(t *testing.T) {
	t.Parallel()
	nodes := threeNodes(t)
	const n = 24
	var wg sync.WaitGroup
	start := make(chan struct{})
	errs := make(chan error, n)
	for i := range n {
		wg.Go(func() {
			<-start
			_, err := nodes[i%3].Set(context.Background(), switches.PromoCouponList, i%2 == 0, fmt.Sprintf("op%02d", i))
			errs <- err
		})
	}
	close(start)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatalf("Set: %v", err)
		}
	}
	hist, err := nodes[0].History(t.Context(), switches.PromoCouponList)
	if err != nil {
		t.Fatal(err)
	}
	if len(hist) != n {
		t.Fatalf("history holds %d records, want %d", len(hist), n)
	}
	by := map[string]bool{}
	for i, r := range hist { // newest first
		by[r.By] = true
		if i+1 < len(hist) {
			prev := hist[i+1]
			if r.Old != prev.On || r.Revision <= prev.Revision || r.At.Before(prev.At.Add(-time.Second)) {
				t.Errorf("record %+v does not follow %+v", r, prev)
			}
		} else if !r.Old {
			t.Errorf("first record %+v: old should be the default (on)", r)
		}
	}
	if len(by) != n {
		t.Errorf("history names %d operators, want %d", len(by), n)
	}
}

func TestUnknownAndBadInput(t *testing.T) {
	t.Parallel()
	p, _ := mustPanel(t, bustest.Namespaced(t, bustest.ExternalURL(t)))
	_, err := p.Set(t.Context(), "orders.everything", false, "ops")
	if !errors.Is(err, switches.ErrUnknown) || web.Status(err) != http.StatusNotFound {
		t.Errorf("unknown switch: %v (status %d), want ErrUnknown, 404", err, web.Status(err))
	}
	if _, err := p.History(t.Context(), "nope"); !errors.Is(err, switches.ErrUnknown) {
		t.Errorf("history of an unknown switch: %v", err)
	}
	if _, err := p.Set(t.Context(), switches.NotifySend, false, ""); !errors.Is(err, switches.ErrOperator) || web.Status(err) != 400 {
		t.Errorf("no operator: %v", err)
	}
	if !p.On("not.declared") {
		t.Error("a name not declared is off")
	}
	if h, err := p.History(t.Context(), switches.NotifySend); err != nil || len(h) != 0 {
		t.Errorf("history of a switch never set: %v, %v", h, err)
	}
}

func TestOnDoesNotAllocate(t *testing.T) { // not parallel: AllocsPerRun
	p, _ := mustPanel(t, bustest.Namespaced(t, bustest.ExternalURL(t)))
	if n := testing.AllocsPerRun(1000, func() { p.On(switches.OrdersReadPayQuery) }); n != 0 {
		t.Errorf("On allocates %v times", n)
	}
}

// TestHandEditedValues: a value put with the nats CLI (on/off) is followed,
// and a deleted key means the default again.
func TestHandEditedValues(t *testing.T) {
	t.Parallel()
	p, b := mustPanel(t, bustest.Namespaced(t, bustest.ExternalURL(t)))
	watch(t, p)
	kv, err := b.JetStream().KeyValue(t.Context(), b.Name(switches.Bucket))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.PutString(t.Context(), switches.NotifySend, "off"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, time.Second, "a bare off", func() bool { return !p.On(switches.NotifySend) })
	if err := kv.Delete(t.Context(), switches.NotifySend); err != nil {
		t.Fatal(err)
	}
	waitFor(t, time.Second, "deleted: back to on", func() bool { return p.On(switches.NotifySend) })
	if _, err := p.Set(t.Context(), switches.NotifySend, false, "ops"); err != nil {
		t.Fatalf("Set after a delete: %v", err)
	}
	h, err := p.History(t.Context(), switches.NotifySend)
	if err != nil || len(h) != 3 || h[0].By != "ops" || !h[1].Reset || h[2].By != "nats kv" {
		t.Fatalf("history %+v, %v", h, err)
	}
}

// TestBusCut: a node whose connection is cut refuses changes as
// unavailable at once, keeps answering from its snapshot, and catches up
// with the changes made meanwhile when the connection comes back.
func TestBusCut(t *testing.T) {
	t.Parallel()
	url := bustest.Namespaced(t, bustest.ExternalURL(t))
	other, _ := mustPanel(t, url)
	px := startProxy(t, url)
	cut, _ := mustPanel(t, px.url)
	watch(t, cut)
	if _, err := cut.Set(t.Context(), switches.OrdersHistoryFull, false, "ops"); err != nil {
		t.Fatal(err)
	}
	px.cut()
	waitFor(t, 5*time.Second, "Set refused as unavailable", func() bool {
		start := time.Now()
		_, err := cut.Set(t.Context(), switches.OrdersHistoryFull, true, "ops")
		if err != nil && time.Since(start) > 2500*time.Millisecond {
			t.Errorf("Set took %v to fail", time.Since(start))
		}
		if err != nil && !errors.Is(err, switches.ErrUnavailable) {
			t.Fatalf("Set with the bus cut: %v, want ErrUnavailable", err)
		}
		return err != nil
	})
	if _, err := cut.History(t.Context(), switches.OrdersHistoryFull); !errors.Is(err, switches.ErrUnavailable) || web.Status(err) != 503 {
		t.Errorf("History with the bus cut: %v", err)
	}
	if cut.On(switches.OrdersHistoryFull) {
		t.Error("the snapshot lost the last value")
	}
	if _, err := other.Set(t.Context(), switches.NotifySend, false, "other"); err != nil {
		t.Fatal(err)
	}
	px.restore()
	waitFor(t, 15*time.Second, "the cut node catches up after reconnecting", func() bool { return !cut.On(switches.NotifySend) })
	if _, err := cut.Set(t.Context(), switches.OrdersHistoryFull, true, "ops"); err != nil {
		t.Fatalf("Set after the bus came back: %v", err)
	}
	waitFor(t, time.Second, "the other node sees it", func() bool { return other.On(switches.OrdersHistoryFull) })
}

// proxy forwards TCP connections to a NATS server until cut.
type proxy struct {
	t      testing.TB
	url    string // nats://proxy, with the namespace of the target URL
	addr   string
	target string
	mu     sync.Mutex
	ln     net.Listener
	conns  []net.Conn
}

func startProxy(t testing.TB, natsURL string) *proxy {
	hostport, query, _ := strings.Cut(strings.TrimPrefix(natsURL, "nats://"), "?")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{t: t, addr: ln.Addr().String(), target: hostport}
	p.url = "nats://" + p.addr + "?" + query
	p.serve(ln)
	t.Cleanup(p.cut)
	return p
}

func (p *proxy) serve(ln net.Listener) {
	p.mu.Lock()
	p.ln = ln
	p.mu.Unlock()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s, err := net.Dial("tcp", p.target)
			if err != nil {
				c.Close()
				continue
			}
			p.mu.Lock()
			p.conns = append(p.conns, c, s)
			p.mu.Unlock()
			go func() { io.Copy(s, c); s.Close() }()
			go func() { io.Copy(c, s); c.Close() }()
		}
	}()
}

// cut closes the listener and every connection.
func (p *proxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ln != nil {
		p.ln.Close()
		p.ln = nil
	}
	for _, c := range p.conns {
		c.Close()
	}
	p.conns = nil
}

// restore listens again on the same address.
func (p *proxy) restore() {
	ln, err := net.Listen("tcp", p.addr)
	if err != nil {
		p.t.Fatalf("proxy: listen again: %v", err)
	}
	p.serve(ln)
}

// TestBucketLost: the bus loses the bucket under running nodes (a server
// restarted without its JetStream storage; here: deleted). The nodes make
// it again, every switch at its default, and a change made in the new
// bucket (whose revisions count from 1 again) reaches all of them.
func TestBucketLost(t *testing.T) {
	t.Parallel()
	url := bustest.Namespaced(t, bustest.ExternalURL(t))
	var nodes []*switches.Panel
	var b *bus.Bus
	for range 3 {
		p, pb := mustPanel(t, url)
		watch(t, p)
		nodes, b = append(nodes, p), pb
	}
	for range 3 { // revisions 1..3 of the old bucket, ending off
		if _, err := nodes[0].Set(t.Context(), switches.NotifySend, false, "ops"); err != nil {
			t.Fatal(err)
		}
		if _, err := nodes[0].Set(t.Context(), switches.NotifySend, true, "ops"); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := nodes[0].Set(t.Context(), switches.NotifySend, false, "ops"); err != nil {
		t.Fatal(err)
	}
	for i, p := range nodes {
		waitFor(t, time.Second, "node "+strconv.Itoa(i)+" sees off", func() bool { return !p.On(switches.NotifySend) })
	}
	if err := b.JetStream().DeleteKeyValue(t.Context(), b.Name(switches.Bucket)); err != nil {
		t.Fatal(err)
	}
	for i, p := range nodes { // made again: back to the default
		waitFor(t, 15*time.Second, "node "+strconv.Itoa(i)+" back at the default", func() bool { return p.On(switches.NotifySend) })
	}
	waitFor(t, 15*time.Second, "a change in the new bucket", func() bool {
		_, err := nodes[1].Set(t.Context(), switches.NotifySend, false, "ops")
		return err == nil
	})
	for i, p := range nodes {
		waitFor(t, 2*time.Second, "node "+strconv.Itoa(i)+" sees the new bucket's change", func() bool { return !p.On(switches.NotifySend) })
	}
}
