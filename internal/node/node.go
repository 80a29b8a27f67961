// Package node is the one place where surge's roles are wired together by
// hand: it opens the backends a node's roles need, builds the contexts,
// serves HTTP and runs the background work, and shuts all of it down in
// order.
package node

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/surge-platform/surge/internal/api"
	"github.com/surge-platform/surge/internal/catalog"
	"github.com/surge-platform/surge/internal/fulfil"
	"github.com/surge-platform/surge/internal/inventory"
	"github.com/surge-platform/surge/internal/member"
	"github.com/surge-platform/surge/internal/notify"
	"github.com/surge-platform/surge/internal/order"
	"github.com/surge-platform/surge/internal/payment"
	"github.com/surge-platform/surge/internal/payment/alisim"
	"github.com/surge-platform/surge/internal/payment/paysim"
	"github.com/surge-platform/surge/internal/payment/wxsim"
	"github.com/surge-platform/surge/internal/platform/bus"
	"github.com/surge-platform/surge/internal/platform/id"
	"github.com/surge-platform/surge/internal/platform/kv"
	"github.com/surge-platform/surge/internal/platform/outbox"
	"github.com/surge-platform/surge/internal/platform/sqldb"
	"github.com/surge-platform/surge/internal/platform/web"
	"github.com/surge-platform/surge/internal/push"
)

// Roles a node can take. "all" means every implemented role.
var Roles = []string{"api", "worker", "paysim", "fulfil", "push"}

// Config is everything a node needs; cmd/surge fills it from flags and env.
type Config struct {
	Addr       string         // listen address; ":0" picks a free port
	Data       string         // directory for the embedded backends
	Roles      []string       // subset of Roles, or ["all"]
	DB         []string       // database URLs; empty = sqlite:<Data>/db
	KV         string         // kv URL; empty = mem:
	Bus        string         // bus URL; empty = embedded:<Data>/nats
	AdminToken string         // empty = random, printed at start
	OrderTTL   time.Duration  // time to pay an order
	NodeID     int            // id generator node; -1 = lease one from the kv store
	DBMaxConns int            // per PostgreSQL database; 0 = default
	Migrate    bool           // apply migrations at start
	RelayPoll  time.Duration  // outbox backstop poll; 0 = 1s
	PublicURL  string         // base URL others reach this node's API at (payment callbacks); "" = http://<listen address>
	PayURL     string         // base URL of the payment provider (simulator); "" = this node's when it runs paysim, else PublicURL
	PayQuery   time.Duration  // first active query of an unpaid payment; 0 = 10s
	PayWeights map[string]int // routing weight per channel; missing = 1
	WSPing     time.Duration  // push: ping sockets idle this long, drop them after 3 × it; 0 = 25s
	NotifyURL  string         // webhook for customer notifications; "" = the simulator's (PayURL's) inbox; "off" = none
}

// Defaults returns a config that works on a laptop.
func Defaults() Config {
	return Config{Addr: "127.0.0.1:8080", Data: "./data", Roles: []string{"all"}, OrderTTL: 15 * time.Minute,
		NodeID: -1, Migrate: true}
}

// Resolve fills the derived defaults and checks the roles.
func (c *Config) Resolve() error {
	if len(c.DB) == 0 {
		c.DB = []string{"sqlite:" + filepath.Join(c.Data, "db")}
	}
	if c.KV == "" {
		c.KV = "mem:"
	}
	if c.Bus == "" {
		c.Bus = "embedded:" + filepath.Join(c.Data, "nats")
	}
	if c.AdminToken == "" {
		b := make([]byte, 16)
		rand.Read(b)
		c.AdminToken = "adm_" + hex.EncodeToString(b)
	}
	var roles []string
	for _, r := range c.Roles {
		for _, r := range strings.Split(r, ",") {
			r = strings.TrimSpace(r)
			switch {
			case r == "all":
				roles = append(roles, Roles...)
			case slices.Contains(Roles, r):
				roles = append(roles, r)
			case r == "monitor":
				return fmt.Errorf("role %q is not implemented yet (available: %s)", r, strings.Join(Roles, ", "))
			case r != "":
				return fmt.Errorf("unknown role %q (available: all, %s)", r, strings.Join(Roles, ", "))
			}
		}
	}
	if len(roles) == 0 {
		return errors.New("no role given")
	}
	if err := checkConfig(c); err != nil {
		return err
	}
	if c.WSPing != 0 && c.WSPing < 100*time.Millisecond {
		return fmt.Errorf("--ws-ping %v: want at least 100ms", c.WSPing)
	}
	slices.Sort(roles)
	c.Roles = slices.Compact(roles)
	return nil
}

