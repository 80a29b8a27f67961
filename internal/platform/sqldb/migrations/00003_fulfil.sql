-- Fulfilment (issue 4): what each store has to make, and the pickup codes
-- it gave out, in the main database.

-- +goose Up
CREATE TABLE fulfilments (
    order_id    BIGINT PRIMARY KEY,
    store_id    BIGINT NOT NULL,
    user_id     BIGINT NOT NULL,
    status      TEXT   NOT NULL,
    pickup_code TEXT   NOT NULL DEFAULT '',
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);
CREATE INDEX fulfilments_store ON fulfilments (store_id, status);

CREATE TABLE pickup_codes (
    store_id BIGINT NOT NULL,
    day      TEXT   NOT NULL,
    code     TEXT   NOT NULL,
    order_id BIGINT NOT NULL,
    PRIMARY KEY (store_id, day, code)
);

CREATE INDEX stores_pos_key ON stores (pos_key);

-- +goose Down
DROP INDEX stores_pos_key;
DROP TABLE pickup_codes;
DROP TABLE fulfilments;
