package api

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/surge-platform/surge/internal/platform/bus"
	"github.com/surge-platform/surge/internal/platform/errkind"
	"github.com/surge-platform/surge/internal/platform/web"
)

var ErrNoDeadLetter = errkind.New(errkind.NotFound, "dead_letter_not_found", "no such waiting dead letter")

// reasonMax bounds an operator's discard reason, in bytes.
const reasonMax = 1000

func (s *Server) deadLetterRoutes(mux *http.ServeMux) {
	if s.DeadLetters == nil {
		return
	}
	mux.HandleFunc("GET /admin/v1/dead-letters", s.admin(s.listDeadLetters))
	mux.HandleFunc("POST /admin/v1/dead-letters/replay", s.admin(s.replayDeadLetters))
	mux.HandleFunc("POST /admin/v1/dead-letters/{id}/replay", s.admin(s.replayDeadLetter))
	mux.HandleFunc("POST /admin/v1/dead-letters/{id}/discard", s.admin(s.discardDeadLetter))
}

// deadLetter is a dead letter as operators see it: the payload as JSON when
// it is JSON, else base64.
type deadLetter struct {
	ID         string            `json:"id"`
	Stream     string            `json:"stream"`
	Consumer   string            `json:"consumer"`
	Subject    string            `json:"subject"`
	Seq        string            `json:"seq"`
	MsgID      string            `json:"msg_id,omitempty"`
	Header     map[string]string `json:"headers,omitempty"`
	Payload    json.RawMessage   `json:"payload,omitempty"`
	Base64     []byte            `json:"payload_base64,omitempty"`
	Error      string            `json:"error"`
	Deliveries int               `json:"deliveries"`
	At         time.Time         `json:"at"`
	Resolution string            `json:"resolution,omitempty"`
	Reason     string            `json:"reason,omitempty"`
	ResolvedAt time.Time         `json:"resolved_at,omitzero"`
}

func viewDeadLetter(dl bus.DeadLetter) deadLetter {
	v := deadLetter{ID: strconv.FormatUint(dl.ID, 10), Stream: dl.Stream, Consumer: dl.Consumer, Subject: dl.Subject,
		Seq: strconv.FormatUint(dl.Seq, 10), MsgID: dl.MsgID, Header: dl.Header, Error: dl.Error, Deliveries: dl.Deliveries,
		At: dl.At, Resolution: dl.Resolution, Reason: dl.Reason, ResolvedAt: dl.ResolvedAt}
	if json.Valid(dl.Data) {
		v.Payload = dl.Data
	} else {
		v.Base64 = dl.Data
	}
	return v
}

// consumerName reads the consumer query parameter: a durable name or "".
func consumerName(r *http.Request) (string, error) {
	c := r.URL.Query().Get("consumer")
	if len(c) > 64 || strings.ContainsAny(c, ".*> \t\r\n") {
		return "", errkind.ErrInvalid.With("consumer %q is not a consumer name", c)
	}
	return c, nil
}

// deadLetterError maps the bus's not-found to 404.
func deadLetterError(err error, id uint64) error {
	if errors.Is(err, bus.ErrNotFound) {
		return ErrNoDeadLetter.With("no waiting dead letter %d (unknown, or already replayed or discarded)", id)
	}
	return err
}

func (s *Server) listDeadLetters(w http.ResponseWriter, r *http.Request) {
	consumer, err := consumerName(r)
	if err != nil {
		web.Error(w, r, err)
		return
	}
	cursor, limit, err := page(r)
	if err != nil {
		web.Error(w, r, err)
		return
	}
	resolved := false
	if v := r.URL.Query().Get("resolved"); v != "" {
		if resolved, err = strconv.ParseBool(v); err != nil {
			web.Error(w, r, errkind.ErrInvalid.With("resolved=%q is not true or false", v))
			return
		}
	}
	list, next, err := s.DeadLetters.DeadLetters(r.Context(), bus.DeadLetterQuery{Consumer: consumer, After: uint64(cursor),
		Limit: int(min(limit, 100)), Resolved: resolved})
	if err != nil {
		web.Error(w, r, err)
		return
	}
	out := make([]deadLetter, len(list))
	for i, dl := range list {
		out[i] = viewDeadLetter(dl)
	}
	nc := ""
	if next > 0 {
		nc = strconv.FormatUint(next, 10)
	}
	web.JSON(w, http.StatusOK, map[string]any{"dead_letters": out, "next_cursor": nc})
}

func (s *Server) replayDeadLetter(w http.ResponseWriter, r *http.Request) {
	id, err := pathID(r, "id")
	if err != nil {
		web.Error(w, r, err)
		return
	}
	// Not cut short by a client that goes away between the publish and
	// the record: a letter left waiting after its replay went out would
	// be published again by a later replay.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), 30*time.Second)
	defer cancel()
	dl, err := s.DeadLetters.ReplayDeadLetter(ctx, uint64(id))
	if err != nil {
		web.Error(w, r, deadLetterError(err, uint64(id)))
		return
	}
	web.JSON(w, http.StatusOK, viewDeadLetter(dl))
}

func (s *Server) replayDeadLetters(w http.ResponseWriter, r *http.Request) {
	consumer, err := consumerName(r)
	if err != nil {
		web.Error(w, r, err)
		return
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), 5*time.Minute) // as replayDeadLetter
	defer cancel()
	n, err := s.DeadLetters.ReplayDeadLetters(ctx, consumer)
	if err != nil {
		web.Error(w, r, err)
		return
	}
	web.JSON(w, http.StatusOK, map[string]any{"replayed": n})
}

func (s *Server) discardDeadLetter(w http.ResponseWriter, r *http.Request) {
	id, err := pathID(r, "id")
	if err != nil {
		web.Error(w, r, err)
		return
	}
	var in struct {
		Reason string `json:"reason"`
	}
	if err := web.Decode(w, r, &in); err != nil {
		web.Error(w, r, err)
		return
	}
	in.Reason = strings.TrimSpace(in.Reason)
	switch {
	case in.Reason == "":
		web.Error(w, r, errkind.ErrInvalid.With("reason is required: say why the dead letter is discarded"))
		return
	case len(in.Reason) > reasonMax:
		web.Error(w, r, errkind.ErrInvalid.With("reason is longer than %d bytes", reasonMax))
		return
	}
	dl, err := s.DeadLetters.DiscardDeadLetter(r.Context(), uint64(id), in.Reason)
	if err != nil {
		web.Error(w, r, deadLetterError(err, uint64(id)))
		return
	}
	web.JSON(w, http.StatusOK, viewDeadLetter(dl))
}
