// Package outbox writes events in the same transaction as the state change
// they announce, and relays them to the bus: a relay loop per physical
// database publishes pending rows with Nats-Msg-Id = event id and deletes a
// row only after the bus acknowledged it. Delivery is at least once (a crash
// between the ack and the delete publishes again, which the bus's dedup
// window and idempotent consumers absorb).
package outbox

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"log/slog"
	"maps"
	"strconv"
	"sync"
	"time"

	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/surge-platform/surge/internal/platform/bus"
	"github.com/surge-platform/surge/internal/platform/obs"
	"github.com/surge-platform/surge/internal/platform/sqldb"
)

// Event is one outbox row.
type Event struct {
	ID      int64
	Subject string
	Type    string
	Payload []byte
	Header  map[string]string // extra message headers (e.g. a schedule)
}

// Insert writes ev in tx.
func Insert(ctx context.Context, tx *sql.Tx, ev Event, now time.Time) error {
	hdr, err := Headers(ctx, ev)
	if err != nil {
		return err
	}
	_, err = tx.ExecContext(ctx, `INSERT INTO outbox (id, subject, type, payload, headers, created_at) VALUES ($1, $2, $3, $4, $5, $6)`,
		ev.ID, ev.Subject, ev.Type, string(ev.Payload), hdr, now.UnixMilli())
	if err != nil {
		return fmt.Errorf("outbox insert %d: %w", ev.ID, err)
	}
	return nil
}

// Headers is the headers column of ev's row: its headers and the trace
// of ctx, as JSON ("" for none). For a caller that writes the row itself.
func Headers(ctx context.Context, ev Event) (string, error) {
	h := header(ctx, ev)
	if len(h) == 0 {
		return "", nil
	}
	b, err := json.Marshal(h)
	return string(b), err
}

// header is ev's headers and the trace of ctx (the row carries the trace
// that wrote it), in a map of its own; nil for none.
func header(ctx context.Context, ev Event) map[string]string {
	if !trace.SpanContextFromContext(ctx).IsValid() || obs.Carrier(ev.Header).Get(obs.TraceHeader) != "" {
		if len(ev.Header) == 0 {
			return nil
		}
		return maps.Clone(ev.Header)
	}
	h := make(map[string]string, len(ev.Header)+2)
	maps.Copy(h, ev.Header)
	obs.Inject(ctx, h)
	return h
}

// row is an outbox row as the relay publishes it.
type row struct {
	id  int64
	msg bus.Msg
}

// newRow is the message of the row (id, subject, typ, payload, h); it
// takes h (nil: none).
func newRow(id int64, subject, typ string, payload []byte, h map[string]string) row {
	if h == nil {
		h = make(map[string]string, 1)
	}
	h["Surge-Type"] = typ
	return row{id, bus.Msg{Subject: subject, ID: strconv.FormatInt(id, 10), Data: payload, Header: h}}
}

// Publisher is the part of the bus the relay needs.
type Publisher interface {
	PublishBatch(ctx context.Context, msgs []bus.Msg) []error
}

// Relay publishes the outbox of every database of a cluster.
type Relay struct {
	db     *sqldb.Cluster
	pub    Publisher
	log    *slog.Logger
	poll   time.Duration
	batch  int
	wake   []chan struct{} // one per physical database, capacity 1
	handed []chan []row    // one per physical database: rows committed by this process
	tracer trace.Tracer    // nil: no spans (rows carry their trace context all the same)
}

// NewRelay returns a relay; poll is the backstop interval (0 = 1s) for rows
// written by other processes.
func NewRelay(db *sqldb.Cluster, pub Publisher, log *slog.Logger, poll time.Duration) *Relay {
	if poll <= 0 {
		poll = time.Second
	}
	r := &Relay{db: db, pub: pub, log: log, poll: poll, batch: 512}
	for range db.Shards() {
		r.wake = append(r.wake, make(chan struct{}, 1))
		r.handed = append(r.handed, make(chan []row, handoffs))
	}
	return r
}

// handoffs is how many hand-offs a database's loop holds before it falls
// back to reading its outbox.
const handoffs = 1024

// Handoff gives the relay the rows of evs, which a transaction of this
// process has just committed on the database of logical shard gene; ctx
// is the context that wrote them (Insert put its trace in each row). The
// relay publishes them and deletes them without reading them back: on a
// busy database that read was the relay's main cost, one per wake-up. The
// rows stay the truth. A hand-off the relay cannot hold (its queue is
// full) only wakes it, its loop reads the outbox on every wake-up from
// another process, every poll, and after a failure, and a row published
// twice (read and handed) is one message to consumers (the bus's dedup
// window).
func (r *Relay) Handoff(ctx context.Context, gene int, evs ...Event) {
	rows := make([]row, len(evs))
	for i, ev := range evs {
		rows[i] = newRow(ev.ID, ev.Subject, ev.Type, ev.Payload, header(ctx, ev))
	}
	select {
	case r.handed[r.db.Physical(gene)] <- rows:
	default:
		r.Wake(gene)
	}
}

