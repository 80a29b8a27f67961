package api

import (
	"net/http"

	"github.com/surge-platform/surge/internal/catalog"
	"github.com/surge-platform/surge/internal/platform/web"
)

func (s *Server) adminRoutes(mux *http.ServeMux) {
	mux.HandleFunc("POST /admin/v1/stores", s.admin(s.createStore))
	mux.HandleFunc("GET /admin/v1/stores/{store_id}", s.admin(s.adminStore))
	mux.HandleFunc("PUT /admin/v1/stores/{store_id}", s.admin(s.updateStore))
	mux.HandleFunc("POST /admin/v1/stores/{store_id}/pos-key", s.admin(s.rotatePOSKey))
	mux.HandleFunc("POST /admin/v1/stores/{store_id}/categories", s.admin(s.createCategory))
	mux.HandleFunc("POST /admin/v1/stores/{store_id}/items", s.admin(s.putItem))
	mux.HandleFunc("PUT /admin/v1/stores/{store_id}/items/{sku_id}", s.admin(s.putItem))
	mux.HandleFunc("PUT /admin/v1/items/{sku_id}/stock", s.admin(s.setStock))
	mux.HandleFunc("POST /admin/v1/catalog/prewarm", s.admin(s.prewarmCatalog))
	mux.HandleFunc("GET /admin/v1/orders/{order_id}", s.admin(s.adminOrder))
	mux.HandleFunc("GET /admin/v1/events", s.admin(s.events))
	mux.HandleFunc("GET /admin/v1/events/stats", s.admin(s.eventStats))
	s.deadLetterRoutes(mux)
}

func (s *Server) createStore(w http.ResponseWriter, r *http.Request) {
	var in catalog.StoreInput
	if err := web.Decode(w, r, &in); err != nil {
		web.Error(w, r, err)
		return
	}
	st, err := s.Catalog.CreateStore(r.Context(), 0, in)
	if err != nil {
		web.Error(w, r, err)
		return
	}
	web.JSON(w, http.StatusCreated, st)
}

func (s *Server) adminStore(w http.ResponseWriter, r *http.Request) {
	sid, err := pathID(r, "store_id")
	if err != nil {
		web.Error(w, r, err)
		return
	}
	st, err := s.Catalog.AdminStore(r.Context(), sid)
	if err != nil {
		web.Error(w, r, err)
		return
	}
	web.JSON(w, http.StatusOK, st)
}

func (s *Server) updateStore(w http.ResponseWriter, r *http.Request) {
	sid, err := pathID(r, "store_id")
	if err != nil {
		web.Error(w, r, err)
		return
	}
	var in catalog.StoreInput
	if err := web.Decode(w, r, &in); err != nil {
		web.Error(w, r, err)
		return
	}
	st, err := s.Catalog.UpdateStore(r.Context(), sid, in)
	if err != nil {
		web.Error(w, r, err)
		return
	}
	web.JSON(w, http.StatusOK, st)
}

func (s *Server) rotatePOSKey(w http.ResponseWriter, r *http.Request) {
	sid, err := pathID(r, "store_id")
	if err != nil {
		web.Error(w, r, err)
		return
	}
	st, err := s.Catalog.RotatePOSKey(r.Context(), sid)
	if s.KeyRotated != nil {
		// Even after an error: the new key may be stored (the read after
		// it failed), and a needless check of the sockets' keys is cheap.
		s.KeyRotated(sid)
	}
	if err != nil {
		web.Error(w, r, err)
		return
	}
	web.JSON(w, http.StatusOK, st)
}

func (s *Server) createCategory(w http.ResponseWriter, r *http.Request) {
	sid, err := pathID(r, "store_id")
	if err != nil {
		web.Error(w, r, err)
		return
	}
	var in catalog.CategoryInput
	if err := web.Decode(w, r, &in); err != nil {
		web.Error(w, r, err)
		return
	}
	c, err := s.Catalog.CreateCategory(r.Context(), sid, 0, in)
	if err != nil {
		web.Error(w, r, err)
		return
	}
	web.JSON(w, http.StatusCreated, c)
}

