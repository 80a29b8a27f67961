package push

// DropRevocations makes h ignore the announcements of rotated POS keys (as
// if they were lost), so that only the heartbeat's check closes a socket.
func DropRevocations(h *Hub, drop bool) { h.dropRevocations.Store(drop) }
