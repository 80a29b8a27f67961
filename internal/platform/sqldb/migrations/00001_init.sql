-- One schema for SQLite and PostgreSQL (the SQL below is valid in both).
-- Every physical database gets every table; the main database (the first
-- one given) holds the shared tables, every shard holds the order tables.
-- Times are unix milliseconds, money is fen (BIGINT), flags are 0/1.

-- +goose Up
CREATE TABLE settings (name TEXT PRIMARY KEY, value TEXT NOT NULL);

CREATE TABLE users (
    id         BIGINT PRIMARY KEY,
    phone      TEXT   NOT NULL UNIQUE,
    created_at BIGINT NOT NULL
);

CREATE TABLE stores (
    id         BIGINT  PRIMARY KEY,
    name       TEXT    NOT NULL,
    city       TEXT    NOT NULL DEFAULT '',
    address    TEXT    NOT NULL DEFAULT '',
    is_open    INTEGER NOT NULL DEFAULT 1,
    pos_key    TEXT    NOT NULL DEFAULT '',
    version    BIGINT  NOT NULL DEFAULT 1,
    updated_at BIGINT  NOT NULL
);

CREATE TABLE categories (
    id       BIGINT  PRIMARY KEY,
    store_id BIGINT  NOT NULL,
    name     TEXT    NOT NULL,
    sort     INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX categories_store ON categories (store_id);

CREATE TABLE menu_items (
    sku_id      BIGINT  PRIMARY KEY,
    store_id    BIGINT  NOT NULL,
    category_id BIGINT  NOT NULL,
    name        TEXT    NOT NULL,
    price       BIGINT  NOT NULL CHECK (price >= 0),
    limited     INTEGER NOT NULL DEFAULT 0,
    available   INTEGER NOT NULL DEFAULT 1,
    sort        INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX menu_items_store ON menu_items (store_id);

CREATE TABLE stock (
    sku_id BIGINT PRIMARY KEY,
    qty    BIGINT NOT NULL CHECK (qty >= 0)
);

CREATE TABLE stock_reservations (
    order_id   BIGINT NOT NULL,
    sku_id     BIGINT NOT NULL,
    qty        BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (order_id, sku_id)
);
CREATE INDEX stock_reservations_created ON stock_reservations (created_at);

CREATE TABLE events_seen (
    event_id   BIGINT  PRIMARY KEY,
    type       TEXT    NOT NULL,
    order_id   BIGINT  NOT NULL,
    deliveries INTEGER NOT NULL DEFAULT 1,
    seen_at    BIGINT  NOT NULL
);
CREATE INDEX events_seen_order ON events_seen (order_id);

CREATE TABLE orders (
    id          BIGINT PRIMARY KEY,
    user_id     BIGINT NOT NULL,
    store_id    BIGINT NOT NULL,
    status      TEXT   NOT NULL,
    version     BIGINT NOT NULL,
    total       BIGINT NOT NULL,
    payable     BIGINT NOT NULL,
    pickup_code TEXT   NOT NULL DEFAULT '',
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL
);
CREATE INDEX orders_user ON orders (user_id, id);
CREATE INDEX orders_status_expires ON orders (status, expires_at);

CREATE TABLE order_items (
    order_id BIGINT  NOT NULL,
    line     INTEGER NOT NULL,
    sku_id   BIGINT  NOT NULL,
    name     TEXT    NOT NULL,
    price    BIGINT  NOT NULL,
    qty      INTEGER NOT NULL,
    PRIMARY KEY (order_id, line)
);

CREATE TABLE outbox (
    id         BIGINT PRIMARY KEY,
    subject    TEXT   NOT NULL,
    type       TEXT   NOT NULL,
    payload    TEXT   NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE idempotency (
    user_id    BIGINT  NOT NULL,
    idem_key   TEXT    NOT NULL,
    order_id   BIGINT  NOT NULL,
    state      TEXT    NOT NULL,
    status     INTEGER NOT NULL DEFAULT 0,
    req_hash   TEXT    NOT NULL DEFAULT '',
    body       TEXT    NOT NULL DEFAULT '',
    created_at BIGINT  NOT NULL,
    PRIMARY KEY (user_id, idem_key)
);

-- +goose Down
DROP TABLE idempotency;
DROP TABLE outbox;
DROP TABLE order_items;
DROP TABLE orders;
DROP TABLE events_seen;
DROP TABLE stock_reservations;
DROP TABLE stock;
DROP TABLE menu_items;
DROP TABLE categories;
DROP TABLE stores;
DROP TABLE users;
DROP TABLE settings;
