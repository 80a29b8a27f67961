-- Idempotency keys are kept for a day (--idempotency-ttl) and then deleted
-- by a job that runs once per cluster: without it the table grew by one
-- row per keyed order for ever. The index lets the job find the old keys
-- without reading the table; created_at only grows, so each insert lands
-- on the index's last page. Building it locks the table's writes on
-- PostgreSQL: where the table is already big, build it first with
-- CREATE INDEX CONCURRENTLY idempotency_created ON idempotency (created_at),
-- and this migration keeps it.

-- +goose Up
CREATE INDEX IF NOT EXISTS idempotency_created ON idempotency (created_at);

-- +goose Down
DROP INDEX idempotency_created;