// putItem creates (POST, no sku_id) or replaces (PUT .../items/{sku_id}) an item.
func (s *Server) putItem(w http.ResponseWriter, r *http.Request) {
	sid, err := pathID(r, "store_id")
	if err != nil {
		web.Error(w, r, err)
		return
	}
	var sku int64
	status := http.StatusCreated
	if r.PathValue("sku_id") != "" {
		if sku, err = pathID(r, "sku_id"); err != nil {
			web.Error(w, r, err)
			return
		}
		if owner, err := s.Catalog.StoreOfItem(r.Context(), sku); err != nil || owner != sid {
			web.Error(w, r, catalog.ErrNoItem.With("no item %d in store %d", sku, sid))
			return
		}
		status = http.StatusOK
	}
	var in catalog.ItemInput
	if err := web.Decode(w, r, &in); err != nil {
		web.Error(w, r, err)
		return
	}
	it, err := s.Catalog.PutItem(r.Context(), sid, sku, in)
	if err != nil {
		web.Error(w, r, err)
		return
	}
	web.JSON(w, status, it)
}

func (s *Server) setStock(w http.ResponseWriter, r *http.Request) {
	sku, err := pathID(r, "sku_id")
	if err != nil {
		web.Error(w, r, err)
		return
	}
	var in struct {
		Qty *int64 `json:"qty"`
	}
	if err := web.Decode(w, r, &in); err != nil {
		web.Error(w, r, err)
		return
	}
	if in.Qty == nil {
		web.Error(w, r, web.ErrBadJSON.With("qty is required"))
		return
	}
	if err := s.Catalog.SetStock(r.Context(), sku, *in.Qty); err != nil {
		web.Error(w, r, err)
		return
	}
	web.JSON(w, http.StatusOK, map[string]any{"sku_id": itoa(sku), "qty": *in.Qty})
}

func (s *Server) adminOrder(w http.ResponseWriter, r *http.Request) {
	oid, err := pathID(r, "order_id")
	if err != nil {
		web.Error(w, r, err)
		return
	}
	o, err := s.Orders.Peek(r.Context(), oid)
	if err != nil {
		web.Error(w, r, err)
		return
	}
	web.JSON(w, http.StatusOK, o)
}

// events lists the order events the worker's consumer recorded.
func (s *Server) events(w http.ResponseWriter, r *http.Request) {
	oid, err := queryInt(r, "order_id")
	if err != nil {
		web.Error(w, r, err)
		return
	}
	list, err := s.Orders.SeenEvents(r.Context(), oid)
	if err != nil {
		web.Error(w, r, err)
		return
	}
	web.JSON(w, http.StatusOK, map[string]any{"events": list})
}

// eventStats adds the waiting dead letters to the node's counters: in all
// (dead_letters) and per consumer (dead_letters.<durable>).
func (s *Server) eventStats(w http.ResponseWriter, r *http.Request) {
	st, err := s.Stats(r.Context())
	if err != nil {
		web.Error(w, r, err)
		return
	}
	if s.DeadLetters != nil {
		per, err := s.DeadLetters.DeadLetterCounts(r.Context())
		if err != nil {
			web.Error(w, r, err)
			return
		}
		st["dead_letters"] = 0
		for c, n := range per {
			st["dead_letters."+c] = n
			st["dead_letters"] += n
		}
	}
	web.JSON(w, http.StatusOK, st)
}

// prewarmCatalog builds every store's menu into kv (before a campaign) and
// answers the counts: {"stores","built","failed"}.
func (s *Server) prewarmCatalog(w http.ResponseWriter, r *http.Request) {
	n, err := s.Catalog.PreWarm(r.Context())
	if err != nil {
		web.Error(w, r, err)
		return
	}
	web.JSON(w, http.StatusOK, n)
}
