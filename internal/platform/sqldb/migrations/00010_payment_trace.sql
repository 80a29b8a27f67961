-- The trace of the request that started a payment (W3C traceparent), so
-- that the payment centre's active queries, made later by a job, join it
-- (docs/observability.md, Traces).

-- +goose Up
ALTER TABLE payments ADD COLUMN trace TEXT NOT NULL DEFAULT '';

-- +goose Down
ALTER TABLE payments DROP COLUMN trace;
