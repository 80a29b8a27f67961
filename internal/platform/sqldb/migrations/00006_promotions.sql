-- Promotions, coupons and priced orders (issue 10).
--
-- Main database: promotions and coupon templates (operators' rules), and
-- coupon_claims, the durable record of every claim (one row per claim id,
-- written from the bus): the count kv keeps per template and per user is
-- rebuilt from it after a loss.
--
-- Every shard (the user's, which is also their orders'): the wallet
-- (coupons), the special-price quotas (quota_used per user, promotion and
-- sku; quota_holds per order) and first_orders (the order that holds or
-- used a first-order offer, per user and scope: a store id, or 0 for the
-- platform). An order locks, uses, releases and gives back these rows in
-- its own transactions.

-- +goose Up
CREATE TABLE promotions (
    id         BIGINT  PRIMARY KEY,
    store_id   BIGINT  NOT NULL DEFAULT 0,
    kind       TEXT    NOT NULL,
    name       TEXT    NOT NULL DEFAULT '',
    rule       TEXT    NOT NULL,
    starts_at  BIGINT  NOT NULL DEFAULT 0,
    ends_at    BIGINT  NOT NULL DEFAULT 0,
    disabled   INTEGER NOT NULL DEFAULT 0,
    created_at BIGINT  NOT NULL,
    updated_at BIGINT  NOT NULL
);
CREATE INDEX promotions_store ON promotions (store_id);

CREATE TABLE coupon_templates (
    id           BIGINT  PRIMARY KEY,
    store_id     BIGINT  NOT NULL DEFAULT 0,
    name         TEXT    NOT NULL,
    rule         TEXT    NOT NULL,
    quantity     BIGINT  NOT NULL,
    per_user     INTEGER NOT NULL,
    claim_starts BIGINT  NOT NULL DEFAULT 0,
    claim_ends   BIGINT  NOT NULL DEFAULT 0,
    claimed      BIGINT  NOT NULL DEFAULT 0,
    created_at   BIGINT  NOT NULL
);

CREATE TABLE coupon_claims (
    id          BIGINT PRIMARY KEY,
    template_id BIGINT NOT NULL,
    user_id     BIGINT NOT NULL,
    state       TEXT   NOT NULL,
    created_at  BIGINT NOT NULL
);
CREATE INDEX coupon_claims_template ON coupon_claims (template_id, user_id);

CREATE TABLE coupons (
    id          BIGINT PRIMARY KEY,
    user_id     BIGINT NOT NULL,
    template_id BIGINT NOT NULL,
    store_id    BIGINT NOT NULL DEFAULT 0,
    name        TEXT   NOT NULL DEFAULT '',
    rule        TEXT   NOT NULL,
    state       TEXT   NOT NULL,
    order_id    BIGINT NOT NULL DEFAULT 0,
    valid_from  BIGINT NOT NULL DEFAULT 0,
    valid_until BIGINT NOT NULL DEFAULT 0,
    claimed_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);
CREATE INDEX coupons_user ON coupons (user_id, id);
CREATE INDEX coupons_order ON coupons (order_id);

CREATE TABLE quota_used (
    user_id      BIGINT NOT NULL,
    promotion_id BIGINT NOT NULL,
    sku_id       BIGINT NOT NULL,
    used         BIGINT NOT NULL CHECK (used >= 0),
    PRIMARY KEY (user_id, promotion_id, sku_id)
);

CREATE TABLE quota_holds (
    order_id     BIGINT NOT NULL,
    promotion_id BIGINT NOT NULL,
    sku_id       BIGINT NOT NULL,
    user_id      BIGINT NOT NULL,
    qty          BIGINT NOT NULL,
    PRIMARY KEY (order_id, promotion_id, sku_id)
);

CREATE TABLE first_orders (
    user_id  BIGINT NOT NULL,
    scope    BIGINT NOT NULL,
    order_id BIGINT NOT NULL,
    state    TEXT   NOT NULL,
    PRIMARY KEY (user_id, scope)
);
CREATE INDEX first_orders_order ON first_orders (order_id);

ALTER TABLE orders ADD COLUMN discounts TEXT NOT NULL DEFAULT '';
ALTER TABLE orders ADD COLUMN refunded BIGINT NOT NULL DEFAULT 0;
ALTER TABLE order_items ADD COLUMN payable BIGINT NOT NULL DEFAULT 0;
ALTER TABLE order_items ADD COLUMN gift_of BIGINT NOT NULL DEFAULT 0;
ALTER TABLE order_items ADD COLUMN discounts TEXT NOT NULL DEFAULT '';
ALTER TABLE order_items ADD COLUMN refunded BIGINT NOT NULL DEFAULT 0;
UPDATE order_items SET payable = price * qty;

-- +goose Down
ALTER TABLE order_items DROP COLUMN refunded;
ALTER TABLE order_items DROP COLUMN discounts;
ALTER TABLE order_items DROP COLUMN gift_of;
ALTER TABLE order_items DROP COLUMN payable;
ALTER TABLE orders DROP COLUMN refunded;
ALTER TABLE orders DROP COLUMN discounts;
DROP TABLE first_orders;
DROP TABLE quota_holds;
DROP TABLE quota_used;
DROP TABLE coupons;
DROP TABLE coupon_claims;
DROP TABLE coupon_templates;
DROP TABLE promotions;
