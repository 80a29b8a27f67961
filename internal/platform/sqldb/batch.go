package sqldb

import (
	"context"
	"database/sql"
	"errors"
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

// maxBatch bounds a batch: the later members of a big batch wait for the
// earlier ones.
const maxBatch = 64

// linger is how long a batch waits for company after a batch that had some.
const linger = time.Millisecond

type batchItem struct {
	ctx  context.Context
	fn   func(*sql.Tx) error
	done chan error
}

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
	// Once queued, wait for the answer even if ctx ends: the member may be
	// running, and its caller must not act before knowing whether it
	// committed. A cancelled member fails at its next statement.
	return <-it.done
}

func (b *batcher) loop() {
	defer close(b.ended)
	batch := make([]*batchItem, 0, maxBatch)
	company := false // the last batch had two or more members
	for {
		select {
		case <-b.stop: // nothing is queued after stop: answer what is left
			for {
				select {
				case it := <-b.in:
					it.done <- ErrClosed
				default:
					return
				}
			}
		case it := <-b.in:
			batch = append(batch[:0], it)
		}
		if company {
			// Writers are racing: give the ones about to queue a moment
			// (on a busy machine a commit saved is worth more than the
			// wait). A lone writer never waits.
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
		if errs[i] = it.fn(tx); errs[i] != nil {
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
	if err := fn(tx); err != nil {
		tx.Rollback()
		return err
	}
	return tx.Commit()
}
