package api

import (
	"bytes"
	"testing"

	"github.com/surge-platform/surge/internal/order"
	"github.com/surge-platform/surge/internal/platform/errkind"
	"github.com/surge-platform/surge/internal/platform/web"
)

// FuzzDecodeOrder feeds arbitrary bodies to the order request decoder and
// validator: it must never panic, every rejection must carry a 4xx kind,
// and whatever it accepts must satisfy the documented limits (99 of one sku
// per order, over all its lines).
func FuzzDecodeOrder(f *testing.F) {
	f.Add([]byte(`{"store_id":"1001","items":[{"sku_id":"1001006","qty":2}]}`))
	f.Add([]byte(`{"store_id":"1","items":[{"sku_id":"1","qty":99},{"sku_id":"2","qty":1}]}`))
	f.Add([]byte(`{"store_id":1,"items":null}`))
	f.Add([]byte(`{"store_id":"-5","items":[{"sku_id":"1","qty":0}]}`))
	f.Add([]byte(`{"store_id":"9223372036854775808"}`))
	f.Add([]byte(`[]`))
	f.Add([]byte(`{"store_id":"1","items":[{"sku_id":"7","qty":50},{"sku_id":"7","qty":50}]}`))
	f.Add([]byte(`{"store_id":"1","items":[{"sku_id":"7","qty":1}],"x":"\u0000"}`))
	f.Add([]byte(`{"store_id":"1","items":[]} x`))
	f.Fuzz(func(t *testing.T, body []byte) {
		var req order.Request
		err := web.DecodeReader(bytes.NewReader(body), &req)
		if err == nil {
			err = req.Check()
		}
		if err != nil {
			e := errkind.Of(err)
			if e == nil || web.Status(err) < 400 || web.Status(err) >= 500 {
				t.Fatalf("body %q: error %v is not a 4xx (status %d)", body, err, web.Status(err))
			}
			return
		}
		if req.StoreID <= 0 || len(req.Items) < 1 || len(req.Items) > order.MaxLines {
			t.Fatalf("accepted %q: store %d, %d lines", body, req.StoreID, len(req.Items))
		}
		perSKU := map[int64]int{}
		for _, l := range req.Items {
			if l.SKU <= 0 || l.Qty < 1 || l.Qty > order.MaxQty {
				t.Fatalf("accepted %q with line %+v", body, l)
			}
			if perSKU[l.SKU] += l.Qty; perSKU[l.SKU] > order.MaxQty {
				t.Fatalf("accepted %q with %d of sku %d", body, perSKU[l.SKU], l.SKU)
			}
		}
	})
}
