package paysim

import (
	"archive/zip"
	"bytes"
	"crypto"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/text/encoding/simplifiedchinese"

	"github.com/surge-platform/surge/internal/payment"
	"github.com/surge-platform/surge/internal/platform/web"
)

// Alipay's open API, as paysim serves it for a channel of scheme Alipay:
// one gateway, POST /paysim/v1/{channel}/gateway.do, form-encoded, whose
// method parameter names the call:
//
//	alipay.trade.precreate                          a trade to pay: {qr_code} (the payer opens it)
//	alipay.trade.query                              the trade
//	alipay.trade.close                              closes an unpaid trade
//	alipay.trade.refund                             a refund (done at once)
//	alipay.trade.fastpay.refund.query               a refund
//	alipay.data.dataservice.bill.downloadurl.query  {bill_download_url}: a zip of GBK CSV files
//
// Requests carry app_id, method, format=JSON, charset=utf-8, sign_type=RSA2,
// timestamp, version=1.0, biz_content (JSON) and sign: RSA2 (PKCS#1 v1.5,
// SHA-256) by the app's private key over every other parameter, sorted,
// as k=v joined with &. The answer is {"<method with _>_response": {...},
// "sign": ...}, the sign over the response object's bytes as sent, by
// Alipay's key. A business failure is code 40004 with a sub_code
// (ACQ.TRADE_NOT_EXIST and the like); a bad signature 40002
// isv.invalid-signature.
//
// Notices (trade_status_sync) are form posts to the trade's notify_url,
// signed by Alipay's key over every parameter but sign and sign_type: when
// a trade is paid (TRADE_SUCCESS), and after each refund (TRADE_SUCCESS
// with refund_fee, all refunded so far, while some is left; TRADE_CLOSED
// once all of it is refunded), gmt_refund and out_biz_no (the refund's
// out_request_no). The merchant answers "success".
//
// Simulator limits: out_trade_no and out_request_no must be decimal ids;
// a precreated trade exists (WAIT_BUYER_PAY) before the payer scans it.

// AlipayKeys are an Alipay channel's app and keys, as Alipay holds them.
type AlipayKeys struct {
	AppID     string          // the app (应用) id
	AppKey    *rsa.PublicKey  // verifies the app's requests
	AlipayKey *rsa.PrivateKey // Alipay's: signs answers and notices; the app holds its public half
}

func (k *AlipayKeys) validate() error {
	switch {
	case k == nil:
		return errors.New("Alipay needs Alipay keys")
	case k.AppID == "" || !digits(k.AppID):
		return errors.New("Alipay needs an AppID of digits")
	case k.AppKey == nil || k.AlipayKey == nil || k.AlipayKey.N.BitLen() < 2048:
		return errors.New("Alipay needs the app's public key and an Alipay key of 2048 bits or more")
	}
	return nil
}

// AliTrade is what a precreate said beyond amount and notify URL.
type aliTrade struct {
	subject string
	expires time.Time
	buyer   string // the payer's user id, made up when paid
}

// aliAnswer is a business answer: code 10000 and the fields, or a failure.
type aliAnswer map[string]any

func aliFail(subCode, subMsg string) aliAnswer {
	return aliAnswer{"code": "40004", "msg": "Business Failed", "sub_code": subCode, "sub_msg": subMsg}
}

func aliOK(fields aliAnswer) aliAnswer {
	fields["code"], fields["msg"] = "10000", "Success"
	return fields
}

func (s *Server) aliRoutes(mux *http.ServeMux) {
	mux.HandleFunc("POST /paysim/v1/{channel}/gateway.do", s.aliGateway)
	mux.HandleFunc("GET /paysim/v1/{channel}/bills/{token}", s.aliBillFile)
}

