package node

import (
	"log/slog"

	"github.com/surge-platform/surge/internal/platform/kv"
)

// kvEvents logs what the kv loss watch finds: a new kv filled at start, a
// loss and its rebuild, a rebuild that failed (retried each second), a
// round that could not check (once per outage).
func kvEvents(log *slog.Logger) func(kv.Event) {
	return func(e kv.Event) {
		switch {
		case e.AtStart && e.Err == nil: // a new kv (mem: at every start): not news
			log.Info("kv structure built from the database", "structure", e.Name, "took", e.Took)
		case e.Reason != "" && e.Err == nil:
			log.Warn("kv lost data; rebuilt", "structure", e.Name, "reason", e.Reason, "took", e.Took)
		case e.Reason != "":
			log.Error("kv lost data; rebuild failed, retrying", "structure", e.Name, "reason", e.Reason, "err", e.Err)
		default:
			log.Warn("kv loss watch: cannot check, retrying", "structure", e.Name, "err", e.Err)
		}
	}
}
