// Package switches is surge's config centre for degradation switches
// (DESIGN section 7): named on/off switches for features a node can do
// without under pressure, kept in a JetStream KV bucket and watched by
// every node, so that one change reaches the whole cluster within a
// second.
//
// Each switch is one key of the bucket; its value is the Record of the last
// change (who, when, old, new). The bucket keeps the last History values
// of every key, so the change log is the bucket itself: a change and its
// record are one write, which no crash can split, and the revision check
// of that write (optimistic concurrency) makes every record's "old" the
// value it really replaced. Older changes than the last History are
// dropped by the server.
//
// Readers never wait for the bus: Panel.On reads an in-memory snapshot
// (one map lookup and one atomic load, no allocation) that Panel.Watch
// keeps up to date. When the bus is down, Set fails as unavailable and the
// snapshot keeps the last values seen.
package switches

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/surge-platform/surge/internal/platform/bus"
	"github.com/surge-platform/surge/internal/platform/errkind"
)

// Bucket is the KV bucket of the switches (namespaced by the Bus).
const Bucket = "surge_switches"

// History is how many changes of each switch the bucket keeps (the
// JetStream KV maximum).
const History = 64

const (
	opTimeout   = 2 * time.Second // a Set, List or History round trip when ctx has no sooner deadline
	maxAttempts = 32              // Set's tries against concurrent changes of one switch
	retryMin    = 100 * time.Millisecond
	retryMax    = 5 * time.Second
	maxOperator = 200 // bytes of a Record's By
)

// Errors of Set and History.
var (
	ErrUnknown     = errkind.New(errkind.NotFound, "unknown_switch", "no such switch")
	ErrUnavailable = errkind.New(errkind.Unavailable, "switches_unavailable",
		"the config centre (JetStream KV) is unreachable; every node keeps the switches as they were")
	ErrBusy     = errkind.New(errkind.Conflict, "switch_busy", "the switch is being changed by others at this moment, try again")
	ErrOperator = errkind.New(errkind.Invalid, "invalid_operator", "a change needs an operator name of 1-200 bytes")
)

// Record is one change of a switch, as stored in the bucket.
type Record struct {
	Name     string    `json:"name"`
	On       bool      `json:"on"`
	Old      bool      `json:"old"`
	By       string    `json:"by"`
	At       time.Time `json:"at"`
	Revision uint64    `json:"revision"`          // the bucket's revision of this change (not stored in the value)
	Reset    bool      `json:"reset,omitempty"`   // the key was deleted or purged (by hand): back to the default
	Unknown  bool      `json:"unknown,omitempty"` // History only: a value this version cannot read
}

// Status is one switch as this node sees it.
type Status struct {
	Def
	On        bool       `json:"on"`
	ChangedBy string     `json:"changed_by,omitempty"`
	ChangedAt *time.Time `json:"changed_at,omitempty"`
	Revision  uint64     `json:"revision"` // 0: never changed (the default)
}

// state is one switch's snapshot: the last record applied.
type state struct {
	def Def
	rec atomic.Pointer[Record] // never nil; Revision 0 = the default
}

// Panel is this node's view of the switches. Safe for concurrent use. A nil
// *Panel has every switch on and refuses changes with ErrUnavailable.
type Panel struct {
	mu   sync.Mutex
	kv   jetstream.KeyValue // guarded by mu: replaced when the bucket is made again
	js   jetstream.JetStream
	cfg  jetstream.KeyValueConfig
	nc   *nats.Conn
	defs []Def
	sw   map[string]*state // fixed at New: read without locks
}

// bucket is the bucket as last opened.
func (p *Panel) bucket() jetstream.KeyValue {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.kv
}