// Wake wakes the loop of the database that holds logical shard gene; call
// it after committing a transaction that wrote an outbox row. It never blocks.
func (r *Relay) Wake(gene int) {
	select {
	case r.wake[r.db.Physical(gene)] <- struct{}{}:
	default:
	}
}

// Waker is told after a commit that wrote outbox rows: the relay of this
// process, or RemoteWaker for the relays of others.
type Waker interface{ Wake(gene int) }

// Committed tells w (nil: nobody) of evs, just committed on the database of
// logical shard gene, written with ctx: the relay of this process takes
// them over (Handoff), another is woken to read them.
func Committed(ctx context.Context, w Waker, gene int, evs ...Event) {
	switch w := w.(type) {
	case nil:
	case interface {
		Handoff(ctx context.Context, gene int, evs ...Event)
	}:
		w.Handoff(ctx, gene, evs...)
	default:
		w.Wake(gene)
	}
}

// WakeSubject carries wake-ups from nodes that write outbox rows to relays
// in other processes (core NATS, fire and forget: the poll is the backstop).
const WakeSubject = "outbox.wake"

// CorePublisher is the part of the bus a remote wake-up needs.
type CorePublisher interface {
	PublishCore(subject string, data []byte) error
}

// RemoteWaker wakes the relays of other processes through the bus; a
// node that writes orders but runs no relay uses it.
type RemoteWaker struct{ Bus CorePublisher }

// Wake publishes a wake-up for logical shard gene.
func (n RemoteWaker) Wake(gene int) {
	n.Bus.PublishCore(WakeSubject, strconv.AppendInt(nil, int64(gene), 10))
}

// OnWake handles a message of WakeSubject.
func (r *Relay) OnWake(_ string, data []byte) {
	if gene, err := strconv.Atoi(string(data)); err == nil && gene >= 0 {
		r.Wake(gene)
	}
}

// Run relays until ctx is done, then makes one last pass to flush what was
// committed before the shutdown, and returns.
func (r *Relay) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	for i, d := range r.db.Shards() {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r.loop(ctx, d, r.wake[i], r.handed[i])
		}()
	}
	wg.Wait()
	return nil
}

func (r *Relay) loop(ctx context.Context, d *sqldb.DB, wake <-chan struct{}, handed chan []row) {
	t := time.NewTicker(r.poll)
	defer t.Stop()
	fails := 0
	read, rows := true, []row(nil) // the first pass reads what earlier processes left
	for {
		var err error
		if read {
			// The read finds the rows handed so far (committed before they
			// were handed): drop them rather than publish them twice.
			for len(handed) > 0 {
				<-handed
			}
			_, err = r.Drain(ctx, d)
		} else {
			// With whatever else was handed meanwhile, up to a batch.
			for len(rows) < r.batch && len(handed) > 0 {
				rows = append(rows, <-handed...)
			}
			_, err = r.send(ctx, d, rows)
		}
		if err != nil && ctx.Err() == nil {
			fails++
			r.log.Warn("outbox relay", "db", d.Name, "err", err, "failures", fails)
		} else {
			fails = 0
		}
		// Drain read until a short batch: rows committed since then have
		// been handed over or have woken the loop (wake holds one). After
		// a failure the loop backs off a little while the bus or database
		// is down, whatever comes meanwhile, and then reads.
		read, rows = false, nil
		hand, woken, tick, retry := handed, wake, t.C, (<-chan time.Time)(nil)
		if fails > 0 {
			hand, woken, tick = nil, nil, nil
			retry = time.After(min(time.Duration(fails)*100*time.Millisecond, 2*time.Second))
		}
		select {
		case <-ctx.Done():
			flush, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			if _, err := r.Drain(flush, d); err != nil {
				r.log.Warn("outbox relay: final flush", "db", d.Name, "err", err)
			}
			cancel()
			return
		case rows = <-hand:
		case <-woken:
			read = true
		case <-tick:
			read = true
		case <-retry:
			read = true
		}
	}
}

