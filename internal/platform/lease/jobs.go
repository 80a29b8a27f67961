package lease

import (
	"context"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
)

// JobTTL is how long a job's leader holds its lease without renewing it:
// a leader that dies is replaced within about JobTTL + JobTTL/3.
const JobTTL = 6 * time.Second

// Jobs runs the jobs that must run once per cluster (sweeps, payment
// queries, reconciliation). Each job has a lease "job:<name>": the node
// holding it runs the job, every other node renews its claim attempt and
// takes over when the lease expires. The zero value is not usable; call
// NewJobs.
type Jobs struct {
	t     *Table
	owner string
	ttl   time.Duration
	log   *slog.Logger
	trace trace.Tracer // nil: runs have no span

	mu    sync.Mutex
	stats map[string]*JobStats // guarded by mu
}

// JobStats is what this node knows of one job.
type JobStats struct {
	Name     string    `json:"name"`
	Leader   bool      `json:"leader"` // this node holds the job's lease
	Runs     int64     `json:"runs"`   // runs started on this node since it started
	Failures int64     `json:"failures"`
	LastRun  time.Time `json:"last_run,omitzero"` // when the last run started
	LastErr  string    `json:"last_error,omitempty"`
}

// NewJobs returns the job runner of one node (owner, see Owner). ttl 0
// means JobTTL.
func NewJobs(t *Table, owner string, ttl time.Duration, log *slog.Logger) *Jobs {
	if ttl <= 0 {
		ttl = JobTTL
	}
	return &Jobs{t: t, owner: owner, ttl: ttl, log: log, stats: map[string]*JobStats{}}
}

// Trace gives each run of a job a span of its own trace ("job <name>"),
// so that what a run logs with its ctx carries a trace_id, and the work
// it causes (a payment query, a refund) joins that trace. Call it before
// Every.
func (j *Jobs) Trace(t trace.Tracer) { j.trace = t }

// Stats returns this node's view of its jobs, by name.
func (j *Jobs) Stats() []JobStats {
	j.mu.Lock()
	defer j.mu.Unlock()
	out := make([]JobStats, 0, len(j.stats))
	for _, s := range j.stats {
		out = append(out, *s)
	}
	slices.SortFunc(out, func(a, b JobStats) int { return strings.Compare(a.Name, b.Name) })
	return out
}

func (j *Jobs) update(name string, f func(*JobStats)) {
	j.mu.Lock()
	defer j.mu.Unlock()
	s := j.stats[name]
	if s == nil {
		s = &JobStats{Name: name}
		j.stats[name] = s
	}
	f(s)
}

// Every runs f on the leader of job name until ctx is done: at once when
// this node becomes the leader, then every period while it stays one
// (a run that takes longer than period delays the next). A run starts
// only while the lease is surely held (Held.Valid): a leader paused past
// its lease and woken up does not start a run, and a run in progress has
// its context cancelled when the lease is lost. f's errors are logged and
// counted; the next run comes all the same. On the way out the lease is
// released so another node takes over at once.
func (j *Jobs) Every(ctx context.Context, name string, period time.Duration, f func(context.Context) error) error {
	h := j.t.Hold("job:"+name, j.owner, j.ttl)
	j.update(name, func(*JobStats) {})
	var mu sync.Mutex
	var cancelRun context.CancelFunc // of the run in progress; guarded by mu
	elected := make(chan struct{}, 1)
	done := make(chan struct{})
	go func() { // keep or campaign for the lease
		defer close(done)
		t := time.NewTicker(j.ttl / 3)
		defer t.Stop()
		for {
			was := h.Valid()
			c, cancel := context.WithTimeout(ctx, j.ttl/3)
			_, err := h.Acquire(c)
			cancel()
			if err != nil && ctx.Err() == nil {
				j.log.Warn("job lease", "job", name, "err", err)
			}
			now := h.Valid()
			j.update(name, func(s *JobStats) { s.Leader = now })
			if now && !was {
				select {
				case elected <- struct{}{}:
				default:
				}
			} else if !now {
				mu.Lock()
				if cancelRun != nil {
					cancelRun()
				}
				mu.Unlock()
			}
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	}()
	t := time.NewTicker(period)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			<-done
			c, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
			h.Release(c, 0)
			cancel()
			return nil
		case <-elected:
			t.Reset(period)
		case <-t.C:
		}
		// Checked and registered under mu: a lease lost in between is
		// either seen here or cancels this run.
		mu.Lock()
		if !h.Valid() {
			mu.Unlock()
			continue
		}
		rctx, cancel := context.WithCancel(ctx)
		cancelRun = cancel
		mu.Unlock()
		j.update(name, func(s *JobStats) { s.Runs++; s.LastRun = time.Now().UTC() })
		var span trace.Span
		if j.trace != nil {
			root := trace.ContextWithSpanContext(rctx, trace.SpanContext{}) // a trace of its own, whatever ctx carries
			rctx, span = j.trace.Start(root, "job "+name)
		}
		err := f(rctx)
		if span != nil {
			if err != nil {
				span.SetStatus(codes.Error, err.Error())
			}
			span.End()
		}
		mu.Lock()
		cancelRun = nil
		mu.Unlock()
		cancel()
		if err != nil && ctx.Err() == nil {
			j.log.WarnContext(rctx, "job failed", "job", name, "err", err)
			j.update(name, func(s *JobStats) { s.Failures++; s.LastErr = err.Error() })
		}
	}
}
