package sqldb

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"
)

// Group commit for SQLite. A SQLite file has one writer, and most of a
// small transaction's cost is its commit (every page it touched goes to the
// WAL again, a pwrite per frame). So transactions queued for the writer
// run together: one BEGIN, each member inside its own savepoint (a member
// that fails is rolled back alone), one COMMIT. Members are told their
// result only after the commit. Under no load a batch is a single member
// and runs as a plain transaction; under load batches grow by themselves,
// from the members that arrived while the previous batch ran.
//
// If the batch itself breaks (a savepoint or the commit fails: an I/O
// error, or an interrupted statement, which makes SQLite roll back the
// whole transaction), each member runs again alone, so a member never
// fails for another's fault.
//
// A member's fn runs on the writer's goroutine: a panic in it is carried
// to its caller and raised there; it must not write to the same database
// through Tx, Exec or Lazy (that write would queue behind fn itself until
// its context ends — with one writer connection it always deadlocked). A
// caller whose context ends while its member is still queued gets the
// context's error and the member never runs.

// maxBatch bounds a batch: the later members of a big batch wait for the
// earlier ones.
const maxBatch = 64

// linger is how long a batch waits for company after a batch that had
// some; busyLinger, how long any batch waits while the process is short of
// CPU (contention.go). Measured on the pickup bench at 1,000 orders/s, where
// the machine is saturated: waiting 2 ms then cut surge's CPU per order by
// ~4% and the p99 from callback to pickup code from ~90 to ~68 ms (fewer
// commits, less queueing everywhere); waiting whenever writes come often,
// without the CPU test, tripled the p50 at 300 orders/s.
const (
	linger     = time.Millisecond
	busyLinger = 2 * time.Millisecond
)

type batchItem struct {
	ctx   context.Context
	fn    func(*sql.Tx) error
	done  chan error
	state atomic.Int32 // queued, taken (by a batch) or abandoned (by its caller)
}

const (
	queued int32 = iota
	taken
	abandoned
)

type batcher struct {
	w  *sql.DB
	in chan *batchItem

	// Counted for tests: batches of two or more, their members, and the
	// batches that broke.
	batches, members, broken atomic.Int64

	mu     sync.RWMutex // held to queue; closing takes it whole
	closed bool
	stop   chan struct{}
	ended  chan struct{}
}

func newBatcher(w *sql.DB) *batcher {
	b := &batcher{w: w, in: make(chan *batchItem, 4*maxBatch), stop: make(chan struct{}), ended: make(chan struct{})}
	go b.loop()
	return b
}

// close stops the loop after the batch it runs; members still queued get
// ErrClosed.
func (b *batcher) close() {
	b.mu.Lock()
	if !b.closed {
		b.closed = true
		close(b.stop)
	}
	b.mu.Unlock()
	<-b.ended
}

// ErrClosed: the database was closed while a transaction waited.
var ErrClosed = errors.New("sqldb: database closed")

func (b *batcher) do(ctx context.Context, fn func(*sql.Tx) error) error {
	it := &batchItem{ctx: ctx, fn: fn, done: make(chan error, 1)}
	b.mu.RLock()
	if b.closed {
		b.mu.RUnlock()
		return ErrClosed
	}
	select {
	case b.in <- it:
	case <-ctx.Done():
		b.mu.RUnlock()
		return ctx.Err()
	}
	b.mu.RUnlock()
	select {
	case err := <-it.done:
		return rethrow(err)
	case <-ctx.Done():
		if it.state.CompareAndSwap(queued, abandoned) {
			return ctx.Err() // never ran, never will
		}
		// Taken: it may be running or committed, and the caller must not
		// act before knowing which. A cancelled member fails at its next
		// statement.
		return rethrow(<-it.done)
	}
}

// panicked carries a panic of a member's fn, recovered on the batch's
// goroutine, to its caller's goroutine, where it panics again.
type panicked struct{ v any }

func (p *panicked) Error() string { return fmt.Sprint("sqldb: transaction panicked: ", p.v) }

