package sqldb

import (
	"context"
	"database/sql"
	"errors"
	"runtime"
	"sync"
	"testing"
	"time"
)

func openBatchTest(t *testing.T) *DB {
	t.Helper()
	c, err := Open(context.Background(), []string{"sqlite:" + t.TempDir() + "?shards=1"}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	d := c.Main()
	if _, err := d.W.ExecContext(context.Background(), `CREATE TABLE acct (id INTEGER PRIMARY KEY, n INTEGER NOT NULL);
		INSERT INTO acct (id, n) VALUES (1, 0); CREATE TABLE rows (id INTEGER PRIMARY KEY); INSERT INTO rows (id) VALUES (-1)`); err != nil {
		t.Fatal(err)
	}
	return d
}

func count(t *testing.T, d *DB, q string) int {
	t.Helper()
	var n int
	if err := d.R.QueryRowContext(context.Background(), q).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// Racing transactions commit in groups, and each member's outcome is its
// own: a member that fails (by its own choice, or with a duplicate key) is
// rolled back alone, the others in its batch commit.
func TestGroupCommitMembersStandAlone(t *testing.T) {
	t.Parallel()
	d := openBatchTest(t)
	ctx := context.Background()
	const n = 400
	errOwn := errors.New("member gives up")
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		wg.Go(func() {
			errs[i] = Tx(ctx, d, func(tx *sql.Tx) error {
				if _, err := tx.ExecContext(ctx, `UPDATE acct SET n = n + 1 WHERE id = 1`); err != nil {
					return err
				}
				id := i
				if i%10 == 3 {
					id = -1 // taken: a unique violation
				}
				if _, err := tx.ExecContext(ctx, `INSERT INTO rows (id) VALUES ($1)`, id); err != nil {
					return err
				}
				if i%7 == 0 {
					return errOwn // after writing: all of it must go
				}
				return nil
			})
		})
	}
	wg.Wait()
	ok := 0
	for i, err := range errs {
		switch {
		case i%10 == 3:
			if !IsUnique(err) {
				t.Errorf("member %d: %v; want a unique violation", i, err)
			}
		case i%7 == 0:
			if !errors.Is(err, errOwn) {
				t.Errorf("member %d: %v; want its own error", i, err)
			}
		case err != nil:
			t.Errorf("member %d: %v", i, err)
		default:
			ok++
		}
	}
	if got := count(t, d, `SELECT n FROM acct WHERE id = 1`); got != ok {
		t.Errorf("counter = %d; want %d (one per committed member)", got, ok)
	}
	if got := count(t, d, `SELECT COUNT(*) FROM rows`) - 1; got != ok {
		t.Errorf("rows = %d; want %d", got, ok)
	}
	if d.batch.batches.Load() == 0 || d.batch.members.Load() <= d.batch.batches.Load() {
		t.Errorf("batches %d with %d members: racing writers were not grouped", d.batch.batches.Load(), d.batch.members.Load())
	}
	if d.batch.broken.Load() != 0 {
		t.Errorf("%d batches broke", d.batch.broken.Load())
	}
}

// A member that ends the shared transaction (here by a ROLLBACK; in life an
// interrupted statement or an I/O error) breaks its batch: every member then
// runs alone, so only the culprit fails.
func TestGroupCommitBrokenBatchRunsMembersAlone(t *testing.T) {
	t.Parallel()
	d := openBatchTest(t)
	ctx := context.Background()
	for round := 0; d.batch.broken.Load() == 0; round++ {
		if round == 20 {
			t.Fatal("no batch broke in 20 rounds: the culprit never shared a batch")
		}
		before := count(t, d, `SELECT COUNT(*) FROM rows`) // with the -1 row
		var wg sync.WaitGroup
		const n = 30
		errs := make([]error, n)
		for i := range n {
			wg.Go(func() {
				errs[i] = Tx(ctx, d, func(tx *sql.Tx) error {
					if i == n/2 {
						_, err := tx.ExecContext(ctx, `ROLLBACK`)
						return err
					}
					_, err := tx.ExecContext(ctx, `INSERT INTO rows (id) VALUES ($1)`, round*n+i)
					return err
				})
			})
		}
		wg.Wait()
		for i, err := range errs {
			if i != n/2 && err != nil {
				t.Fatalf("round %d member %d: %v", round, i, err)
			}
		}
		if errs[n/2] == nil {
			t.Errorf("round %d: the member that ended the transaction got no error", round)
		}
		if got := count(t, d, `SELECT COUNT(*) FROM rows`) - before; got != n-1 {
			t.Fatalf("round %d: %d rows committed; want %d", round, got, n-1)
		}
	}
}

// A member whose context is done before its batch runs is not run; Close
// answers members still queued instead of leaving them waiting, and later
// calls get ErrClosed.
func TestGroupCommitCancelAndClose(t *testing.T) {
	t.Parallel()
	d := openBatchTest(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	ran := false
	if err := Tx(ctx, d, func(*sql.Tx) error { ran = true; return nil }); !errors.Is(err, context.Canceled) || ran {
		t.Errorf("cancelled member: err %v, ran %v; want context.Canceled, not run", err, ran)
	}

	// Hold the writer, queue members behind it, close.
	bg := context.Background()
	hold := make(chan struct{})
	held := make(chan error, 1)
	go func() {
		held <- Tx(bg, d, func(*sql.Tx) error { <-hold; return nil })
	}()
	time.Sleep(50 * time.Millisecond)
	queued := make(chan error, 10)
	for range 10 {
		go func() { queued <- Tx(bg, d, func(*sql.Tx) error { return nil }) }()
	}
	time.Sleep(50 * time.Millisecond)
	closed := make(chan struct{})
	go func() { d.batch.close(); close(closed) }()
	time.Sleep(20 * time.Millisecond)
	close(hold)
	if err := <-held; err != nil {
		t.Errorf("the running member: %v", err)
	}
	<-closed
	for range 10 {
		select {
		case err := <-queued:
			if err != nil && !errors.Is(err, ErrClosed) {
				t.Errorf("queued member: %v; want nil or ErrClosed", err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("a queued member was never answered")
		}
	}
	if err := Tx(bg, d, func(*sql.Tx) error { return nil }); !errors.Is(err, ErrClosed) {
		t.Errorf("after close: %v; want ErrClosed", err)
	}
}

// A panic in a member's fn reaches its caller (where HTTP handlers and bus
// consumers recover it), not the database's writer goroutine; a fn that
// ends its goroutine (t.FailNow) fails only itself; a member whose caller
// stops waiting while it is queued never runs. The writer serves on.
func TestGroupCommitPanicGoexitAndDeadline(t *testing.T) {
	t.Parallel()
	d := openBatchTest(t)
	bg := context.Background()
	func() {
		defer func() {
			if v := recover(); v != "boom" {
				t.Errorf("recovered %v; want the member's panic value", v)
			}
		}()
		Tx(bg, d, func(tx *sql.Tx) error {
			tx.ExecContext(bg, `INSERT INTO rows (id) VALUES (100)`)
			panic("boom")
		})
		t.Error("Tx returned after its fn panicked")
	}()
	exited := make(chan error, 1)
	go func() {
		// On the batch's goroutine: Goexit ends that goroutine, not this one.
		exited <- Tx(bg, d, func(*sql.Tx) error { runtime.Goexit(); return nil })
	}()
	if err := <-exited; !errors.Is(err, errGoexit) {
		t.Errorf("member that exited its goroutine: %v; want errGoexit", err)
	}

	hold, held := make(chan struct{}), make(chan error, 1)
	go func() { held <- Tx(bg, d, func(*sql.Tx) error { <-hold; return nil }) }()
	time.Sleep(50 * time.Millisecond)
	ctx, cancel := context.WithTimeout(bg, 50*time.Millisecond)
	defer cancel()
	release := time.AfterFunc(2*time.Second, func() { close(hold) }) // so a waiting Tx fails the test, not hangs it
	ran, start := false, time.Now()
	if err := Tx(ctx, d, func(*sql.Tx) error { ran = true; return nil }); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("member queued past its deadline: %v; want DeadlineExceeded", err)
	}
	if waited := time.Since(start); waited > time.Second {
		t.Errorf("a member queued behind a held writer returned after %v; want soon after its 50 ms deadline", waited)
	}
	if release.Stop() {
		close(hold)
	}
	if err := <-held; err != nil {
		t.Fatal(err)
	}
	if err := Tx(bg, d, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(bg, `INSERT INTO rows (id) VALUES (101)`)
		return err
	}); err != nil {
		t.Fatalf("the writer after all that: %v", err)
	}
	if ran {
		t.Error("the member whose caller gave up ran anyway")
	}
	if got := count(t, d, `SELECT COUNT(*) FROM rows WHERE id = 100`); got != 0 {
		t.Error("the panicking member's write was committed")
	}
}
