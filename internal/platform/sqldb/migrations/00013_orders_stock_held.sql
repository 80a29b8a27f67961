-- Whether an order holds limited stock (a stock_reservations row), so that
-- paying an order that holds none reads nothing to find out. Orders written
-- before this column (and by a binary that does not know it, during a
-- rolling upgrade) say 1: their payment looks, as before. On PostgreSQL
-- adding a column with a constant default changes only the catalog, but it
-- takes the table's lock for that moment and waits behind any transaction
-- open on orders: run it where no long transaction holds the table.

-- +goose Up
ALTER TABLE orders ADD COLUMN stock_held INTEGER NOT NULL DEFAULT 1;

-- +goose Down
ALTER TABLE orders DROP COLUMN stock_held;
