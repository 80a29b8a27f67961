package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/surge-platform/surge/internal/platform/switches"
)

const ctlUsage = `usage: surge ctl [--server URL] [--admin-token T] [--operator NAME] [--json] switch list
       surge ctl [flags] switch set NAME on|off
       surge ctl [flags] switch history NAME`

// ctl operates a running cluster through a node's admin API. Flags may
// come before, between or after the words.
func ctl(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("ctl", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprintln(stderr, ctlUsage); fs.PrintDefaults() }
	c := ctlClient{}
	fs.StringVar(&c.server, "server", "http://127.0.0.1:8080", "base URL of a running surge node")
	fs.StringVar(&c.token, "admin-token", "", "admin token of that node")
	fs.StringVar(&c.operator, "operator", os.Getenv("USER"), "who makes the change (recorded with it; sent as X-Operator)")
	asJSON := fs.Bool("json", false, "print the node's JSON answer")
	var words []string
	for rest := args; ; {
		if err := fs.Parse(rest); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return err
			}
			return usageError{err}
		}
		if fs.NArg() == 0 {
			break
		}
		words, rest = append(words, fs.Arg(0)), fs.Args()[1:]
	}
	if err := parse(fs, nil); err != nil { // SURGE_SERVER, SURGE_ADMIN_TOKEN, SURGE_OPERATOR
		return err
	}
	var (
		path, method, body string
		print              func([]byte) error
	)
	switch {
	case len(words) == 2 && words[0] == "switch" && words[1] == "list":
		method, path, print = "GET", "/admin/v1/switches", func(b []byte) error { return printSwitches(stdout, b) }
	case len(words) == 4 && words[0] == "switch" && words[1] == "set" && (words[3] == "on" || words[3] == "off"):
		method, path = "PUT", "/admin/v1/switches/"+url.PathEscape(words[2])
		body = fmt.Sprintf(`{"on":%v}`, words[3] == "on")
		print = func(b []byte) error { return printChange(stdout, b) }
	case len(words) == 3 && words[0] == "switch" && words[1] == "history":
		method, path = "GET", "/admin/v1/switches/"+url.PathEscape(words[2])+"/history"
		print = func(b []byte) error { return printHistory(stdout, b) }
	default:
		return usageError{fmt.Errorf("ctl %s: unknown command\n%s", strings.Join(words, " "), ctlUsage)}
	}
	b, err := c.do(ctx, method, path, body)
	if err != nil {
		return fmt.Errorf("ctl %s: %w", strings.Join(words, " "), err)
	}
	if *asJSON {
		_, err := stdout.Write(append(b, '\n'))
		return err
	}
	return print(b)
}

// ctlClient calls a node's admin API.
type ctlClient struct {
	server, token, operator string
}

// ctlTimeout bounds one call (a node answers a switch change within 2 s or
// says the config centre is unavailable).
const ctlTimeout = 10 * time.Second

// do sends the request and returns the body of a 200; any other answer is
// an error naming the node's error code and message.
func (c ctlClient) do(ctx context.Context, method, path, body string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, ctlTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, strings.TrimRight(c.server, "/")+path, strings.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.operator != "" {
		req.Header.Set("X-Operator", c.operator)
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		return nil, err
	}
	if res.StatusCode != http.StatusOK {
		var e struct {
			Error struct{ Code, Message string } `json:"error"`
		}
		if json.Unmarshal(b, &e) == nil && e.Error.Code != "" {
			return nil, fmt.Errorf("%s: %s: %s", res.Status, e.Error.Code, e.Error.Message)
		}
		return nil, fmt.Errorf("%s: %s", res.Status, b)
	}
	return b, nil
}

func onOff(on bool) string {
	if on {
		return "on"
	}
	return "off"
}

func printSwitches(w io.Writer, b []byte) error {
	var out struct{ Switches []switches.Status }
	if err := json.Unmarshal(b, &out); err != nil {
		return err
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SWITCH\tNOW\tDEFAULT\tCHANGED BY\tCHANGED AT\tFEATURE")
	for _, s := range out.Switches {
		by, at := "-", "-"
		if s.ChangedAt != nil {
			by, at = s.ChangedBy, s.ChangedAt.Format(time.RFC3339)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", s.Name, onOff(s.On), onOff(s.Default), by, at, s.Description)
	}
	return tw.Flush()
}

func printChange(w io.Writer, b []byte) error {
	var r switches.Record
	if err := json.Unmarshal(b, &r); err != nil {
		return err
	}
	_, err := fmt.Fprintf(w, "%s: %s -> %s (by %s at %s, revision %d); every node follows within a second\n",
		r.Name, onOff(r.Old), onOff(r.On), r.By, r.At.Format(time.RFC3339), r.Revision)
	return err
}

func printHistory(w io.Writer, b []byte) error {
	var out struct {
		Name    string
		Changes []switches.Record
	}
	if err := json.Unmarshal(b, &out); err != nil {
		return err
	}
	if len(out.Changes) == 0 {
		_, err := fmt.Fprintf(w, "%s: never changed (default)\n", out.Name)
		return err
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "AT\tCHANGE\tBY\tREVISION")
	for _, r := range out.Changes {
		change := onOff(r.Old) + " -> " + onOff(r.On)
		switch {
		case r.Reset:
			change = "deleted: default (" + onOff(r.On) + ")"
		case r.Unknown:
			change = "unreadable value"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\n", r.At.Format(time.RFC3339), change, r.By, r.Revision)
	}
	return tw.Flush()
}
