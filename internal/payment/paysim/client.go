package paysim

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/surge-platform/surge/internal/payment"
	"github.com/surge-platform/surge/internal/platform/web"
)

// Errors as paysim's clients and the adapters tested against it report
// them, besides payment.ErrChannelDown and payment.ErrUnknownTxn: Pay and
// Control say ErrRejected for a refusal (4xx) and ErrMerchantAuth for 401
// and 403; an adapter whose keys paysim refuses says ErrMerchantAuth, and
// ErrBadStatement for a bill it cannot read. They are payment's errors.
var (
	ErrRejected     = payment.ErrRejected
	ErrMerchantAuth = payment.ErrMerchantAuth
	ErrBadStatement = payment.ErrBadStatement
)

// NewHTTPClient is payment.NewHTTPClient.
var NewHTTPClient = payment.NewHTTPClient

// answerErr translates a non-2xx answer of paysim's own routes (pay,
// faults, console).
func answerErr(resp *http.Response) error {
	var e web.ErrBody
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 8<<10))
	if json.Unmarshal(b, &e) != nil || e.Error.Code == "" {
		e.Error.Code, e.Error.Message = "unknown", strings.TrimSpace(string(b))
	}
	detail := fmt.Sprintf("paysim answered %d %s: %.200s", resp.StatusCode, e.Error.Code, e.Error.Message)
	switch {
	case resp.StatusCode >= 500 || resp.StatusCode == http.StatusTooManyRequests:
		return payment.ErrChannelDown.With("%s", detail)
	case resp.StatusCode == http.StatusNotFound && e.Error.Code == payment.ErrUnknownTxn.Code:
		return payment.ErrUnknownTxn.With("%s", detail)
	case resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden:
		return ErrMerchantAuth.With("%s", detail)
	}
	return ErrRejected.With("%s", detail)
}

// Pay is the payer paying at payURL (POST, no body), as a test or the load
// generator does. Paying twice is harmless. hc nil = a 3 s client. Errors:
// payment.ErrChannelDown (outage, transport), payment.ErrUnknownTxn,
// ErrRejected (a closed transaction).
func Pay(ctx context.Context, hc *http.Client, payURL string) error {
	if hc == nil {
		hc = defaultHTTP
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, payURL, nil)
	if err != nil {
		return fmt.Errorf("pay %s: %w", payURL, err)
	}
	resp, err := hc.Do(req)
	if err != nil {
		if errors.Is(ctx.Err(), context.Canceled) {
			return fmt.Errorf("pay %s: %w", payURL, ctx.Err())
		}
		return fmt.Errorf("pay %s: %w: %w", payURL, payment.ErrChannelDown, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 == 2 {
		io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
		return nil
	}
	return fmt.Errorf("pay %s: %w", payURL, answerErr(resp))
}

var defaultHTTP = NewHTTPClient(3 * time.Second)

// Control drives the faults API and the merchant console (Refund) of a
// paysim over HTTP, for end-to-end tests and operators; in process, use
// Server.SetFaults and Server.ConsoleRefund.
type Control struct {
	BaseURL string
	Token   string       // Config.ControlToken
	HTTP    *http.Client // nil = a 3 s client
}

// SetFaults replaces the faults of channel.
func (c Control) SetFaults(ctx context.Context, channel string, f Faults) error {
	var out Faults
	return c.call(ctx, "paysim put faults of "+channel, http.MethodPut, "/paysim/v1/"+channel+"/faults", f, &out)
}

// Faults returns the faults of channel.
func (c Control) Faults(ctx context.Context, channel string) (Faults, error) {
	var f Faults
	err := c.call(ctx, "paysim get faults of "+channel, http.MethodGet, "/paysim/v1/"+channel+"/faults", nil, &f)
	return f, err
}

// call sends one control request (in as JSON, nil for none) and decodes
// the 200 answer into out. Transport errors are payment.ErrChannelDown.
func (c Control) call(ctx context.Context, op, method, path string, in, out any) error {
	hc := c.HTTP
	if hc == nil {
		hc = defaultHTTP
	}
	var body []byte
	if in != nil {
		var err error
		if body, err = json.Marshal(in); err != nil {
			return fmt.Errorf("%s: %w", op, err)
		}
	}
	req, err := http.NewRequestWithContext(ctx, method, strings.TrimRight(c.BaseURL, "/")+path, bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	req.Header.Set("Authorization", "Bearer "+c.Token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := hc.Do(req)
	if err != nil {
		return fmt.Errorf("%s: %w: %w", op, payment.ErrChannelDown, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %w", op, answerErr(resp))
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 64<<10)).Decode(out); err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	return nil
}
