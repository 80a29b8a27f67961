// Package alipay is the payment channel "alipay": Alipay's open API as
// merchants use it, on the maintained Go SDK github.com/smartwalle/alipay/v3:
// it signs our requests (RSA2, by the app's private key), verifies every
// answer and notice with Alipay's public key, and decodes them.
//
// The same adapter pays at Alipay (Config.Gateway "") and at paysim, which
// speaks the same protocol at its own gateway URL.
//
// Mapping: a payment is a trade whose out_trade_no is the payment id; a
// refund's out_request_no is surge's refund id. Create precreates the
// trade (alipay.trade.precreate: Created.PayURL is its qr_code, which the
// payer scans or opens); Query reads it (alipay.trade.query:
// WAIT_BUYER_PAY pending; TRADE_SUCCESS and TRADE_FINISHED paid;
// TRADE_CLOSED closed, or refunded in full when it was paid: a refund in
// part does not show in a query, only in the notices and the bill); Close
// closes it; Refund refunds (alipay.trade.refund); Statement reads the
// trade bills of the China days that cover the UTC day asked for (a zip
// of GBK CSV files); ParseCallback takes trade_status_sync notices, which
// say the trade's state and refund_fee, all refunded so far.
package alipay

import (
	"archive/zip"
	"bytes"
	"cmp"
	"context"
	"crypto"
	"crypto/rsa"
	"crypto/x509"
	"encoding/csv"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	sdk "github.com/smartwalle/alipay/v3"
	"github.com/smartwalle/nsign"
	"golang.org/x/text/encoding/simplifiedchinese"

	"github.com/surge-platform/surge/internal/payment"
)

// Name of the channel.
const Name = "alipay"

// Gateway is Alipay's.
const Gateway = "https://openapi.alipay.com/gateway.do"

const timeLayout = "2006-01-02 15:04:05"

// Config is the app's id and keys. They come from files or the
// environment (see docs/payments.md), never from the database, and are
// never logged.
type Config struct {
	Gateway    string          // "" = Gateway; a simulator's gateway URL
	AppID      string          // the app's id (APPID)
	PrivateKey *rsa.PrivateKey // the app's private key: signs our requests
	AlipayKey  *rsa.PublicKey  // Alipay's public key: verifies answers and notices
	HTTP       *http.Client    // nil = a 3 s client that passes the trace on
}

// Validate says what is missing or malformed in c.
func (c Config) Validate() error {
	switch {
	case c.AppID == "" || c.PrivateKey == nil || c.AlipayKey == nil:
		return errors.New("alipay: an app id, the app's private key and Alipay's public key are all needed")
	case c.PrivateKey.N.BitLen() < 2048:
		return errors.New("alipay: the app's private key is under 2048 bits")
	}
	if c.Gateway != "" {
		if u, err := url.Parse(c.Gateway); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return fmt.Errorf("alipay: gateway %q is not an absolute http(s) URL", c.Gateway)
		}
	}
	return nil
}

// Channel implements payment.Channel for Alipay. Safe for concurrent use.
type Channel struct {
	cfg Config
	c   *sdk.Client
	hc  *http.Client
}

var _ payment.Channel = (*Channel)(nil)

// New returns the channel for cfg (see Config.Validate).
func New(cfg Config) (*Channel, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	hc := cfg.HTTP
	if hc == nil {
		hc = payment.NewHTTPClient(3 * time.Second)
	}
	gateway := cfg.Gateway
	if gateway == "" {
		gateway = Gateway
	}
	signer := nsign.New(nsign.WithMethod(nsign.NewRSAMethod(crypto.SHA256, cfg.PrivateKey, nil)), nsign.WithEncoder(sdk.Encoder{}))
	c, err := sdk.NewWithSigner(cfg.AppID, signer, true, sdk.WithProductionGateway(gateway), sdk.WithHTTPClient(hc),
		sdk.WithTimeLocation(payment.CST))
	if err != nil {
		return nil, fmt.Errorf("alipay: %w", err)
	}
	der, err := x509.MarshalPKIXPublicKey(cfg.AlipayKey)
	if err != nil {
		return nil, fmt.Errorf("alipay: Alipay's public key: %w", err)
	}
	if err := c.LoadAliPayPublicKey(string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))); err != nil {
		return nil, fmt.Errorf("alipay: Alipay's public key: %w", err)
	}
	return &Channel{cfg: cfg, c: c, hc: hc}, nil
}

