package e2etest

import (
	"encoding/json"
	"fmt"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/surge-platform/surge/internal/platform/bus/bustest"
	"github.com/surge-platform/surge/internal/platform/id"
)

// clusterView is GET /admin/v1/cluster.
type clusterView struct {
	Owner  string `json:"owner"`
	NodeID int    `json:"node_id"`
	Jobs   []struct {
		Name   string `json:"name"`
		Leader bool   `json:"leader"`
		Runs   int64  `json:"runs"`
	} `json:"jobs"`
}

func getCluster(t *testing.T, base, admin string) clusterView {
	t.Helper()
	status, b, err := call(base, "GET", "/admin/v1/cluster", admin, "")
	var v clusterView
	if err != nil || status != 200 || json.Unmarshal(b, &v) != nil {
		t.Fatalf("cluster view of %s: %d %s %v", base, status, b, err)
	}
	return v
}

// runs returns how many runs of job the node started, and whether it leads it.
func (v clusterView) runs(job string) (int64, bool) {
	for _, j := range v.Jobs {
		if j.Name == job {
			return j.Runs, j.Leader
		}
	}
	return 0, false
}

// Processes sharing PostgreSQL and NATS, each with a private in-memory kv,
// lease distinct node ids in the main database; orders placed through all
// of them at once for the same few users all get distinct ids, and every
// event reaches the consumers (an id issued twice would be an event that
// NATS de-duplicates away).
func TestNodesShareNoID(t *testing.T) {
	t.Parallel()
	const admin, orders, users = "e2e-admin", 10000, 4
	dbs := pgURLs(t, 2)
	common := []string{"--admin-token", admin, "--db", dbs[0], "--db", dbs[1], "--db-max-conns", "6", "--kv", "mem:",
		"--bus", bustest.Namespaced(t, bustest.ExternalURL(t))}
	var procs []*proc
	add := func() {
		addr := freeAddr(t)
		procs = append(procs, start(t, addr, append([]string{"serve", "--addr", addr, "--seed-demo", "--data", t.TempDir()}, common...)...))
		seen := map[int]string{}
		for _, p := range procs {
			v := getCluster(t, p.base, admin)
			if other, dup := seen[v.NodeID]; dup {
				t.Fatalf("%s and %s both have node id %d", other, v.Owner, v.NodeID)
			}
			seen[v.NodeID] = v.Owner
		}
	}
	add()
	add()
	add() // two, then three

	tokens := make([]string, users)
	for u := range tokens {
		tokens[u] = mustLogin(t, procs[u%len(procs)].base, fmt.Sprintf("+86137%08d", u))
	}
	var mu sync.Mutex
	got := map[string]bool{}
	nodes := map[int]int{}
	var failed []string
	var wg sync.WaitGroup
	const workers = 24
	for w := range workers {
		wg.Go(func() {
			for i := w; i < orders; i += workers {
				base := procs[i%len(procs)].base
				store := 1001 + i%20
				body := fmt.Sprintf(`{"store_id":"%d","items":[{"sku_id":"%d","qty":1}]}`, store, store*1000+6+i%20)
				status, b, err := call(base, "POST", "/api/v1/orders", tokens[i%users], body, "Idempotency-Key", "k"+strconv.Itoa(i))
				var c struct {
					OrderID string `json:"order_id"`
				}
				json.Unmarshal(b, &c)
				mu.Lock()
				if err != nil || status != 201 || c.OrderID == "" {
					failed = append(failed, fmt.Sprintf("%d %s %v", status, b, err))
				} else {
					if got[c.OrderID] {
						failed = append(failed, "order id "+c.OrderID+" acknowledged twice")
					}
					got[c.OrderID] = true
					x, _ := strconv.ParseInt(c.OrderID, 10, 64)
					nodes[id.Node(x)]++
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if len(failed) > 0 {
		t.Fatalf("%d of %d orders failed, first: %s", len(failed), orders, failed[0])
	}
	if len(got) != orders || len(nodes) != len(procs) {
		t.Fatalf("%d distinct order ids for %d orders, from node ids %v", len(got), orders, nodes)
	}
	// Every order.created is in the stream once and reached the ledger
	// consumer: none de-duplicated away, none lost.
	deadline := time.Now().Add(60 * time.Second)
	for {
		s := getStats(t, procs[0].base, admin)
		if s.Pending == 0 && s.Stream == orders && s.Seen == orders {
			break
		}
		if s.Stream > orders || time.Now().After(deadline) {
			t.Fatalf("events: %+v, want %d in the stream and seen, none pending", s, orders)
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("%d orders through %d processes, ids from node ids %v; every event in the stream and seen", orders, len(procs), nodes)
}

// Jobs that must run once per cluster run on one of three worker nodes; a
// leader killed with -9 is replaced within 10 s; a leader paused (SIGSTOP)
// past its lease does not run the job again when it wakes.
func TestSingletonJobs(t *testing.T) {
	t.Parallel()
	const admin = "e2e-admin"
	dbs := pgURLs(t, 1)
	common := []string{"--admin-token", admin, "--db", dbs[0], "--db-max-conns", "4", "--kv", "mem:",
		"--bus", bustest.Namespaced(t, bustest.ExternalURL(t)), "--notify-url", "off"}
	var procs []*proc
	for range 3 {
		addr := freeAddr(t)
		procs = append(procs, start(t, addr, append([]string{"serve", "--roles", "worker", "--addr", addr, "--data", t.TempDir()}, common...)...))
	}
	// leader waits until one live node leads job and has run it, and
	// returns its index. Nodes in skip are dead or paused.
	leader := func(job string, skip int, within time.Duration) (int, time.Duration) {
		t0 := time.Now()
		for {
			for i, p := range procs {
				if i == skip {
					continue
				}
				if runs, lead := getCluster(t, p.base, admin).runs(job); lead && runs > 0 {
					return i, time.Since(t0)
				}
			}
			if time.Since(t0) > within {
				t.Fatalf("no node leads and runs %s after %v", job, within)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	runsOf := func(job string, skip int) []int64 {
		out := make([]int64, len(procs))
		for i, p := range procs {
			if i != skip {
				out[i], _ = getCluster(t, p.base, admin).runs(job)
			}
		}
		return out
	}

	// Once per period: the expiry sweep (every 5 s) over 12 s runs 2 or 3
	// times on the leader, never on the others.
	first, _ := leader("expiry-sweep", -1, 20*time.Second)
	before := runsOf("expiry-sweep", -1)
	time.Sleep(12 * time.Second)
	after := runsOf("expiry-sweep", -1)
	for i := range procs {
		d := after[i] - before[i]
		if i == first && (d < 2 || d > 3) || i != first && d != 0 {
			t.Fatalf("expiry sweep runs in 12 s by node: %v -> %v (leader %d), want 2..3 on the leader only", before, after, first)
		}
	}

	// kill -9 of the leader: another node runs the job within 10 s.
	killNine(t, procs[first])
	next, took := leader("expiry-sweep", first, 10*time.Second)
	t.Logf("expiry sweep: node %d killed, node %d ran it %v later", first, next, took.Round(100*time.Millisecond))

	// SIGSTOP of the leader of the per-second payment queries, for longer
	// than its lease: another takes over; woken, the old leader runs no
	// second copy.
	paused, _ := leader("payment-queries", first, 10*time.Second)
	stopped, _ := getCluster(t, procs[paused].base, admin).runs("payment-queries")
	if err := procs[paused].cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	other := 3 - first - paused
	for {
		if runs, lead := getCluster(t, procs[other].base, admin).runs("payment-queries"); lead && runs > 0 {
			break
		}
		if time.Since(t0) > 15*time.Second {
			procs[paused].cmd.Process.Signal(syscall.SIGCONT)
			t.Fatal("nobody took over from a paused leader")
		}
		time.Sleep(100 * time.Millisecond)
	}
	time.Sleep(time.Until(t0.Add(9 * time.Second))) // paused well past its lease
	if err := procs[paused].cmd.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	woke := time.Now()
	for time.Since(woke) < 4*time.Second {
		runs, lead := getCluster(t, procs[paused].base, admin).runs("payment-queries")
		if runs != stopped {
			t.Fatalf("the woken leader ran payment queries again (%d runs, %d when paused; leader %v)", runs, stopped, lead)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if runs, lead := getCluster(t, procs[other].base, admin).runs("payment-queries"); !lead || runs == 0 {
		t.Fatalf("the node that took over lost the job to the woken one (leader %v, runs %d)", lead, runs)
	}
}
