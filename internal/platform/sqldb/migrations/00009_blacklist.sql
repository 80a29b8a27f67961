-- Blacklist of users and IP addresses (guard): in the main database, the
-- truth that every node's in-memory copy is refreshed from each second.
-- value is a user id in decimal or an address in canonical form (IPv4 not
-- mapped, no zone); until_ms and created_at are unix milliseconds. A row
-- is live until until_ms; expired rows are purged when entries are added.

-- +goose Up
CREATE TABLE blacklist (
    kind       TEXT   NOT NULL,
    value      TEXT   NOT NULL,
    reason     TEXT   NOT NULL DEFAULT '',
    until_ms   BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (kind, value)
);
CREATE INDEX blacklist_until ON blacklist (until_ms);

-- +goose Down
DROP TABLE blacklist;
