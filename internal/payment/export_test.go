package payment

import "time"

// SetNow sets the clock of s (tests of package payment_test).
func SetNow(s *Service, now func() time.Time) { s.now = now }