// Has reports whether the node has role r.
func (c *Config) Has(r string) bool { return slices.Contains(c.Roles, r) }

// Node is a running set of roles.
type Node struct {
	cfg   Config
	log   *slog.Logger
	DB    *sqldb.Cluster
	KV    kv.Store
	Bus   *bus.Bus
	IDs   *id.Generator
	relay *outbox.Relay
	lease *lease

	Members  *member.Service
	Catalog  *catalog.Service
	Stock    *inventory.Service
	Orders   *order.Service
	Payments *payment.Service
	Sim      *paysim.Server
	Fulfil   *fulfil.Service
	Push     *push.Hub
	Notify   *notify.Service // customer notifications (worker role); nil when off
	Inbox    *notify.Sink    // the simulator's notification inbox (paysim role)

	ln     net.Listener
	srv    *http.Server
	unsub  func()
	closer []func() error
}

// New opens the backends and builds the contexts; it listens on cfg.Addr
// but serves only from Run.
func New(ctx context.Context, cfg Config, log *slog.Logger) (n *Node, err error) {
	if err := cfg.Resolve(); err != nil {
		return nil, err
	}
	n = &Node{cfg: cfg, log: log}
	defer func(n *Node) { // the argument: "return nil, err" sets the result n to nil first
		if err != nil {
			n.Close()
		}
	}(n)
	if n.ln, err = listen(cfg.Addr); err != nil {
		return nil, err
	}
	if err := checkDirs(&cfg); err != nil {
		return nil, err
	}
	octx, cancel := context.WithTimeout(ctx, OpenTimeout)
	defer cancel()
	start := time.Now()
	if n.DB, err = sqldb.Open(octx, cfg.DB, sqldb.Options{MaxConns: cfg.DBMaxConns}); err != nil {
		return nil, openError("database", cfg.DB, "--db", "PostgreSQL", start, err)
	}
	n.closer = append(n.closer, n.DB.Close)
	if cfg.Migrate {
		if err := n.DB.Migrate(ctx); err != nil {
			return nil, err
		}
	}
	octx, cancel = context.WithTimeout(ctx, OpenTimeout)
	defer cancel()
	start = time.Now()
	if n.KV, err = kv.Open(octx, cfg.KV); err != nil {
		return nil, openError("kv", []string{cfg.KV}, "--kv", "Redis", start, err)
	}
	n.closer = append(n.closer, n.KV.Close)
	octx, cancel = context.WithTimeout(ctx, OpenTimeout)
	defer cancel()
	start = time.Now()
	if n.Bus, err = bus.Open(octx, cfg.Bus); err != nil {
		return nil, openError("bus", []string{cfg.Bus}, "--bus", natsServer, start, err)
	}
	n.closer = append(n.closer, n.Bus.Close)
	if err := checkNATS(cfg.Bus, n.Bus.Conn().ConnectedServerVersion()); err != nil {
		return nil, err
	}
	for _, st := range []bus.StreamConfig{order.Stream, order.Timers} {
		if err := n.Bus.EnsureStream(octx, st); err != nil {
			return nil, openError("bus", []string{cfg.Bus}, "--bus", natsServer, start, err)
		}
	}
	node := cfg.NodeID
	if node < 0 {
		if n.lease, err = leaseNode(ctx, n.KV); err != nil {
			return nil, err
		}
		node = n.lease.node
	}
	if n.IDs, err = id.New(node); err != nil {
		return nil, err
	}
	n.relay = outbox.NewRelay(n.DB, n.Bus, log, cfg.RelayPoll)
	n.Stock = inventory.New(n.DB)
	n.Catalog = catalog.New(n.DB, n.IDs, n.Stock, n.Bus)
	if n.Members, err = member.New(ctx, n.DB, n.IDs); err != nil {
		return nil, err
	}
	var wake order.Notifier = outbox.RemoteNotifier{Bus: n.Bus}
	if cfg.Has("worker") {
		wake = n.relay
		unsub, err := n.Bus.Subscribe(outbox.WakeSubject, n.relay.OnWake)
		if err != nil {
			return nil, fmt.Errorf("bus: %w", err)
		}
		n.closer = append(n.closer, func() error { unsub(); return nil })
	}
	n.Orders = order.New(n.DB, n.IDs, n.Catalog, n.Stock, wake, log, order.Config{TTL: cfg.OrderTTL})
	if n.unsub, err = n.Bus.Subscribe(catalog.InvalidateSubject, func(_ string, data []byte) {
		x, _ := strconv.ParseInt(string(data), 10, 64)
		n.Catalog.Invalidate(x)
	}); err != nil {
		return nil, fmt.Errorf("bus: %w", err)
	}
	srv := &api.Server{Log: log, AdminToken: cfg.AdminToken, Checks: []api.Check{
		{Name: "db", Ping: n.DB.Ping}, {Name: "kv", Ping: n.KV.Ping}, {Name: "bus", Ping: n.Bus.Ping},
	}, Stats: n.stats}
	if cfg.Has("api") {
		srv.Members, srv.Catalog, srv.Orders = n.Members, n.Catalog, n.Orders
	}
	public := cfg.PublicURL
	if public == "" {
		public = "http://" + n.ln.Addr().String()
	}
	srv.Extra = map[string]http.Handler{}
	keys, err := simKeys(ctx, n.DB)
	if err != nil {
		return nil, err
	}
	if cfg.Has("paysim") {
		n.Sim = paysim.New(paysim.Config{Channels: keys.Channels(), ControlToken: cfg.AdminToken, PublicURL: public,
			Log: log.With("role", "paysim")})
		srv.Extra["/paysim/v1/"] = n.Sim.Handler()
	}
	notifySecret, err := member.Secret(ctx, n.DB, "notify_secret")
	if err != nil {
		return nil, err
	}
	if cfg.Has("paysim") {
		n.Inbox = notify.NewSink(notifySecret, cfg.AdminToken)
		srv.Extra[notify.SinkPath] = n.Inbox.Handler()
	}
	if cfg.Has("fulfil") {
		n.Fulfil = fulfil.New(n.DB, n.KV, n.IDs, n.Orders, wake.Notify, push.StoreNotifier{Bus: n.Bus}, log.With("role", "fulfil"))
		srv.Fulfil = n.Fulfil
		if strings.HasPrefix(cfg.KV, "mem:") { // the store queues live in this process: rebuild them
			k, err := n.Fulfil.Restore(ctx)
			if err != nil {
				return nil, fmt.Errorf("restore store queues: %w", err)
			}
			if k > 0 {
				log.Info("store queues restored", "orders", k)
			}
		}
	}
	if cfg.Has("push") {
		stores := n.Fulfil
		if stores == nil { // POS keys and store queues, read only
			stores = fulfil.New(n.DB, n.KV, n.IDs, n.Orders, nil, nil, log.With("role", "push"))
		}
		if err := push.Prepare(ctx, n.Bus); err != nil {
			return nil, fmt.Errorf("push: %w", err)
		}
		n.Push = push.New(n.Bus, n.Members, stores, push.Config{Ping: cfg.WSPing}, log.With("role", "push"))
		for pattern, h := range n.Push.Routes() {
			srv.Extra[pattern] = h
		}
		srv.PushStats = func() any { return n.Push.Stats() }
	}
	if cfg.Has("api") || cfg.Has("worker") {
		payURL := cfg.PayURL
		if payURL == "" {
			payURL = public
		}
		channels := []payment.Channel{
			wxsim.New(wxsim.Config{BaseURL: payURL, Secret: keys.WXSecret}),
			alisim.New(alisim.Config{BaseURL: payURL, Secret: keys.AliSecret, PublicKey: &keys.AliPrivateKey.PublicKey}),
		}
		n.Payments = payment.New(n.DB, n.IDs, n.Orders, channels, cfg.PayWeights, log, payment.Config{NotifyBase: public, QueryAfter: cfg.PayQuery})
		if url := cmp.Or(cfg.NotifyURL, strings.TrimSuffix(payURL, "/")+notify.SinkPath); cfg.Has("worker") && url != "off" {
			if err := notify.Prepare(ctx, n.Bus); err != nil {
				return nil, fmt.Errorf("notify: %w", err)
			}
			n.Notify = notify.New(notify.Config{}, notify.NewWebhook(url, notifySecret, 0), log.With("role", "notify"))
		}
		if cfg.Has("api") {
			srv.Payments = n.Payments
		}
	}
	n.srv = &http.Server{Handler: srv.Handler(), ReadHeaderTimeout: 5 * time.Second, ReadTimeout: 15 * time.Second,
		WriteTimeout: 30 * time.Second, IdleTimeout: 2 * time.Minute, MaxHeaderBytes: web.ServerMaxHeaderBytes,
		ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)}
	return n, nil
}

