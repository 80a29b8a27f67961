package web

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"reflect"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/surge-platform/surge/internal/platform/errkind"
)

// Errors of Decode.
var (
	ErrBadJSON = errkind.New(errkind.Invalid, "invalid_json", "the body is not valid JSON for this request")
	ErrBadText = errkind.New(errkind.Invalid, "invalid_text", "text must not contain the NUL character (\\u0000)")
)

// Decode reads one JSON object of at most MaxBody bytes into v, rejecting
// unknown fields and trailing data. It returns kinded errors.
func Decode(w http.ResponseWriter, r *http.Request, v any) error {
	return DecodeReader(http.MaxBytesReader(w, r.Body, MaxBody), v)
}

// DecodeReader is Decode on a plain reader (fuzz tests use it). Besides
// JSON's own rules it refuses text holding a NUL character (ErrBadText:
// PostgreSQL cannot store one), and its messages name the field in the
// API's terms ("items[1].sku_id must be a decimal string"), not Go's.
func DecodeReader(rd io.Reader, v any) error {
	raw, err := io.ReadAll(rd)
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return errkind.ErrTooLarge.With("request body over %d bytes", mbe.Limit)
		}
		return ErrBadJSON.With("reading the body: %v", err)
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		if errors.Is(err, io.EOF) {
			return ErrBadJSON.With("empty body")
		}
		return explain(err, raw, v)
	}
	if _, err := dec.Token(); err != io.EOF {
		return ErrBadJSON.With("invalid JSON: trailing data after the object")
	}
	// Only the escape \u0000 can put a NUL into a decoded string (a raw NUL
	// byte is not valid JSON), so most bodies are spared the walk.
	if bytes.Contains(raw, []byte(`\u0000`)) {
		if path, ok := nulText(reflect.ValueOf(v), ""); ok {
			return ErrBadText.With("%s must not contain the NUL character (\\u0000)", strings.TrimPrefix(path, "."))
		}
	}
	return nil
}

// explain turns a decoding error into the API's words.
func explain(err error, raw []byte, v any) error {
	var syn *json.SyntaxError
	var typ *json.UnmarshalTypeError
	switch {
	case errors.As(err, &syn):
		return ErrBadJSON.With("invalid JSON at byte %d: %s", syn.Offset, strings.TrimPrefix(syn.Error(), "json: "))
	case errors.As(err, &typ):
		if typ.Field == "" { // the body itself
			return ErrBadJSON.With("the body must be a JSON object, got %s", typ.Value)
		}
		want, got := "of another type", typ.Value
		if f, ok := field(reflect.TypeOf(v), typ.Field); ok {
			want = describe(f)
			if _, quoted := jsonName(f); quoted { // a string that holds no int64: say what came
				if n, ok := strings.CutPrefix(got, "number "); ok {
					got = strconv.Quote(n)
				}
			}
		}
		return ErrBadJSON.With("%s must be %s, got %s", typ.Field, want, got)
	case strings.Contains(err.Error(), "invalid use of ,string struct tag"):
		var doc any
		d := json.NewDecoder(bytes.NewReader(raw))
		d.UseNumber()
		if d.Decode(&doc) == nil {
			if path, got, ok := badString(reflect.TypeOf(v), doc, ""); ok {
				return ErrBadJSON.With("%s must be a decimal string such as \"42\" (ids are strings in JSON), got %s", strings.TrimPrefix(path, "."), got)
			}
		}
		return ErrBadJSON.With("ids must be decimal strings such as \"42\"")
	case strings.HasPrefix(err.Error(), "json: unknown field "):
		return ErrBadJSON.With("%s", strings.TrimPrefix(err.Error(), "json: "))
	}
	return ErrBadJSON.With("invalid JSON: %s", strings.TrimPrefix(err.Error(), "json: "))
}

// jsonName returns the JSON name of struct field f, and whether it has the
// ",string" option ("" for a field JSON leaves out).
func jsonName(f reflect.StructField) (name string, quoted bool) {
	if !f.IsExported() {
		return "", false
	}
	tag := f.Tag.Get("json")
	if tag == "-" {
		return "", false
	}
	name, opts, _ := strings.Cut(tag, ",")
	if name == "" {
		name = f.Name
	}
	return name, strings.Contains(","+opts+",", ",string,")
}

