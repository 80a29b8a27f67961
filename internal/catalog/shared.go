package catalog

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/surge-platform/surge/internal/platform/kv"
)

// The shared tier: menus in kv, between each node's local cache and the
// database. It holds copies only; losing any key (kv restarted empty)
// costs a database build, never a wrong answer.
//
//	catalog:gen:<store>         the store's generation: an integer (missing
//	                            = 0) that every change adds 1 to, after the
//	                            database changed and before the bus tells
//	                            the nodes. No ttl.
//	catalog:menu:<store>:<gen>  the menu (or "no such store") built at that
//	                            generation: a JSON header line, then the
//	                            body. TTL sharedTTL (jittered), kvStockTTL
//	                            for menus showing stock, negativeTTL.
//	catalog:lock:<store>:<gen>  held (SetNX, lockTTL) by the node building
//	                            that copy; the others wait for the copy.
//
// A copy is keyed by the generation read before its build, so a build that
// raced a change lands under a generation nobody reads any more: a reader
// after the change (after its bus message) never gets a copy from before
// it. If kv fails during a change, the change's node retries the bump in
// the background until kv answers (at most sharedTTL, when the old copy
// has expired anyway).
const (
	sharedTTL  = 15 * time.Minute
	kvStockTTL = stockTTL / 2
	// kvTimeout bounds each call to kv; after a failure kv is skipped for
	// kvRetry (reads go to the database alone).
	kvTimeout = 250 * time.Millisecond
	kvRetry   = 2 * time.Second
	// lockTTL frees the lock of a node that died while building; a
	// waiter waits at most lockWait, then builds itself.
	lockTTL   = 2 * time.Second
	lockWait  = lockTTL + 500*time.Millisecond
	pollEvery = 10 * time.Millisecond
)

// errMiss: kv holds no copy of the menu at the current generation.
var errMiss = errors.New("catalog: no shared copy")

type shared struct {
	kv        kv.Store
	downUntil atomic.Int64 // unix nanos: kv is skipped until then
	errors    atomic.Int64
	pending   sync.Map // store id -> struct{}: a generation bump being retried
	floor     sync.Map // store id -> int64: the least store version a copy may have (OnInvalidate)
}

// atLeast raises the least version of the store's copies taken from kv.
func (sh *shared) atLeast(storeID, version int64) {
	for {
		old, loaded := sh.floor.LoadOrStore(storeID, version)
		if !loaded || old.(int64) >= version || sh.floor.CompareAndSwap(storeID, old, version) {
			return
		}
	}
}

func genKey(storeID int64) string { return "catalog:gen:" + strconv.FormatInt(storeID, 10) }

func menuKey(storeID, gen int64) string {
	return "catalog:menu:" + strconv.FormatInt(storeID, 10) + ":" + strconv.FormatInt(gen, 10)
}

func lockKey(storeID, gen int64) string {
	return "catalog:lock:" + strconv.FormatInt(storeID, 10) + ":" + strconv.FormatInt(gen, 10)
}

func (sh *shared) up() bool { return time.Now().UnixNano() >= sh.downUntil.Load() }

// failed counts a failed kv call and skips kv for kvRetry; it returns err.
func (sh *shared) failed(err error) error {
	sh.errors.Add(1)
	sh.downUntil.Store(time.Now().Add(kvRetry).UnixNano())
	return err
}

// gen returns the store's generation (missing = 0).
func (sh *shared) gen(ctx context.Context, storeID int64) (int64, error) {
	ctx, cancel := context.WithTimeout(ctx, kvTimeout)
	defer cancel()
	b, err := sh.kv.Get(ctx, genKey(storeID))
	if errors.Is(err, kv.ErrNotFound) {
		return 0, nil
	}
	if err != nil {
		return 0, sh.failed(err)
	}
	g, err := strconv.ParseInt(string(b), 10, 64)
	if err != nil {
		return 0, sh.failed(fmt.Errorf("catalog: generation of store %d: %q is not an integer", storeID, b))
	}
	return g, nil
}

// read returns the store's generation and its copy at that generation.
// Errors: errMiss (no copy), ErrNoStore (a negative copy), a kv failure.
func (sh *shared) read(ctx context.Context, storeID int64) (int64, *Menu, error) {
	gen, err := sh.gen(ctx, storeID)
	if err != nil {
		return 0, nil, err
	}
	m, err := sh.menu(ctx, storeID, gen)
	return gen, m, err
}

// menu returns the copy at gen; errors as read. A copy that does not
// decode counts as missing (it is built again over).
func (sh *shared) menu(ctx context.Context, storeID, gen int64) (*Menu, error) {
	ctx, cancel := context.WithTimeout(ctx, kvTimeout)
	defer cancel()
	b, err := sh.kv.Get(ctx, menuKey(storeID, gen))
	if errors.Is(err, kv.ErrNotFound) {
		return nil, errMiss
	}
	if err != nil {
		return nil, sh.failed(err)
	}
	m, err := decodeMenu(b)
	if err != nil {
		return nil, errMiss
	}
	if f, ok := sh.floor.Load(storeID); ok && (m == nil || m.Store.Version < f.(int64)) {
		return nil, errMiss // older than a change this node was told of: built again over
	}
	if m == nil {
		return nil, ErrNoStore.With("no store %d", storeID)
	}
	return m, nil
}

