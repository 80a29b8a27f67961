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
	"github.com/surge-platform/surge/internal/flashsale"
	"github.com/surge-platform/surge/internal/guard"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"

	"github.com/surge-platform/surge/internal/api"
	"github.com/surge-platform/surge/internal/catalog"
	"github.com/surge-platform/surge/internal/fulfil"
	"github.com/surge-platform/surge/internal/inventory"
	"github.com/surge-platform/surge/internal/member"
	"github.com/surge-platform/surge/internal/monitor"
	"github.com/surge-platform/surge/internal/notify"
	"github.com/surge-platform/surge/internal/order"
	"github.com/surge-platform/surge/internal/payment"
	"github.com/surge-platform/surge/internal/payment/alipay"
	"github.com/surge-platform/surge/internal/payment/paysim"
	"github.com/surge-platform/surge/internal/payment/wechatpay"
	"github.com/surge-platform/surge/internal/platform/bus"
	"github.com/surge-platform/surge/internal/platform/edge"
	"github.com/surge-platform/surge/internal/platform/id"
	"github.com/surge-platform/surge/internal/platform/kv"
	"github.com/surge-platform/surge/internal/platform/lease"
	"github.com/surge-platform/surge/internal/platform/limit"
	"github.com/surge-platform/surge/internal/platform/obs"
	"github.com/surge-platform/surge/internal/platform/outbox"
	"github.com/surge-platform/surge/internal/platform/sqldb"
	"github.com/surge-platform/surge/internal/platform/switches"
	"github.com/surge-platform/surge/internal/platform/web"
	"github.com/surge-platform/surge/internal/promo"
	"github.com/surge-platform/surge/internal/push"
)

// Roles a node can take. "all" means every implemented role.
var Roles = []string{"api", "worker", "paysim", "fulfil", "push", "monitor"}

// Config is everything a node needs; cmd/surge fills it from flags and env.
type Config struct {
	Addr           string            // listen address; ":0" picks a free port
	Data           string            // directory for the embedded backends
	Roles          []string          // subset of Roles, or ["all"]
	DB             []string          // database URLs; empty = sqlite:<Data>/db
	KV             string            // kv URL; empty = mem:
	Bus            string            // bus URL; empty = embedded:<Data>/nats
	AdminToken     string            // empty = random, printed at start
	OrderTTL       time.Duration     // time to pay an order
	KeyTTL         time.Duration     // how long an order's Idempotency-Key is kept; 0 = 24h
	SeenTTL        time.Duration     // how long the record of an order event the ledger took is kept; 0 = 7 days
	NodeID         int               // id generator node; -1 = lease the lowest free one
	DBMaxConns     int               // per PostgreSQL database; 0 = default
	Migrate        bool              // apply migrations at start
	RelayPoll      time.Duration     // outbox backstop poll; 0 = 1s
	PublicURL      string            // base URL others reach this node's API at (payment callbacks); "" = http://<listen address>
	PayURL         string            // base URL of the payment provider (simulator); "" = this node's when it runs paysim, else PublicURL
	WeChatPay      *wechatpay.Config // the merchant's credentials at WeChat Pay (--wechatpay); nil: the simulator's keys at PayURL
	Alipay         *alipay.Config    // the app's at Alipay (--alipay); nil: the simulator's keys at PayURL
	PayQuery       time.Duration     // first active query of an unpaid payment; 0 = 10s
	PayWeights     map[string]int    // routing weight per channel; missing = 1
	WSPing         time.Duration     // push: ping sockets idle this long, drop them after 3 × it; 0 = 25s
	NotifyURL      string            // webhook for customer notifications; "" = the simulator's (PayURL's) inbox; "off" = none
	Flash          flashsale.Config  // flash-sale purchase limits; zero = defaults
	Edge           edge.Config       // the HTTP chain's limits and shedder; zero = none
	GlobalRPS      int64             // the cluster-wide request cap (customer requests); 0 = none
	GlobalNodes    int               // api nodes assumed until kv has counted them (a node cut off from kv at start takes GlobalRPS / this); 0 = 1
	MaxConns       int               // open connections; 0 = no cap
	RequestTimeout time.Duration     // every request but a socket's gives up after this; 0 = never
	Proxies        []netip.Prefix    // trusted reverse proxies (their X-Forwarded-For names the client)
	Telemetry      bool              // RED metrics and a trace per request (false: neither; /metrics serves the rest)
	OTLP           string            // export spans over OTLP/HTTP to this URL; "" = none
	TraceRatio     float64           // with OTLP: share of new traces recorded (0..1)
	// Spans, when set, receives every span (tests; OTLP is then ignored).
	Spans sdktrace.SpanExporter
	// Alerts are the chat webhooks the monitor role sends alerts to, and
	// AlertRules their thresholds (nil: monitor.DefaultRules).
	Alerts     []monitor.Target
	AlertRules *monitor.Rules
}

