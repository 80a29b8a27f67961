// Package bus is surge's message bus: NATS JetStream, either embedded in the
// process (embedded mode) or an external NATS cluster (distributed mode).
// Both are exercised by the shared suite in bus/bustest.
//
// URLs accepted by Open:
//
//	embedded:./data/nats        embedded server, JetStream on disk in that dir
//	embedded:                   embedded server, JetStream in a temp dir (removed by Close)
//	nats://127.0.0.1:4222       external server or cluster (comma-separated URLs allowed)
//
// Either form may carry ?ns=NAME: every subject is then prefixed with "NAME."
// and every stream and durable name with "NAME_", so tests sharing one server
// each get a fresh namespace. Callers always use un-prefixed names. A
// namespace separates names, not permissions: an un-namespaced subscriber to
// ">" still sees every namespace's traffic.
//
// The embedded form takes two more parameters:
//
//	?listen=127.0.0.1:4222      also accept TCP clients there (port 0 = any free port;
//	                            see Bus.ClientURL). Default: no listener, the Bus talks
//	                            to its server through an in-process pipe.
//	?sync=always                fsync every write (JetStream's `sync_interval: always`).
//
// Either form also takes ?max_deliver=N: every consumer of this Bus gives up
// on a message after at most N deliveries (its own MaxDeliver when lower),
// so that fault drills and tests see dead letters within a second instead
// of minutes.
//
// Durability: a message Publish returned for (or PublishBatch returned nil for)
// has been written by the server and survives kill -9 of any process. By
// default the embedded server fsyncs every 2 minutes (the nats-server default),
// so a power loss can lose up to that window; ?sync=always (embedded) or
// `sync_interval: always` / R3 streams (cluster) close it at a large cost in
// write throughput.
//
// Delivery is at least once: handlers must be idempotent. A message a
// consumer gives up on is kept as a dead letter (see DeadLetter) until an
// operator replays or discards it.
package bus

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/url"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/trace"

	"github.com/surge-platform/surge/internal/platform/breaker"
	"github.com/surge-platform/surge/internal/platform/obs"
)

// ErrClosed is returned after Close. Its kind is errkind.Unavailable (a
// node shutting down answers 503).
var ErrClosed = errors.New("bus: closed")

// ErrNotFound is returned (wrapped) when a named stream does not exist.
var ErrNotFound = errors.New("bus: not found")

// Msg is one message published to or delivered from a stream. Header keys
// are case-sensitive, as NATS headers are.
type Msg struct {
	Subject string // un-prefixed subject
	ID      string // dedup id; sent as Nats-Msg-Id
	Data    []byte
	Header  map[string]string // optional extra headers (e.g. traceparent)
	// Set on delivery only:
	Seq        uint64 // stream sequence
	Deliveries int    // 1 on first delivery
}

// StreamConfig describes a durable stream. Subjects are un-prefixed.
// Streams always use file storage and limits retention.
type StreamConfig struct {
	Name       string
	Subjects   []string
	Duplicates time.Duration // dedup window for Nats-Msg-Id; 0 = 2 minutes (capped at MaxAge)
	MaxAge     time.Duration // 0 = keep forever
	Replicas   int           // 0 = 1; use 3 on a cluster for power-loss safety
	Schedules  bool          // allow message schedules (Schedule headers); needs server 2.12+
	PerSubject int64         // keep at most this many messages per subject; 0 = no limit
}

// ConsumerConfig describes a durable pull consumer that Consume drives.
// The consumer always uses explicit acks and starts at the stream's first
// message the first time it is created; after that it continues where its
// acknowledgements left off.
type ConsumerConfig struct {
	Stream         string
	Durable        string
	FilterSubjects []string      // optional, un-prefixed: only messages on these subjects (wildcards allowed)
	AckWait        time.Duration // 0 = 30s; ignored by the server when Backoff is set (it uses Backoff[0])
	MaxAckPending  int           // 0 = 1000
	// MaxDeliver is how many deliveries a message gets before the consumer
	// gives up on it and keeps it as a dead letter: 0 = 10; negative =
	// never give up. Consume counts them itself (the server's limit is
	// off, as it would drop the message): a delivery past the limit — after
	// a handler that ran past its ack wait, a process that died holding the
	// message, or a dead letter that could not be stored — is dead-lettered
	// without running the handler, so a message that kills its process
	// cannot do so forever.
	MaxDeliver int
	// Backoff is both the server's redelivery schedule for messages that
	// were not acked in time and the delay Consume naks a failed message
	// with (entry Deliveries-1, the last entry repeating). nil = exponential
	// from 100ms to 30s with jitter. Its first entry is the ack wait of a
	// first delivery: keep it above the handler's longest run.
	Backoff []time.Duration
	// Workers is the number of handlers run in parallel; 0 = 1. With more
	// than one, messages are no longer handled in stream order.
	Workers int
	// FromNow makes a consumer created for the first time start after the
	// stream's last message instead of its first (for consumers to whom
	// old messages mean nothing, like notifications).
	FromNow bool
}