// aliGateway serves the gateway: the channel, faults, the form and its
// signature, then the method.
func (s *Server) aliGateway(w http.ResponseWriter, r *http.Request) {
	ch := s.chans[r.PathValue("channel")]
	if ch == nil || ch.cfg.Scheme != Alipay {
		fail(w, ErrUnknownChannel)
		return
	}
	f := ch.faults.Load()
	if f.Outage {
		http.Error(w, "simulated outage", http.StatusServiceUnavailable)
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, web.MaxBody))
	if err != nil {
		http.Error(w, "request body too large", http.StatusRequestEntityTooLarge)
		return
	}
	form, err := url.ParseQuery(string(body))
	if err != nil {
		ch.aliWrite(w, "error", aliAnswer{"code": "40001", "msg": "Missing Required Arguments", "sub_code": "isv.invalid-parameter", "sub_msg": "the body is not a form"})
		return
	}
	for k, v := range r.URL.Query() { // the SDK may put the common parameters in the query
		form[k] = append(form[k], v...)
	}
	method := form.Get("method")
	name := strings.ReplaceAll(method, ".", "_")
	if e := ch.cfg.Alipay.verifyRequest(form); e != nil {
		ch.aliWrite(w, name, e)
		return
	}
	switch apiFaults(f, r) {
	case gone:
		return
	case injected:
		http.Error(w, "simulated provider error", http.StatusInternalServerError)
		return
	}
	var biz map[string]any
	if err := json.Unmarshal([]byte(form.Get("biz_content")), &biz); err != nil {
		ch.aliWrite(w, name, aliAnswer{"code": "40001", "msg": "Missing Required Arguments", "sub_code": "isv.missing-biz-content", "sub_msg": "biz_content is not JSON"})
		return
	}
	str := func(k string) string { v, _ := biz[k].(string); return v }
	var a aliAnswer
	switch method {
	case "alipay.trade.precreate":
		a = s.aliPrecreate(r, ch, form.Get("notify_url"), str)
	case "alipay.trade.query":
		a = s.aliQuery(ch, str("out_trade_no"))
	case "alipay.trade.close":
		a = s.aliClose(ch, str("out_trade_no"))
	case "alipay.trade.refund":
		a = s.aliRefund(ch, str)
	case "alipay.trade.fastpay.refund.query":
		a = s.aliRefundQuery(ch, str("out_trade_no"), str("out_request_no"))
	case "alipay.data.dataservice.bill.downloadurl.query":
		a = s.aliBillURL(r, ch, str("bill_type"), str("bill_date"))
	default:
		a = aliAnswer{"code": "40004", "msg": "Business Failed", "sub_code": "isv.invalid-method", "sub_msg": "paysim does not serve " + method}
	}
	ch.aliWrite(w, name, a)
}

// verifyRequest checks a request's common parameters and RSA2 signature.
func (k *AlipayKeys) verifyRequest(form url.Values) aliAnswer {
	invalid := func(sub, msg string) aliAnswer {
		return aliAnswer{"code": "40002", "msg": "Invalid Arguments", "sub_code": sub, "sub_msg": msg}
	}
	switch {
	case form.Get("app_id") != k.AppID:
		return invalid("isv.invalid-app-id", "app_id is not this channel's")
	case form.Get("sign_type") != "RSA2":
		return invalid("isv.invalid-sign-type", "sign_type must be RSA2")
	case form.Get("charset") != "" && !strings.EqualFold(form.Get("charset"), "utf-8"):
		return invalid("isv.invalid-charset", "paysim takes charset utf-8")
	}
	sig, err := base64.StdEncoding.DecodeString(form.Get("sign"))
	if err != nil || len(form["sign"]) != 1 {
		return invalid("isv.invalid-signature", "sign is missing or not base64")
	}
	sum := sha256.Sum256([]byte(AliContent(form)))
	if rsa.VerifyPKCS1v15(k.AppKey, crypto.SHA256, sum[:], sig) != nil {
		return invalid("isv.invalid-signature", "验签出错")
	}
	return nil
}

// aliWrite writes answer a of method name ("alipay_trade_query"), signed
// by Alipay's key over the answer object's bytes; a request refused
// before its method ran (40001, 40002: its signature, its app) is
// answered unsigned, as Alipay does.
func (ch *channel) aliWrite(w http.ResponseWriter, name string, a aliAnswer) {
	biz, _ := json.Marshal(a)
	var b bytes.Buffer
	b.WriteString(`{"` + name + `_response":`)
	b.Write(biz)
	if code := a["code"]; code != "40001" && code != "40002" {
		sum := sha256.Sum256(biz)
		sig, err := rsa.SignPKCS1v15(nil, ch.cfg.Alipay.AlipayKey, crypto.SHA256, sum[:])
		if err != nil {
			panic("paysim: sign with the Alipay key: " + err.Error()) // a key Validate accepted
		}
		b.WriteString(`,"sign":"` + base64.StdEncoding.EncodeToString(sig) + `"`)
	}
	b.WriteString(`}`)
	w.Header().Set("Content-Type", "text/html;charset=utf-8") // as Alipay's gateway says
	w.Write(b.Bytes())
}

