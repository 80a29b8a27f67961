package fulfil_test

import (
	"strconv"
	"testing"
	"time"

	"github.com/surge-platform/surge/internal/eventually"
	"github.com/surge-platform/surge/internal/fulfil"
	"github.com/surge-platform/surge/internal/nodetest"
)

// Pulling with a cursor: entries come in seq order, a page at a time; a
// cursor acknowledges every entry up to it (never returned again, even to a
// POS that restarts with cursor 0); an entry after it stays until then.
func TestPullWithCursor(t *testing.T) {
	t.Parallel()
	n := nodetest.Start(t)
	ctx := t.Context()
	c := nodetest.Login(t, n.URL(), "+8613966660001")
	const store = 1004
	var paid []string
	var all []fulfil.NewOrder
	for i := range 3 {
		// One at a time: the fulfilment consumer takes events on several
		// workers, so orders paid together may be queued in any order.
		paid = append(paid, nodetest.PayOrder(t, c, "1004", "1004010"))
		eventually.True(t, 10*time.Second, "paid order queued", func() bool {
			var err error
			all, err = n.Fulfil.Queued(ctx, store, 0, 100)
			return err == nil && len(all) == i+1
		})
	}
	for i, e := range all {
		if strconv.FormatInt(e.Order.ID, 10) != paid[i] || i > 0 && e.Seq <= all[i-1].Seq {
			t.Fatalf("queue %+v: want the paid orders %v in order, seqs increasing", all, paid)
		}
	}
	page, err := n.Fulfil.Pull(ctx, store, 0, 2)
	if err != nil || len(page) != 2 || page[0].Seq != all[0].Seq || page[1].Seq != all[1].Seq {
		t.Fatalf("first page of 2: %+v %v", page, err)
	}
	page, err = n.Fulfil.Pull(ctx, store, page[1].Seq, 2)
	if err != nil || len(page) != 1 || page[0].Seq != all[2].Seq {
		t.Fatalf("page after the first two: %+v %v", page, err)
	}
	// Restarted without its cursor: only what was not acknowledged comes.
	page, err = n.Fulfil.Pull(ctx, store, 0, 100)
	if err != nil || len(page) != 1 || page[0].Seq != all[2].Seq {
		t.Fatalf("pull from 0 after acknowledging two: %+v %v", page, err)
	}
	page, err = n.Fulfil.Pull(ctx, store, all[2].Seq, 100)
	if err != nil || len(page) != 0 {
		t.Fatalf("pull after acknowledging all: %+v %v", page, err)
	}
	if page, err = n.Fulfil.Pull(ctx, store, 0, 100); err != nil || len(page) != 0 {
		t.Fatalf("acknowledged entries came back: %+v %v", page, err)
	}
}
