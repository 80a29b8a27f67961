package errkind_test

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/surge-platform/surge/internal/platform/errkind"
)

// driverErr stands for a foreign error (a driver's) that a platform package
// classifies.
type driverErr struct{ down bool }

func (e *driverErr) Error() string { return fmt.Sprintf("driver: down=%v", e.down) }

var calls int

func init() {
	errkind.Classify(func(err error) *errkind.Error {
		calls++
		var d *driverErr
		if errors.As(err, &d) && d.down {
			return errkind.ErrUnavailable
		}
		return nil
	})
	errkind.Classify(func(err error) *errkind.Error {
		var d *driverErr
		if errors.As(err, &d) {
			return errkind.ErrTimeout // reached only when the first passed
		}
		return nil
	})
}

func TestOf(t *testing.T) {
	sold := errkind.New(errkind.Conflict, "sold_out", "sold out")
	tests := []struct {
		name    string
		err     error
		want    *errkind.Error // nil: no kind
		code    string
		message string
		asked   bool // the classifiers were consulted
	}{
		{name: "nil", err: nil},
		{name: "sentinel", err: sold, want: sold, code: "sold_out", message: "sold out"},
		{name: "wrapped sentinel", err: fmt.Errorf("reserve sku 42: %w", sold), code: "sold_out", message: "sold out"},
		{name: "detailed", err: sold.With("sku %d is sold out", 42), code: "sold_out", message: "sku 42 is sold out"},
		{name: "kinded beats classified", err: errors.Join(&driverErr{down: true}, sold), code: "sold_out", message: "sold out"},
		{name: "plain error", err: errors.New("boom"), asked: true},
		{name: "cancelled", err: fmt.Errorf("query: %w", context.Canceled), asked: true},
		{name: "deadline", err: fmt.Errorf("query: %w", context.DeadlineExceeded), want: errkind.ErrTimeout, code: "timeout", asked: true},
		{name: "classified", err: fmt.Errorf("get order 7: %w", &driverErr{down: true}), want: errkind.ErrUnavailable, code: "unavailable", asked: true},
		{name: "second classifier", err: &driverErr{}, want: errkind.ErrTimeout, code: "timeout", asked: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			calls = 0
			got := errkind.Of(tt.err)
			if asked := calls > 0; asked != tt.asked {
				t.Errorf("classifiers consulted = %v, want %v", asked, tt.asked)
			}
			if tt.code == "" {
				if got != nil {
					t.Fatalf("Of(%v) = %+v, want nil", tt.err, got)
				}
				return
			}
			if got == nil || got.Code != tt.code || tt.message != "" && got.Message != tt.message {
				t.Fatalf("Of(%v) = %+v, want code %q message %q", tt.err, got, tt.code, tt.message)
			}
			if tt.want != nil && got != tt.want {
				t.Fatalf("Of(%v) = %p, want the sentinel %p", tt.err, got, tt.want)
			}
		})
	}
}
