package kv

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"time"

	"github.com/redis/rueidis"
)

// Open returns the Store that rawURL names:
//
//	mem:                                   a new, empty in-process Memory store
//	redis://[user:pass@]host:port/db?...   Redis through rueidis
//	rediss://...                           the same over TLS
//
// Query parameters understood by Open:
//
//	prefix=NAME     prepended verbatim to every key (end it with ':' by
//	                convention); gives tests sharing one Redis their own
//	                namespace. Accepted and ignored by mem:, whose stores
//	                share nothing anyway (as is timeout).
//	pipeline=off    turn rueidis auto-pipelining off (on by default).
//	timeout=D       bound every call to D (a Go duration, > 0; default
//	                DefaultTimeout) unless its context ends sooner.
//
// Other query parameters of a redis URL go to rueidis.ParseURL
// (dial_timeout, client_name, addr, ...). Open dials and pings Redis, so an
// unreachable server is reported here; ctx bounds that. Errors never
// include the password.
func Open(ctx context.Context, rawURL string) (Store, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err // url.Error repeats the URL, password included
		}
		return nil, fmt.Errorf("kv: open: invalid url: %w", err)
	}
	switch u.Scheme {
	case "mem":
		for k := range u.Query() {
			if k != "prefix" && k != "timeout" {
				return nil, fmt.Errorf("kv: open %s: unknown parameter %q", u.Redacted(), k)
			}
		}
		return NewMemory(), nil
	case "redis", "rediss":
		return openRedis(ctx, u)
	default:
		return nil, fmt.Errorf("kv: open %s: unknown scheme %q (want mem:, redis:// or rediss://)", u.Redacted(), u.Scheme)
	}
}

func openRedis(ctx context.Context, u *url.URL) (*Redis, error) {
	safe := u.Redacted()
	q := u.Query()
	prefix := q.Get("prefix")
	pipeline := q.Get("pipeline")
	switch pipeline {
	case "", "on", "off":
	default:
		return nil, fmt.Errorf("kv: open %s: pipeline=%q, want on or off", safe, pipeline)
	}
	timeout := DefaultTimeout
	if v := q.Get("timeout"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 {
			return nil, fmt.Errorf("kv: open %s: timeout=%q, want a positive duration such as 500ms", safe, v)
		}
		timeout = d
	}
	q.Del("prefix")
	q.Del("pipeline")
	q.Del("timeout")
	plain := *u
	plain.RawQuery = q.Encode()

	opt, err := rueidis.ParseURL(plain.String())
	if err != nil {
		return nil, fmt.Errorf("kv: open %s: %w", safe, err)
	}
	opt.DisableAutoPipelining = pipeline == "off"
	// kv never uses client-side caching: counters change under other nodes.
	opt.DisableCache = true
	if dl, ok := ctx.Deadline(); ok {
		if d := time.Until(dl); d > 0 && (opt.Dialer.Timeout == 0 || d < opt.Dialer.Timeout) {
			opt.Dialer.Timeout = d
		}
	}
	// A call that needs a new connection joins the dial under way, whatever
	// its own deadline: dials end within the call timeout too.
	if opt.Dialer.Timeout == 0 || opt.Dialer.Timeout > timeout {
		opt.Dialer.Timeout = timeout
	}
	client, err := rueidis.NewClient(opt)
	if err != nil {
		return nil, fmt.Errorf("kv: open %s: %w", safe, err)
	}
	r := NewRedis(client, prefix, timeout)
	if err := r.Ping(ctx); err != nil {
		r.Close()
		return nil, fmt.Errorf("kv: open %s: %w", safe, err)
	}
	return r, nil
}