// Handler processes one delivered message. Returning nil acks it; returning an
// error naks it with a delay (bounded backoff) so it is redelivered later.
// On the last allowed delivery (MaxDeliver) an error makes the message a
// dead letter (kept with the error text; see DeadLetter) and, once that is
// stored, terminates it; when the dead letter cannot be stored the message
// is naked instead, so nothing is lost. An error while the consumer is
// stopping (ctx done) never makes a dead letter. A panic counts as an
// error.
type Handler func(ctx context.Context, m Msg) error

const (
	defaultDuplicates    = 2 * time.Minute
	defaultMaxDeliver    = 10
	defaultAckWait       = 30 * time.Second
	defaultMaxAckPending = 1000

	readyTimeout   = 10 * time.Second // embedded server start
	dialTimeout    = 5 * time.Second  // external connect, unless ctx says sooner
	drainTimeout   = 10 * time.Second // Close
	flushTimeout   = 5 * time.Second  // Subscribe
	asyncAckExpiry = 30 * time.Second // PublishBatch futures that never hear back
)

// Bus is a connection to JetStream, owning the embedded server when there is
// one. It is safe for concurrent use. The zero value is not usable; call Open.
type Bus struct {
	nc *nats.Conn
	js jetstream.JetStream
	ns string           // "" = no namespace
	br *breaker.Breaker // see breaker.go

	srv    *server.Server // embedded mode only
	tmpDir string         // removed by Close; embedded: only

	streams    sync.Map // stream name -> jetstream.Stream, for After and the dead letters
	maxDeliver int      // ?max_deliver=; 0 = each consumer's own

	// unstored keeps the handler's error of a message whose dead letter
	// could not be stored, so that the delivery that stores it later (in
	// this process) still says why; bounded by unstoredMax.
	unstored  sync.Map // deadLetterID -> string
	unstoredN atomic.Int32
	dlStream  atomic.Bool // DeadLetterStream is known to exist

	// manage serializes stream and consumer changes: the NATS server (2.15)
	// has a data race when a stream is updated while a consumer is being
	// added to it, which a node starting its roles concurrently provoked.
	manage sync.Mutex

	connClosed chan struct{} // closed by the connection's ClosedHandler
	closed     atomic.Bool

	tracer    trace.Tracer // consumers' spans; nil: none (the trace context is passed on all the same)
	closeOnce sync.Once
	closeErr  error
}

// options is a parsed Open URL.
type options struct {
	embedded   bool
	dir        string // embedded: store dir; "" = temp dir
	listen     string // embedded: host:port, "" = no listener
	syncAlways bool   // embedded
	servers    string // external: comma-separated URLs
	ns         string
	maxDeliver int
}

var nsPattern = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)

func parseURL(raw string) (options, error) {
	var o options
	base, query, _ := strings.Cut(raw, "?")
	q, err := url.ParseQuery(query)
	if err != nil {
		return o, fmt.Errorf("bus: bad query in URL: %w", err)
	}
	if dir, ok := strings.CutPrefix(base, "embedded:"); ok {
		o.embedded = true
		o.dir = dir
	} else {
		if base == "" {
			return o, errors.New("bus: empty URL")
		}
		for s := range strings.SplitSeq(base, ",") {
			scheme, _, ok := strings.Cut(strings.TrimSpace(s), "://")
			if !ok || (scheme != "nats" && scheme != "tls") {
				return o, errors.New(`bus: URL must be "embedded:[DIR]" or "nats://host:port[,nats://...]"`)
			}
		}
		o.servers = base
	}
	for k, vs := range q {
		v := vs[len(vs)-1]
		switch {
		case k == "ns":
			if !nsPattern.MatchString(v) {
				return o, fmt.Errorf("bus: bad namespace %q: want 1-64 of [A-Za-z0-9_-]", v)
			}
			o.ns = v
		case k == "max_deliver":
			n, err := strconv.Atoi(v)
			if err != nil || n < 1 {
				return o, fmt.Errorf("bus: bad max_deliver %q: want a positive number", v)
			}
			o.maxDeliver = n
		case k == "listen" && o.embedded:
			if _, _, err := net.SplitHostPort(v); err != nil {
				return o, fmt.Errorf("bus: bad listen address %q: %w", v, err)
			}
			o.listen = v
		case k == "sync" && o.embedded:
			if v != "always" {
				return o, fmt.Errorf("bus: bad sync %q: only \"always\" is supported", v)
			}
			o.syncAlways = true
		default:
			return o, fmt.Errorf("bus: unknown URL parameter %q", k)
		}
	}
	return o, nil
}

