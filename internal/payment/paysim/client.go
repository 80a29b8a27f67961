package paysim

import (
	"bytes"
	"context"
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/surge-platform/surge/internal/payment"
	"github.com/surge-platform/surge/internal/platform/errkind"
	"github.com/surge-platform/surge/internal/platform/web"
)

// Errors of Client besides payment.ErrChannelDown and payment.ErrUnknownTxn.
var (
	ErrRejected     = payment.ErrRejected
	ErrMerchantAuth = payment.ErrMerchantAuth
	ErrBadStatement = payment.ErrBadStatement
)

// ClientConfig configures a Client.
type ClientConfig struct {
	BaseURL string       // paysim's base URL, e.g. "http://127.0.0.1:8080"
	Channel string       // channel name at paysim, e.g. "wxsim"
	Secret  []byte       // the channel's merchant Secret
	HTTP    *http.Client // nil = NewHTTPClient(3 * time.Second)
}

// Client calls the merchant API of one paysim channel; the wxsim and alisim
// adapters are built on it. It translates answers into payment errors:
// transport errors, timeouts, 429 and 5xx (the outage's 503 too) ->
// payment.ErrChannelDown; 404 unknown_transaction -> payment.ErrUnknownTxn;
// 401 -> ErrMerchantAuth; other 4xx -> ErrRejected. A call cut short by the
// caller's cancellation returns context.Canceled (wrapped), not
// ErrChannelDown. Safe for concurrent use.
type Client struct {
	base, channel string
	secret        []byte
	hc            *http.Client
}

// NewHTTPClient is payment.NewHTTPClient.
var NewHTTPClient = payment.NewHTTPClient

// NewClient returns a client for cfg.
func NewClient(cfg ClientConfig) *Client {
	hc := cfg.HTTP
	if hc == nil {
		hc = NewHTTPClient(3 * time.Second)
	}
	return &Client{base: strings.TrimRight(cfg.BaseURL, "/"), channel: cfg.Channel, secret: slices.Clone(cfg.Secret), hc: hc}
}

// Create creates the transaction of t (idempotent by t.PaymentID).
func (c *Client) Create(ctx context.Context, t payment.Txn) (payment.Created, error) {
	op := fmt.Sprintf("%s create payment %d", c.channel, t.PaymentID)
	var v txnView
	err := c.do(ctx, op, http.MethodPost, "/transactions", createReq{MerchantTxnID: t.PaymentID, Amount: t.Amount,
		Subject: t.Subject, NotifyURL: t.NotifyURL}, decodeJSON(&v))
	if err != nil {
		return payment.Created{}, err
	}
	if v.TxnID == "" || v.PayURL == "" {
		return payment.Created{}, fmt.Errorf("%s: %w", op, payment.ErrChannelDown.With("%s answered without txn_id or pay_url", c.channel))
	}
	return payment.Created{ChannelTxnID: v.TxnID, PayURL: v.PayURL}, nil
}

// Query returns the provider's view of payment paymentID.
func (c *Client) Query(ctx context.Context, paymentID int64) (payment.Status, error) {
	op := fmt.Sprintf("%s query payment %d", c.channel, paymentID)
	var v txnView
	if err := c.do(ctx, op, http.MethodGet, "/transactions/"+strconv.FormatInt(paymentID, 10), nil, decodeJSON(&v)); err != nil {
		return payment.Status{}, err
	}
	st := payment.Status{PaymentID: v.MerchantTxnID, ChannelTxnID: v.TxnID, State: v.State, Amount: v.Amount, Refunded: v.Refunded}
	if v.PaidAt != "" {
		t, err := time.Parse(time.RFC3339, v.PaidAt)
		if err != nil {
			return payment.Status{}, fmt.Errorf("%s: %w", op, payment.ErrChannelDown.With("%s answered paid_at %q", c.channel, v.PaidAt))
		}
		st.PaidAt = t.UTC()
	}
	switch st.State {
	case payment.Pending, payment.Paid, payment.Closed, payment.Refunded:
	default:
		return payment.Status{}, fmt.Errorf("%s: %w", op, payment.ErrChannelDown.With("%s answered state %q", c.channel, v.State))
	}
	if st.PaymentID != paymentID {
		return payment.Status{}, fmt.Errorf("%s: %w", op, payment.ErrChannelDown.With("%s answered for payment %d", c.channel, st.PaymentID))
	}
	if (st.State == payment.Refunded) != (st.Refunded > 0) || st.Refunded > st.Amount {
		return payment.Status{}, fmt.Errorf("%s: %w", op, payment.ErrChannelDown.With("%s answered %s with %d of %d fen refunded", c.channel, st.State, st.Refunded, st.Amount))
	}
	return st, nil
}

// Close closes unpaid payment paymentID: one paysim never saw is closed
// already; a paid one is payment.ErrPaidAtChannel.
func (c *Client) Close(ctx context.Context, paymentID int64) error {
	op := fmt.Sprintf("%s close payment %d", c.channel, paymentID)
	var v txnView
	err := c.do(ctx, op, http.MethodPost, "/transactions/"+strconv.FormatInt(paymentID, 10)+"/close", struct{}{}, decodeJSON(&v))
	switch {
	case errors.Is(err, payment.ErrUnknownTxn):
		return nil
	case errors.Is(err, ErrRejected) && strings.Contains(err.Error(), ErrAlreadyPaid.Code):
		return payment.ErrPaidAtChannel.With("%s: %v", op, err)
	}
	return err
}

