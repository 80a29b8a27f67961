package kv

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"
)

// Watch finds out that a store lost data, and has what was kept in it
// rebuilt from where the truth is (the database, the bus). Every structure
// kept in kv registers a rebuild under its name; Watch keeps, per name:
//
//   - an epoch marker, kv:epoch:<name>, set to a random token after a
//     rebuild succeeded (or when the store was found fresh). Missing means
//     the store is new or was emptied (restarted without persistence,
//     flushed); a token other than the one this process saw last means
//     another process found a loss and rebuilt (this one was away or
//     paused meanwhile).
//   - a beat per process, kv:beat:<name>:<process>, which only this process
//     writes: 1, 2, 3 ... each round. A beat missing or not the value last
//     written means the store lost recent writes (a failover to a replica
//     that was behind, or the above). The beat is written before a
//     rebuild, so a loss during the rebuild is found in the next round.
//
// A round the store does not answer also leaves a rebuild owed for when it
// answers again: writes meant for it meanwhile (a paid order's queue entry
// whose event gave up and went to dead letters) may be missing although
// the store lost nothing.
//
// Any of them calls the rebuild (on every process that finds it, so a
// rebuild must be idempotent and safe to run on several processes at
// once), and a rebuild that fails is retried each round until it succeeds.
// At start a process that finds the marker present rebuilds nothing: the
// store kept its data while it was away.
//
// What it cannot see: writes lost in a failover between two beats of every
// watching process (under a second's worth), and a failover that drops
// writes while no process watches the name.
type Watch struct {
	store   Store
	every   time.Duration
	process string
	report  func(Event)

	mu    sync.Mutex
	parts []*part // guarded by mu
}

// Event is what a Watch reports: a loss found and its rebuild (Reason set,
// Err the rebuild's error if it failed), or a round that could not check
// (Reason empty, Err set; reported once until a round succeeds again).
// AtStart marks a loss found in the process's first round: the store is
// new (as an in-memory one always is) or was emptied while it was away.
type Event struct {
	Name    string
	Reason  string
	AtStart bool
	Took    time.Duration
	Err     error
}

// part is one registered structure and what this process knows of it.
type part struct {
	name    string
	rebuild func(context.Context) error
	epoch   string // the marker's token seen last; "" = none yet
	beat    int64  // the beat written last; 0 = none yet
	owed    string // the reason of a rebuild that has not succeeded yet
	failing bool   // the last round failed (its error was reported)
}

// NewWatch returns a Watch of store that checks every `every` (1 s if 0)
// and tells report (if not nil) what it finds; report must not block.
func NewWatch(store Store, every time.Duration, report func(Event)) *Watch {
	if every <= 0 {
		every = time.Second
	}
	return &Watch{store: store, every: every, process: rand.Text()[:16], report: report}
}

// Register adds a structure to rebuild after a loss: rebuild puts back
// into the store everything name keeps there, from the durable records.
// It must be idempotent and may run on several processes at once.
func (w *Watch) Register(name string, rebuild func(ctx context.Context) error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.parts = append(w.parts, &part{name: name, rebuild: rebuild})
}

// Run checks every registered structure each period until ctx is done;
// it returns nil then. Failures are reported and retried, never returned:
// a store that is down must not stop the process.
func (w *Watch) Run(ctx context.Context) error {
	t := time.NewTicker(w.every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			w.Check(ctx)
		}
	}
}

// Check makes one round: for each structure it reads the marker and this
// process's beat, writes the next beat, and rebuilds when they say the
// store lost data. It returns the round's errors (also reported).
func (w *Watch) Check(ctx context.Context) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	var errs []error
	for _, p := range w.parts {
		if err := w.check(ctx, p); err != nil {
			errs = append(errs, fmt.Errorf("kv watch %s: %w", p.name, err))
		}
	}
	return errors.Join(errs...)
}

// check is one round for p. w.mu must be held.
func (w *Watch) check(ctx context.Context, p *part) error {
	first := p.beat == 0
	reason, err := w.lost(ctx, p)
	if reason != "" {
		// Owed from now on: a beat that went back is not seen again once
		// the next beat lands, even if its write reports an error.
		p.owed = reason
	}
	if err == nil {
		// The fence: the next beat is written before any rebuild. It counts
		// as written even if the call fails (it may have landed): then the
		// next round sees the old value and rebuilds, which is only waste.
		p.beat++
		err = w.store.Set(ctx, w.beatKey(p), []byte(strconv.FormatInt(p.beat, 10)), w.beatTTL())
	}
	if err != nil {
		if !p.failing && ctx.Err() == nil {
			w.tell(Event{Name: p.name, Err: err})
		}
		if ctx.Err() == nil && p.beat > 0 {
			// The store did not answer: what was meant to be written to it
			// meanwhile (a paid order's queue entry whose event then went
			// to dead letters) may be missing although it lost nothing.
			// Rebuild once it answers again; rebuilds are idempotent.
			p.owed = "the store did not answer: rebuilt in case writes were missed meanwhile"
		}
		p.failing = true
		return err
	}
	p.failing = false
	if reason == "" {
		reason = p.owed
	}
	if reason == "" {
		return nil
	}
	t0 := time.Now()
	err = p.rebuild(ctx)
	if err == nil {
		err = w.mark(ctx, p)
	}
	w.tell(Event{Name: p.name, Reason: reason, AtStart: first, Took: time.Since(t0), Err: err})
	if err != nil {
		p.owed = reason
		return fmt.Errorf("rebuild (%s): %w", reason, err)
	}
	p.owed = ""
	return nil
}

// lost reads p's marker and beat and returns why the store counts as
// having lost p's data, or "".
func (w *Watch) lost(ctx context.Context, p *part) (string, error) {
	epoch, err := w.store.Get(ctx, w.epochKey(p))
	switch {
	case errors.Is(err, ErrNotFound):
		return "no epoch marker: the store is new or lost its data", nil
	case err != nil:
		return "", err
	case p.epoch != "" && string(epoch) != p.epoch:
		return "the epoch marker changed: another process found a loss", nil
	}
	if p.epoch == "" {
		p.epoch = string(epoch)
	}
	if p.beat == 0 {
		return "", nil
	}
	beat, err := w.store.Get(ctx, w.beatKey(p))
	switch {
	case errors.Is(err, ErrNotFound):
		return "this process's beat is gone: the store lost recent writes", nil
	case err != nil:
		return "", err
	case string(beat) != strconv.FormatInt(p.beat, 10):
		return fmt.Sprintf("this process's beat went back from %d to %s: the store lost recent writes", p.beat, beat), nil
	}
	return "", nil
}

// mark sets the epoch marker after a rebuild, or takes the one another
// process set first, and remembers it.
func (w *Watch) mark(ctx context.Context, p *part) error {
	if _, err := w.store.SetNX(ctx, w.epochKey(p), []byte(rand.Text()), 0); err != nil {
		return err
	}
	epoch, err := w.store.Get(ctx, w.epochKey(p))
	if err != nil {
		return err
	}
	p.epoch = string(epoch)
	return nil
}

func (w *Watch) tell(e Event) {
	if w.report != nil {
		w.report(e)
	}
}

func (w *Watch) epochKey(p *part) string { return "kv:epoch:" + p.name }
func (w *Watch) beatKey(p *part) string  { return "kv:beat:" + p.name + ":" + w.process }

// beatTTL lets the beats of processes that are gone expire. A process
// paused longer finds its beat gone and rebuilds, which is only waste.
func (w *Watch) beatTTL() time.Duration { return max(time.Minute, 10*w.every) }