// open opens the bucket, making it when it is missing (a first start, or a
// bus that lost it: a server restarted without its JetStream storage).
func (p *Panel) open(ctx context.Context) (jetstream.KeyValue, error) {
	kv, err := p.js.KeyValue(ctx, p.cfg.Bucket)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		kv, err = p.js.CreateKeyValue(ctx, p.cfg)
		if errors.Is(err, jetstream.ErrBucketExists) { // another node made it first
			kv, err = p.js.KeyValue(ctx, p.cfg.Bucket)
		}
	}
	if err != nil {
		return nil, err
	}
	p.mu.Lock()
	p.kv = kv
	p.mu.Unlock()
	return kv, nil
}

// New creates the bucket if it does not exist (file storage, History values
// per key, replicas as given: 0 = 1, 3 on a cluster) and uses it as it is
// otherwise (an operator may have raised its replicas), reads the
// switches' current values and returns the Panel of defs (Defs). Call Watch
// to follow changes. Errors: the bus's, or a bad def.
func New(ctx context.Context, b *bus.Bus, replicas int, defs []Def) (*Panel, error) {
	p := &Panel{nc: b.Conn(), js: b.JetStream(), defs: defs, sw: make(map[string]*state, len(defs))}
	for _, d := range defs {
		if !validKey(d.Name) || p.sw[d.Name] != nil {
			return nil, fmt.Errorf("switches: bad or repeated switch name %q", d.Name)
		}
		st := &state{def: d}
		st.rec.Store(&Record{Name: d.Name, On: d.Default})
		p.sw[d.Name] = st
	}
	p.cfg = jetstream.KeyValueConfig{
		Bucket:      b.Name(Bucket),
		Description: "surge degradation switches (docs/operations.md)",
		History:     History,
		Storage:     jetstream.FileStorage,
		Replicas:    max(replicas, 1),
	}
	kv, err := p.open(ctx)
	if err != nil {
		return nil, fmt.Errorf("switches: bucket %s: %w", Bucket, err)
	}
	w, err := kv.WatchAll(ctx)
	if err != nil {
		return nil, fmt.Errorf("switches: read: %w", err)
	}
	defer w.Stop()
	if err := p.follow(ctx, w, true); err != nil || ctx.Err() != nil {
		return nil, fmt.Errorf("switches: read: %w", cmp.Or(err, ctx.Err()))
	}
	return p, nil
}

// validKey reports whether name is a usable KV key: letters, digits, "-",
// "_" and dot-separated non-empty tokens.
func validKey(name string) bool {
	if name == "" || len(name) > 128 || strings.HasPrefix(name, ".") || strings.HasSuffix(name, ".") || strings.Contains(name, "..") {
		return false
	}
	for _, c := range name {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			return false
		}
	}
	return true
}

// On reports whether switch name is on now, as this node last saw it. It
// never blocks and does not allocate. A name not declared is on (features
// that are not switches are never off); so is every switch of a nil Panel.
func (p *Panel) On(name string) bool {
	if p == nil {
		return true
	}
	st := p.sw[name]
	return st == nil || st.rec.Load().On
}

// Known reports whether name is a declared switch.
func (p *Panel) Known(name string) bool {
	return p != nil && p.sw[name] != nil
}

// List returns every switch as this node sees it, in declaration order. It
// reads the snapshot only.
func (p *Panel) List() []Status {
	if p == nil {
		return nil
	}
	out := make([]Status, 0, len(p.defs))
	for _, d := range p.defs {
		rec := p.sw[d.Name].rec.Load()
		s := Status{Def: d, On: rec.On, Revision: rec.Revision}
		if rec.Revision > 0 {
			at := rec.At
			s.ChangedBy, s.ChangedAt = rec.By, &at
		}
		out = append(out, s)
	}
	return out
}

