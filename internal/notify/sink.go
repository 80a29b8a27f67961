package notify

import (
	"bytes"
	"crypto/subtle"
	"errors"
	"io"
	"math/rand/v2"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"

	"github.com/surge-platform/surge/internal/platform/errkind"
	"github.com/surge-platform/surge/internal/platform/web"
)

// SinkPath is where a Sink receives and lists messages.
const SinkPath = "/paysim/v1/messages"

// Errors of the Sink's handler.
var (
	ErrBadSignature = errkind.New(errkind.Unauthorized, "bad_signature", "missing or wrong "+HeaderSignature)
	ErrNoMessageID  = errkind.New(errkind.Invalid, "missing_message_id", "missing "+HeaderMessageID)
	errSinkDown     = errkind.New(errkind.Unavailable, "unavailable", "the message service is unavailable")
)

// SinkKeep is how many messages a Sink keeps at least (it holds up to
// twice as many, then forgets the oldest half).
const SinkKeep = 10000

// Sink is an in-memory webhook receiver: the customer-message side of the
// payment simulator, and the far end of Webhook in tests. It verifies
// signatures, stores each message id once (of the last SinkKeep+), and can
// be told to fail. Listing needs the read token: messages carry pickup
// codes. It is safe for concurrent use.
type Sink struct {
	secret []byte
	token  string
	hits   atomic.Int64

	mu       sync.Mutex
	seen     map[string]bool
	msgs     []Message // in arrival order
	failRate float64
	down     bool
}

// NewSink returns an empty Sink that accepts messages signed with secret
// and lists them to requests bearing readToken.
func NewSink(secret []byte, readToken string) *Sink {
	return &Sink{secret: secret, token: readToken, seen: make(map[string]bool)}
}

// SetFailing makes that fraction of POSTs (0..1) answer 503 at random.
func (s *Sink) SetFailing(rate float64) {
	s.mu.Lock()
	s.failRate = rate
	s.mu.Unlock()
}

// SetDown makes every POST answer 503 while down is true.
func (s *Sink) SetDown(down bool) {
	s.mu.Lock()
	s.down = down
	s.mu.Unlock()
}

// Hits returns how many POSTs arrived, failed ones included.
func (s *Sink) Hits() int64 { return s.hits.Load() }

// Count returns how many distinct messages are stored.
func (s *Sink) Count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.msgs)
}

// Messages returns the stored messages of userID (0 = all) in arrival order.
func (s *Sink) Messages(userID int64) []Message {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := []Message{}
	for _, m := range s.msgs {
		if userID == 0 || m.UserID == userID {
			out = append(out, m)
		}
	}
	return out
}

// Handler serves POST SinkPath (a signed message: 200 {"status":"stored"}
// or {"status":"duplicate"}; 401, 400, 413 or 503 as JSON errors) and
// GET SinkPath?user_id= (the stored messages, all when user_id is empty).
func (s *Sink) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST "+SinkPath, s.receive)
	mux.HandleFunc("GET "+SinkPath, func(w http.ResponseWriter, r *http.Request) {
		tok, _ := web.Bearer(r)
		if s.token == "" || subtle.ConstantTimeCompare([]byte(tok), []byte(s.token)) != 1 {
			web.Error(w, r, errkind.ErrUnauthorized.With("listing messages needs the admin token"))
			return
		}
		var uid int64
		if v := r.URL.Query().Get("user_id"); v != "" {
			var err error
			if uid, err = strconv.ParseInt(v, 10, 64); err != nil || uid <= 0 {
				web.Error(w, r, errkind.ErrInvalid.With("bad user_id %q", v))
				return
			}
		}
		web.JSON(w, http.StatusOK, s.Messages(uid))
	})
	return mux
}

func (s *Sink) receive(w http.ResponseWriter, r *http.Request) {
	s.hits.Add(1)
	s.mu.Lock()
	fail := s.down || (s.failRate > 0 && rand.Float64() < s.failRate)
	s.mu.Unlock()
	if fail {
		// Not web.Error: an injected fault is not worth an error log line.
		var b web.ErrBody
		b.Error.Code, b.Error.Message = errSinkDown.Code, errSinkDown.Message
		web.JSON(w, http.StatusServiceUnavailable, b)
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, web.MaxBody))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			web.Error(w, r, errkind.ErrTooLarge.With("request body over %d bytes", mbe.Limit))
			return
		}
		web.Error(w, r, web.ErrBadJSON.With("read body: %v", err))
		return
	}
	if !Verify(s.secret, body, r.Header.Get(HeaderSignature)) {
		web.Error(w, r, ErrBadSignature)
		return
	}
	id := r.Header.Get(HeaderMessageID)
	if id == "" {
		web.Error(w, r, ErrNoMessageID)
		return
	}
	var m Message
	if err := web.DecodeReader(bytes.NewReader(body), &m); err != nil {
		web.Error(w, r, err)
		return
	}
	m.ID = id
	s.mu.Lock()
	dup := s.seen[id]
	if !dup {
		s.seen[id] = true
		s.msgs = append(s.msgs, m)
		if len(s.msgs) >= 2*SinkKeep { // keep the newest SinkKeep
			for _, old := range s.msgs[:SinkKeep] {
				delete(s.seen, old.ID)
			}
			s.msgs = append([]Message(nil), s.msgs[SinkKeep:]...)
		}
	}
	s.mu.Unlock()
	status := "stored"
	if dup {
		status = "duplicate"
	}
	web.JSON(w, http.StatusOK, map[string]string{"status": status})
}