// AliTimeLayout is the layout of Alipay's times (gmt_payment,
// notify_time, send_pay_date...), in CST.
const AliTimeLayout = time.DateTime

// AliContent returns the string an Alipay sign covers: every parameter of
// v except sign, sorted by key, as k=v joined with &, values not escaped.
// A request's sign covers sign_type too; a notice's does not (delete it
// from v first).
func AliContent(v url.Values) string {
	var b strings.Builder
	for _, k := range slices.Sorted(maps.Keys(v)) {
		if k == "sign" {
			continue
		}
		for _, x := range v[k] {
			if b.Len() > 0 {
				b.WriteByte('&')
			}
			b.WriteString(k + "=" + x)
		}
	}
	return b.String()
}

// aliTime is Alipay's time format, in CST.
func aliTime(t time.Time) string { return t.In(CST).Format(AliTimeLayout) }

func (s *Server) aliPrecreate(r *http.Request, ch *channel, notifyURL string, str func(string) string) aliAnswer {
	no, ok := payment.ParseID(str("out_trade_no"))
	if !ok || len(str("out_trade_no")) > 64 {
		return aliFail("ACQ.INVALID_PARAMETER", "paysim takes out_trade_no as a decimal id of at most 64 digits")
	}
	amount, err := payment.ParseYuan(str("total_amount"))
	switch {
	case err != nil || amount < 1 || amount > MaxAmount:
		return aliFail("ACQ.INVALID_PARAMETER", "total_amount must be 0.01 to "+FormatYuan(MaxAmount)+" yuan")
	case str("subject") == "" || len(str("subject")) > MaxSubject:
		return aliFail("ACQ.INVALID_PARAMETER", "subject is required, at most 256 bytes")
	case !validNotifyURL(notifyURL):
		return aliFail("ACQ.INVALID_PARAMETER", "notify_url must be an absolute http(s) URL")
	}
	info := &aliTrade{subject: str("subject")}
	if e := str("time_expire"); e != "" {
		t, err := time.ParseInLocation(AliTimeLayout, e, CST)
		if err != nil {
			return aliFail("ACQ.INVALID_PARAMETER", "time_expire must be yyyy-MM-dd HH:mm:ss")
		}
		info.expires = t
	}
	t, err := s.open(ch, no, amount, notifyURL, func(t *txn) { t.ali = info })
	if err != nil {
		return aliFail("ACQ.CONTEXT_INCONSISTENT", "交易信息被篡改: out_trade_no was used with another amount or notify_url")
	}
	ch.mu.Lock()
	state := t.state
	ch.mu.Unlock()
	switch state {
	case payment.Paid, payment.Refunded:
		return aliFail("ACQ.TRADE_HAS_SUCCESS", "交易已被支付")
	case payment.Closed:
		return aliFail("ACQ.TRADE_HAS_CLOSE", "交易已经关闭")
	}
	return aliOK(aliAnswer{"out_trade_no": str("out_trade_no"), "qr_code": s.payURL(r, ch.name, t.id)})
}

// aliStatus is Alipay's trade_status of t (needs channel.mu).
func aliStatusLocked(t *txn) string {
	switch {
	case t.state == payment.Paid, t.state == payment.Refunded && t.refunded < t.amount:
		return "TRADE_SUCCESS"
	case t.state == payment.Pending:
		return "WAIT_BUYER_PAY"
	}
	return "TRADE_CLOSED" // closed unpaid, or refunded in full
}

func (ch *channel) aliTxn(outTradeNo string) (*txn, aliAnswer) {
	no, ok := payment.ParseID(outTradeNo)
	if !ok {
		return nil, aliFail("ACQ.TRADE_NOT_EXIST", "交易不存在")
	}
	ch.mu.Lock()
	t := ch.byMerchant[no]
	ch.mu.Unlock()
	if t == nil {
		return nil, aliFail("ACQ.TRADE_NOT_EXIST", "交易不存在")
	}
	return t, nil
}

