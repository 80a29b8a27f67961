package bus

import (
	"time"

	"github.com/surge-platform/surge/internal/platform/breaker"
)

// The Bus has a circuit breaker (package breaker) in front of the calls a
// request waits on: publishing (Publish, PublishAck, PublishAfter,
// PublishBatch, PublishCore; also the dead letters a consumer stores),
// reading streams (StreamInfo, Replay, After) and the dead-letter admin
// calls. Only a server that is away or did not answer in time counts
// against it (errors of kind Unavailable); a caller's errors (a bad
// subject, ErrNotNext, ErrNotFound) and a cancelled ctx do not. While it
// is open those calls fail at once with an error of kind Unavailable
// wrapping ErrOpen. Not guarded: the consumers' loops (they wait for the
// server with back-off of their own), making streams and consumers,
// subscriptions, and Ping (readiness reports the server itself).

// ErrOpen is in the error of a call the Bus's breaker refused.
var ErrOpen = breaker.ErrOpen

// probeWait bounds the round trip that makes a PublishCore the breaker's
// probe when it is half-open.
const probeWait = time.Second

// Breaker returns the Bus's circuit breaker.
func (b *Bus) Breaker() *breaker.Breaker { return b.br }

// guarded runs call, one request to the server, behind the breaker.
func guarded[T any](b *Bus, call func() (T, error)) (T, error) {
	if err := b.br.Allow(); err != nil {
		var zero T
		return zero, err
	}
	v, err := call()
	b.br.Done(err)
	return v, err
}

// publishCore is PublishCore behind the breaker. A core publish only
// writes into the connection's buffer: its success says nothing of the
// server (a hung one included), so while the breaker is closed only its
// failure counts; when it is half-open a publish is a probe only once a
// round trip (a flush) confirms it.
func (b *Bus) publishCore(subject string, data []byte) error {
	if b.br.Closed() {
		err := b.nc.Publish(subject, data)
		if err != nil && breaker.Unavailable(err) {
			b.br.Failure()
		}
		return err
	}
	_, err := guarded(b, func() (struct{}, error) {
		if err := b.nc.Publish(subject, data); err != nil {
			return struct{}{}, err
		}
		return struct{}{}, b.nc.FlushTimeout(probeWait)
	})
	return err
}