// Name returns "alipay".
func (c *Channel) Name() string { return Name }

// Ack is the answer Alipay expects for a notice taken.
func (c *Channel) Ack() (string, []byte) { return "text/plain; charset=utf-8", []byte("success") }

// fail classifies a call's error: the caller's cancellation as it is; an
// answer that does not verify -> payment.ErrBadAnswer; anything else that
// is not an answer (transport, timeout, a 5xx page) -> ErrChannelDown.
func fail(ctx context.Context, op string, err error) error {
	if errors.Is(ctx.Err(), context.Canceled) {
		return fmt.Errorf("alipay %s: %w", op, ctx.Err())
	}
	if e, ok := errors.AsType[*sdk.Error](err); ok { // an unsigned refusal (our signature, our app id)
		return business(op, *e)
	}
	if errors.Is(err, rsa.ErrVerification) || errors.Is(err, sdk.ErrSignNotFound) {
		return payment.ErrBadAnswer.With("alipay %s: %v", op, err)
	}
	return fmt.Errorf("alipay %s: %w: %w", op, payment.ErrChannelDown, err)
}

// business classifies a business answer that is not a success.
func business(op string, e sdk.Error) error {
	detail := fmt.Sprintf("alipay %s: %s %s: %.200s", op, e.Code, e.SubCode, e.SubMsg)
	switch {
	case e.SubCode == "ACQ.TRADE_NOT_EXIST":
		return payment.ErrUnknownTxn.With("%s", detail)
	case e.Code == "20000" || e.SubCode == "ACQ.SYSTEM_ERROR" || strings.HasPrefix(e.SubCode, "isp.") && e.SubCode != "isp.bill_not_exist":
		return payment.ErrChannelDown.With("%s", detail)
	case e.Code == "20001" || e.SubCode == "isv.invalid-signature" || e.SubCode == "isv.invalid-app-id":
		return payment.ErrMerchantAuth.With("%s", detail)
	}
	return payment.ErrRejected.With("%s", detail)
}

// Create precreates the trade of t: Created.PayURL is its qr_code.
// Alipay names the trade once it is paid: Created.ChannelTxnID is "".
func (c *Channel) Create(ctx context.Context, t payment.Txn) (payment.Created, error) {
	no := strconv.FormatInt(t.PaymentID, 10)
	p := sdk.TradePreCreate{Trade: sdk.Trade{NotifyURL: t.NotifyURL, Subject: payment.Cut(cmp.Or(t.Subject, "order "+no), 256), OutTradeNo: no,
		TotalAmount: payment.FormatYuan(t.Amount), ProductCode: "FACE_TO_FACE_PAYMENT"}}
	if !t.Expires.IsZero() {
		p.TimeExpire = t.Expires.In(payment.CST).Format(timeLayout)
	}
	r, err := c.c.TradePreCreate(ctx, p)
	if err != nil {
		return payment.Created{}, fail(ctx, "precreate "+no, err)
	}
	if !r.IsSuccess() {
		return payment.Created{}, business("precreate "+no, r.Error)
	}
	if r.QRCode == "" {
		return payment.Created{}, payment.ErrBadAnswer.With("alipay precreate %s: no qr_code", no)
	}
	return payment.Created{PayURL: r.QRCode}, nil
}