// Defaults returns a config that works on a laptop.
func Defaults() Config {
	return Config{Addr: "127.0.0.1:8080", Data: "./data", Roles: []string{"all"}, OrderTTL: 15 * time.Minute,
		NodeID: -1, Migrate: true, MaxConns: 20000, RequestTimeout: 10 * time.Second, Telemetry: true, TraceRatio: 0.01,
		Edge: edge.Config{IPRPS: 1000, UserRPS: 100, RouteRPS: map[string]float64{edge.RouteOrder: 20, edge.RoutePay: 20, edge.RouteClaim: 20},
			MaxInflight: 2048, Shed: edge.ShedBBR, Ban: 500, BanFor: 10 * time.Minute}}
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
	if c.KeyTTL != 0 && c.KeyTTL < time.Hour {
		return fmt.Errorf("idempotency ttl %v: want at least 1h (a client may retry an order for that long)", c.KeyTTL)
	}
	if c.SeenTTL != 0 && c.SeenTTL < time.Hour {
		return fmt.Errorf("events seen ttl %v: want at least 1h", c.SeenTTL)
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
	if err := c.Edge.Check(); err != nil {
		return err
	}
	if c.GlobalRPS < 0 || c.GlobalRPS > kv.MaxGCRARate || c.GlobalNodes < 0 || c.MaxConns < 0 {
		return fmt.Errorf("--global-rps wants 0..%d, --global-nodes and --max-conns at least 0", kv.MaxGCRARate)
	}
	if c.TraceRatio < 0 || c.TraceRatio > 1 {
		return fmt.Errorf("--trace-ratio %v: want 0..1", c.TraceRatio)
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
	cfg       Config
	log       *slog.Logger
	DB        *sqldb.Cluster
	KV        kv.Store
	Bus       *bus.Bus
	IDs       *id.Generator
	relay     *outbox.Relay
	owner     string        // this process, as leases name it
	node      *lease.NodeID // keeps the node id leased
	Jobs      *lease.Jobs   // jobs that run once per cluster (worker role)
	watch     *kv.Watch     // kv loss: rebuilds what the roles keep in kv
	kvBreaker *kv.Breaker   // nil with kv in memory

	Members   *member.Service
	Catalog   *catalog.Service
	Stock     *inventory.Service
	Orders    *order.Service
	Promo     *promo.Service
	Flash     *flashsale.Service
	Blacklist *guard.Blacklist
	Edge      *edge.Edge
	cap       *limit.Cluster // the cluster-wide request cap; nil: none
	Payments  *payment.Service
	Sim       *paysim.Server
	Fulfil    *fulfil.Service
	Push      *push.Hub
	Notify    *notify.Service  // customer notifications (worker role); nil when off
	Inbox     *notify.Sink     // the simulator's notification inbox (paysim role)
	Switches  *switches.Panel  // the cluster's degradation switches (every node)
	Metrics   *obs.Metrics     // the node's registry (GET /metrics)
	Tracing   *obs.Tracing     // the node's tracer provider
	Monitor   *monitor.Monitor // the cluster's health (monitor role)
	beater    *monitor.Beater
	notifier  *monitor.Notifier
	// the heartbeat's last reading of the ledger's order.created count
	lastBeat    time.Time
	lastCreated float64

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
	exp, ratio := cfg.Spans, 1.0
	if exp == nil && cfg.OTLP != "" {
		if exp, err = obs.OTLP(cfg.OTLP); err != nil {
			return nil, err
		}
		ratio = cfg.TraceRatio
	}
	tracing := obs.NewTracing(strings.Join(cfg.Roles, ","), exp, ratio)
	n.Tracing = tracing
	n.closer = append(n.closer, func() error { // the spans ended so far go out
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		return tracing.Close(ctx) // not n's: a failed New returns a nil n before closing
	})
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
	for _, d := range n.DB.Shards() {
		if br := d.Breaker(); br != nil {
			br.OnChange(logBreaker(log.With("dependency", "db", "shard", d.Name)))
		}
	}
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
	rawKV := n.KV                           // the cluster cap's: it has its own fallback, and its 50 ms calls must not open the breaker for everyone
	if !strings.HasPrefix(cfg.KV, "mem:") { // a remote store: calls fail fast while it is down
		n.kvBreaker = kv.NewBreaker(n.KV, log.With("dependency", "kv"))
		n.KV = n.kvBreaker
	}
	n.watch = kv.NewWatch(n.KV, 0, kvEvents(log))
	octx, cancel = context.WithTimeout(ctx, OpenTimeout)
	defer cancel()
	start = time.Now()
	if n.Bus, err = bus.Open(octx, cfg.Bus); err != nil {
		return nil, openError("bus", []string{cfg.Bus}, "--bus", natsServer, start, err)
	}
	n.closer = append(n.closer, n.Bus.Close)
	if cfg.Telemetry {
		n.Bus.Trace(n.Tracing)
	}
	n.Bus.Breaker().OnChange(logBreaker(log.With("dependency", "bus")))
	if err := checkNATS(cfg.Bus, n.Bus.Conn().ConnectedServerVersion()); err != nil {
		return nil, err
	}
	for _, st := range []bus.StreamConfig{order.Stream, order.Timers, promo.Claims} {
		if err := n.Bus.EnsureStream(octx, st); err != nil {
			return nil, openError("bus", []string{cfg.Bus}, "--bus", natsServer, start, err)
		}
	}
	if n.Switches, err = switches.New(octx, n.Bus, 0, switches.Defs(wechatpay.Name, alipay.Name)); err != nil {
		return nil, openError("bus", []string{cfg.Bus}, "--bus", natsServer, start, err)
	}
	// Node ids and job leaders are leased in the main database: every
	// process that shares the data sees the leases there.
	leases := lease.New(n.DB.Main())
	n.owner = lease.Owner()
	n.IDs = id.NewLeased()
	if n.node, err = lease.LeaseNodeID(ctx, leases, n.owner, cfg.NodeID, 0, n.IDs, log); err != nil {
		return nil, err
	}
	// Kept from here to Close, not only while Run runs: what a node does
	// between New and Run (seeding the demo data) needs ids too.
	keep, stopKeep := context.WithCancel(context.WithoutCancel(ctx))
	kept := make(chan struct{})
	go func() { defer close(kept); n.node.Keep(keep) }()
	n.closer = append(n.closer, func() error { stopKeep(); <-kept; return nil }) // Keep releases the id
	n.Jobs = lease.NewJobs(leases, n.owner, 0, log)
	n.relay = outbox.NewRelay(n.DB, n.Bus, log, cfg.RelayPoll)
	if cfg.Telemetry {
		n.relay.Trace(n.Tracing)
		n.Jobs.Trace(n.Tracing.Tracer())
	}
	n.Stock = inventory.New(n.DB)
	n.Catalog = catalog.New(n.DB, n.IDs, n.Stock, n.Bus, catalog.WithKV(n.KV), catalog.WithLog(log.With("context", "catalog")))
	n.watch.Register("catalog-menus", n.Catalog.ForgetShared)
	if n.Members, err = member.New(ctx, n.DB, n.IDs); err != nil {
		return nil, err
	}
	var wake order.Waker = outbox.RemoteWaker{Bus: n.Bus}
	if cfg.Has("worker") {
		wake = n.relay
		unsub, err := n.Bus.Subscribe(outbox.WakeSubject, n.relay.OnWake)
		if err != nil {
			return nil, fmt.Errorf("bus: %w", err)
		}
		n.closer = append(n.closer, func() error { unsub(); return nil })
	}
	n.Promo = promo.New(n.DB, n.KV, n.Bus, n.IDs, n.Bus, log.With("context", "promo"))
	n.watch.Register("coupon-counters", n.Promo.Forget)
	unsubPromo, err := n.Bus.Subscribe(promo.InvalidateSubject, func(string, []byte) { n.Promo.Invalidate() })
	if err != nil {
		return nil, fmt.Errorf("bus: %w", err)
	}
	n.closer = append(n.closer, func() error { unsubPromo(); return nil })
	n.Orders = order.New(n.DB, n.IDs, n.Catalog, n.Stock, wake, log, order.Config{TTL: cfg.OrderTTL, KeyTTL: cfg.KeyTTL, SeenTTL: cfg.SeenTTL, Promotions: n.Promo})
	n.Blacklist = guard.NewBlacklist(n.DB, log.With("context", "blacklist"))
	n.Flash = flashsale.New(n.DB, n.KV, n.Bus, n.IDs, n.Orders, n.Blacklist, guard.NewPoW(0), n.owner, cfg.Flash,
		log.With("context", "flashsale"))
	if err := n.Flash.Prepare(octx); err != nil {
		return nil, openError("bus", []string{cfg.Bus}, "--bus", natsServer, start, err)
	}
	n.watch.Register("flash-counters", n.Flash.Forget)
	if n.unsub, err = n.Bus.Subscribe(catalog.InvalidateSubject, func(_ string, data []byte) { n.Catalog.OnInvalidate(data) }); err != nil {
		return nil, fmt.Errorf("bus: %w", err)
	}
	var limitCap edge.Cap
	if cfg.GlobalRPS > 0 { // leased from kv in batches: the request path never waits on kv
		n.cap = limit.NewCluster(rawKV, "global", cfg.GlobalRPS, limit.ClusterOptions{Node: "node-" + strconv.Itoa(n.IDs.Node()), Nodes: int64(cfg.GlobalNodes)})
		limitCap = n.cap
	}
	n.Edge = edge.New(cfg.Edge, limitCap, n.Blacklist)
	n.Metrics = obs.New()
	srv := &api.Server{Log: log, AdminToken: cfg.AdminToken, Auth: n.Members, Edge: n.Edge, Proxies: cfg.Proxies, RequestTimeout: cfg.RequestTimeout, Checks: []api.Check{
		{Name: "db", Ping: n.DB.Ping}, {Name: "kv", Ping: n.KV.Ping}, {Name: "bus", Ping: n.Bus.Ping},
	}, Stats: n.stats, DeadLetters: n.Bus, Switches: n.Switches, Metrics: n.Metrics, Cluster: func(ctx context.Context) (any, error) { return n.cluster(ctx, leases) }}
	if cfg.Telemetry {
		srv.Tracer, srv.RED = n.Tracing.Tracer(), true
	}
	if cfg.Has("api") {
		srv.Members, srv.Catalog, srv.Orders, srv.Promo = n.Members, n.Catalog, n.Orders, n.Promo
		srv.KeyRotated = push.StoreAnnouncer{Bus: n.Bus}.Revoke
		srv.Flash, srv.Blacklist = n.Flash, n.Blacklist
	}
	public := cfg.PublicURL
	if public == "" {
		public = "http://" + n.ln.Addr().String()
	}
	srv.Extra = map[string]http.Handler{}
	keys, err := SimKeys(ctx, n.DB)
	if err != nil {
		return nil, err
	}
	if cfg.Has("paysim") {
		n.Sim = paysim.New(paysim.Config{Channels: keys.Channels(), ControlToken: cfg.AdminToken, PublicURL: public,
			Log: log.With("role", "paysim")})
		srv.Extra["/paysim/v1/"] = n.Sim.Handler()
		srv.Extra["/v3/"] = n.Sim.Handler() // WeChat Pay's API, at its own paths
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
		n.Fulfil = fulfil.New(n.DB, n.KV, n.IDs, n.Orders, wake, push.StoreAnnouncer{Bus: n.Bus}, log.With("role", "fulfil"))
		srv.Fulfil = n.Fulfil
		n.watch.Register("fulfil-queues", n.Fulfil.Rebuild)
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
	if cfg.Has("api") || cfg.Has("worker") || cfg.Has("fulfil") { // fulfil: the POS's refunds
		payURL := cfg.PayURL
		if payURL == "" {
			payURL = public
		}
		channels, err := PayChannels(payURL, keys, cfg.WeChatPay, cfg.Alipay)
		if err != nil {
			return nil, err
		}
		for name := range cfg.PayWeights {
			if !slices.ContainsFunc(channels, func(c payment.Channel) bool { return c.Name() == name }) {
				return nil, fmt.Errorf("--pay-weights: no payment channel %q here", name)
			}
		}
		// Refunds of orders ask the stores' fulfilment records whether the
		// store accepted an order, and withdraw it when it has not.
		var stores payment.Stores = n.Fulfil
		if n.Fulfil == nil {
			stores = fulfil.New(n.DB, n.KV, n.IDs, n.Orders, wake, nil, log.With("role", "refunds"))
		}
		n.Payments = payment.New(n.DB, n.IDs, n.Orders, stores, channels, cfg.PayWeights, log,
			payment.Config{NotifyBase: public, QueryAfter: cfg.PayQuery})
		chSwitch := map[string]string{} // channel -> its switch, named once: picks do not allocate
		for _, ch := range channels {
			chSwitch[ch.Name()] = switches.PayChannel(ch.Name())
		}
		n.Payments.Router.Follow(func(ch string) bool { return n.Switches.On(chSwitch[ch]) })
		if url := cmp.Or(cfg.NotifyURL, strings.TrimSuffix(payURL, "/")+notify.SinkPath); cfg.Has("worker") && url != "off" {
			if err := notify.Prepare(ctx, n.Bus); err != nil {
				return nil, fmt.Errorf("notify: %w", err)
			}
			n.Notify = notify.New(notify.Config{On: func() bool { return n.Switches.On(switches.NotifySend) }}, notify.NewWebhook(url, notifySecret, 0), log.With("role", "notify"))
		}
		if cfg.Has("api") {
			srv.Payments = n.Payments
		}
		if cfg.Has("fulfil") {
			srv.Refunds = n.Payments
		}
	}
	n.instrument(n.Metrics)
	n.beater = monitor.NewBeater(n.Bus, monitor.Self{Owner: n.owner, NodeID: n.IDs.Node(), Roles: cfg.Roles, URL: advertise(n.ln.Addr()),
		Started: time.Now(), Metrics: n.Metrics, Deps: n.deps, Load: n.load}, log.With("context", "heartbeat"))
	if cfg.Has("monitor") {
		n.Monitor = monitor.New(monitor.Config{Bus: n.Bus, Queues: n.queues, Rules: cfg.AlertRules}, log.With("role", "monitor"))
		srv.Monitor = n.Monitor
		n.notifier = &monitor.Notifier{Targets: cfg.Alerts, Resend: n.Monitor.Rules().Resend, Client: &http.Client{Timeout: 5 * time.Second},
			Log: log.With("role", "monitor"), Prefix: "[surge]"}
	}
	n.watch.Check(ctx) // a new kv (mem: always) counts as lost: rebuild before serving; failures are retried in Run
	n.ln = n.Edge.Listen(n.ln, cfg.MaxConns)
	n.srv = &http.Server{Handler: srv.Handler(), ReadHeaderTimeout: 5 * time.Second, ReadTimeout: 15 * time.Second,
		WriteTimeout: 30 * time.Second, IdleTimeout: 2 * time.Minute, MaxHeaderBytes: web.ServerMaxHeaderBytes,
		ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)}
	if n.Monitor != nil {
		n.srv.RegisterOnShutdown(n.Monitor.Close) // open dashboards' streams would hold the shutdown
	}
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
	spawn("kv loss watch", n.watch.Run)
	spawn("heartbeat", n.beater.Run)
	if n.Monitor != nil {
		spawn("monitor", n.Monitor.Run)
		if len(n.notifier.Targets) > 0 { // one monitor sends: the job's leader
			spawn("alerts", func(ctx context.Context) error {
				return n.Jobs.Every(ctx, "alerts", time.Second, func(ctx context.Context) error {
					n.notifier.Notify(ctx, time.Now(), n.Monitor.Snapshot().Alerts)
					return nil
				})
			})
		}
	}
	spawn("switches", n.Switches.Watch)
	if n.cap != nil {
		spawn("cluster request cap", n.cap.Run)
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
		spawn("push ticket routing", func(ctx context.Context) error { return push.RouteTickets(ctx, n.Bus) })
	}
	if n.cfg.Has("api") {
		spawn("flash sales", n.Flash.Run)
	}
	if n.cfg.Has("api") || n.cfg.Has("push") || n.cfg.Has("fulfil") || n.cfg.Has("paysim") {
		spawn("blacklist", n.Blacklist.Run) // the chain checks it on every node that serves clients
	}
	if n.cfg.Has("worker") {
		spawn("flash-sale tickets", n.Flash.Consume)
		spawn("flash-sale orders", n.Flash.ConsumeOrders)
		spawn("flash-sale pre-warm", func(ctx context.Context) error {
			return n.Jobs.Every(ctx, "flash-prewarm", 10*time.Second, n.Flash.PreWarm)
		})
		spawn("outbox relay", n.relay.Run)
		spawn("order consumer", func(ctx context.Context) error { return n.Orders.Consume(ctx, n.Bus) })
		spawn("order timers", func(ctx context.Context) error { return n.Orders.ConsumeTimers(ctx, n.Bus) })
		spawn("coupon claims", n.Promo.Consume)
		// Once per cluster, on the node holding each job's lease.
		spawn("reservation sweeper", func(ctx context.Context) error {
			return n.Jobs.Every(ctx, "reservation-sweep", 30*time.Second, n.sweep)
		})
		spawn("menu pre-warm", func(ctx context.Context) error {
			return n.Jobs.Every(ctx, "catalog-prewarm", time.Hour, func(ctx context.Context) error {
				_, err := n.Catalog.PreWarm(ctx)
				return err
			})
		})
		spawn("expiry sweeper", func(ctx context.Context) error { return n.Jobs.Every(ctx, "expiry-sweep", 5*time.Second, n.expireDue) })
		spawn("idempotency keys purge", func(ctx context.Context) error {
			return n.Jobs.Every(ctx, "idempotency-purge", time.Minute, n.forgetKeys)
		})
		spawn("seen events purge", func(ctx context.Context) error {
			return n.Jobs.Every(ctx, "events-seen-purge", time.Minute, n.forgetSeen)
		})
		spawn("refunds of withdrawn orders", func(ctx context.Context) error { return n.Payments.ConsumeWithdrawn(ctx, n.Bus) })
		spawn("payments of cancelled orders closed", func(ctx context.Context) error { return n.Payments.ConsumeCancelled(ctx, n.Bus) })
		spawn("payment queries and repairs", func(ctx context.Context) error {
			return n.Jobs.Every(ctx, "payment-queries", time.Second, n.Payments.Work)
		})
		spawn("daily reconciliation", func(ctx context.Context) error {
			return n.Jobs.Every(ctx, "daily-reconciliation", time.Minute, n.Payments.ReconcileDue)
		})
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

// sweep releases stock reservations whose order never appeared.
func (n *Node) sweep(ctx context.Context) error {
	released, err := n.Stock.Sweep(ctx, 2*time.Minute, n.Orders.Fate)
	if released > 0 && err == nil {
		n.log.Info("reservation sweep released orphans", "orders", released)
	}
	return err
}

// forgetKeys deletes the Idempotency-Keys older than the config's KeyTTL.
func (n *Node) forgetKeys(ctx context.Context) error {
	k, err := n.Orders.ForgetKeys(ctx, 0)
	if k > 0 {
		n.log.Debug("idempotency keys past their time deleted", "keys", k)
	}
	return err
}

// forgetSeen deletes the records of seen events older than the config's SeenTTL.
func (n *Node) forgetSeen(ctx context.Context) error {
	k, err := n.Orders.ForgetSeen(ctx, 0)
	if k > 0 {
		n.log.Debug("records of seen events past their time deleted", "events", k)
	}
	return err
}

// expireDue is the backstop of the order timers.
func (n *Node) expireDue(ctx context.Context) error {
	k, err := n.Orders.ExpireDue(ctx, 2*time.Second, 500)
	if k > 0 && err == nil {
		n.log.Info("expiry sweep expired orders its timers missed", "orders", k)
	}
	return err
}

// cluster is this node's identity, jobs and breakers, and the leases of
// the cluster. The leases are in the main database: when it cannot be
// read (down, or its breaker open) the rest is still answered, with
// leases_error saying why: an operator needs the breakers most then.
func (n *Node) cluster(ctx context.Context, leases *lease.Table) (any, error) {
	out := map[string]any{"owner": n.owner, "node_id": n.IDs.Node(), "roles": n.cfg.Roles, "jobs": n.Jobs.Stats(),
		"breakers": n.breakers()}
	lctx, cancel := context.WithTimeout(ctx, time.Second) // operators' requests have no deadline of their own
	defer cancel()
	if ls, err := leases.List(lctx, ""); err != nil {
		out["leases_error"] = err.Error()
	} else {
		out["leases"] = ls
	}
	return out, nil
}

// breakers is the state of every circuit breaker of the node: "kv" (none
// with kv in memory), "db:<database>" for each PostgreSQL database, "bus".
func (n *Node) breakers() map[string]string {
	out := map[string]string{}
	n.eachBreaker(func(dep string, shard int, d *sqldb.DB, state string) {
		if d != nil {
			dep += ":" + d.Name
		}
		out[dep] = state
	})
	return out
}

// eachBreaker calls f with each circuit breaker's dependency ("bus", "kv",
// "db"), for a database its shard and itself (else -1 and nil), and state.
func (n *Node) eachBreaker(f func(dep string, shard int, d *sqldb.DB, state string)) {
	f("bus", -1, nil, n.Bus.Breaker().State())
	if n.kvBreaker != nil {
		f("kv", -1, nil, n.kvBreaker.State())
	}
	for i, d := range n.DB.Shards() {
		if br := d.Breaker(); br != nil {
			f("db", i, d, br.State())
		}
	}
}

// logBreaker logs a breaker's state changes to log.
func logBreaker(log *slog.Logger) func(from, to string) {
	return func(from, to string) { log.Warn("circuit breaker", "from", from, "to", to) }
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
		out["notify_suppressed"] = st.Suppressed
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

// advertise is the URL other nodes reach this one at, for the monitor's
// probes: the listen address, or this host's name with its port when it
// listens on every address (--addr :8080). Not --public-url: behind a
// proxy that names the proxy.
func advertise(a net.Addr) string {
	host, port, err := net.SplitHostPort(a.String())
	if err != nil {
		return "http://" + a.String()
	}
	if ip, err := netip.ParseAddr(host); err == nil && ip.IsUnspecified() {
		if h, err := os.Hostname(); err == nil {
			host = h
		}
	}
	return "http://" + net.JoinHostPort(host, port)
}