func (s *Server) aliQuery(ch *channel, outTradeNo string) aliAnswer {
	t, fail := ch.aliTxn(outTradeNo)
	if fail != nil {
		return fail
	}
	ch.mu.Lock()
	defer ch.mu.Unlock()
	a := aliAnswer{"trade_no": t.id, "out_trade_no": outTradeNo, "trade_status": aliStatusLocked(t),
		"total_amount": FormatYuan(t.amount)}
	if !t.paidAt.IsZero() {
		a["send_pay_date"] = aliTime(t.paidAt)
		a["receipt_amount"] = FormatYuan(t.amount)
		a["buyer_pay_amount"] = FormatYuan(t.amount)
		if t.ali != nil {
			a["buyer_user_id"], a["buyer_logon_id"] = t.ali.buyer, "sim***@example.com"
		}
	}
	return aliOK(a)
}

func (s *Server) aliClose(ch *channel, outTradeNo string) aliAnswer {
	t, fail := ch.aliTxn(outTradeNo)
	if fail != nil {
		return fail
	}
	if err := s.close(ch, t); err != nil {
		return aliFail("ACQ.TRADE_STATUS_ERROR", "交易状态不合法: the trade is paid")
	}
	return aliOK(aliAnswer{"out_trade_no": outTradeNo, "trade_no": t.id})
}

func (s *Server) aliRefund(ch *channel, str func(string) string) aliAnswer {
	t, fail := ch.aliTxn(str("out_trade_no"))
	if fail != nil {
		return fail
	}
	rid, ok := payment.ParseID(str("out_request_no"))
	if !ok || len(str("out_request_no")) > 64 {
		return aliFail("ACQ.INVALID_PARAMETER", "paysim takes out_request_no as a decimal id of at most 64 digits")
	}
	amount, err := payment.ParseYuan(str("refund_amount"))
	if err != nil || amount <= 0 {
		return aliFail("ACQ.INVALID_PARAMETER", "refund_amount must be a positive amount of yuan")
	}
	if len(str("refund_reason")) > MaxSubject {
		return aliFail("ACQ.INVALID_PARAMETER", "refund_reason is over 256 bytes")
	}
	ch.mu.Lock()
	_, repeated := ch.refunds[rid]
	ch.mu.Unlock()
	rf, err := s.refundTxn(ch, refundReq{RefundID: rid, MerchantTxnID: t.merchantID, Amount: amount, Reason: str("refund_reason")})
	switch {
	case errors.Is(err, ErrNotPaid):
		return aliFail("ACQ.TRADE_STATUS_ERROR", "交易状态不合法: the trade is not paid")
	case errors.Is(err, ErrRefundExceeds):
		return aliFail("ACQ.REFUND_AMT_NOT_EQUAL_TOTAL", "退款金额超限")
	case errors.Is(err, ErrRefundConflict):
		return aliFail("ACQ.DISCORDANT_REPEAT_REQUEST", "out_request_no was used for another trade or amount")
	case errors.Is(err, ErrTooManyRefunds):
		return aliFail("ACQ.REFUND_CHARGE_ERROR", fmt.Sprintf("a trade takes at most %d refunds", MaxRefunds))
	case err != nil:
		return aliFail("ACQ.SYSTEM_ERROR", err.Error())
	}
	ch.mu.Lock()
	defer ch.mu.Unlock()
	change := "Y"
	if repeated {
		change = "N"
	}
	return aliOK(aliAnswer{"trade_no": t.id, "out_trade_no": str("out_trade_no"), "fund_change": change,
		"refund_fee": FormatYuan(t.refunded), "gmt_refund_pay": aliTime(rf.at), "buyer_logon_id": "sim***@example.com"})
}

func (s *Server) aliRefundQuery(ch *channel, outTradeNo, outRequestNo string) aliAnswer {
	t, fail := ch.aliTxn(outTradeNo)
	if fail != nil {
		return fail
	}
	rid, _ := payment.ParseID(outRequestNo)
	ch.mu.Lock()
	rf := ch.refunds[rid]
	ch.mu.Unlock()
	a := aliAnswer{"trade_no": t.id, "out_trade_no": outTradeNo, "out_request_no": outRequestNo}
	if rf != nil && rf.txn == t { // none: Alipay answers success, without a refund_status
		a["refund_status"], a["refund_amount"], a["total_amount"] = "REFUND_SUCCESS", FormatYuan(rf.amount), FormatYuan(t.amount)
		a["gmt_refund_pay"] = aliTime(rf.at)
	}
	return aliOK(a)
}

// ---- the bill