// write puts the copy built at gen: m, or "no such store" when built is
// ErrNoStore.
func (sh *shared) write(ctx context.Context, storeID, gen int64, m *Menu, built error) error {
	val, ttl := encodeMenu(nil), negativeTTL
	if built == nil {
		val, ttl = encodeMenu(m), jitter(sharedTTL)
		if m.MaxAge == stockTTL {
			ttl = kvStockTTL
		}
	}
	ctx, cancel := context.WithTimeout(ctx, kvTimeout)
	defer cancel()
	if err := sh.kv.Set(ctx, menuKey(storeID, gen), val, ttl); err != nil {
		return sh.failed(err)
	}
	return nil
}

// lock takes the build lock of the copy at gen and reports whether it did.
func (sh *shared) lock(ctx context.Context, storeID, gen int64) (bool, error) {
	ctx, cancel := context.WithTimeout(ctx, kvTimeout)
	defer cancel()
	ok, err := sh.kv.SetNX(ctx, lockKey(storeID, gen), []byte("1"), lockTTL)
	if err != nil {
		return false, sh.failed(err)
	}
	return ok, nil
}

// unlock lets go of the lock. (If the lock expired and another node took
// it, this removes that node's lock: at worst one more build.)
func (sh *shared) unlock(storeID, gen int64) {
	ctx, cancel := context.WithTimeout(context.Background(), kvTimeout)
	defer cancel()
	if err := sh.kv.Del(ctx, lockKey(storeID, gen)); err != nil {
		sh.failed(err)
	}
}

// await waits up to lockWait for the copy at gen that another node is
// building. It returns the copy (errors as read), or errMiss with locked
// true when the lock came free without a copy (the holder failed, or died
// and its lock expired) and this node took it, or errMiss with locked
// false when the wait ran out.
func (sh *shared) await(ctx context.Context, storeID, gen int64) (m *Menu, locked bool, err error) {
	t := time.NewTimer(pollEvery)
	defer t.Stop()
	for deadline := time.Now().Add(lockWait); time.Now().Before(deadline); {
		select {
		case <-ctx.Done():
			return nil, false, ctx.Err()
		case <-t.C:
		}
		t.Reset(pollEvery/2 + rand.N(pollEvery))
		if m, err := sh.menu(ctx, storeID, gen); err != errMiss {
			return m, false, err
		}
		ok, err := sh.lock(ctx, storeID, gen)
		if err != nil || ok {
			return nil, ok, errOr(err, errMiss)
		}
	}
	return nil, false, errMiss
}

func errOr(err, otherwise error) error {
	if err != nil {
		return err
	}
	return otherwise
}

// moveOn adds 1 to the store's generation. When kv fails it retries in
// the background (one goroutine per store, jittered backoff up to 2 s)
// until kv answers or sharedTTL has passed.
func (sh *shared) moveOn(storeID int64) {
	if sh.incr(storeID) == nil {
		return
	}
	if _, busy := sh.pending.LoadOrStore(storeID, struct{}{}); busy {
		return
	}
	go func() {
		defer sh.pending.Delete(storeID)
		wait := 100 * time.Millisecond
		for end := time.Now().Add(sharedTTL); time.Now().Before(end); {
			time.Sleep(wait/2 + rand.N(wait))
			if sh.incr(storeID) == nil {
				return
			}
			wait = min(2*wait, 2*time.Second)
		}
	}()
}

func (sh *shared) incr(storeID int64) error {
	ctx, cancel := context.WithTimeout(context.Background(), kvTimeout)
	defer cancel()
	if _, err := sh.kv.IncrBy(ctx, genKey(storeID), 1); err != nil {
		return sh.failed(err)
	}
	return nil
}

// record is the header line of a copy in kv; the body follows it.
type record struct {
	Missing bool          `json:"missing,omitempty"` // "no such store"
	Store   Store         `json:"store"`
	Items   []Item        `json:"items,omitempty"`
	MaxAge  time.Duration `json:"max_age,omitempty"`
}

// encodeMenu encodes m (nil: "no such store").
func encodeMenu(m *Menu) []byte {
	rec := record{Missing: m == nil}
	if m != nil {
		rec.Store, rec.MaxAge = m.Store, m.MaxAge
		rec.Items = make([]Item, 0, len(m.Items))
		for _, it := range m.Items {
			rec.Items = append(rec.Items, it)
		}
	}
	head, _ := json.Marshal(rec) // plain fields: cannot fail
	var body []byte
	if m != nil {
		body = m.Body
	}
	out := make([]byte, 0, len(head)+1+len(body))
	out = append(append(append(out, head...), '\n'), body...)
	return out
}

// decodeMenu decodes what encodeMenu made; nil, nil for "no such store".
func decodeMenu(b []byte) (*Menu, error) {
	head, body, ok := bytes.Cut(b, []byte{'\n'})
	if !ok {
		return nil, errors.New("catalog: a shared copy without its header line")
	}
	var rec record
	if err := json.Unmarshal(head, &rec); err != nil {
		return nil, fmt.Errorf("catalog: shared copy: %w", err)
	}
	if rec.Missing {
		return nil, nil
	}
	if !json.Valid(body) || rec.MaxAge <= 0 {
		return nil, errors.New("catalog: a shared copy with a bad body")
	}
	m := &Menu{Store: rec.Store, Items: make(map[int64]Item, len(rec.Items)), Body: body, MaxAge: rec.MaxAge}
	for _, it := range rec.Items {
		m.Items[it.SKU] = it
	}
	m.seal()
	return m, nil
}
