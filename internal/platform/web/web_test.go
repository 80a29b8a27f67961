package web

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/surge-platform/surge/internal/platform/errkind"
)

func serve(t *testing.T, h http.Handler, method, path, body string) *httptest.ResponseRecorder {
	t.Helper()
	w := httptest.NewRecorder()
	Chain(h, Basic(slog.New(slog.NewTextHandler(io.Discard, nil)))...).ServeHTTP(w, httptest.NewRequest(method, path, strings.NewReader(body)))
	return w
}

func code(t *testing.T, w *httptest.ResponseRecorder) string {
	t.Helper()
	var b ErrBody
	if err := json.Unmarshal(w.Body.Bytes(), &b); err != nil {
		t.Fatalf("body %q is not a JSON error: %v", w.Body.String(), err)
	}
	return b.Error.Code
}

func TestErrorsMapToStatusAndCode(t *testing.T) {
	t.Parallel()
	errSoldOut := errkind.New(errkind.Conflict, "sold_out", "sold out")
	cases := []struct {
		name       string
		err        error
		status     int
		code       string
		retryAfter string
	}{
		{"kinded", errSoldOut, 409, "sold_out", ""},
		{"wrapped with detail", fmt.Errorf("reserve: %w", errSoldOut.With("sku 42 sold out")), 409, "sold_out", ""},
		{"plain error is internal", errors.New("boom"), 500, "internal", ""},
		{"not found", errkind.ErrNotFound, 404, "not_found", ""},
		{"throttled", errkind.ErrThrottled, 429, "throttled", ""},
		{"unavailable", errkind.ErrUnavailable, 503, "unavailable", "1"},
		// as a kv adapter classifies a driver error: the kind and the cause
		{"unavailable with its cause", fmt.Errorf("kv: get %q: %w", "k",
			errors.Join(errkind.ErrUnavailable, context.DeadlineExceeded)), 503, "unavailable", "1"},
		{"a deadline", fmt.Errorf("query: %w", context.DeadlineExceeded), 503, "timeout", "1"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			w := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { Error(w, r, tc.err) }), "GET", "/", "")
			if w.Code != tc.status || code(t, w) != tc.code || w.Header().Get("X-Trace-Id") == "" {
				t.Fatalf("got %d %s, want %d %s", w.Code, w.Body, tc.status, tc.code)
			}
			if got := w.Header().Get("Retry-After"); got != tc.retryAfter {
				t.Fatalf("Retry-After %q, want %q", got, tc.retryAfter)
			}
		})
	}
	// A handler's own Retry-After stands.
	w := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Retry-After", "30")
		Error(w, r, errkind.ErrUnavailable)
	}), "GET", "/", "")
	if got := w.Header().Get("Retry-After"); w.Code != 503 || got != "30" {
		t.Fatalf("%d, Retry-After %q; want 503 with the handler's 30", w.Code, got)
	}
}

func TestDecode(t *testing.T) {
	t.Parallel()
	type body struct {
		A int    `json:"a"`
		S string `json:"s"`
	}
	cases := []struct {
		in, code string
	}{
		{`{"a":1}`, ""},
		{``, "invalid_json"},
		{`{"a":1,"b":2}`, "invalid_json"},
		{`{"a":1}{"a":2}`, "invalid_json"},
		{`{"a":"x"}`, "invalid_json"},
		{`{"a":1,"pad":"` + strings.Repeat("x", MaxBody) + `"}`, "body_too_large"},
		{`{"a":1,"s":"x\u0000y"}`, "invalid_text"},
		{`{"a":1,"s":"x\\u0000y"}`, ""}, // an escaped backslash, then "u0000": no NUL
	}
	for _, tc := range cases {
		h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			var b body
			if err := Decode(w, r, &b); err != nil {
				Error(w, r, err)
				return
			}
			JSON(w, 200, b)
		})
		w := serve(t, h, "POST", "/", tc.in)
		if tc.code == "" {
			if w.Code != 200 {
				t.Errorf("%.40q: %d %s", tc.in, w.Code, w.Body)
			}
			continue
		}
		if got := code(t, w); got != tc.code || w.Code >= 500 {
			t.Errorf("%.40q: %d %s, want code %s", tc.in, w.Code, got, tc.code)
		}
	}
}

func TestMuxAnswersAndPanicsBecomeJSON(t *testing.T) {
	t.Parallel()
	mux := http.NewServeMux()
	mux.HandleFunc("GET /x", func(w http.ResponseWriter, r *http.Request) { JSON(w, 200, "ok") })
	mux.HandleFunc("GET /panic", func(w http.ResponseWriter, r *http.Request) { panic("boom") })
	if w := serve(t, mux, "GET", "/nope", ""); w.Code != 404 || code(t, w) != "not_found" {
		t.Fatalf("unknown route: %d %s", w.Code, w.Body)
	}
	if w := serve(t, mux, "POST", "/x", ""); w.Code != 405 || code(t, w) != "method_not_allowed" || w.Header().Get("Allow") == "" {
		t.Fatalf("wrong method: %d %s", w.Code, w.Body)
	}
	if w := serve(t, mux, "GET", "/panic", ""); w.Code != 500 || code(t, w) != "internal" {
		t.Fatalf("panic: %d %s", w.Code, w.Body)
	}
	w := serve(t, mux, "GET", "/x", "")
	if w.Code != 200 || w.Header().Get("Content-Length") != "4" || len(w.Header().Get("X-Trace-Id")) != 32 {
		t.Fatalf("ok: %d %v", w.Code, w.Header())
	}
}