// aliBillURL answers the download URL of the trade bill of a China day:
// the bill of the rows there are now (a day still going on grows at its
// end only).
func (s *Server) aliBillURL(r *http.Request, ch *channel, billType, day string) aliAnswer {
	d, err := time.ParseInLocation(time.DateOnly, day, CST)
	switch {
	case billType != "trade":
		return aliFail("isp.bill_not_exist", "paysim serves bill_type trade only")
	case err != nil:
		return aliFail("isv.invalid-parameter", "bill_date must be yyyy-MM-dd (daily bills only)")
	case !d.Before(s.now().Add(24 * time.Hour)):
		return aliFail("isp.bill_not_exist", "账单不存在")
	}
	rows := len(ch.dayLines(day, -1))
	return aliOK(aliAnswer{"bill_download_url": s.publicBase(r) + "/paysim/v1/" + ch.name + "/bills/" + day + "." + strconv.Itoa(rows)})
}

// dayLines returns the bill lines of China day (YYYY-MM-DD), at most
// n of them (-1: all).
func (ch *channel) dayLines(day string, n int) []line {
	d, _ := time.ParseInLocation(time.DateOnly, day, CST)
	ch.mu.Lock()
	defer ch.mu.Unlock()
	var lines []line
	for _, utc := range []string{d.UTC().Format(time.DateOnly), d.Add(24 * time.Hour).UTC().Format(time.DateOnly)} {
		for _, l := range ch.days[utc] {
			if l.at.In(CST).Format(time.DateOnly) == day {
				lines = append(lines, l)
			}
		}
	}
	if n >= 0 && n < len(lines) {
		lines = lines[:n]
	}
	return lines
}

// AliBillHeader is the header row of the bill's 业务明细 file.
var AliBillHeader = []string{"支付宝交易号", "商户订单号", "业务类型", "商品名称", "创建时间", "完成时间", "门店编号", "门店名称",
	"操作员", "终端号", "对方账户", "订单金额（元）", "商家实收（元）", "支付宝红包（元）", "集分宝（元）", "支付宝优惠（元）",
	"商家优惠（元）", "券核销金额（元）", "券名称", "商家红包消费金额（元）", "卡消费金额（元）", "退款批次号/请求号", "服务费（元）",
	"分润（元）", "备注"}

