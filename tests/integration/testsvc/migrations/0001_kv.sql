-- the test service's only table: an idempotent key/value store per tenant
CREATE TABLE kv (
    tenant_id  text        NOT NULL,
    key        text        NOT NULL,
    value      text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, key)
);
