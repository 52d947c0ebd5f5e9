-- the writer's per-key sequence: the row is the aggregate whose lock orders
-- that key's events, as an order row would in the order service
CREATE TABLE gen (
    key text PRIMARY KEY,
    next_seq int NOT NULL
);

-- the consumer's effect: how many events of a key were applied, the last
-- sequence number seen, and how often one arrived out of order
CREATE TABLE counters (
    key text PRIMARY KEY,
    n int NOT NULL,
    last_seq int NOT NULL,
    out_of_order int NOT NULL DEFAULT 0
);