// Drain publishes every row of d's outbox present when called, in id
// order, batch by batch; it returns how many it published.
func (r *Relay) Drain(ctx context.Context, d *sqldb.DB) (int, error) {
	total := 0
	for {
		// Read on the reader pool: committed rows are all it needs, and the
		// one SQLite writer stays free for the transactions.
		rs, err := d.R.QueryContext(ctx, `SELECT id, subject, type, payload, headers FROM outbox ORDER BY id LIMIT $1`, r.batch)
		if err != nil {
			return total, fmt.Errorf("outbox read: %w", err)
		}
		var rows []row
		for rs.Next() {
			var id int64
			var subject, typ, payload, hdr string
			if err := rs.Scan(&id, &subject, &typ, &payload, &hdr); err != nil {
				rs.Close()
				return total, err
			}
			var h map[string]string
			if hdr != "" {
				json.Unmarshal([]byte(hdr), &h) // written by Insert from a map: cannot fail
			}
			rows = append(rows, newRow(id, subject, typ, []byte(payload), h))
		}
		rs.Close()
		if err := rs.Err(); err != nil {
			return total, err
		}
		n, err := r.send(ctx, d, rows)
		total += n
		if err != nil || len(rows) < r.batch {
			return total, err
		}
	}
}

// send publishes rows and deletes those the bus acknowledged; it returns
// how many it published.
func (r *Relay) send(ctx context.Context, d *sqldb.DB, rows []row) (int, error) {
	if len(rows) == 0 {
		return 0, nil
	}
	msgs := make([]bus.Msg, len(rows))
	for i := range rows {
		msgs[i] = rows[i].msg
	}
	// Each row's publish is a span of the trace that wrote it, and the
	// message carries that span on to its consumers.
	var spans []trace.Span
	if r.tracer != nil {
		spans = make([]trace.Span, len(msgs))
	}
	for i := range spans {
		var sctx context.Context
		sctx, spans[i] = r.tracer.Start(obs.Extract(ctx, msgs[i].Header), "outbox publish "+msgs[i].Header["Surge-Type"],
			trace.WithSpanKind(trace.SpanKindProducer))
		obs.Inject(sctx, msgs[i].Header)
	}
	errs := r.pub.PublishBatch(ctx, msgs)
	for i, sp := range spans {
		if errs[i] != nil {
			sp.SetStatus(codes.Error, errs[i].Error())
		}
		sp.End()
	}
	var acked []int64
	var firstErr error
	for i, err := range errs {
		if err == nil {
			acked = append(acked, rows[i].id)
		} else if firstErr == nil {
			firstErr = err
		}
	}
	if len(acked) > 0 {
		// A delete lost in a database crash only publishes the rows again,
		// which the bus's dedup window absorbs: it need not wait for the disk.
		// One statement text for any number of ids (prepared once).
		q, arg := `DELETE FROM outbox WHERE id = ANY($1)`, any(acked)
		if d.Engine == sqldb.SQLite {
			q, arg = `DELETE FROM outbox WHERE id IN (SELECT value FROM json_each($1))`, jsonInts(acked)
		}
		if err := sqldb.Lazy(ctx, d, q, arg); err != nil {
			return len(acked), fmt.Errorf("outbox delete: %w", err)
		}
	}
	if firstErr != nil {
		return len(acked), fmt.Errorf("outbox publish: %w", firstErr)
	}
	return len(acked), nil
}

// jsonInts is ids as a JSON array.
func jsonInts(ids []int64) string {
	b := make([]byte, 0, 20*len(ids)+2)
	b = append(b, '[')
	for i, x := range ids {
		if i > 0 {
			b = append(b, ',')
		}
		b = strconv.AppendInt(b, x, 10)
	}
	return string(append(b, ']'))
}

// Depth is one shard's unpublished rows.
type Depth struct {
	Rows   int64
	Oldest time.Time // when the oldest was written (zero: none)
}

// Depths returns each shard's unpublished rows, in shard order.
func (r *Relay) Depths(ctx context.Context) ([]Depth, error) {
	out := make([]Depth, 0, len(r.db.Shards()))
	for _, d := range r.db.Shards() {
		var n int64
		var oldest sql.NullInt64
		if err := d.R.QueryRowContext(ctx, `SELECT COUNT(*), MIN(created_at) FROM outbox`).Scan(&n, &oldest); err != nil {
			return nil, fmt.Errorf("outbox depth: %w", err)
		}
		dp := Depth{Rows: n}
		if oldest.Valid {
			dp.Oldest = time.UnixMilli(oldest.Int64)
		}
		out = append(out, dp)
	}
	return out, nil
}

// Trace makes the relay's publishes spans of t (before Run).
func (r *Relay) Trace(t *obs.Tracing) { r.tracer = t.Tracer() }

// Pending returns the number of unpublished rows in the whole cluster.
func (r *Relay) Pending(ctx context.Context) (int64, error) {
	var total int64
	for _, d := range r.db.Shards() {
		var n int64
		if err := d.R.QueryRowContext(ctx, `SELECT COUNT(*) FROM outbox`).Scan(&n); err != nil {
			return 0, err
		}
		total += n
	}
	return total, nil
}
