package main

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/surge-platform/surge/internal/api"
	"github.com/surge-platform/surge/internal/platform/bus"
	"github.com/surge-platform/surge/internal/platform/switches"
)

// ctlServer serves the switch routes of a node (an embedded bus, no other
// role) and returns its URL and admin token.
func ctlServer(t *testing.T) (string, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	b, err := bus.Open(ctx, "embedded:")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	p, err := switches.New(ctx, b, 0, switches.Defs("wechatpay", "alipay"))
	if err != nil {
		t.Fatal(err)
	}
	const token = "ctl-admin"
	srv := httptest.NewServer((&api.Server{Log: slog.New(slog.NewTextHandler(io.Discard, nil)), AdminToken: token, Switches: p}).Handler())
	t.Cleanup(srv.Close)
	return srv.URL, token
}

func TestCtlSwitch(t *testing.T) {
	base, token := ctlServer(t)
	run := func(args ...string) (string, error) {
		t.Helper()
		var out, errb bytes.Buffer
		err := run(t.Context(), append([]string{"ctl"}, args...), &out, &errb)
		return out.String() + errb.String(), err
	}
	flags := []string{"--server", base, "--admin-token", token}

	out, err := run(append(flags, "--operator", "bob", "switch", "set", "notify.send", "off")...)
	if err != nil || !strings.Contains(out, "notify.send: on -> off (by bob@127.0.0.1") {
		t.Fatalf("set: %v\n%s", err, out)
	}
	// Flags after the words, the server and token from the environment.
	t.Setenv("SURGE_SERVER", base)
	t.Setenv("SURGE_ADMIN_TOKEN", token)
	if out, err := run("switch", "set", "promo.coupon_list", "off", "--operator", "carol"); err != nil || !strings.Contains(out, "by carol@") {
		t.Fatalf("set with env: %v\n%s", err, out)
	}
	out, err = run("switch", "list")
	if err != nil {
		t.Fatalf("list: %v\n%s", err, out)
	}
	for _, want := range []string{"notify.send", "bob@127.0.0.1", "carol@127.0.0.1", "pay.channel.wechatpay", "orders.history_full"} {
		if !strings.Contains(out, want) {
			t.Errorf("list lacks %q:\n%s", want, out)
		}
	}
	for _, line := range strings.Split(out, "\n") {
		if f := strings.Fields(line); len(f) > 2 && f[0] == switches.NotifySend && (f[1] != "off" || f[2] != "on") {
			t.Errorf("list line %q: want now off, default on", line)
		}
	}
	out, err = run("switch", "history", "notify.send")
	if err != nil || strings.Count(out, "\n") != 2 || !strings.Contains(out, "on -> off") {
		t.Fatalf("history: %v\n%s", err, out)
	}
	if out, err := run("--json", "switch", "history", "orders.history_full"); err != nil || !strings.Contains(out, `"changes":[]`) {
		t.Fatalf("history --json of a switch never set: %v\n%s", err, out)
	}

	for _, c := range []struct {
		name  string
		args  []string
		usage bool   // a command line that cannot work (exit 2)
		want  string // in the error
	}{
		{"unknown switch", []string{"switch", "set", "orders.everything", "off"}, false, "unknown_switch"},
		{"wrong token", []string{"--admin-token", "nope", "switch", "list"}, false, "unauthorized"},
		{"neither on nor off", []string{"switch", "set", "notify.send", "maybe"}, true, "unknown command"},
		{"no command", nil, true, "unknown command"},
		{"history without a name", []string{"switch", "history"}, true, "unknown command"},
		{"bad flag", []string{"--nope", "switch", "list"}, true, "nope"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := run(c.args...)
			var u usageError
			if err == nil || errors.As(err, &u) != c.usage || !strings.Contains(err.Error(), c.want) {
				t.Errorf("err %v (usage error: %v); want %q, usage error %v", err, errors.As(err, &u), c.want, c.usage)
			}
		})
	}
}
