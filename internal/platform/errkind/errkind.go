// Package errkind gives errors a kind and a stable code, so that every
// context can declare sentinels (order.ErrNotCancellable) and the web layer
// can map them to HTTP statuses in one table.
package errkind

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
)

// Kind classifies an error for the edge (HTTP status, retry decisions).
type Kind int

const (
	Internal     Kind = iota // a bug or an unexpected failure: 500
	Invalid                  // bad input: 400
	Unauthorized             // missing or bad credentials: 401
	Forbidden                // authenticated but not allowed: 403
	NotFound                 // 404
	Conflict                 // state does not allow it (CAS lost, sold out): 409
	TooLarge                 // body too large: 413
	Throttled                // rate limited: 429
	Unavailable              // a dependency is down: 503
	TooEarly                 // not open yet (a flash sale before its start): 425
	Challenge                // a challenge must be answered first (captcha-style): 428
)

// Error is a sentinel with a kind, a stable machine-readable code and a
// human message. Compare with errors.Is against the declared sentinel.
type Error struct {
	Kind    Kind
	Code    string
	Message string
}

func (e *Error) Error() string { return e.Message }

// New declares a sentinel.
func New(kind Kind, code, message string) *Error {
	return &Error{Kind: kind, Code: code, Message: message}
}

// detailed is a sentinel plus request-specific detail ("sku 42 is sold out").
type detailed struct {
	base   *Error
	detail string
}

func (d *detailed) Error() string { return d.detail }
func (d *detailed) Unwrap() error { return d.base }

// With returns an error that matches sentinel e under errors.Is but carries
// a more specific message for the client.
func (e *Error) With(format string, args ...any) error {
	return &detailed{base: e, detail: fmt.Sprintf(format, args...)}
}

// Of returns the kinded error inside err, or nil when err carries no kind.
// An error that carries no kind of its own (a driver's, returned through
// *sql.DB or a client library) is offered to the classifiers registered with
// Classify, in order; the first that recognises it decides its kind. Failing
// those, an error that wraps context.DeadlineExceeded is ErrTimeout:
// something the caller waited on (database/sql returns a query's deadline
// bare, whatever the driver saw) did not answer in time, which the edge
// answers 503 and retry loops and breakers count as a dependency failing.
// context.Canceled has no kind: the caller gave up.
func Of(err error) *Error {
	if err == nil {
		return nil
	}
	var d *detailed
	if errors.As(err, &d) {
		return &Error{Kind: d.base.Kind, Code: d.base.Code, Message: d.detail}
	}
	var e *Error
	if errors.As(err, &e) {
		return e
	}
	if cs := classifiers.Load(); cs != nil {
		for _, c := range *cs {
			if e := c(err); e != nil {
				return e
			}
		}
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return ErrTimeout
	}
	return nil
}

// A Classifier recognises errors made outside surge (a database driver's, a
// client library's) and returns the declared sentinel they stand for
// (ErrUnavailable, ErrTimeout ...), or nil for an error it does not know.
// It must be cheap, safe for concurrent use, and must not recognise an
// error that wraps context.Canceled (the caller's own cancellation).
type Classifier func(error) *Error

var (
	classifiers  atomic.Pointer[[]Classifier]
	classifiesMu sync.Mutex
)

// Classify adds c to the classifiers Of consults for errors without a kind.
// The package whose dependency makes the errors registers it (sqldb for
// database drivers, bus for NATS), usually from init, so that every caller
// of Of — the HTTP status table, retry loops, breakers — gets the same
// answer without wrapping each call.
func Classify(c Classifier) {
	classifiesMu.Lock()
	defer classifiesMu.Unlock()
	var cs []Classifier
	if old := classifiers.Load(); old != nil {
		cs = append(cs, *old...)
	}
	cs = append(cs, c)
	classifiers.Store(&cs)
}

// Generic errors shared by all contexts.
var (
	ErrInvalid      = New(Invalid, "invalid_request", "the request is invalid")
	ErrBadID        = New(Invalid, "invalid_id", "ids are positive decimal integers")
	ErrUnauthorized = New(Unauthorized, "unauthorized", "missing or invalid credentials")
	ErrForbidden    = New(Forbidden, "forbidden", "not allowed")
	ErrNotFound     = New(NotFound, "not_found", "not found")
	ErrUnavailable  = New(Unavailable, "unavailable", "a dependency is unavailable, try again")
	ErrTimeout      = New(Unavailable, "timeout", "the request timed out, try again") // a dependency did not answer in time
	ErrTooLarge     = New(TooLarge, "body_too_large", "request body too large")
	ErrThrottled    = New(Throttled, "throttled", "too many requests")
)