// Query reads the trade of paymentID.
func (c *Channel) Query(ctx context.Context, paymentID int64) (payment.Status, error) {
	no := strconv.FormatInt(paymentID, 10)
	r, err := c.c.TradeQuery(ctx, sdk.TradeQuery{OutTradeNo: no})
	if err != nil {
		return payment.Status{}, fail(ctx, "query "+no, err)
	}
	if !r.IsSuccess() {
		return payment.Status{}, business("query "+no, r.Error)
	}
	st := payment.Status{PaymentID: paymentID, ChannelTxnID: r.TradeNo}
	if r.OutTradeNo != no {
		return st, payment.ErrBadAnswer.With("alipay query %s answered for out_trade_no %.40q", no, r.OutTradeNo)
	}
	if st.Amount, err = payment.ParseYuan(r.TotalAmount); err != nil || st.Amount == 0 {
		return st, payment.ErrBadAnswer.With("alipay query %s: total_amount %.30q", no, r.TotalAmount)
	}
	paid := r.SendPayDate != ""
	if paid {
		at, err := time.ParseInLocation(timeLayout, r.SendPayDate, payment.CST)
		if err != nil {
			return st, payment.ErrBadAnswer.With("alipay query %s: send_pay_date %.30q", no, r.SendPayDate)
		}
		st.PaidAt = at.UTC()
	}
	switch r.TradeStatus {
	case sdk.TradeStatusWaitBuyerPay:
		st.State = payment.Pending
	case sdk.TradeStatusSuccess, sdk.TradeStatusFinished:
		st.State = payment.Paid
	case sdk.TradeStatusClosed:
		st.State = payment.Closed
		if paid { // paid, then closed: refunded in full
			st.State, st.Refunded = payment.Refunded, st.Amount
		}
	default:
		return st, payment.ErrBadAnswer.With("alipay query %s: trade_status %.30q", no, r.TradeStatus)
	}
	if st.State != payment.Pending && st.State != payment.Closed && !paid {
		return st, payment.ErrBadAnswer.With("alipay query %s: %s without send_pay_date", no, r.TradeStatus)
	}
	return st, nil
}

// Close closes the unpaid trade of paymentID. One Alipay never saw is
// closed already; a paid one is payment.ErrPaidAtChannel.
func (c *Channel) Close(ctx context.Context, paymentID int64) error {
	no := strconv.FormatInt(paymentID, 10)
	r, err := c.c.TradeClose(ctx, sdk.TradeClose{OutTradeNo: no})
	if err != nil {
		return fail(ctx, "close "+no, err)
	}
	switch {
	case r.IsSuccess(), r.SubCode == "ACQ.TRADE_NOT_EXIST":
		return nil
	case r.SubCode == "ACQ.TRADE_STATUS_ERROR":
		return payment.ErrPaidAtChannel.With("alipay close %s: %s", no, r.SubMsg)
	}
	return business("close "+no, r.Error)
}

// Refund refunds r.Amount of payment r.PaymentID, once per r.RefundID
// however often asked.
func (c *Channel) Refund(ctx context.Context, r payment.Refund) error {
	no, rno := strconv.FormatInt(r.PaymentID, 10), strconv.FormatInt(r.RefundID, 10)
	res, err := c.c.TradeRefund(ctx, sdk.TradeRefund{OutTradeNo: no, RefundAmount: payment.FormatYuan(r.Amount),
		OutRequestNo: rno, RefundReason: payment.Cut(r.Reason, 256)})
	if err != nil {
		return fail(ctx, "refund "+rno+" of "+no, err)
	}
	if !res.IsSuccess() {
		return business("refund "+rno+" of "+no, res.Error)
	}
	return nil
}

// ---- notices

