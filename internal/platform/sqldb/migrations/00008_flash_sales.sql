-- Flash sales (issue 11). A sale sells stock units of one sku at one
-- price between starts_at and ends_at. Admission happens in kv; the
-- durable record of every admitted ticket is flash_tickets, written by the
-- worker that makes the ticket's order (the order id is the ticket id).
-- sold counts the tickets that hold a unit (held, ordered, paid): the
-- durable guard (sold < stock under the sale's row lock) and what a kv
-- loss recounts from. flash_sale_stats keeps each node's request-path
-- figures (attempts, refusals by reason), flushed every few seconds.
-- orders.sale_id ties an order to its sale (0 = not from a sale).

-- +goose Up
CREATE TABLE flash_sales (
    id         BIGINT PRIMARY KEY,
    store_id   BIGINT NOT NULL,
    sku_id     BIGINT NOT NULL,
    price      BIGINT NOT NULL,
    stock      BIGINT NOT NULL,
    per_user   BIGINT NOT NULL,
    starts_at  BIGINT NOT NULL,
    ends_at    BIGINT NOT NULL,
    pay_ttl_ms BIGINT NOT NULL,
    sold       BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL
);
CREATE INDEX flash_sales_ends ON flash_sales (ends_at);

CREATE TABLE flash_tickets (
    id         BIGINT PRIMARY KEY,
    sale_id    BIGINT NOT NULL,
    user_id    BIGINT NOT NULL,
    state      TEXT   NOT NULL,
    reason     TEXT   NOT NULL DEFAULT '',
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX flash_tickets_user ON flash_tickets (sale_id, user_id);
CREATE INDEX flash_tickets_state ON flash_tickets (sale_id, state);

CREATE TABLE flash_sale_stats (
    sale_id    BIGINT NOT NULL,
    node       TEXT   NOT NULL,
    attempts   BIGINT NOT NULL DEFAULT 0,
    admitted   BIGINT NOT NULL DEFAULT 0,
    sold_out   BIGINT NOT NULL DEFAULT 0,
    over_limit BIGINT NOT NULL DEFAULT 0,
    rate       BIGINT NOT NULL DEFAULT 0,
    blacklist  BIGINT NOT NULL DEFAULT 0,
    challenge  BIGINT NOT NULL DEFAULT 0,
    early      BIGINT NOT NULL DEFAULT 0,
    ended      BIGINT NOT NULL DEFAULT 0,
    paused     BIGINT NOT NULL DEFAULT 0,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (sale_id, node)
);

ALTER TABLE orders ADD COLUMN sale_id BIGINT NOT NULL DEFAULT 0;

-- +goose Down
ALTER TABLE orders DROP COLUMN sale_id;
DROP TABLE flash_sale_stats;
DROP TABLE flash_tickets;
DROP TABLE flash_sales;
