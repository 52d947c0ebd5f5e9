-- the inbox (common/include/cm_consumer.h): one row per event a consumer
-- group has applied, inserted in the same transaction as the effect, so a
-- redelivered event finds its row and has no second effect.
CREATE TABLE inbox (
    consumer_group text NOT NULL,
    event_id uuid NOT NULL,
    tenant_id text NOT NULL DEFAULT '',
    topic text NOT NULL,
    processed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer_group, event_id)
);

-- retention: rows older than any possible redelivery are deleted
CREATE INDEX inbox_processed_at ON inbox (processed_at);