// ParseCallback verifies a notice's RSA2 signature with the SDK (every
// parameter but sign and sign_type) and parses it; the headers are not
// used. A body that is not a form, or does not verify ->
// payment.ErrBadSignature; a verified one that is not a notice surge
// knows -> payment.ErrBadCallback.
func (c *Channel) ParseCallback(_ http.Header, body []byte) (payment.Notice, error) {
	v, err := url.ParseQuery(string(body))
	if err != nil {
		return payment.Notice{}, payment.ErrBadSignature.With("alipay notice: the body is not a form")
	}
	for k, vs := range v {
		if len(vs) != 1 { // a repeated parameter would make the signed string ambiguous
			return payment.Notice{}, payment.ErrBadSignature.With("alipay notice: %.40s given twice", k)
		}
	}
	if v.Get("sign_type") != "RSA2" {
		return payment.Notice{}, payment.ErrBadSignature.With("alipay notice: sign_type is not RSA2")
	}
	if v.Has("alipay_cert_sn") { // public-key mode: a serial would make the SDK fetch a certificate, under its lock
		return payment.Notice{}, payment.ErrBadSignature.With("alipay notice: alipay_cert_sn given; this app verifies with Alipay's public key")
	}
	n, err := c.c.DecodeNotification(context.Background(), v)
	if err != nil {
		return payment.Notice{}, payment.ErrBadSignature.With("alipay notice: %v", err)
	}
	var out payment.Notice
	var ok bool
	switch {
	case n.AppId != c.cfg.AppID:
		return out, bad("app_id %.40q is not ours", n.AppId)
	case n.NotifyType != "trade_status_sync":
		return out, bad("notify_type %.40q", n.NotifyType)
	}
	if out.PaymentID, ok = payment.ParseID(n.OutTradeNo); !ok {
		return out, bad("out_trade_no %.40q is not a payment id", n.OutTradeNo)
	}
	out.ChannelTxnID, out.NoticeID = n.TradeNo, n.NotifyId
	if out.ChannelTxnID == "" || len(out.ChannelTxnID) > 64 || out.NoticeID == "" || len(out.NoticeID) > 64 {
		return out, bad("trade_no and notify_id must be 1..64 characters")
	}
	if out.Amount, err = payment.ParseYuan(n.TotalAmount); err != nil || out.Amount == 0 {
		return out, bad("total_amount %.40q is not a positive amount of yuan", n.TotalAmount)
	}
	if out.Timestamp, ok = parseTime(n.NotifyTime); !ok {
		return out, bad("notify_time %.40q", n.NotifyTime)
	}
	if n.RefundFee != "" && n.RefundFee != "0.00" {
		if out.Refunded, err = payment.ParseYuan(n.RefundFee); err != nil || out.Refunded > out.Amount {
			return out, bad("refund_fee %.40q is not an amount of yuan within total_amount", n.RefundFee)
		}
	}
	paid := n.GmtPayment != ""
	if paid {
		if out.PaidAt, ok = parseTime(n.GmtPayment); !ok {
			return out, bad("gmt_payment %.40q", n.GmtPayment)
		}
	}
	switch n.TradeStatus {
	case sdk.TradeStatusSuccess, sdk.TradeStatusFinished:
		out.State = payment.Paid
		if out.Refunded > 0 {
			out.State = payment.Refunded // in part
		}
		if !paid {
			return out, bad("%s without gmt_payment", n.TradeStatus)
		}
	case sdk.TradeStatusClosed:
		out.State = payment.Closed
		if paid { // paid, then closed: refunded in full
			if out.Refunded != 0 && out.Refunded != out.Amount {
				return out, bad("a closed trade refunded %d of %d fen", out.Refunded, out.Amount)
			}
			out.State, out.Refunded = payment.Refunded, out.Amount
		} else if out.Refunded != 0 {
			return out, bad("an unpaid trade has refund_fee")
		}
	default:
		return out, bad("trade_status %.30q", n.TradeStatus)
	}
	return out, nil
}

func bad(format string, args ...any) error {
	return payment.ErrBadCallback.With("alipay notice: "+format, args...)
}

// parseTime parses Alipay's "2006-01-02 15:04:05" in CST (gmt_refund may
// carry milliseconds).
func parseTime(s string) (time.Time, bool) {
	t, err := time.ParseInLocation(timeLayout, s, payment.CST)
	if err != nil {
		if t, err = time.ParseInLocation(timeLayout+".000", s, payment.CST); err != nil {
			return time.Time{}, false
		}
	}
	return t.UTC(), t.Unix() > 0
}

// ---- the bill

// Statement returns the payments and refunds made in UTC day (a date):
// the lines of the trade bills of the two China days it overlaps. A bill
// Alipay does not have yet has no lines.
func (c *Channel) Statement(ctx context.Context, day time.Time) ([]payment.Line, error) {
	return payment.ChinaDayLines(ctx, day, c.bill)
}