// Config returns the resolved configuration.
func (n *Node) Config() Config { return n.cfg }

// URL is the base URL the node serves on.
func (n *Node) URL() string { return "http://" + n.ln.Addr().String() }

// Run serves until ctx is done, then shuts down gracefully: it stops
// accepting, lets in-flight requests finish (up to 15 s), stops the
// background work and flushes the outbox relay. It returns the first error
// that stopped it.
func (n *Node) Run(ctx context.Context) error {
	bg, stopBG := context.WithCancel(context.WithoutCancel(ctx))
	defer stopBG()
	var wg sync.WaitGroup
	errc := make(chan error, 8)
	spawn := func(name string, f func(context.Context) error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := f(bg); err != nil && bg.Err() == nil {
				errc <- fmt.Errorf("%s: %w", name, err)
			}
		}()
	}
	if n.lease != nil {
		spawn("node id lease", n.lease.renew)
	}
	if n.Sim != nil {
		spawn("payment simulator callbacks", n.Sim.Run)
	}
	if n.Fulfil != nil {
		spawn("fulfilment consumer", func(ctx context.Context) error { return n.Fulfil.Consume(ctx, n.Bus) })
	}
	if n.Push != nil {
		spawn("push sockets", n.Push.Run)
		spawn("push routing", func(ctx context.Context) error { return push.Route(ctx, n.Bus) })
	}
	if n.cfg.Has("worker") {
		spawn("outbox relay", n.relay.Run)
		spawn("order consumer", func(ctx context.Context) error { return n.Orders.Consume(ctx, n.Bus) })
		spawn("reservation sweeper", n.sweep)
		spawn("order timers", func(ctx context.Context) error { return n.Orders.ConsumeTimers(ctx, n.Bus) })
		spawn("expiry sweeper", n.expireDue)
		spawn("payment queries and repairs", n.Payments.Work)
		spawn("daily reconciliation", n.Payments.ReconcileDaily)
		if n.Notify != nil {
			spawn("customer notifications", func(ctx context.Context) error { return n.Notify.Consume(ctx, n.Bus) })
		}
	}
	go func() {
		if err := n.srv.Serve(n.ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			errc <- fmt.Errorf("http: %w", err)
		}
	}()
	var err error
	select {
	case <-ctx.Done():
	case err = <-errc:
	}
	n.log.Info("shutting down")
	sctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if serr := n.srv.Shutdown(sctx); serr != nil {
		n.log.Warn("http shutdown", "err", serr)
	}
	stopBG() // the relay makes its final flush on the way out
	wg.Wait()
	return err
}

