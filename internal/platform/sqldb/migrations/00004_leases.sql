-- Leases (issue 9): node ids and singleton jobs, in the main database so
-- that every process sharing data sees them. expires_at is in milliseconds
-- of the database's clock, never a node's.

-- +goose Up
CREATE TABLE leases (
    name       TEXT   PRIMARY KEY,
    owner      TEXT   NOT NULL,
    expires_at BIGINT NOT NULL,
    taken_at   BIGINT NOT NULL,
    -- Node ids: the holder's bound on the ids it may issue (unix ms of its
    -- own clock), and its predecessor's, which a new holder starts above.
    mark       BIGINT NOT NULL DEFAULT 0,
    prev_mark  BIGINT NOT NULL DEFAULT 0
);

-- +goose Down
DROP TABLE leases;
