package payment

import (
	"context"
	"time"
)

// SetNow sets the clock of s (tests of package payment_test).
func SetNow(s *Service, now func() time.Time) { s.clock.Store(&now) }

// SendRefund asks the channel for refund refundID now, as Repair would.
func SendRefund(ctx context.Context, s *Service, refundID int64) error {
	return s.sendRefund(ctx, refundID)
}

// Quick is the number of notices s applied the common way (applyNotice).
func Quick(s *Service) int64 { return s.quick.Load() }
