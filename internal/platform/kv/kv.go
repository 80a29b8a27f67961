// Package kv is surge's cache, counter and atomic-script store: an in-process
// implementation for the embedded mode and Redis for the distributed mode.
// Both pass the shared suite in kv/kvtest.
package kv

import (
	"context"
	"errors"
	"time"
)

// ErrNotFound is returned by Get when the key does not exist (or has expired).
// It is returned unwrapped so that cache misses cost no allocation; compare
// with errors.Is all the same.
var ErrNotFound = errors.New("kv: key not found")

// ErrNotInteger is returned (wrapped with the operation and key) by IncrBy and
// Take when the value at key is not a base-10 int64, or when IncrBy would
// overflow an int64.
var ErrNotInteger = errors.New("kv: value is not an integer or out of range")

// Store is the contract every adapter implements. Keys are plain strings; an
// adapter opened with a prefix applies it to every key transparently.
// A ttl of 0 means "no expiry"; a negative ttl is rejected with an error.
// Redis rounds a ttl up to whole milliseconds. All methods are safe for
// concurrent use. Errors other than ErrNotFound are wrapped with the
// operation and key.
type Store interface {
	// Get returns the value at key or ErrNotFound. The returned slice belongs
	// to the caller.
	Get(ctx context.Context, key string) ([]byte, error)
	// Set stores val at key, replacing any value and its ttl. The store keeps
	// no reference to val.
	Set(ctx context.Context, key string, val []byte, ttl time.Duration) error
	// SetNX stores val only if key does not exist; it reports whether it did.
	SetNX(ctx context.Context, key string, val []byte, ttl time.Duration) (bool, error)
	// Del removes the keys; missing keys are not an error. Del with no keys
	// does nothing. Removing several keys is not atomic.
	Del(ctx context.Context, keys ...string) error
	// IncrBy adds n to the integer at key (missing = 0) and returns the new
	// value. An existing ttl is kept; a new key gets none. Returns
	// ErrNotInteger if the value is not an integer or the sum overflows.
	IncrBy(ctx context.Context, key string, n int64) (int64, error)
	// Take atomically subtracts n (> 0) from the integer at key if it holds at
	// least n, and returns the value after the call and whether it took.
	// A missing key holds 0. Never lets the value go below zero. An existing
	// ttl is kept. Returns an error for n <= 0 and ErrNotInteger if the value
	// is not an integer.
	Take(ctx context.Context, key string, n int64) (left int64, ok bool, err error)
	// Ping reports whether the backend is reachable.
	Ping(ctx context.Context) error
	// Close releases connections; the store must not be used afterwards.
	// Calling Close more than once is harmless.
	Close() error
}
