package notify_test

import (
	"encoding/json"
	"strconv"
	"testing"
	"time"

	"github.com/surge-platform/surge/internal/eventually"
	"github.com/surge-platform/surge/internal/nodetest"
)

// Wired into a node: the store's steps reach the customer as messages in
// the simulator's inbox; with the inbox down, orders go on all the same and
// the failures are counted.
func TestNotificationsFromANode(t *testing.T) {
	t.Parallel()
	n := nodetest.Start(t)
	base := n.URL()
	alice := nodetest.Login(t, base, "+8613912350001")
	pos := nodetest.POS(t, base, "1009")

	step := func(oid, action string) string {
		t.Helper()
		var out struct {
			PickupCode string `json:"pickup_code"`
		}
		eventually.True(t, 10*time.Second, action+" "+oid, func() bool {
			r := pos.Do("POST", "/pos/v1/orders/"+oid+"/"+action, "")
			json.Unmarshal(r.Body, &out)
			return r.Status == 200
		})
		return out.PickupCode
	}
	oid := nodetest.PayOrder(t, alice, "1009", "1009010")
	code := step(oid, "accept")
	step(oid, "ready")
	var o struct {
		UserID string `json:"user_id"`
	}
	json.Unmarshal(alice.Do("GET", "/api/v1/orders/"+oid, "").Body, &o)
	uid, _ := strconv.ParseInt(o.UserID, 10, 64)
	eventually.True(t, 10*time.Second, "accepted and ready messages in the inbox", func() bool {
		ms := n.Inbox.Messages(uid)
		if len(ms) != 2 {
			return false
		}
		for _, m := range ms {
			if strconv.FormatInt(m.OrderID, 10) != oid || m.PickupCode != code {
				t.Fatalf("message %+v; want order %s code %s", m, oid, code)
			}
		}
		return true
	})

	n.Inbox.SetDown(true)
	before := n.Notify.Stats()
	oid = nodetest.PayOrder(t, alice, "1009", "1009010")
	start := time.Now()
	code = step(oid, "accept")
	step(oid, "ready")
	eventually.True(t, 10*time.Second, "the customer reads the pickup code", func() bool {
		var got struct {
			Status     string `json:"status"`
			PickupCode string `json:"pickup_code"`
		}
		json.Unmarshal(alice.Do("GET", "/api/v1/orders/"+oid, "").Body, &got)
		return got.Status == "ready" && got.PickupCode == code
	})
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("the order waited %v for the notifications", d)
	}
	eventually.True(t, 20*time.Second, "failed notifications counted", func() bool {
		st := n.Notify.Stats()
		return st.Failed+st.Skipped-before.Failed-before.Skipped == 2
	})
	if len(n.Inbox.Messages(uid)) != 2 {
		t.Fatalf("inbox down, yet it holds %d messages", len(n.Inbox.Messages(uid)))
	}
}