// Set turns switch name on or off for the whole cluster, recording who
// did it, and returns the record. Every Set is recorded, also one that
// leaves the value as it was. The node that sets sees the change at once;
// the others within their watcher's delay (milliseconds). Errors:
// ErrUnknown for a switch not declared, ErrOperator for an empty or long
// who, ErrUnavailable when the bus cannot be reached (within 2 s or ctx's
// deadline), ErrBusy when others kept changing the switch through every
// attempt.
func (p *Panel) Set(ctx context.Context, name string, on bool, who string) (Record, error) {
	if p == nil {
		return Record{}, ErrUnavailable
	}
	st := p.sw[name]
	if st == nil {
		return Record{}, p.unknown(name)
	}
	if who == "" || len(who) > maxOperator {
		return Record{}, ErrOperator
	}
	ctx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	for attempt := 0; attempt < maxAttempts; attempt++ {
		if attempt > 0 { // another change won the revision: read it again after a short pause
			select {
			case <-ctx.Done():
				return Record{}, p.unavailable(name, ctx.Err())
			case <-time.After(time.Duration(rand.N(int64(attempt)*int64(2*time.Millisecond) + 1))):
			}
		}
		if !p.nc.IsConnected() {
			return Record{}, p.unavailable(name, fmt.Errorf("connection is %s", p.nc.Status()))
		}
		old, rev, err := p.current(ctx, st)
		if err != nil {
			return Record{}, p.unavailable(name, err)
		}
		rec := Record{Name: name, On: on, Old: old, By: who, At: time.Now().UTC()}
		val, _ := json.Marshal(rec)
		if rev == 0 {
			rec.Revision, err = p.bucket().Create(ctx, name, val)
		} else {
			rec.Revision, err = p.bucket().Update(ctx, name, val, rev)
		}
		switch {
		case err == nil:
			st.apply(&rec)
			return rec, nil
		case errors.Is(err, jetstream.ErrKeyExists) || errors.Is(err, jetstream.ErrKeyRevisionMismatch):
			continue
		default:
			return Record{}, p.unavailable(name, err)
		}
	}
	return Record{}, ErrBusy.With("switch %s changed under %d attempts in a row, try again", name, maxAttempts)
}

// current reads the switch's value and revision from the bucket: the
// default and 0 when it was never set or was deleted.
func (p *Panel) current(ctx context.Context, st *state) (on bool, rev uint64, err error) {
	e, err := p.bucket().Get(ctx, st.def.Name)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return st.def.Default, 0, nil // Create also replaces a delete marker
	}
	if err != nil {
		return false, 0, err
	}
	rec, ok := decode(e.Value())
	if !ok {
		rec.On = st.def.Default // unreadable: the watcher ignored it too
	}
	return rec.On, e.Revision(), nil
}

func (p *Panel) unknown(name string) error {
	names := make([]string, len(p.defs))
	for i, d := range p.defs {
		names[i] = d.Name
	}
	return ErrUnknown.With("no switch %q (switches: %s)", name, strings.Join(names, ", "))
}

func (p *Panel) unavailable(name string, err error) error {
	return fmt.Errorf("switch %s: %w", name, ErrUnavailable.With("the config centre (JetStream KV) is unreachable (%v); every node keeps the switches as they were", err))
}

// History returns the recorded changes of switch name, newest first (at
// most History of them). Errors: ErrUnknown, ErrUnavailable.
func (p *Panel) History(ctx context.Context, name string) ([]Record, error) {
	if p == nil {
		return nil, ErrUnavailable
	}
	st := p.sw[name]
	if st == nil {
		return nil, p.unknown(name)
	}
	if !p.nc.IsConnected() {
		return nil, p.unavailable(name, fmt.Errorf("connection is %s", p.nc.Status()))
	}
	ctx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	es, err := p.bucket().History(ctx, name)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return []Record{}, nil
	}
	if err != nil {
		return nil, p.unavailable(name, err)
	}
	out := make([]Record, 0, len(es))
	for _, e := range slices.Backward(es) {
		out = append(out, st.record(e))
	}
	return out, nil
}

// record turns a bucket entry of st's key into a Record.
func (st *state) record(e jetstream.KeyValueEntry) Record {
	rec, ok := decode(e.Value())
	switch {
	case e.Operation() != jetstream.KeyValuePut:
		rec = Record{On: st.def.Default, Reset: true}
	case !ok:
		rec = Record{On: st.def.Default, Unknown: true}
	}
	if rec.At.IsZero() {
		rec.At = e.Created().UTC()
	}
	rec.Name, rec.Revision = st.def.Name, e.Revision()
	return rec
}

