package node

import (
	"context"
	"database/sql"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/surge-platform/surge/internal/monitor"
	"github.com/surge-platform/surge/internal/platform/limit"
	"github.com/surge-platform/surge/internal/platform/obs"
	"github.com/surge-platform/surge/internal/platform/outbox"
	"github.com/surge-platform/surge/internal/platform/sqldb"
	"github.com/surge-platform/surge/internal/platform/web"
)

const (
	counter = prometheus.CounterValue
	gauge   = prometheus.GaugeValue
)

// instrument registers what the node's parts count and what is asked of
// its dependencies when scraped. docs/observability.md lists every metric
// and what to do when it turns bad.
func (n *Node) instrument(m *obs.Metrics) {
	n.Orders.Instrument(m)
	n.Promo.Instrument(m)
	n.Flash.Instrument(m)
	roles := strings.Join(n.cfg.Roles, ",")
	m.Func("surge_node_info", "This node: its roles and version (always 1).", gauge, []string{"roles", "version"},
		func(_ context.Context, emit obs.Emit) { emit(1, roles, monitor.Version) })

	// The edge: every refusal per class, the shedder, the caps.
	outcomes := []string{"passed", "capped", "limited", "banned", "shed"}
	m.Func("surge_edge_requests_total", "Requests through the edge by class and outcome: passed, or refused: capped (the cluster cap), limited (a per-IP, per-user or per-route limit), banned (blacklisted), shed (overload).",
		counter, []string{"class", "outcome"}, func(_ context.Context, emit obs.Emit) {
			for i, c := range n.Edge.Snapshot().Classes {
				cl := web.Class(i).String()
				for j, v := range []int64{c.Passed, c.Capped, c.Limited, c.Banned, c.Shed} {
					emit(float64(v), cl, outcomes[j])
				}
			}
		})
	m.Func("surge_edge_inflight", "Requests being served now, by class.", gauge, []string{"class"}, func(_ context.Context, emit obs.Emit) {
		for i, c := range n.Edge.Snapshot().Classes {
			emit(float64(c.Inflight), web.Class(i).String())
		}
	})
	m.Func("surge_shed_state", "The shedder: limit (customers' requests at once while overloaded), queued, cpu (0..1 of this process's cores), drop (the chance of refusing a read on arrival), hot (1: overloaded).",
		gauge, []string{"measure"}, func(_ context.Context, emit obs.Emit) {
			st := n.Edge.Snapshot().Shed
			hot := 0.0
			if st.Hot {
				hot = 1
			}
			emit(float64(st.Limit), "limit")
			emit(float64(st.Queued), "queued")
			emit(st.CPU, "cpu")
			emit(st.Drop, "drop")
			emit(hot, "hot")
		})
	m.Func("surge_connections", "Open client connections, and the cap (--max-conns; 0: none).", gauge, []string{"state"},
		func(_ context.Context, emit obs.Emit) {
			if c := n.Edge.Snapshot().Conns; c != nil {
				emit(float64(c.Open), "open")
				emit(float64(c.Max), "max")
			}
		})
	m.Func("surge_connections_refused_total", "Connections closed at once because --max-conns were open.", counter, nil,
		func(_ context.Context, emit obs.Emit) {
			if c := n.Edge.Snapshot().Conns; c != nil {
				emit(float64(c.Refused))
			}
		})
	m.Func("surge_cluster_cap_requests_total", "Customer requests the cluster-wide cap (--global-rps) allowed and refused on this node.",
		counter, []string{"result"}, func(_ context.Context, emit obs.Emit) {
			if st := n.Edge.Snapshot().Cap; st != nil {
				emit(float64(st.Allowed), "allowed")
				emit(float64(st.Refused), "refused")
			}
		})
	m.Func("surge_cluster_cap_local", "1 while this node enforces its local share of the cluster cap because kv is slow or down; 0 while it shares the cap through kv.",
		gauge, nil, func(_ context.Context, emit obs.Emit) {
			if st := n.Edge.Snapshot().Cap; st != nil {
				v := 0.0
				if st.Mode == limit.ModeLocal {
					v = 1
				}
				emit(v)
			}
		})
	m.Func("surge_cluster_cap_fallbacks_total", "Times this node fell back from the shared cluster cap to its local share.", counter, nil,
		func(_ context.Context, emit obs.Emit) {
			if st := n.Edge.Snapshot().Cap; st != nil {
				emit(float64(st.Fallbacks))
			}
		})

	// Dependencies: breakers and database pools.
	m.Func("surge_breaker_state", "Circuit breakers by dependency (kv, bus, db with its shard, notify): 0 closed, 1 half-open, 2 open.",
		gauge, []string{"dependency", "shard"}, func(_ context.Context, emit obs.Emit) {
			n.eachBreaker(func(dep string, shard int, _ *sqldb.DB, state string) {
				s := ""
				if shard >= 0 {
					s = strconv.Itoa(shard)
				}
				emit(breakerValue(state), dep, s)
			})
			if n.Notify != nil {
				emit(breakerValue(n.Notify.Stats().Breaker), "notify", "")
			}
		})
	m.Func("surge_db_connections", "Database connections by shard, pool (w: writes, r: reads; PostgreSQL has one pool, w) and state (in_use, idle).",
		gauge, []string{"shard", "pool", "state"}, func(_ context.Context, emit obs.Emit) {
			n.pools(func(shard, pool string, st sql.DBStats) {
				emit(float64(st.InUse), shard, pool, "in_use")
				emit(float64(st.Idle), shard, pool, "idle")
			})
		})
	m.Func("surge_db_pool_waits_total", "Times a caller waited for a free database connection, by shard and pool.",
		counter, []string{"shard", "pool"}, func(_ context.Context, emit obs.Emit) {
			n.pools(func(shard, pool string, st sql.DBStats) { emit(float64(st.WaitCount), shard, pool) })
		})
	m.Func("surge_db_pool_wait_seconds_total", "Time callers waited for a free database connection, by shard and pool.",
		counter, []string{"shard", "pool"}, func(_ context.Context, emit obs.Emit) {
			n.pools(func(shard, pool string, st sql.DBStats) { emit(st.WaitDuration.Seconds(), shard, pool) })
		})

	// The menu cache.
	m.Func("surge_menu_cache_total", "The menu cache: reads (lookups), misses (this node's copy did not answer), fills by source (db: built from the database, kv: the shared tier), stale (the last good copy served), lock_waits, kv_errors.",
		counter, []string{"event"}, func(_ context.Context, emit obs.Emit) {
			st := n.Catalog.CacheStats()
			emit(float64(st.Reads), "reads")
			emit(float64(st.Misses), "misses")
			emit(float64(st.Builds), "fill_db")
			emit(float64(st.KVHits), "fill_kv")
			emit(float64(st.Stale), "stale")
			emit(float64(st.LockWaits), "lock_waits")
			emit(float64(st.KVErrors), "kv_errors")
		})

	// Jobs that run once per cluster.
	m.Func("surge_job_runs_total", "Runs of each cluster-wide job started on this node, by task (the job's name) and result (ok, failed).", counter, []string{"task", "result"},
		func(_ context.Context, emit obs.Emit) {
			for _, j := range n.Jobs.Stats() {
				emit(float64(j.Runs-j.Failures), j.Name, "ok")
				emit(float64(j.Failures), j.Name, "failed")
			}
		})
	m.Func("surge_job_leader", "1 for each cluster-wide job (task) this node holds the lease of.", gauge, []string{"task"},
		func(_ context.Context, emit obs.Emit) {
			for _, j := range n.Jobs.Stats() {
				v := 0.0
				if j.Leader {
					v = 1
				}
				emit(v, j.Name)
			}
		})

	if n.Push != nil {
		m.Func("surge_ws_connections", "WebSocket connections open now, by kind (customer, pos).", gauge, []string{"kind"},
			func(_ context.Context, emit obs.Emit) {
				st := n.Push.Stats()
				emit(float64(st.Customers), "customer")
				emit(float64(st.POS), "pos")
			})
		m.Func("surge_ws_messages_total", "WebSocket messages written, and events replayed to reconnecting customers (resumed).", counter, []string{"kind"},
			func(_ context.Context, emit obs.Emit) {
				st := n.Push.Stats()
				emit(float64(st.Sent), "sent")
				emit(float64(st.Resumed), "resumed")
			})
		m.Func("surge_ws_dropped_total", "WebSocket connections dropped by reason: slow (a slow consumer), dead (missed heartbeats), resync (a reconnect told to read instead).",
			counter, []string{"reason"}, func(_ context.Context, emit obs.Emit) {
				st := n.Push.Stats()
				emit(float64(st.Slow), "slow")
				emit(float64(st.Dead), "dead")
				emit(float64(st.Resyncs), "resync")
			})
	}
	if n.Notify != nil {
		m.Func("surge_notifications_total", "Customer notifications by result: sent, failed, skipped (the breaker was open), suppressed (the switch was off).",
			counter, []string{"result"}, func(_ context.Context, emit obs.Emit) {
				st := n.Notify.Stats()
				emit(float64(st.Sent), "sent")
				emit(float64(st.Failed), "failed")
				emit(float64(st.Skipped), "skipped")
				emit(float64(st.Suppressed), "suppressed")
			})
	}

	if !n.cfg.Has("worker") {
		return
	}
	// The cluster's queues, asked of the databases and the bus by every
	// worker (each reports the same figures: take the max over nodes).
	outboxBy := func(f func(outbox.Depth) float64) func(context.Context, obs.Emit) {
		return func(ctx context.Context, emit obs.Emit) {
			ds, err := n.relay.Depths(ctx)
			if err != nil {
				n.log.Debug("metrics: outbox depth", "err", err)
				return
			}
			for i, d := range ds {
				emit(f(d), strconv.Itoa(i))
			}
		}
	}
	m.Func("surge_outbox_rows", "Outbox rows not yet published to the bus, per database shard.", gauge, []string{"shard"},
		outboxBy(func(d outbox.Depth) float64 { return float64(d.Rows) }))
	m.Func("surge_outbox_oldest_seconds", "Age of the oldest unpublished outbox row per database shard (0: none).", gauge, []string{"shard"},
		outboxBy(func(d outbox.Depth) float64 {
			if d.Oldest.IsZero() {
				return 0
			}
			return max(0, time.Since(d.Oldest).Seconds())
		}))
	m.Func("surge_consumer_lag", "Durable bus consumers: pending (stream messages not delivered yet), ack_pending (delivered, not acknowledged), redelivered (delivered more than once, not acknowledged).",
		gauge, []string{"stream", "consumer", "measure"}, func(ctx context.Context, emit obs.Emit) {
			lags, err := n.Bus.Lags(ctx)
			if err != nil {
				n.log.Debug("metrics: consumer lags", "err", err)
				return
			}
			for _, l := range lags {
				emit(float64(l.Pending), l.Stream, l.Consumer, "pending")
				emit(float64(l.AckPending), l.Stream, l.Consumer, "ack_pending")
				emit(float64(l.Redelivered), l.Stream, l.Consumer, "redelivered")
			}
		})
	m.Func("surge_dead_letters", "Dead letters waiting for an operator (replay or discard), per consumer.", gauge, []string{"consumer"},
		func(ctx context.Context, emit obs.Emit) {
			per, err := n.Bus.DeadLetterCounts(ctx)
			if err != nil {
				n.log.Debug("metrics: dead letters", "err", err)
				return
			}
			if lags, err := n.Bus.Lags(ctx); err == nil { // every consumer, with none waiting too
				for _, l := range lags {
					if _, ok := per[l.Consumer]; !ok {
						per[l.Consumer] = 0
					}
				}
			}
			for c, v := range per {
				emit(float64(v), c)
			}
		})
}

