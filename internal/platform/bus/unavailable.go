package bus

import (
	"context"
	"errors"
	"net/http"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/surge-platform/surge/internal/platform/errkind"
)

// The errors of a NATS server that is down, unreachable or not answering
// are classified where errkind.Of looks, for the Bus's own calls and for
// callers of JetStream() and Conn() alike: ErrUnavailable for a
// connection that is gone or reconnecting, a stream with no responder, a
// JetStream API that answers 503 or a Bus that is closing (ErrClosed: the
// node is shutting down); ErrTimeout for a request or publish ack
// that did not come in time (a ctx deadline is ErrTimeout by errkind's own
// rule). Everything else keeps no kind.
func init() { errkind.Classify(kindOf) }

var unavailableErrs = []error{
	ErrClosed, nats.ErrNoResponders, nats.ErrConnectionClosed, nats.ErrConnectionDraining, nats.ErrConnectionReconnecting,
	nats.ErrDisconnected, nats.ErrNoServers, nats.ErrStaleConnection, nats.ErrMaxConnectionsExceeded,
	nats.ErrInvalidConnection, nats.ErrSlowConsumer,
	jetstream.ErrNoStreamResponse, jetstream.ErrNoHeartbeat, jetstream.ErrConnectionClosed,
	jetstream.ErrServerShutdown, jetstream.ErrTooManyStalledMsgs,
}

var timeoutErrs = []error{nats.ErrTimeout, jetstream.ErrAsyncPublishTimeout}

func kindOf(err error) *errkind.Error {
	if errors.Is(err, context.Canceled) {
		return nil
	}
	for _, target := range timeoutErrs {
		if errors.Is(err, target) {
			return errkind.ErrTimeout
		}
	}
	for _, target := range unavailableErrs {
		if errors.Is(err, target) {
			return errkind.ErrUnavailable
		}
	}
	var api *jetstream.APIError
	if errors.As(err, &api) && api.Code == http.StatusServiceUnavailable { // JetStream not ready, no quorum
		return errkind.ErrUnavailable
	}
	return nil
}
