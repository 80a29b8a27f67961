package switches

// Names of the switches. A feature's code asks Panel.On with one of these;
// every switch is declared, with its default and what a client sees when
// it is off, in Defs below and nowhere else (docs/operations.md lists
// them too).
const (
	OrdersHistoryFull  = "orders.history_full"
	OrdersReadPayQuery = "orders.read_pay_query"
	NotifySend         = "notify.send"
	PromoCouponList    = "promo.coupon_list"
	payChannelPrefix   = "pay.channel."
)

// PayChannel is the name of the switch of payment channel ch
// ("pay.channel.wechatpay"). It allocates: callers on a request path keep the
// names they need.
func PayChannel(ch string) string { return payChannelPrefix + ch }

// Def declares one switch. Every switch declared here is on by default
// (switching off is degrading, and a nil Panel answers On with true).
type Def struct {
	Name        string `json:"name"`
	Default     bool   `json:"default"`
	Description string `json:"description"` // one line: the feature
	WhenOff     string `json:"when_off"`    // one line: what a client sees when it is off
}

// Defs returns every switch: the fixed ones, then one per payment channel
// of channels (in that order).
func Defs(channels ...string) []Def {
	defs := []Def{
		{OrdersHistoryFull, true, "customers' order history beyond the latest 20 orders (GET /api/v1/orders)",
			`the first page holds at most the latest 20 orders, no next_cursor, "truncated": true; a later page is empty with "truncated": true`},
		{OrdersReadPayQuery, true, "an unpaid order's read (GET /api/v1/orders/{id}) asks the payment channel about its payment",
			"the read answers from the database only: an order stays pending_payment until the channel's callback or the worker's query lands"},
		{NotifySend, true, "customer notifications (order accepted, order ready) sent by the worker role",
			"no notification is sent (events are acked and counted as suppressed, never sent later); push and order reads still show the pickup code"},
		{PromoCouponList, true, "the list of claimable coupons (GET /api/v1/coupons)",
			`503 {"error":{"code":"switched_off"}} with Retry-After; claiming and using coupons still work`},
	}
	for _, ch := range channels {
		defs = append(defs, Def{PayChannel(ch), true, "payment channel " + ch + " takes new payments",
			`new payments avoid it; asking for it gives 503 channel_unavailable; queries, callbacks and refunds still go to it`})
	}
	return defs
}
