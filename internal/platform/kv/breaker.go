package kv

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"github.com/failsafe-go/failsafe-go/circuitbreaker"
)

// ErrOpen is the cause inside ErrUnavailable of a call a Breaker refused
// without asking the store.
var ErrOpen = errors.New("kv: circuit open: the store failed too often just now")

// Breaker is a Store behind a circuit breaker (failsafe-go's): when half
// of the last 20 calls failed as unavailable (Redis down, or frozen and
// every call waiting out its deadline), calls fail at once with
// ErrUnavailable for BreakerDelay, so that requests fall back (menus from
// the database, a 503 elsewhere) instead of each waiting on a dead store;
// then a few calls go through, and two that succeed close it again. Other
// errors (wrong type, not an integer: the caller's) do not count. Ping is
// not guarded: readiness reports the store itself.
type Breaker struct {
	s  Store
	cb circuitbreaker.CircuitBreaker[any]
}

// BreakerDelay is how long an open Breaker refuses calls before trying.
const BreakerDelay = 2 * time.Second

// NewBreaker guards s; state changes are logged to log.
func NewBreaker(s Store, log *slog.Logger) *Breaker {
	cb := circuitbreaker.NewBuilder[any]().
		HandleIf(func(_ any, err error) bool { return errors.Is(err, ErrUnavailable) }).
		WithFailureThresholdRatio(10, 20).
		WithSuccessThreshold(2).
		WithDelay(BreakerDelay).
		OnStateChanged(func(e circuitbreaker.StateChangedEvent) {
			log.Warn("kv circuit breaker", "from", e.OldState.String(), "to", e.NewState.String())
		}).
		Build()
	return &Breaker{s: s, cb: cb}
}

// State is the breaker's state: closed, open or half-open.
func (b *Breaker) State() string { return b.cb.State().String() }

func (b *Breaker) allow() error {
	if b.cb.TryAcquirePermit() {
		return nil
	}
	return &unavailable{ErrOpen}
}

// done records a call's outcome and returns its error.
func (b *Breaker) done(err error) error {
	if err == nil || !errors.Is(err, ErrUnavailable) {
		b.cb.RecordSuccess() // the store answered (a caller's error is not the store's failure)
	} else {
		b.cb.RecordError(err)
	}
	return err
}

func (b *Breaker) Get(ctx context.Context, key string) ([]byte, error) {
	if err := b.allow(); err != nil {
		return nil, err
	}
	v, err := b.s.Get(ctx, key)
	return v, b.done(err)
}

func (b *Breaker) Set(ctx context.Context, key string, val []byte, ttl time.Duration) error {
	if err := b.allow(); err != nil {
		return err
	}
	return b.done(b.s.Set(ctx, key, val, ttl))
}

func (b *Breaker) SetNX(ctx context.Context, key string, val []byte, ttl time.Duration) (bool, error) {
	if err := b.allow(); err != nil {
		return false, err
	}
	ok, err := b.s.SetNX(ctx, key, val, ttl)
	return ok, b.done(err)
}

func (b *Breaker) Del(ctx context.Context, keys ...string) error {
	if err := b.allow(); err != nil {
		return err
	}
	return b.done(b.s.Del(ctx, keys...))
}

func (b *Breaker) IncrBy(ctx context.Context, key string, n int64) (int64, error) {
	if err := b.allow(); err != nil {
		return 0, err
	}
	v, err := b.s.IncrBy(ctx, key, n)
	return v, b.done(err)
}

func (b *Breaker) Take(ctx context.Context, key string, n int64) (int64, bool, error) {
	if err := b.allow(); err != nil {
		return 0, false, err
	}
	left, ok, err := b.s.Take(ctx, key, n)
	return left, ok, b.done(err)
}

func (b *Breaker) Admit(ctx context.Context, stock, user string, n, limit int64, userTTL time.Duration) (int64, AdmitResult, error) {
	if err := b.allow(); err != nil {
		return 0, NotLoaded, err
	}
	left, res, err := b.s.Admit(ctx, stock, user, n, limit, userTTL)
	return left, res, b.done(err)
}

func (b *Breaker) Unadmit(ctx context.Context, stock, user string, n int64) (int64, error) {
	if err := b.allow(); err != nil {
		return 0, err
	}
	left, err := b.s.Unadmit(ctx, stock, user, n)
	return left, b.done(err)
}

func (b *Breaker) ZAdd(ctx context.Context, key string, score int64, member string) error {
	if err := b.allow(); err != nil {
		return err
	}
	return b.done(b.s.ZAdd(ctx, key, score, member))
}

func (b *Breaker) ZAppend(ctx context.Context, key, counter, member string, floor, fresh int64) (int64, error) {
	if err := b.allow(); err != nil {
		return 0, err
	}
	v, err := b.s.ZAppend(ctx, key, counter, member, floor, fresh)
	return v, b.done(err)
}

func (b *Breaker) ZAck(ctx context.Context, key, counter string, upTo int64) (int64, bool, error) {
	if err := b.allow(); err != nil {
		return 0, false, err
	}
	n, known, err := b.s.ZAck(ctx, key, counter, upTo)
	return n, known, b.done(err)
}

func (b *Breaker) ZAfter(ctx context.Context, key string, after int64, limit int) ([]Scored, error) {
	if err := b.allow(); err != nil {
		return nil, err
	}
	v, err := b.s.ZAfter(ctx, key, after, limit)
	return v, b.done(err)
}

func (b *Breaker) ZTrim(ctx context.Context, key string, upTo int64) (int64, error) {
	if err := b.allow(); err != nil {
		return 0, err
	}
	n, err := b.s.ZTrim(ctx, key, upTo)
	return n, b.done(err)
}

func (b *Breaker) ZRem(ctx context.Context, key, member string) (bool, error) {
	if err := b.allow(); err != nil {
		return false, err
	}
	ok, err := b.s.ZRem(ctx, key, member)
	return ok, b.done(err)
}

func (b *Breaker) ZCard(ctx context.Context, key string) (int64, error) {
	if err := b.allow(); err != nil {
		return 0, err
	}
	n, err := b.s.ZCard(ctx, key)
	return n, b.done(err)
}

func (b *Breaker) GCRA(ctx context.Context, key string, perSecond, burst, n int64) (int64, time.Duration, error) {
	if err := b.allow(); err != nil {
		return 0, 0, err
	}
	granted, wait, err := b.s.GCRA(ctx, key, perSecond, burst, n)
	return granted, wait, b.done(err)
}

func (b *Breaker) Heartbeat(ctx context.Context, key, member string, window time.Duration) (int64, error) {
	if err := b.allow(); err != nil {
		return 0, err
	}
	n, err := b.s.Heartbeat(ctx, key, member, window)
	return n, b.done(err)
}

func (b *Breaker) Ping(ctx context.Context) error { return b.s.Ping(ctx) }
func (b *Breaker) Close() error                   { return b.s.Close() }
