-- the transactional outbox (common/include/cm_outbox.h): one row per event,
-- inserted in the same transaction as the change it announces, published by
-- the relay in id order and marked published after the broker's ack.
CREATE TABLE outbox (
    id bigserial PRIMARY KEY,
    event_id uuid NOT NULL UNIQUE,
    tenant_id text NOT NULL,
    topic text NOT NULL,
    key text NOT NULL,
    type text NOT NULL,
    source text NOT NULL,
    content_type text NOT NULL DEFAULT 'application/protobuf',
    payload bytea NOT NULL,
    traceparent text,
    headers jsonb,
    occurred_at timestamptz NOT NULL DEFAULT now(),
    created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    published_at timestamptz,
    -- a row kafka refused for good (too large): parked, not retried
    failed_at timestamptz,
    last_error text
);

-- the relay's queue: unsent rows in id order, small however big the table
CREATE INDEX outbox_unsent ON outbox (id) WHERE published_at IS NULL AND failed_at IS NULL;
