-- Refunds of orders (issue 10): the customer cancels a paid order the
-- store has not accepted, the store or an operator refunds chosen lines of
-- a paid order. A payment now takes several refunds, each with its own id
-- and amount, so refunds loses its one-per-payment key: kind tells surge's
-- refund of everything left of a payment that must not pay its order
-- ('payment': a duplicate, a late payment; still one per payment, by a
-- partial unique index) from a refund of an order's lines ('order': any
-- number per payment, one per request). A line remembers the refund that
-- refunded it (order_items.refund_id, 0 = not refunded): a line is refunded
-- once, even a line whose payable is 0 (a gift). stock_returns, in the
-- main database beside the stock, records the limited stock a refund gave
-- back, once per refund and sku.

-- +goose Up
CREATE TABLE refunds_new (
    id         BIGINT  PRIMARY KEY,
    payment_id BIGINT  NOT NULL,
    order_id   BIGINT  NOT NULL,
    channel    TEXT    NOT NULL,
    amount     BIGINT  NOT NULL,
    reason     TEXT    NOT NULL,
    state      TEXT    NOT NULL,
    created_at BIGINT  NOT NULL,
    updated_at BIGINT  NOT NULL,
    attempts   INTEGER NOT NULL DEFAULT 0,
    retry_at   BIGINT  NOT NULL DEFAULT 0,
    error      TEXT    NOT NULL DEFAULT '',
    kind       TEXT    NOT NULL DEFAULT 'payment'
);
INSERT INTO refunds_new (id, payment_id, order_id, channel, amount, reason, state, created_at, updated_at, attempts, retry_at, error)
    SELECT id, payment_id, order_id, channel, amount, reason, state, created_at, updated_at, attempts, retry_at, error FROM refunds;
DROP TABLE refunds;
ALTER TABLE refunds_new RENAME TO refunds;
CREATE UNIQUE INDEX refunds_payment ON refunds (payment_id) WHERE kind = 'payment';
CREATE INDEX refunds_of_payment ON refunds (payment_id);
CREATE INDEX refunds_order ON refunds (order_id);
CREATE INDEX refunds_retry ON refunds (state, retry_at);

ALTER TABLE order_items ADD COLUMN refund_id BIGINT NOT NULL DEFAULT 0;

CREATE TABLE stock_returns (
    refund_id  BIGINT NOT NULL,
    sku_id     BIGINT NOT NULL,
    order_id   BIGINT NOT NULL,
    qty        BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (refund_id, sku_id)
);

-- +goose Down
DROP TABLE stock_returns;
ALTER TABLE order_items DROP COLUMN refund_id;
CREATE TABLE refunds_old (
    id         BIGINT  PRIMARY KEY,
    payment_id BIGINT  NOT NULL UNIQUE,
    order_id   BIGINT  NOT NULL,
    channel    TEXT    NOT NULL,
    amount     BIGINT  NOT NULL,
    reason     TEXT    NOT NULL,
    state      TEXT    NOT NULL,
    created_at BIGINT  NOT NULL,
    updated_at BIGINT  NOT NULL,
    attempts   INTEGER NOT NULL DEFAULT 0,
    retry_at   BIGINT  NOT NULL DEFAULT 0,
    error      TEXT    NOT NULL DEFAULT ''
);
INSERT INTO refunds_old (id, payment_id, order_id, channel, amount, reason, state, created_at, updated_at, attempts, retry_at, error)
    SELECT id, payment_id, order_id, channel, amount, reason, state, created_at, updated_at, attempts, retry_at, error
    FROM refunds WHERE kind = 'payment';
DROP TABLE refunds;
ALTER TABLE refunds_old RENAME TO refunds;
CREATE INDEX refunds_retry ON refunds (state, retry_at);