// Open connects to the bus named by rawURL (see the package doc), starting
// the embedded server first for embedded: URLs. It fails if the server
// cannot be reached or started; once open, the connection reconnects forever
// with backoff. The caller must Close the Bus.
func Open(ctx context.Context, rawURL string) (*Bus, error) {
	o, err := parseURL(rawURL)
	if err != nil {
		return nil, err
	}
	b := &Bus{ns: o.ns, maxDeliver: o.maxDeliver, connClosed: make(chan struct{}), br: breaker.New("bus", nil)}
	connOpts := []nats.Option{
		nats.Name("surge"),
		nats.MaxReconnects(-1),
		nats.CustomReconnectDelay(reconnectDelay),
		nats.PingInterval(10 * time.Second), // a dead peer is noticed within ~30s
		nats.MaxPingsOutstanding(3),
		nats.DrainTimeout(drainTimeout),
		nats.ClosedHandler(func(*nats.Conn) { close(b.connClosed) }),
	}
	servers := o.servers
	if o.embedded {
		if err := b.startServer(o); err != nil {
			b.stopServer()
			return nil, err
		}
		servers = nats.DefaultURL // not dialled: the in-process pipe is used
		connOpts = append(connOpts, nats.InProcessServer(b.srv))
	} else {
		timeout := dialTimeout
		if d, ok := ctx.Deadline(); ok && time.Until(d) < timeout {
			timeout = max(time.Until(d), time.Millisecond)
		}
		connOpts = append(connOpts, nats.Timeout(timeout))
	}
	if err := ctx.Err(); err != nil {
		b.stopServer()
		return nil, fmt.Errorf("bus: open: %w", err)
	}
	nc, err := nats.Connect(servers, connOpts...)
	if err != nil {
		b.stopServer()
		return nil, fmt.Errorf("bus: connect: %w", err)
	}
	b.nc = nc
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncTimeout(asyncAckExpiry))
	if err != nil {
		nc.Close()
		b.stopServer()
		return nil, fmt.Errorf("bus: jetstream: %w", err)
	}
	b.js = js
	return b, nil
}

// reconnectDelay is the pause after every server in the pool has been tried:
// exponential from 100ms to 5s, plus up to 50% jitter.
func reconnectDelay(attempts int) time.Duration {
	d := min(100*time.Millisecond<<min(attempts, 6), 5*time.Second)
	return d + rand.N(d/2+1)
}

// startServer starts the embedded server described by o and waits until it
// is ready with JetStream enabled.
func (b *Bus) startServer(o options) error {
	dir := o.dir
	if dir == "" {
		tmp, err := os.MkdirTemp("", "surge-nats-")
		if err != nil {
			return fmt.Errorf("bus: embedded: %w", err)
		}
		dir, b.tmpDir = tmp, tmp
	} else if err := os.MkdirAll(dir, 0o750); err != nil {
		return fmt.Errorf("bus: embedded: %w", err)
	}
	opts := &server.Options{
		ServerName: "surge-embedded",
		JetStream:  true,
		StoreDir:   dir,
		DontListen: o.listen == "",
		NoSigs:     true,
		SyncAlways: o.syncAlways,
	}
	if o.listen != "" {
		host, port, _ := net.SplitHostPort(o.listen) // checked by parseURL
		p, err := strconv.Atoi(port)
		if err != nil || p < 0 || p > 65535 {
			return fmt.Errorf("bus: embedded: bad listen port %q", port)
		}
		if p == 0 {
			p = server.RANDOM_PORT
		}
		opts.Host, opts.Port = host, p
	}
	srv, err := server.NewServer(opts)
	if err != nil {
		return fmt.Errorf("bus: embedded: %w", err)
	}
	log := &serverLog{}
	srv.SetLogger(log, false, false)
	b.srv = srv
	srv.Start()
	if !srv.ReadyForConnections(readyTimeout) {
		return fmt.Errorf("bus: embedded: server not ready after %s: %v", readyTimeout, log.err())
	}
	if !srv.JetStreamEnabled() {
		return fmt.Errorf("bus: embedded: JetStream did not start: %v", log.err())
	}
	return nil
}