// breakerValue is a breaker state's gauge value.
func breakerValue(state string) float64 {
	switch state {
	case "half-open":
		return 1
	case "open":
		return 2
	}
	return 0
}

// pools calls f with each database pool's stats: SQLite's writer (w) and
// readers (r), PostgreSQL's one pool (w).
func (n *Node) pools(f func(shard, pool string, st sql.DBStats)) {
	for i, d := range n.DB.Shards() {
		f(strconv.Itoa(i), "w", d.W.Stats())
		if d.R != d.W {
			f(strconv.Itoa(i), "r", d.R.Stats())
		}
	}
}

// deps is the state of the breaker of each dependency the node's roles
// use, for its heartbeat: "db<shard>", "kv", "bus" (closed where there is
// no breaker: an embedded backend).
func (n *Node) deps() map[string]string {
	out := map[string]string{"bus": n.Bus.Breaker().State()}
	if n.cfg.Has("api") || n.cfg.Has("fulfil") || n.cfg.Has("worker") {
		for i, d := range n.DB.Shards() {
			st := "closed"
			if br := d.Breaker(); br != nil {
				st = br.State()
			}
			out["db"+strconv.Itoa(i)] = st
		}
	}
	if n.cfg.Has("api") || n.cfg.Has("fulfil") {
		out["kv"] = "closed"
		if n.kvBreaker != nil {
			out["kv"] = n.kvBreaker.State()
		}
	}
	return out
}

// load fills the heartbeat's CPU, in-flight requests and orders per
// second (the ledger's, on workers).
func (n *Node) load(l *monitor.Load) {
	sn := n.Edge.Snapshot()
	l.CPU = sn.Shed.CPU
	for _, c := range sn.Classes {
		l.Inflight += c.Inflight
	}
	now, created := time.Now(), n.Orders.Created()
	if !n.lastBeat.IsZero() {
		l.Orders = (created - n.lastCreated) / now.Sub(n.lastBeat).Seconds()
	}
	n.lastBeat, n.lastCreated = now, created
}

// queues are the cluster's outbox and consumers, for the monitor.
func (n *Node) queues(ctx context.Context, f *monitor.Figures) error {
	ds, err := n.relay.Depths(ctx)
	if err != nil {
		return err
	}
	for _, d := range ds {
		f.OutboxRows += d.Rows
		if !d.Oldest.IsZero() {
			f.OutboxOldest = max(f.OutboxOldest, time.Since(d.Oldest).Seconds())
		}
	}
	if f.Lags, err = n.Bus.Lags(ctx); err != nil {
		return err
	}
	f.DeadLetters, err = n.Bus.DeadLetterCounts(ctx)
	return err
}