// decode reads a stored value: a Record, or (for operators using the nats
// CLI) a bare on/off, true/false or 1/0.
func decode(v []byte) (Record, bool) {
	var rec Record
	if json.Unmarshal(v, &rec) == nil {
		return rec, true
	}
	switch strings.ToLower(strings.TrimSpace(string(v))) {
	case "on", "true", "1":
		return Record{On: true, By: "nats kv"}, true
	case "off", "false", "0":
		return Record{On: false, By: "nats kv"}, true
	}
	return Record{}, false
}

// apply makes rec the switch's snapshot unless a later one is there.
func (st *state) apply(rec *Record) {
	for {
		cur := st.rec.Load()
		if cur.Revision >= rec.Revision {
			return
		}
		if st.rec.CompareAndSwap(cur, rec) {
			return
		}
	}
}

// Watch follows the bucket until ctx is done, applying every change to the
// snapshot, and returns nil then. While the bus is down the snapshot keeps
// its values; the watcher catches up on reconnection, and is made again
// (with backoff) if it ends.
func (p *Panel) Watch(ctx context.Context) error {
	delay := retryMin
	for {
		// An error ends this watcher; the next is made after the pause (the
		// node's readiness check reports a bus that is down).
		start := time.Now()
		w, err := p.bucket().WatchAll(ctx)
		if err != nil {
			// Open it again: the bus may have lost it (then it is made
			// again, and every switch is at its default) or come back.
			var kv jetstream.KeyValue
			if p.gone(ctx) {
				p.reset()
			}
			if kv, err = p.open(ctx); err == nil {
				w, err = kv.WatchAll(ctx)
			}
		}
		if err == nil {
			if errors.Is(p.follow(ctx, w, false), errGone) {
				p.reset() // the bucket made again counts its revisions from 1
			}
			w.Stop()
		}
		if time.Since(start) > time.Minute {
			delay = retryMin // it worked for a while: a new failure starts the backoff again
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(delay + rand.N(delay/2+1)):
		}
		delay = min(2*delay, retryMax)
	}
}

// errGone: the bus lost the bucket.
var errGone = errors.New("switches: the bucket is gone")

// gone reports whether the bus has lost the bucket (not merely that it
// cannot be asked now).
func (p *Panel) gone(ctx context.Context) bool {
	cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	_, err := p.js.KeyValue(cctx, p.cfg.Bucket)
	return errors.Is(err, jetstream.ErrBucketNotFound)
}

// reset puts every switch back at its default, revision 0: the bucket
// they were read from is gone, and the one made again starts from 1.
func (p *Panel) reset() {
	for name, st := range p.sw {
		st.rec.Store(&Record{Name: name, On: st.def.Default})
	}
}

// bucketCheck is how often a watching node checks that its bucket is there.
const bucketCheck = 5 * time.Second

// follow applies w's entries until w ends (an error) or ctx is done (nil);
// with untilReady it returns nil at the end of the initial values.
//
// It returns errGone when the bus lost the bucket.
func (p *Panel) follow(ctx context.Context, w jetstream.KeyWatcher, untilReady bool) error {
	// A watcher of a bucket the bus lost does not end by itself: look.
	check := time.NewTicker(bucketCheck)
	defer check.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-check.C:
			cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			_, err := p.bucket().Status(cctx)
			cancel()
			if errors.Is(err, jetstream.ErrBucketNotFound) || errors.Is(err, jetstream.ErrStreamNotFound) {
				return errGone
			}
		case e, ok := <-w.Updates():
			if !ok {
				return errors.New("switches: watcher ended")
			}
			if e == nil { // the initial values are all in
				if untilReady {
					return nil
				}
				continue
			}
			if st := p.sw[e.Key()]; st != nil { // other keys: switches this version does not have
				rec := st.record(e)
				if !rec.Unknown {
					st.apply(&rec)
				}
			}
		}
	}
}
