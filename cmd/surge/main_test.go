package main

import (
	"bytes"
	"context"
	"io"
	"strings"
	"testing"
	"time"
)

func TestFlagsAndEnv(t *testing.T) {
	t.Setenv("SURGE_ADDR", "127.0.0.1:9999")
	t.Setenv("SURGE_DB", "postgres://a/x postgres://b/y")
	t.Setenv("SURGE_ORDER_TTL", "30s")
	t.Setenv("SURGE_ROLES", "worker")
	var o options
	fs := flags(&o, io.Discard)
	if err := parse(fs, []string{"--roles", "api", "--kv", "redis://r:6379/0", "--pay-weights", "wechatpay=3,alipay=1"}); err != nil {
		t.Fatal(err)
	}
	if o.Addr != "127.0.0.1:9999" || o.OrderTTL != 30*time.Second || o.KV != "redis://r:6379/0" {
		t.Fatalf("env not applied: %+v", o.Config)
	}
	if o.PayWeights["wechatpay"] != 3 || o.PayWeights["alipay"] != 1 {
		t.Fatalf("pay weights %v", o.PayWeights)
	}
	if len(o.DB) != 2 || o.DB[1] != "postgres://b/y" {
		t.Fatalf("SURGE_DB: %q", o.DB)
	}
	if len(o.Roles) != 1 || o.Roles[0] != "api" {
		t.Fatalf("a flag must win over its env var: roles %q", o.Roles)
	}
	if err := o.Config.Resolve(); err != nil || o.Has("worker") || !o.Has("api") {
		t.Fatalf("resolve: %v %q", err, o.Roles)
	}
}

func TestBadInvocations(t *testing.T) {
	for _, args := range [][]string{
		{"nope"},
		{"serve", "--roles", "cashier"},
		{"serve", "--roles", "monitor,cashier"}, // monitor is a role now; cashier is not
		{"serve", "--ws-ping", "1ms"},
		{"serve", "--idempotency-ttl", "10m"},
		{"serve", "--events-seen-ttl", "30m"},
		{"serve", "--log-level", "loud"},
		{"serve", "extra"},
		{"migrate", "--db", "mysql://x"},
		{"serve", "--pay-weights", "wechatpay=0"},
		{"serve", "--pay-weights", "wechatpay"},
		{"serve", "--wechatpay", "mchid=1900000109,appid=wx1"},
		{"serve", "--alipay", "appid=2021000117600001,key-env=SURGE_TEST_NO_SUCH_KEY,alipay-key-env=SURGE_TEST_NO_SUCH_KEY"},
	} {
		// A serve whose check is missing must fail the test, not start a
		// server that runs until the test binary times out: its data goes
		// to a scratch directory, and the run is cut short.
		if args[0] == "serve" {
			args = append(args, "--data", t.TempDir(), "--addr", "127.0.0.1:0")
		}
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
		var out, errb bytes.Buffer
		err := run(ctx, args, &out, &errb)
		cancel()
		if err == nil {
			t.Errorf("%q: no error", args)
		}
	}
}

func TestHelpNamesTheCommands(t *testing.T) {
	var out bytes.Buffer
	if err := run(t.Context(), []string{"help"}, &out, io.Discard); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"surge demo", "surge serve", "surge migrate", "surge ctl switch", "-addr", "-roles", "-db", "-kv", "-bus", "-seed-demo", "-order-ttl", "-admin-token", "SURGE_"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("help lacks %q", want)
		}
	}
}

// A channel's credentials that are missing or malformed stop the start
// with an error that names the flag and what is wrong.
func TestBadCredentialsNamed(t *testing.T) {
	var out, errb bytes.Buffer
	err := run(t.Context(), []string{"serve", "--wechatpay", "mchid=1900000109,appid=wx1,serial=AB"}, &out, &errb)
	if err == nil || !strings.Contains(err.Error()+errb.String(), "--wechatpay: missing platform-key-id") {
		t.Fatalf("%v %s", err, errb.String())
	}
	err = run(t.Context(), []string{"serve", "--alipay", "appid=2021,key-env=SURGE_TEST_NO_SUCH_KEY,alipay-key-env=X"}, &out, &errb)
	if err == nil || !strings.Contains(err.Error()+errb.String(), "SURGE_TEST_NO_SUCH_KEY is not set") {
		t.Fatalf("%v %s", err, errb.String())
	}
}