func (b *Bus) stopServer() {
	if b.srv != nil {
		b.srv.Shutdown()
		b.srv.WaitForShutdown()
	}
	if b.tmpDir != "" {
		_ = os.RemoveAll(b.tmpDir)
	}
}

// serverLog discards the embedded server's log but keeps its first error,
// so that Open can say why the server did not start. (Platform packages do
// not log.)
type serverLog struct {
	mu    sync.Mutex
	first string
}

func (l *serverLog) keep(format string, v ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.first == "" {
		l.first = fmt.Sprintf(format, v...)
	}
}

func (l *serverLog) err() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.first == "" {
		return errors.New("no error logged")
	}
	return errors.New(l.first)
}

func (l *serverLog) Noticef(string, ...any)         {}
func (l *serverLog) Warnf(string, ...any)           {}
func (l *serverLog) Debugf(string, ...any)          {}
func (l *serverLog) Tracef(string, ...any)          {}
func (l *serverLog) Errorf(format string, v ...any) { l.keep(format, v...) }
func (l *serverLog) Fatalf(format string, v ...any) { l.keep(format, v...) }

var _ server.Logger = (*serverLog)(nil)

// Close drains the connection (in-flight publishes and acks are sent, then
// subscriptions end), shuts the embedded server down and waits for it, and
// removes the temp store dir of "embedded:". Running Consume calls return
// ErrClosed. Close is idempotent; later calls return the first result.
func (b *Bus) Close() error {
	b.closeOnce.Do(func() {
		b.closed.Store(true)
		if err := b.nc.Drain(); err != nil {
			b.nc.Close() // not connected: nothing to drain
		}
		select {
		case <-b.connClosed:
		case <-time.After(drainTimeout + time.Second):
			b.nc.Close()
		}
		if b.srv != nil {
			b.srv.Shutdown()
			b.srv.WaitForShutdown()
		}
		if b.tmpDir != "" {
			if err := os.RemoveAll(b.tmpDir); err != nil {
				b.closeErr = fmt.Errorf("bus: close: %w", err)
			}
		}
	})
	return b.closeErr
}

// Ping checks that the connection is up and JetStream answers (an account
// info round trip). It returns ErrClosed after Close.
func (b *Bus) Ping(ctx context.Context) error {
	if b.closed.Load() {
		return ErrClosed
	}
	if !b.nc.IsConnected() {
		return fmt.Errorf("bus: ping: connection is %s", b.nc.Status())
	}
	if _, err := b.js.AccountInfo(ctx); err != nil {
		return fmt.Errorf("bus: ping: %w", b.connErr(err))
	}
	return nil
}

// JetStream returns the underlying JetStream client for features this
// package does not wrap (KV, scheduling). It does not apply the namespace:
// use Subject and Name.
func (b *Bus) JetStream() jetstream.JetStream { return b.js }

// Conn returns the underlying NATS connection. It does not apply the
// namespace: use Subject and Name.
func (b *Bus) Conn() *nats.Conn { return b.nc }

// Trace makes each message a consumer handles a span of t (before any
// Consume), in the trace that published it.
func (b *Bus) Trace(t *obs.Tracing) { b.tracer = t.Tracer() }

// Subject returns subject with the namespace prefix applied ("NAME.subject").
func (b *Bus) Subject(subject string) string {
	if b.ns == "" {
		return subject
	}
	return b.ns + "." + subject
}

// Name returns a stream, durable or bucket name with the namespace prefix
// applied ("NAME_name").
func (b *Bus) Name(name string) string {
	if b.ns == "" {
		return name
	}
	return b.ns + "_" + name
}

// unprefix is the inverse of Subject.
func (b *Bus) unprefix(subject string) string {
	if b.ns == "" {
		return subject
	}
	return strings.TrimPrefix(subject, b.ns+".")
}

// ClientURL returns the URL other processes can use to reach the embedded
// server when it was opened with ?listen=, and "" otherwise.
func (b *Bus) ClientURL() string {
	if b.srv == nil {
		return ""
	}
	addr := b.srv.Addr()
	if addr == nil {
		return ""
	}
	return "nats://" + addr.String()
}

// connErr turns errors caused by a closed connection into ErrClosed.
func (b *Bus) connErr(err error) error {
	if b.closed.Load() && (errors.Is(err, nats.ErrConnectionClosed) ||
		errors.Is(err, jetstream.ErrConnectionClosed) || errors.Is(err, nats.ErrConnectionDraining)) {
		return ErrClosed
	}
	return err
}