func (c *Channel) bill(ctx context.Context, day string) ([]payment.Line, error) {
	op := "bill " + day
	r, err := c.c.BillDownloadURLQuery(ctx, sdk.BillDownloadURLQuery{BillType: "trade", BillDate: day})
	if err != nil {
		return nil, fail(ctx, op, err)
	}
	if !r.IsSuccess() {
		if r.SubCode == "isp.bill_not_exist" {
			return nil, nil
		}
		return nil, business(op, r.Error)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, r.BillDownloadURL, nil)
	if err != nil {
		return nil, payment.ErrBadAnswer.With("alipay %s: bill_download_url %.100q", op, r.BillDownloadURL)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, fail(ctx, op+" download", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 256<<20))
	if err != nil {
		return nil, fail(ctx, op+" download", err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, payment.ErrChannelDown.With("alipay %s download: %d", op, resp.StatusCode)
	}
	return ParseBill(b)
}

// ParseBill parses a trade bill as Alipay gives it: a zip holding the
// details file (…_业务明细.csv, GBK): lines of comments (#), the header,
// one row per trade (业务类型 交易) and per refund (退款: the amounts are
// negative, 退款批次号/请求号 is out_request_no). Fields may end in tabs.
// Columns are found by their names. A refund whose request number is not
// a decimal id (made outside surge) has RefundID 0.
func ParseBill(b []byte) ([]payment.Line, error) {
	zr, err := zip.NewReader(bytes.NewReader(b), int64(len(b)))
	if err != nil {
		return nil, payment.ErrBadStatement.With("alipay bill: not a zip: %v", err)
	}
	var detail *zip.File
	for _, f := range zr.File {
		if strings.HasSuffix(f.Name, "_业务明细.csv") {
			detail = f
		}
	}
	if detail == nil {
		return nil, payment.ErrBadStatement.With("alipay bill: no 业务明细 file in the zip")
	}
	rc, err := detail.Open()
	if err != nil {
		return nil, payment.ErrBadStatement.With("alipay bill: %v", err)
	}
	defer rc.Close()
	raw, err := io.ReadAll(io.LimitReader(rc, 1<<30))
	if err != nil {
		return nil, payment.ErrBadStatement.With("alipay bill: %v", err)
	}
	text, err := simplifiedchinese.GBK.NewDecoder().Bytes(raw)
	if err != nil {
		return nil, payment.ErrBadStatement.With("alipay bill: not GBK: %v", err)
	}
	var rows []string
	for _, l := range strings.Split(strings.ReplaceAll(string(text), "\r\n", "\n"), "\n") {
		if l != "" && !strings.HasPrefix(l, "#") {
			rows = append(rows, l)
		}
	}
	if len(rows) == 0 {
		return nil, payment.ErrBadStatement.With("alipay bill: no header")
	}
	cr := csv.NewReader(strings.NewReader(strings.Join(rows, "\n")))
	cr.FieldsPerRecord = -1
	recs, err := cr.ReadAll()
	if err != nil {
		return nil, payment.ErrBadStatement.With("alipay bill: %v", err)
	}
	col := map[string]int{}
	for i, h := range recs[0] {
		col[strings.TrimSpace(h)] = i
	}
	for _, n := range []string{"支付宝交易号", "商户订单号", "业务类型", "完成时间", "订单金额（元）", "退款批次号/请求号"} {
		if _, ok := col[n]; !ok {
			return nil, payment.ErrBadStatement.With("alipay bill: no column %s", n)
		}
	}
	var out []payment.Line
	for i, rec := range recs[1:] {
		if len(rec) < len(recs[0]) {
			return nil, payment.ErrBadStatement.With("alipay bill row %d: %d fields, want %d", i+2, len(rec), len(recs[0]))
		}
		get := func(name string) string { return strings.TrimSpace(rec[col[name]]) }
		at, ok := parseTime(get("完成时间"))
		if !ok {
			return nil, payment.ErrBadStatement.With("alipay bill row %d: 完成时间 %.30q", i+2, get("完成时间"))
		}
		l := payment.Line{ChannelTxnID: get("支付宝交易号"), At: at}
		if l.PaymentID, ok = payment.ParseID(get("商户订单号")); !ok {
			return nil, payment.ErrBadStatement.With("alipay bill row %d: 商户订单号 %.40q", i+2, get("商户订单号"))
		}
		amount := get("订单金额（元）")
		switch get("业务类型") {
		case "交易":
			l.Kind = "payment"
		case "退款":
			l.Kind = "refund"
			l.RefundID, _ = payment.ParseID(get("退款批次号/请求号"))
			amount = strings.TrimPrefix(amount, "-")
		default:
			continue
		}
		if l.Amount, err = payment.ParseYuan(amount); err != nil || l.Amount == 0 {
			return nil, payment.ErrBadStatement.With("alipay bill row %d: amount %.30q", i+2, amount)
		}
		out = append(out, l)
	}
	return out, nil
}