// Refund refunds r (idempotent by r.RefundID).
func (c *Client) Refund(ctx context.Context, r payment.Refund) error {
	op := fmt.Sprintf("%s refund %d of payment %d", c.channel, r.RefundID, r.PaymentID)
	var v refundView
	return c.do(ctx, op, http.MethodPost, "/refunds", refundReq{RefundID: r.RefundID, MerchantTxnID: r.PaymentID,
		Amount: r.Amount, Reason: r.Reason}, decodeJSON(&v))
}

// Statement returns the statement of day's UTC date.
func (c *Client) Statement(ctx context.Context, day time.Time) ([]payment.Line, error) {
	date := day.UTC().Format(time.DateOnly)
	op := fmt.Sprintf("%s statement %s", c.channel, date)
	var lines []payment.Line
	err := c.do(ctx, op, http.MethodGet, "/statements/"+date, nil, func(body io.Reader) error {
		var err error
		lines, err = ParseStatement(body)
		return err
	})
	return lines, err
}

// ParseStatement reads a statement CSV (header row first).
func ParseStatement(r io.Reader) ([]payment.Line, error) {
	cr := csv.NewReader(r)
	cr.FieldsPerRecord = len(StatementHeader)
	cr.ReuseRecord = true
	head, err := cr.Read()
	if err != nil || !slices.Equal(head, StatementHeader) {
		return nil, ErrBadStatement.With("statement: want header %s", strings.Join(StatementHeader, ","))
	}
	var lines []payment.Line
	for {
		rec, err := cr.Read()
		if err == io.EOF {
			return lines, nil
		}
		if err != nil {
			var pe *csv.ParseError
			if errors.As(err, &pe) {
				return nil, ErrBadStatement.With("statement: %v", err)
			}
			return nil, err // reading the body failed
		}
		row := len(lines) + 2
		l := payment.Line{Kind: rec[0], ChannelTxnID: rec[2]}
		var ok bool
		if l.PaymentID, ok = ParseID(rec[1]); !ok || l.ChannelTxnID == "" {
			return nil, ErrBadStatement.With("statement row %d: bad merchant_txn_id or txn_id", row)
		}
		switch l.Kind {
		case "payment":
			ok = rec[3] == ""
		case "refund":
			l.RefundID, ok = ParseID(rec[3])
		default:
			ok = false
		}
		if !ok {
			return nil, ErrBadStatement.With("statement row %d: bad kind or refund_id", row)
		}
		if l.Amount, ok = ParseID(rec[4]); !ok {
			return nil, ErrBadStatement.With("statement row %d: bad amount %q", row, rec[4])
		}
		if l.At, err = time.Parse(time.RFC3339, rec[5]); err != nil {
			return nil, ErrBadStatement.With("statement row %d: bad time %q", row, rec[5])
		}
		l.At = l.At.UTC()
		lines = append(lines, l)
	}
}

func decodeJSON(v any) func(io.Reader) error {
	return func(r io.Reader) error { return json.NewDecoder(io.LimitReader(r, 1<<20)).Decode(v) }
}

// do sends one signed merchant request and reads a 2xx answer with read.
func (c *Client) do(ctx context.Context, op, method, path string, in any, read func(io.Reader) error) error {
	var body []byte
	if in != nil {
		var err error
		if body, err = json.Marshal(in); err != nil {
			return fmt.Errorf("%s: %w", op, err)
		}
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+"/paysim/v1/"+c.channel+path, bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	ts, nonce := strconv.FormatInt(time.Now().Unix(), 10), newID()
	req.Header.Set(HeaderTimestamp, ts)
	req.Header.Set(HeaderNonce, nonce)
	req.Header.Set(HeaderSignature, SignRequest(c.secret, method, req.URL.RequestURI(), ts, nonce, body))
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return c.transportErr(ctx, op, err)
	}
	defer func() {
		io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
		resp.Body.Close()
	}()
	if resp.StatusCode/100 == 2 {
		if err := read(resp.Body); err != nil {
			if errkind.Of(err) != nil && !errors.Is(err, context.DeadlineExceeded) { // a deadline has a kind too (timeout), but is the transport's
				return fmt.Errorf("%s: %w", op, err)
			}
			return c.transportErr(ctx, op, err) // cut off mid-body, timed out, or garbage
		}
		return nil
	}
	return fmt.Errorf("%s: %w", op, answerErr(c.channel, resp))
}

func (c *Client) transportErr(ctx context.Context, op string, err error) error {
	if errors.Is(ctx.Err(), context.Canceled) {
		return fmt.Errorf("%s: %w", op, ctx.Err())
	}
	return fmt.Errorf("%s: %w: %w", op, payment.ErrChannelDown, err)
}

// answerErr translates a non-2xx answer of paysim.
func answerErr(channel string, resp *http.Response) error {
	var e web.ErrBody
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 8<<10))
	if json.Unmarshal(b, &e) != nil || e.Error.Code == "" {
		e.Error.Code, e.Error.Message = "unknown", strings.TrimSpace(string(b))
	}
	detail := fmt.Sprintf("%s answered %d %s: %.200s", channel, resp.StatusCode, e.Error.Code, e.Error.Message)
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
// payment.ErrChannelDown (outage, transport), payment.ErrUnknownTxn.
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
	return fmt.Errorf("pay %s: %w", payURL, answerErr("paysim", resp))
}

var defaultHTTP = NewHTTPClient(3 * time.Second)

// Control drives the faults API of a paysim over HTTP (for end-to-end tests
// and operators); in process, use Server.SetFaults.
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
		return fmt.Errorf("%s: %w", op, answerErr("paysim", resp))
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 64<<10)).Decode(out); err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	return nil
}
