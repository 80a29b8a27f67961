package fulfil

import (
	"context"
	"testing"

	"github.com/surge-platform/surge/internal/platform/sqldb"
)

// Store ids come in runs (1001, 1002, …) and logical shards map onto the
// databases in ranges: the stores' fulfilment records must still spread
// over the databases, or one writer takes every store's load (as the main
// database's did before).
func TestStoresSpreadOverDatabases(t *testing.T) {
	c, err := sqldb.Open(context.Background(), []string{"sqlite:" + t.TempDir() + "?shards=4"}, sqldb.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	per := map[int]int{}
	for st := int64(1001); st <= 1040; st++ {
		g := storeGene(st)
		if g < 0 || g >= 1024 {
			t.Fatalf("store %d: gene %d out of range", st, g)
		}
		per[c.Physical(g)]++
	}
	for db := range 4 {
		if per[db] < 4 { // 10 each if even; a range mapping would give 40, 0, 0, 0
			t.Errorf("stores per database %v: database %d has %d of 40", per, db, per[db])
		}
	}
}