// TestDecodeSpeaksTheAPI: decoding errors name the field in JSON's terms and
// say what it takes, never Go's struct or tag vocabulary.
func TestDecodeSpeaksTheAPI(t *testing.T) {
	t.Parallel()
	type line struct {
		SKU int64 `json:"sku_id,string"`
		Qty int   `json:"qty"`
	}
	type body struct {
		StoreID int64             `json:"store_id,string"`
		Items   []line            `json:"items"`
		Open    *bool             `json:"open"`
		Name    string            `json:"name"`
		Tags    map[string]string `json:"tags"`
	}
	for _, tc := range []struct{ in, code, msg string }{
		{`{"store_id":1001}`, "invalid_json", `store_id must be a decimal string such as "42" (ids are strings in JSON), got 1001`},
		{`{"store_id":"abc"}`, "invalid_json", `store_id must be a decimal string such as "42" (ids are strings in JSON), got "abc"`},
		{`{"store_id":"99999999999999999999"}`, "invalid_json", `store_id must be a decimal string such as "42" (at most 9223372036854775807), got "99999999999999999999"`},
		{`{"store_id":"1","items":[{"sku_id":"2","qty":1},{"sku_id":3,"qty":1}]}`, "invalid_json", `items[1].sku_id must be a decimal string such as "42" (ids are strings in JSON), got 3`},
		{`{"items":[{"sku_id":"2","qty":"1"}]}`, "invalid_json", `items.qty must be an integer, got string`},
		{`{"items":[{"sku_id":"2","qty":1.5}]}`, "invalid_json", `items.qty must be an integer, got number 1.5`},
		{`{"open":"yes"}`, "invalid_json", `open must be true or false, got string`},
		{`{"items":{}}`, "invalid_json", `items must be an array, got object`},
		{`[]`, "invalid_json", `the body must be a JSON object, got array`},
		{`{"store":"1"}`, "invalid_json", `unknown field "store"`},
		{`{"name":"a",}`, "invalid_json", `invalid JSON at byte 13: invalid character '}' looking for beginning of object key string`},
		{`{"name":"Tea\u0000"}`, "invalid_text", `name must not contain the NUL character (\u0000)`},
		{`{"items":[{"sku_id":"2","qty":1}],"tags":{"k":"\u0000"}}`, "invalid_text", `tags.k must not contain the NUL character (\u0000)`},
	} {
		var b body
		err := DecodeReader(strings.NewReader(tc.in), &b)
		e := errkind.Of(err)
		if e == nil || e.Code != tc.code || e.Message != tc.msg || Status(err) != 400 {
			t.Errorf("%s:\n got %v\nwant %s: %s", tc.in, err, tc.code, tc.msg)
		}
	}
}

// TestOversizeHeaderIsJSON: headers over MaxHeaderBytes get the JSON 431
// (with a trace id) from a server that reads up to ServerMaxHeaderBytes.
func TestOversizeHeaderIsJSON(t *testing.T) {
	t.Parallel()
	srv := httptest.NewUnstartedServer(Chain(
		http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { JSON(w, 200, map[string]bool{"ok": true}) }),
		Basic(slog.New(slog.NewTextHandler(io.Discard, nil)))...))
	srv.Config.MaxHeaderBytes = ServerMaxHeaderBytes
	srv.Start()
	defer srv.Close()
	for _, tc := range []struct {
		name   string
		size   int
		status int
		json   bool
	}{
		{"small", 1 << 10, 200, true},
		{"just under", MaxHeaderBytes - 1<<10, 200, true},
		{"over", MaxHeaderBytes + 1<<10, 431, true},
		{"far over", 2 * MaxHeaderBytes, 431, true},
		{"beyond the server's limit", ServerMaxHeaderBytes + 8<<10, 431, false}, // net/http's own answer (documented)
	} {
		req, _ := http.NewRequest("GET", srv.URL+"/", nil)
		req.Header.Set("X-Big", strings.Repeat("a", tc.size))
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		b, _ := io.ReadAll(res.Body)
		res.Body.Close()
		var e ErrBody
		isJSON := json.Unmarshal(b, &e) == nil
		if res.StatusCode != tc.status || isJSON != tc.json {
			t.Fatalf("%s: %d %q, want %d (JSON: %v)", tc.name, res.StatusCode, b, tc.status, tc.json)
		}
		if tc.status == 431 && tc.json && (e.Error.Code != "header_too_large" || res.Header.Get("X-Trace-Id") == "") {
			t.Fatalf("%s: %s %v", tc.name, b, res.Header)
		}
	}
}

// FuzzDecode: any body is decoded or refused with a 4xx, never a panic, and
// nothing accepted holds a NUL.
func FuzzDecode(f *testing.F) {
	type line struct {
		SKU int64 `json:"sku_id,string"`
		Qty int   `json:"qty"`
	}
	type body struct {
		ID    int64             `json:"id,string"`
		Name  string            `json:"name"`
		Lines []line            `json:"lines"`
		Open  *bool             `json:"open"`
		Tags  map[string]string `json:"tags"`
		Any   any               `json:"any"`
	}
	f.Add([]byte(`{"id":"1","name":"x","lines":[{"sku_id":"2","qty":3}],"open":true,"tags":{"a":"b"},"any":[1,"\u0000"]}`))
	f.Add([]byte(`{"id":1,"lines":[{"sku_id":2}]}`))
	f.Add([]byte(`{"tags":{"\u0000":"x"}}`))
	f.Fuzz(func(t *testing.T, in []byte) {
		var b body
		err := DecodeReader(bytes.NewReader(in), &b)
		if err != nil {
			if s := Status(err); s < 400 || s >= 500 || errkind.Of(err) == nil {
				t.Fatalf("%q: %v (status %d)", in, err, s)
			}
			return
		}
		if out, _ := json.Marshal(b); bytes.Contains(out, []byte(`\u0000`)) {
			t.Fatalf("%q: accepted with a NUL: %s", in, out)
		}
	})
}
