package notify

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/surge-platform/surge/internal/platform/obs"
)

// Headers of a webhook request.
const (
	HeaderSignature = "X-Surge-Signature"  // hex HMAC-SHA256 of the body
	HeaderMessageID = "X-Surge-Message-Id" // Message.ID
)

// Sign returns the hex HMAC-SHA256 of body under secret.
func Sign(secret, body []byte) string {
	mac := hmac.New(sha256.New, secret)
	mac.Write(body)
	return hex.EncodeToString(mac.Sum(nil))
}

// Verify reports whether sig is Sign(secret, body), in constant time.
func Verify(secret, body []byte, sig string) bool {
	got, err := hex.DecodeString(sig)
	if err != nil {
		return false
	}
	mac := hmac.New(sha256.New, secret)
	mac.Write(body)
	return hmac.Equal(got, mac.Sum(nil))
}

// Webhook is a Sender that POSTs each message as JSON to a URL, signed
// with HeaderSignature. A 2xx answer means sent; 4xx other than 408 and 429
// is a rejection (ErrRejected); 5xx, 408, 429, timeouts and connection
// errors are retryable.
type Webhook struct {
	url    string
	secret []byte
	client *http.Client
}

// NewWebhook returns a Webhook with its own client; timeout bounds each
// attempt (0 = 2s).
func NewWebhook(url string, secret []byte, timeout time.Duration) *Webhook {
	if timeout <= 0 {
		timeout = 2 * time.Second
	}
	return &Webhook{url: url, secret: secret, client: &http.Client{Timeout: timeout, Transport: obs.Transport{}}}
}

// Send implements Sender.
func (w *Webhook) Send(ctx context.Context, m Message) error {
	body, err := json.Marshal(m)
	if err != nil {
		return fmt.Errorf("%w: encode: %v", ErrRejected, err)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, w.url, bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("%w: %v", ErrRejected, err) // a bad URL will not get better
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set(HeaderSignature, Sign(w.secret, body))
	req.Header.Set(HeaderMessageID, m.ID)
	resp, err := w.client.Do(req)
	if err != nil {
		return fmt.Errorf("webhook: %w", err)
	}
	defer resp.Body.Close()
	snippet, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10)) // let the connection be reused
	switch c := resp.StatusCode; {
	case c >= 200 && c < 300:
		return nil
	case c >= 400 && c < 500 && c != http.StatusRequestTimeout && c != http.StatusTooManyRequests:
		return fmt.Errorf("%w: webhook status %d: %s", ErrRejected, c, bytes.TrimSpace(snippet))
	default:
		return fmt.Errorf("webhook status %d: %s", c, bytes.TrimSpace(snippet))
	}
}