// every runs f every d until ctx is done.
func every(ctx context.Context, d time.Duration, f func(context.Context)) error {
	t := time.NewTicker(d)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			f(ctx)
		}
	}
}

// sweep releases stock reservations whose order never appeared.
func (n *Node) sweep(ctx context.Context) error {
	return every(ctx, 30*time.Second, func(ctx context.Context) {
		released, err := n.Stock.Sweep(ctx, 2*time.Minute, n.Orders.Fate)
		if err != nil && ctx.Err() == nil {
			n.log.Warn("reservation sweep", "err", err)
		} else if released > 0 && err == nil {
			n.log.Info("reservation sweep released orphans", "orders", released)
		}
	})
}

// expireDue is the backstop of the order timers.
func (n *Node) expireDue(ctx context.Context) error {
	return every(ctx, 5*time.Second, func(ctx context.Context) {
		if k, err := n.Orders.ExpireDue(ctx, 2*time.Second, 500); err != nil && ctx.Err() == nil {
			n.log.Warn("expiry sweep", "err", err)
		} else if k > 0 && err == nil {
			n.log.Info("expiry sweep expired orders its timers missed", "orders", k)
		}
	})
}

func (n *Node) stats(ctx context.Context) (map[string]int64, error) {
	seen, err := n.Orders.SeenCount(ctx)
	if err != nil {
		return nil, err
	}
	msgs, _, err := n.Bus.StreamInfo(ctx, order.Stream.Name)
	if err != nil {
		return nil, err
	}
	pending, err := n.relay.Pending(ctx)
	if err != nil {
		return nil, err
	}
	out := map[string]int64{"events_seen": seen, "stream_messages": int64(msgs), "outbox_pending": pending}
	if n.Notify != nil {
		st := n.Notify.Stats()
		out["notify_sent"], out["notify_failed"], out["notify_skipped"] = st.Sent, st.Failed, st.Skipped
	}
	return out, nil
}