// EnsureStream creates the stream, or updates it to cfg if it exists.
// Changing a stream's storage or shrinking its replicas may be refused by
// the server.
func (b *Bus) EnsureStream(ctx context.Context, cfg StreamConfig) error {
	if b.closed.Load() {
		return ErrClosed
	}
	if cfg.Name == "" || len(cfg.Subjects) == 0 {
		return errors.New("bus: ensure stream: name and subjects are required")
	}
	dup := cfg.Duplicates
	if dup == 0 {
		dup = defaultDuplicates
		if cfg.MaxAge > 0 && cfg.MaxAge < dup {
			dup = cfg.MaxAge
		}
	}
	subjects := make([]string, len(cfg.Subjects))
	for i, s := range cfg.Subjects {
		subjects[i] = b.Subject(s)
	}
	want := jetstream.StreamConfig{
		Name:       b.Name(cfg.Name),
		Subjects:   subjects,
		Storage:    jetstream.FileStorage,
		Retention:  jetstream.LimitsPolicy,
		Duplicates: dup,
		MaxAge:     cfg.MaxAge,
		Replicas:   max(cfg.Replicas, 1),

		AllowMsgSchedules: cfg.Schedules,
		AllowRollup:       cfg.Schedules,
		MaxMsgsPerSubject: cmp.Or(cfg.PerSubject, -1),
		AllowDirect:       cfg.PerSubject > 0,
	}
	b.manage.Lock()
	defer b.manage.Unlock()
	if s, err := b.js.Stream(ctx, want.Name); err == nil && sameStream(s.CachedInfo().Config, want) {
		return nil // every role of a node ensures its streams: no update when nothing changes
	}
	if _, err := b.js.CreateOrUpdateStream(ctx, want); err != nil {
		return fmt.Errorf("bus: ensure stream %s: %w", cfg.Name, b.connErr(err))
	}
	return nil
}

// sameStream reports whether the stream's config has every setting
// EnsureStream sets as want has it.
func sameStream(have, want jetstream.StreamConfig) bool {
	return slices.Equal(have.Subjects, want.Subjects) && have.Storage == want.Storage &&
		have.Retention == want.Retention && have.Duplicates == want.Duplicates &&
		have.MaxAge == want.MaxAge && have.Replicas == want.Replicas &&
		have.AllowMsgSchedules == want.AllowMsgSchedules && have.AllowRollup == want.AllowRollup &&
		have.MaxMsgsPerSubject == want.MaxMsgsPerSubject && have.AllowDirect == want.AllowDirect
}

// StreamInfo returns the number of messages in the stream and its last
// sequence. A missing stream gives an error wrapping ErrNotFound.
func (b *Bus) StreamInfo(ctx context.Context, name string) (msgs uint64, lastSeq uint64, err error) {
	if b.closed.Load() {
		return 0, 0, ErrClosed
	}
	s, err := guarded(b, func() (jetstream.Stream, error) { return b.js.Stream(ctx, b.Name(name)) })
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return 0, 0, fmt.Errorf("bus: stream info %s: %w", name, ErrNotFound)
	}
	if err != nil {
		return 0, 0, fmt.Errorf("bus: stream info %s: %w", name, b.connErr(err))
	}
	st := s.CachedInfo().State
	return st.Msgs, st.LastSeq, nil
}

// PublishCore publishes data on plain NATS (no stream, no ack, no
// persistence): subscribers connected right now get it at most once.
func (b *Bus) PublishCore(subject string, data []byte) error {
	if b.closed.Load() {
		return ErrClosed
	}
	if err := b.publishCore(b.Subject(subject), data); err != nil {
		return fmt.Errorf("bus: publish core %s: %w", subject, b.connErr(err))
	}
	return nil
}

// Subscribe calls fn for every plain NATS message on subject (wildcards
// allowed), one at a time, with the un-prefixed subject. It returns once the
// server has registered the subscription, so a PublishCore that starts after
// it returns is seen. fn must not block for long: a subscriber that falls
// far behind loses messages. unsubscribe is safe to call more than once.
func (b *Bus) Subscribe(subject string, fn func(subject string, data []byte)) (unsubscribe func(), err error) {
	if b.closed.Load() {
		return nil, ErrClosed
	}
	sub, err := b.nc.Subscribe(b.Subject(subject), func(m *nats.Msg) {
		fn(b.unprefix(m.Subject), m.Data)
	})
	if err != nil {
		return nil, fmt.Errorf("bus: subscribe %s: %w", subject, b.connErr(err))
	}
	if err := b.nc.FlushTimeout(flushTimeout); err != nil {
		_ = sub.Unsubscribe()
		return nil, fmt.Errorf("bus: subscribe %s: %w", subject, b.connErr(err))
	}
	return func() { _ = sub.Unsubscribe() }, nil
}
