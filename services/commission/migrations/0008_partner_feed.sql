-- the partner feed (README.md, "The partner feed"): each partner receives
-- its own channels' events only, on its own kafka topic and/or by signed
-- webhooks. the channel -> partner link is channels.partner_id (one owner
-- per channel); a partner row says how it receives.
CREATE TABLE partners (
  tenant_id        text COLLATE "C" NOT NULL,
  partner_id       text COLLATE "C" NOT NULL,
  name             text        NOT NULL,
  kafka_enabled    boolean     NOT NULL DEFAULT false,
  webhook_url      text        NOT NULL DEFAULT '',
  webhook_enabled  boolean     NOT NULL DEFAULT false,
  -- the signing secrets: the current one, and the previous one while it
  -- is still valid after a rotation (both sign until previous_until)
  secret           text        NOT NULL DEFAULT '',
  secret_at        timestamptz,
  secret_request   text        NOT NULL DEFAULT '', -- the put or rotation that made it
  previous_secret  text        NOT NULL DEFAULT '',
  previous_until   timestamptz,
  -- the endpoint's health: 1 ACTIVE, 2 FAILING (retrying), 3 DISABLED
  webhook_state    smallint    NOT NULL DEFAULT 1 CHECK (webhook_state IN (1, 2, 3)),
  failures         int         NOT NULL DEFAULT 0,
  failing_since    timestamptz,
  next_attempt_at  timestamptz NOT NULL DEFAULT now(),
  disabled_at      timestamptz,
  last_error       text        NOT NULL DEFAULT '',
  -- the dispatcher that delivers to it now (a lease, so replicas and
  -- dispatcher threads never deliver one partner's events concurrently)
  lease_until      timestamptz,
  revision         bigint      NOT NULL CHECK (revision >= 1),
  created_at       timestamptz NOT NULL DEFAULT now(),
  updated_at       timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (tenant_id, partner_id)
);
CREATE INDEX channels_by_partner ON channels (tenant_id, partner_id) WHERE partner_id <> '';

-- every event routed to a partner, as it was sent (the cloudevent json):
-- the source of replays and of webhook deliveries
CREATE TABLE feed_events (
  seq          bigserial   PRIMARY KEY,
  tenant_id    text COLLATE "C" NOT NULL,
  partner_id   text COLLATE "C" NOT NULL,
  channel_id   text COLLATE "C" NOT NULL,
  event_id     uuid        NOT NULL,
  type         text        NOT NULL,
  event_time   timestamptz NOT NULL,
  body         text        NOT NULL,
  routed_at    timestamptz NOT NULL DEFAULT now(),
  UNIQUE (tenant_id, partner_id, event_id)
);
CREATE INDEX feed_events_by_partner_time ON feed_events (tenant_id, partner_id, event_time);
CREATE INDEX feed_events_by_channel_time ON feed_events (tenant_id, channel_id, event_time);

-- the webhook queue and its log: one row per event to send (live,
-- replayed or redelivered), sent in id order per partner; delivered_at
-- set once a 2xx came back. reason: 1 LIVE, 2 REPLAY, 3 REDELIVERY.
CREATE TABLE webhook_deliveries (
  delivery_id     bigserial   PRIMARY KEY,
  tenant_id       text COLLATE "C" NOT NULL,
  partner_id      text COLLATE "C" NOT NULL,
  seq             bigint      NOT NULL REFERENCES feed_events (seq) ON DELETE CASCADE,
  reason          smallint    NOT NULL CHECK (reason IN (1, 2, 3)),
  created_at      timestamptz NOT NULL DEFAULT now(),
  attempts        int         NOT NULL DEFAULT 0,
  last_attempt_at timestamptz,
  last_status     int         NOT NULL DEFAULT 0,
  last_error      text        NOT NULL DEFAULT '',
  last_latency_us bigint      NOT NULL DEFAULT 0,
  delivered_at    timestamptz
);
CREATE INDEX webhook_deliveries_pending ON webhook_deliveries (tenant_id, partner_id, delivery_id)
  WHERE delivered_at IS NULL;
CREATE INDEX webhook_deliveries_by_partner ON webhook_deliveries (tenant_id, partner_id, delivery_id DESC);
CREATE INDEX webhook_deliveries_by_seq ON webhook_deliveries (seq);

-- every attempt: when, what came back, how long it took
CREATE TABLE webhook_attempts (
  delivery_id  bigint      NOT NULL REFERENCES webhook_deliveries (delivery_id) ON DELETE CASCADE,
  attempt      int         NOT NULL,
  at           timestamptz NOT NULL,
  http_status  int         NOT NULL,
  latency_us   bigint      NOT NULL,
  error        text        NOT NULL DEFAULT '',
  PRIMARY KEY (delivery_id, attempt)
);
