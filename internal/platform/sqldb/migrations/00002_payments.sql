-- Payments centre and order expiry (issue 3). Payments and refunds live on
-- the order's shard (their ids carry the order's gene); anomalies on the
-- main database, where operators list them.

-- +goose Up
ALTER TABLE outbox ADD COLUMN headers TEXT NOT NULL DEFAULT '';
ALTER TABLE orders ADD COLUMN payment_id BIGINT NOT NULL DEFAULT 0;
ALTER TABLE orders ADD COLUMN cancel_reason TEXT NOT NULL DEFAULT '';

CREATE TABLE payments (
    id          BIGINT PRIMARY KEY,
    order_id    BIGINT NOT NULL,
    user_id     BIGINT NOT NULL,
    channel     TEXT   NOT NULL,
    amount      BIGINT NOT NULL,
    state       TEXT   NOT NULL,
    channel_txn TEXT   NOT NULL DEFAULT '',
    pay_url     TEXT   NOT NULL DEFAULT '',
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL,
    paid_at     BIGINT NOT NULL DEFAULT 0,
    query_at    BIGINT NOT NULL DEFAULT 0,
    queries     INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX payments_order ON payments (order_id);
CREATE INDEX payments_query ON payments (state, query_at);
CREATE INDEX payments_paid ON payments (channel, paid_at);

CREATE TABLE refunds (
    id         BIGINT PRIMARY KEY,
    payment_id BIGINT NOT NULL UNIQUE,
    order_id   BIGINT NOT NULL,
    channel    TEXT   NOT NULL,
    amount     BIGINT NOT NULL,
    reason     TEXT   NOT NULL,
    state      TEXT   NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX refunds_state ON refunds (state, updated_at);

CREATE TABLE anomalies (
    id         BIGINT PRIMARY KEY,
    kind       TEXT   NOT NULL,
    order_id   BIGINT NOT NULL,
    payment_id BIGINT NOT NULL,
    other_id   BIGINT NOT NULL DEFAULT 0,
    detail     TEXT   NOT NULL DEFAULT '',
    created_at BIGINT NOT NULL,
    UNIQUE (kind, payment_id)
);

-- +goose Down
DROP TABLE anomalies;
DROP TABLE refunds;
DROP TABLE payments;
ALTER TABLE orders DROP COLUMN cancel_reason;
ALTER TABLE orders DROP COLUMN payment_id;
ALTER TABLE outbox DROP COLUMN headers;
