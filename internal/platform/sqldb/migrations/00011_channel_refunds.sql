-- The refunds a channel reports that surge did not make (a merchant
-- console's), one row each, as the channel's notices and bills name them:
-- WeChat Pay notifies each refund on its own and its queries do not say
-- how much of a payment is refunded, so what the channel has refunded in
-- all is surge's done refunds plus these (docs/payments.md).

-- +goose Up
CREATE TABLE channel_refunds (
    payment_id BIGINT NOT NULL,
    refund_no  TEXT   NOT NULL,
    amount     BIGINT NOT NULL,
    at         BIGINT NOT NULL,
    PRIMARY KEY (payment_id, refund_no)
);

-- +goose Down
DROP TABLE channel_refunds;