// field finds the struct field at a dotted JSON path ("items.qty") below t.
func field(t reflect.Type, path string) (reflect.StructField, bool) {
	var found reflect.StructField
	for name := range strings.SplitSeq(path, ".") {
		for t.Kind() == reflect.Pointer || t.Kind() == reflect.Slice || t.Kind() == reflect.Array || t.Kind() == reflect.Map {
			t = t.Elem()
		}
		if t.Kind() != reflect.Struct {
			return found, false
		}
		ok := false
		for i := range t.NumField() {
			if n, _ := jsonName(t.Field(i)); strings.EqualFold(n, name) {
				found, t, ok = t.Field(i), t.Field(i).Type, true
				break
			}
		}
		if !ok {
			return found, false
		}
	}
	return found, true
}

// describe says in JSON's words what field f takes.
func describe(f reflect.StructField) string {
	t := f.Type
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	_, quoted := jsonName(f)
	switch t.Kind() {
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		if quoted {
			return fmt.Sprintf("a decimal string such as \"42\" (at most %d)", int64(1)<<(t.Bits()-1)-1)
		}
		return "an integer"
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "a non-negative integer"
	case reflect.Float32, reflect.Float64:
		return "a number"
	case reflect.Bool:
		return "true or false"
	case reflect.String:
		return "a string"
	case reflect.Slice, reflect.Array:
		return "an array"
	case reflect.Struct, reflect.Map:
		return "an object"
	}
	return "of another type"
}

// badString finds the first value in doc (decoded with UseNumber) that
// goes to a ",string" field of t but is not a string holding a number: its
// path ("items[1].sku_id") and a short rendering of what came.
func badString(t reflect.Type, doc any, path string) (string, string, bool) {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch t.Kind() {
	case reflect.Slice, reflect.Array:
		list, _ := doc.([]any)
		for i, x := range list {
			if p, got, ok := badString(t.Elem(), x, path+"["+strconv.Itoa(i)+"]"); ok {
				return p, got, ok
			}
		}
	case reflect.Struct:
		obj, _ := doc.(map[string]any)
		for i := range t.NumField() {
			f := t.Field(i)
			name, quoted := jsonName(f)
			if name == "" {
				continue
			}
			x, ok := lookup(obj, name)
			if !ok {
				continue
			}
			if quoted {
				if s, isStr := x.(string); !isStr || !numeric(s) {
					return path + "." + name, short(x), true
				}
				continue
			}
			if p, got, ok := badString(f.Type, x, path+"."+name); ok {
				return p, got, ok
			}
		}
	}
	return "", "", false
}

// lookup finds key in obj as encoding/json does: exact, else case-insensitive.
func lookup(obj map[string]any, key string) (any, bool) {
	if x, ok := obj[key]; ok {
		return x, true
	}
	for k, x := range obj {
		if strings.EqualFold(k, key) {
			return x, true
		}
	}
	return nil, false
}

func numeric(s string) bool {
	_, err := strconv.ParseFloat(s, 64)
	return err == nil && strings.TrimSpace(s) == s
}

// short renders a JSON value for a message, cut to 40 bytes.
func short(x any) string {
	if x == nil {
		return "null"
	}
	b, _ := json.Marshal(x)
	if len(b) > 40 {
		cut := 40
		for cut > 0 && !utf8.RuneStart(b[cut]) {
			cut--
		}
		return string(b[:cut]) + "…"
	}
	return string(b)
}

// nulText finds a string holding a NUL character anywhere in v and returns
// its JSON path.
func nulText(v reflect.Value, path string) (string, bool) {
	switch v.Kind() {
	case reflect.Pointer, reflect.Interface:
		if !v.IsNil() {
			return nulText(v.Elem(), path)
		}
	case reflect.String:
		if strings.IndexByte(v.String(), 0) >= 0 {
			return path, true
		}
	case reflect.Slice, reflect.Array:
		for i := range v.Len() {
			if p, ok := nulText(v.Index(i), path+"["+strconv.Itoa(i)+"]"); ok {
				return p, true
			}
		}
	case reflect.Map:
		for it := v.MapRange(); it.Next(); {
			if k := it.Key(); k.Kind() == reflect.String && strings.IndexByte(k.String(), 0) >= 0 {
				return path + ".(key)", true
			}
			if p, ok := nulText(it.Value(), path+"."+fmt.Sprint(it.Key())); ok {
				return p, true
			}
		}
	case reflect.Struct:
		for i := range v.NumField() {
			if name, _ := jsonName(v.Type().Field(i)); name != "" {
				if p, ok := nulText(v.Field(i), path+"."+name); ok {
					return p, true
				}
			}
		}
	}
	return "", false
}