func rethrow(err error) error {
	if p, ok := err.(*panicked); ok {
		panic(p.v)
	}
	return err
}

// call runs a member's fn, turning a panic into its error.
func call(fn func(*sql.Tx) error, tx *sql.Tx) (err error) {
	defer func() {
		if v := recover(); v != nil {
			err = &panicked{v}
		}
	}()
	return fn(tx)
}

// errGoexit answers the members of a batch whose goroutine ended inside a
// member's fn (runtime.Goexit: t.FailNow in a test).
var errGoexit = errors.New("sqldb: a transaction's function exited its goroutine")

func (b *batcher) loop() {
	batch := make([]*batchItem, 0, maxBatch)
	stopped := false
	defer func() {
		if stopped {
			close(b.ended)
			return
		}
		// A member's fn ended this goroutine: nothing of the batch was
		// committed after it; answer whoever still waits, and go on.
		for _, it := range batch {
			select {
			case it.done <- errGoexit:
			default:
			}
		}
		go b.loop()
	}()
	company := false // the last batch had two or more members
	for {
		select {
		case <-b.stop: // nothing is queued after stop: answer what is left
			for {
				select {
				case it := <-b.in:
					it.done <- ErrClosed
				default:
					stopped = true
					return
				}
			}
		case it := <-b.in:
			batch = append(batch[:0], it)
		}
		switch {
		case contended():
			// The CPU is the bottleneck: a commit saved is worth more
			// than the wait.
			time.Sleep(busyLinger)
		case company:
			// Writers are racing: give the ones about to queue a moment.
			// A lone writer on an idle machine never waits.
			time.Sleep(linger)
		}
	more:
		for len(batch) < maxBatch {
			select {
			case it := <-b.in:
				batch = append(batch, it)
			default:
				break more
			}
		}
		company = len(batch) > 1
		b.run(batch)
	}
}

// run runs one batch and answers each member.
func (b *batcher) run(batch []*batchItem) {
	live := batch[:0:0]
	for _, it := range batch {
		if !it.state.CompareAndSwap(queued, taken) {
			continue // its caller gave up waiting
		}
		if err := it.ctx.Err(); err != nil {
			it.done <- err
			continue
		}
		live = append(live, it)
	}
	switch len(live) {
	case 0:
		return
	case 1:
		live[0].done <- plainTx(live[0].ctx, b.w, live[0].fn)
		return
	}
	b.batches.Add(1)
	b.members.Add(int64(len(live)))
	errs, err := groupTx(b.w, live)
	if err != nil { // the batch broke: each on its own
		b.broken.Add(1)
		for _, it := range live {
			it.done <- plainTx(it.ctx, b.w, it.fn)
		}
		return
	}
	for i, it := range live {
		it.done <- errs[i]
	}
}

// groupTx runs the members in one transaction, each in a savepoint. errs
// holds each member's own error; err is set when the batch broke, and then
// nothing was committed.
func groupTx(w *sql.DB, members []*batchItem) (errs []error, err error) {
	bg := context.Background() // the batch is no member's: none cancels it
	tx, err := w.BeginTx(bg, nil)
	if err != nil {
		return nil, err
	}
	defer tx.Rollback() // after a commit, a no-op
	errs = make([]error, len(members))
	for i, it := range members {
		if _, err := tx.ExecContext(bg, `SAVEPOINT m`); err != nil {
			return nil, err
		}
		if errs[i] = call(it.fn, tx); errs[i] != nil {
			if _, err := tx.ExecContext(bg, `ROLLBACK TO m`); err != nil {
				return nil, err
			}
		}
		if _, err := tx.ExecContext(bg, `RELEASE m`); err != nil {
			return nil, err
		}
	}
	return errs, tx.Commit()
}

// plainTx runs fn in a transaction of its own on w.
func plainTx(ctx context.Context, w *sql.DB, fn func(*sql.Tx) error) error {
	tx, err := w.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback() // after a commit, a no-op; also if fn ends the goroutine
	if err := call(fn, tx); err != nil {
		return err
	}
	return tx.Commit()
}
