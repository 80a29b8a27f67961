-- Refunds made at a channel outside surge (issue 16). payments.refunded is
-- what the channel has refunded of a payment as far as surge knows (its
-- own refunds and others'), so a payment keeps amount - refunded; a refund
-- the channel refuses is retried at retry_at and given up after a bounded
-- number of attempts; anomalies carry the amounts they are about.

-- +goose Up
ALTER TABLE payments ADD COLUMN refunded BIGINT NOT NULL DEFAULT 0;
ALTER TABLE refunds ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0;
ALTER TABLE refunds ADD COLUMN retry_at BIGINT NOT NULL DEFAULT 0;
ALTER TABLE refunds ADD COLUMN error TEXT NOT NULL DEFAULT '';
DROP INDEX refunds_state;
CREATE INDEX refunds_retry ON refunds (state, retry_at);
ALTER TABLE anomalies ADD COLUMN captured BIGINT NOT NULL DEFAULT 0;
ALTER TABLE anomalies ADD COLUMN refunded BIGINT NOT NULL DEFAULT 0;
ALTER TABLE anomalies ADD COLUMN refunded_by TEXT NOT NULL DEFAULT '';

-- +goose Down
ALTER TABLE anomalies DROP COLUMN refunded_by;
ALTER TABLE anomalies DROP COLUMN refunded;
ALTER TABLE anomalies DROP COLUMN captured;
DROP INDEX refunds_retry;
CREATE INDEX refunds_state ON refunds (state, updated_at);
ALTER TABLE refunds DROP COLUMN error;
ALTER TABLE refunds DROP COLUMN retry_at;
ALTER TABLE refunds DROP COLUMN attempts;
ALTER TABLE payments DROP COLUMN refunded;
