-- The sweeps' indexes hold only the rows they look for. The expiry
-- backstop reads unpaid orders; the payment query job payments the channel
-- has not settled; the repair job payments paid but not applied to their
-- order (a passing state); reconciliation settled payments. The indexes
-- held every order and payment, so each step of every order (paid,
-- accepted, ready, completed) and a payment's settlement moved an entry in
-- them, a write to an index page per step. Now an order leaves its index
-- when it is paid or cancelled, a payment leaves one and enters another
-- when it settles, and later steps touch none. The queries name the same
-- conditions literally, so that both engines know the index applies.
--
-- On PostgreSQL each CREATE INDEX locks the table's writes while it reads
-- the table: where the tables are already big, build the four indexes
-- first with CREATE INDEX CONCURRENTLY IF NOT EXISTS (same names and
-- definitions), check that each is valid (pg_index.indisvalid; a failed
-- concurrent build leaves an invalid one: drop it and build it again), and
-- this migration keeps them.

-- +goose Up
CREATE INDEX IF NOT EXISTS orders_pending_expires ON orders (expires_at) WHERE status = 'pending_payment';
DROP INDEX orders_status_expires;
CREATE INDEX IF NOT EXISTS payments_due ON payments (query_at) WHERE state IN ('created', 'pending');
CREATE INDEX IF NOT EXISTS payments_unapplied ON payments (updated_at) WHERE state = 'paid';
DROP INDEX payments_query;
CREATE INDEX IF NOT EXISTS payments_settled ON payments (channel, paid_at) WHERE paid_at > 0;
DROP INDEX payments_paid;

-- +goose Down
CREATE INDEX payments_paid ON payments (channel, paid_at);
DROP INDEX payments_settled;
CREATE INDEX payments_query ON payments (state, query_at);
DROP INDEX payments_unapplied;
DROP INDEX payments_due;
CREATE INDEX orders_status_expires ON orders (status, expires_at);
DROP INDEX orders_pending_expires;