// Close releases everything New opened (Run does not close).
func (n *Node) Close() error {
	if n.unsub != nil {
		n.unsub()
	}
	if n.ln != nil {
		n.ln.Close()
	}
	var err error
	for i := len(n.closer) - 1; i >= 0; i-- {
		err = errors.Join(err, n.closer[i]())
	}
	return err
}

type lease struct {
	store kv.Store
	node  int
	key   string
	me    []byte
	every time.Duration // renewal interval; the lease lasts 3 of them
}

// leaseNode takes the lowest free node id in the kv store for 30 s; renew
// keeps it while the node runs.
func leaseNode(ctx context.Context, store kv.Store) (*lease, error) {
	me := make([]byte, 8)
	rand.Read(me)
	for node := 0; node <= id.MaxNode; node++ {
		l := &lease{store: store, node: node, key: "surge:node:" + strconv.Itoa(node), me: []byte(hex.EncodeToString(me)), every: 10 * time.Second}
		ok, err := store.SetNX(ctx, l.key, l.me, 3*l.every)
		if err != nil {
			return nil, fmt.Errorf("lease node id: %w", err)
		}
		if ok {
			return l, nil
		}
	}
	return nil, errors.New("lease node id: all 128 node ids are taken")
}

// renew keeps the lease while the node runs. A lease found taken by
// another process, or not renewable before it runs out, stops the node: two
// nodes with one id would make the same ids.
func (l *lease) renew(ctx context.Context) error {
	t := time.NewTicker(l.every)
	defer t.Stop()
	renewed := time.Now()
	for {
		select {
		case <-ctx.Done():
			c, cancel := context.WithTimeout(context.Background(), time.Second)
			defer cancel()
			if v, err := l.store.Get(c, l.key); err == nil && string(v) == string(l.me) {
				l.store.Del(c, l.key) // let the next process have it at once
			}
			return nil
		case <-t.C:
		}
		c, cancel := context.WithTimeout(ctx, l.every/2)
		v, err := l.store.Get(c, l.key)
		switch {
		case err == nil && string(v) == string(l.me):
			err = l.store.Set(c, l.key, l.me, 3*l.every)
		case errors.Is(err, kv.ErrNotFound): // expired while the kv store was away: take it back if still free
			var ok bool
			if ok, err = l.store.SetNX(c, l.key, l.me, 3*l.every); err == nil && !ok {
				err = errLeaseLost
			}
		case err == nil:
			err = errLeaseLost
		}
		cancel()
		if errors.Is(err, errLeaseLost) {
			return fmt.Errorf("node id %d: %w", l.node, err)
		}
		if err == nil {
			renewed = time.Now()
		} else if time.Since(renewed) > 5*l.every/2 {
			return fmt.Errorf("node id %d: lease not renewable for %v: %w", l.node, time.Since(renewed).Round(time.Second), err)
		}
	}
}

var errLeaseLost = errors.New("lease taken by another process")