// aliBillFile answers the bill: a zip of two GBK CSV files, the details
// (业务明细) and the totals (业务明细(汇总)), as Alipay's. The URL is the
// credential, as Alipay's short-lived one.
func (s *Server) aliBillFile(w http.ResponseWriter, r *http.Request) {
	ch := s.chans[r.PathValue("channel")]
	day, n, _ := strings.Cut(r.PathValue("token"), ".")
	rows, err := strconv.Atoi(n)
	if _, derr := time.Parse(time.DateOnly, day); ch == nil || ch.cfg.Scheme != Alipay || err != nil || derr != nil || rows < 0 {
		http.Error(w, "no such bill", http.StatusNotFound)
		return
	}
	lines := ch.dayLines(day, rows)
	compact := strings.ReplaceAll(day, "-", "")
	var detail, total bytes.Buffer
	fmt.Fprintf(&detail, "#支付宝业务明细查询\r\n#账号：[%s]\r\n#起始日期：[%s 00:00:00]   终止日期：[%s 23:59:59]\r\n", ch.cfg.Alipay.AppID, day, day)
	detail.WriteString("#-----------------------------------------业务明细列表----------------------------------------\r\n")
	detail.WriteString(strings.Join(AliBillHeader, ",") + "\r\n")
	var trades, refunds int
	var paid, refunded int64
	ch.mu.Lock()
	for _, l := range lines {
		subject := ""
		if l.txn.ali != nil {
			subject = strings.NewReplacer(",", " ", "\r", " ", "\n", " ").Replace(l.txn.ali.subject)
		}
		kind, request, amount, received := "交易", "", FormatYuan(l.amount), FormatYuan(l.amount)
		if l.refund != nil {
			kind, request, amount, received = "退款", strconv.FormatInt(l.refund.id, 10), "-"+FormatYuan(l.amount), "-"+FormatYuan(l.amount)
			refunds++
			refunded += l.amount
		} else {
			trades++
			paid += l.amount
		}
		row := []string{l.txn.id + "\t", strconv.FormatInt(l.txn.merchantID, 10) + "\t", kind, subject, aliTime(l.at), aliTime(l.at),
			"", "", "", "", "sim***@example.com", amount, received, "0.00", "0.00", "0.00", "0.00", "0.00", "", "0.00", "0.00",
			request + "\t", "0.00", "0.00", ""}
		detail.WriteString(strings.Join(row, ",") + "\r\n")
	}
	ch.mu.Unlock()
	detail.WriteString("#-----------------------------------------业务明细列表结束------------------------------------\r\n")
	fmt.Fprintf(&detail, "#交易合计：%d笔，商家实收共%s元\r\n#退款合计：%d笔，商家实收退款共%s元\r\n#导出时间：[%s]\r\n",
		trades, FormatYuan(paid), refunds, FormatYuan(refunded), aliTime(s.now()))
	total.WriteString("#支付宝业务汇总查询\r\n门店编号,门店名称,交易订单总笔数,退款订单总笔数,订单金额（元）,商家实收（元）\r\n")
	fmt.Fprintf(&total, "合计,,%d,%d,%s,%s\r\n", trades, refunds, FormatYuan(paid-refunded), FormatYuan(paid-refunded))

	var z bytes.Buffer
	zw := zip.NewWriter(&z)
	for _, f := range []struct {
		name string
		body []byte
	}{{ch.cfg.Alipay.AppID + "_" + compact + "_业务明细.csv", detail.Bytes()}, {ch.cfg.Alipay.AppID + "_" + compact + "_业务明细(汇总).csv", total.Bytes()}} {
		gbk, err := simplifiedchinese.GBK.NewEncoder().Bytes(f.body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		fw, _ := zw.Create(f.name)
		fw.Write(gbk)
	}
	zw.Close()
	w.Header().Set("Content-Type", "application/zip")
	w.Header().Set("Content-Disposition", `attachment; filename="`+ch.cfg.Alipay.AppID+"_"+compact+`.csv.zip"`)
	w.Write(z.Bytes())
}

// ---- notices

// encodeAlipay is EncodeCallback for an Alipay channel: the trade's state
// when sent (TRADE_SUCCESS when paid or refunded in part, TRADE_CLOSED
// when closed unpaid or refunded in full), refund_fee (all refunded so
// far), and for a refund's notice gmt_refund and out_biz_no.
func encodeAlipay(k *AlipayKeys, n payment.Notice) (http.Header, []byte, error) {
	if k == nil {
		return nil, nil, errors.New("paysim: Alipay without keys")
	}
	var status string
	switch {
	case n.State == payment.Paid, n.State == payment.Refunded && n.Refunded < n.Amount:
		status = "TRADE_SUCCESS"
	case n.State == payment.Closed, n.State == payment.Refunded:
		status = "TRADE_CLOSED"
	default:
		return nil, nil, fmt.Errorf("paysim: Alipay does not notify a %s trade", n.State)
	}
	v := url.Values{
		"app_id":         {k.AppID},
		"charset":        {"utf-8"},
		"version":        {"1.0"},
		"notify_type":    {"trade_status_sync"},
		"notify_id":      {n.NoticeID},
		"notify_time":    {aliTime(n.Timestamp)},
		"out_trade_no":   {strconv.FormatInt(n.PaymentID, 10)},
		"trade_no":       {n.ChannelTxnID},
		"trade_status":   {status},
		"total_amount":   {FormatYuan(n.Amount)},
		"receipt_amount": {FormatYuan(n.Amount)},
		"buyer_id":       {"2088102177846880"},
		"sign_type":      {"RSA2"},
	}
	if !n.PaidAt.IsZero() {
		v.Set("gmt_payment", aliTime(n.PaidAt))
		v.Set("gmt_create", aliTime(n.PaidAt))
	}
	if n.State == payment.Refunded {
		v.Set("refund_fee", FormatYuan(n.Refunded))
	}
	if n.Refund != nil {
		v.Set("out_biz_no", n.Refund.OutRefundNo)
		v.Set("gmt_refund", n.Refund.At.In(CST).Format(AliTimeLayout+".000"))
	}
	signed := url.Values{}
	for key, vs := range v {
		if key != "sign_type" {
			signed[key] = vs
		}
	}
	sum := sha256.Sum256([]byte(AliContent(signed)))
	sig, err := rsa.SignPKCS1v15(nil, k.AlipayKey, crypto.SHA256, sum[:])
	if err != nil {
		return nil, nil, err
	}
	v.Set("sign", base64.StdEncoding.EncodeToString(sig))
	h := http.Header{}
	h.Set("Content-Type", "application/x-www-form-urlencoded; charset=utf-8")
	return h, []byte(v.Encode()), nil
}
