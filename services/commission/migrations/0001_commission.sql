-- commission: channels, versioned tier schedules, the per-period volume
-- rows (the hot rows), commissions, adjustments. design:
-- services/commission/README.md.

-- distribution channels. type: ChannelType (1..4), state 1 active, 2
-- suspended. parent_id '' for none; a parent has no parent itself (checked
-- by the service under the tenant's channel lock).
CREATE TABLE channels (
  tenant_id     text COLLATE "C" NOT NULL,
  channel_id    text COLLATE "C" NOT NULL,
  name          text        NOT NULL,
  type          smallint    NOT NULL CHECK (type BETWEEN 1 AND 4),
  state         smallint    NOT NULL CHECK (state IN (1, 2)),
  parent_id     text COLLATE "C" NOT NULL DEFAULT '',
  override_bps  int         NOT NULL DEFAULT 0 CHECK (override_bps BETWEEN 0 AND 10000),
  schedule_id   text COLLATE "C" NOT NULL DEFAULT '',
  partner_id    text COLLATE "C" NOT NULL DEFAULT '',
  revision      bigint      NOT NULL CHECK (revision >= 1),
  created_at    timestamptz NOT NULL DEFAULT now(),
  updated_at    timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (tenant_id, channel_id),
  CHECK (parent_id <> channel_id)
);
CREATE INDEX channels_by_parent ON channels (tenant_id, parent_id) WHERE parent_id <> '';

-- one row per schedule revision; an order uses the newest revision of its
-- schedule effective at its paid_at. tiers as parallel arrays (lower bound
-- in minor units, rate in bps). period: PeriodType (1 week .. 4 year);
-- mode: TierMode; payer: CommissionPayer (1 merchant, 2 platform).
CREATE TABLE tier_schedules (
  tenant_id      text COLLATE "C" NOT NULL,
  schedule_id    text COLLATE "C" NOT NULL,
  revision       bigint      NOT NULL CHECK (revision >= 1),
  effective_from timestamptz NOT NULL,
  name           text        NOT NULL,
  currency       text COLLATE "C" NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
  period         smallint    NOT NULL CHECK (period BETWEEN 1 AND 4),
  time_zone      text        NOT NULL,
  mode           smallint    NOT NULL CHECK (mode IN (1, 2)),
  tier_from      bigint[]    NOT NULL,
  tier_bps       int[]       NOT NULL,
  channel_types  smallint[]  NOT NULL DEFAULT '{}',
  payer          smallint    NOT NULL CHECK (payer IN (1, 2)),
  min_payout     bigint      NOT NULL CHECK (min_payout >= 0),
  created_by     text        NOT NULL DEFAULT '',
  PRIMARY KEY (tenant_id, schedule_id, revision),
  CHECK (cardinality(tier_from) BETWEEN 1 AND 20 AND cardinality(tier_bps) = cardinality(tier_from))
);
CREATE INDEX tier_schedules_by_type ON tier_schedules USING gin (channel_types);

-- idempotency of PutChannel and PutTierSchedule (kind 'c' / 's'), and
-- their audit trail
CREATE TABLE put_requests (
  tenant_id  text COLLATE "C" NOT NULL,
  kind       "char"      NOT NULL,
  request_id text COLLATE "C" NOT NULL,
  body_hash  text        NOT NULL,
  key        text COLLATE "C" NOT NULL,
  revision   bigint      NOT NULL,
  principal  text        NOT NULL DEFAULT '',
  at         timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (tenant_id, kind, request_id)
);

-- a channel's volume in one period under one schedule revision: the hot
-- row every paid and refunded order of the channel locks. net_sales is
-- the base of the formula; posted is the sum of every posting total
-- (commissions and true-ups), which equals C(net_sales) by construction.
CREATE TABLE channel_periods (
  tenant_id         text COLLATE "C" NOT NULL,
  channel_id        text COLLATE "C" NOT NULL,
  schedule_id       text COLLATE "C" NOT NULL,
  schedule_revision bigint      NOT NULL,
  period_start      timestamptz NOT NULL,
  period_end        timestamptz NOT NULL,
  currency          text COLLATE "C" NOT NULL,
  net_sales         bigint      NOT NULL DEFAULT 0 CHECK (net_sales >= 0),
  posted            bigint      NOT NULL DEFAULT 0,
  orders            bigint      NOT NULL DEFAULT 0,
  updated_at        timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (tenant_id, channel_id, schedule_id, schedule_revision, period_start)
);

-- a parent's override share of its children's postings: one pool per
-- (parent, currency, period start, rate), whose base is the running sum of
-- the children's posting totals; shares are differences of
-- floor(base * bps / 10000), so they sum to the rate on the pool exactly.
CREATE TABLE parent_pools (
  tenant_id    text COLLATE "C" NOT NULL,
  parent_id    text COLLATE "C" NOT NULL,
  currency     text COLLATE "C" NOT NULL,
  period_start timestamptz NOT NULL,
  override_bps int         NOT NULL,
  base         bigint      NOT NULL DEFAULT 0,
  posted       bigint      NOT NULL DEFAULT 0,
  PRIMARY KEY (tenant_id, parent_id, currency, period_start, override_bps)
);

-- the commission of one paid order with a channel; one per order whatever
-- event ids carry its payment. state: CommissionState (1 frozen, 4 clawed
-- back). refunded: the order's amount refunded so far; clawed_back: the
-- commission taken back (floor(amount * refunded / order_amount)).
-- brackets as parallel arrays (BracketPortion).
CREATE TABLE commissions (
  commission_id     uuid PRIMARY KEY,
  tenant_id         text COLLATE "C" NOT NULL,
  channel_id        text COLLATE "C" NOT NULL,
  order_id          uuid        NOT NULL,
  merchant_id       text COLLATE "C" NOT NULL,
  currency          text COLLATE "C" NOT NULL,
  state             smallint    NOT NULL CHECK (state IN (1, 4)),
  order_amount      bigint      NOT NULL CHECK (order_amount >= 0),
  sales_before      bigint      NOT NULL CHECK (sales_before >= 0),
  amount            bigint      NOT NULL CHECK (amount BETWEEN 0 AND order_amount),
  refunded          bigint      NOT NULL DEFAULT 0 CHECK (refunded BETWEEN 0 AND order_amount),
  clawed_back       bigint      NOT NULL DEFAULT 0 CHECK (clawed_back BETWEEN 0 AND amount),
  schedule_id       text COLLATE "C" NOT NULL,
  schedule_revision bigint      NOT NULL,
  period_start      timestamptz NOT NULL,
  period_end        timestamptz NOT NULL,
  bracket_from      bigint[]    NOT NULL,
  bracket_bps       int[]       NOT NULL,
  bracket_sales     bigint[]    NOT NULL,
  bracket_amount    bigint[]    NOT NULL,
  parent_id         text COLLATE "C" NOT NULL DEFAULT '',
  parent_bps        int         NOT NULL DEFAULT 0,
  paid_at           timestamptz NOT NULL,
  accrued_at        timestamptz NOT NULL DEFAULT now(),
  clawed_back_at    timestamptz,
  source_event_id   uuid        NOT NULL,
  UNIQUE (tenant_id, order_id)
);
CREATE INDEX commissions_by_channel ON commissions (tenant_id, channel_id, accrued_at, commission_id);
CREATE INDEX commissions_by_time ON commissions (tenant_id, accrued_at, commission_id);

-- paid orders with a channel that earned nothing (channel unknown or
-- suspended, no schedule in the order's currency): their refunds have
-- nothing to claw back and are not parked.
CREATE TABLE uncommissioned_orders (
  tenant_id  text COLLATE "C" NOT NULL,
  order_id   uuid        NOT NULL,
  channel_id text COLLATE "C" NOT NULL,
  reason     text        NOT NULL,
  at         timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (tenant_id, order_id)
);

-- refunds clawed back: one per (order, refund id) whatever event ids
-- carry it
CREATE TABLE refunds_applied (
  tenant_id  text COLLATE "C" NOT NULL,
  order_id   uuid        NOT NULL,
  refund_id  text COLLATE "C" NOT NULL,
  amount     bigint      NOT NULL,
  clawback   bigint      NOT NULL,
  event_id   uuid        NOT NULL,
  applied_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (tenant_id, order_id, refund_id)
);

-- postings of a channel's period that are not one order's commission.
-- kind: AdjustmentKind (1 true-up, 2 parent share). state as commissions.
CREATE TABLE adjustments (
  adjustment_id uuid PRIMARY KEY,
  tenant_id     text COLLATE "C" NOT NULL,
  channel_id    text COLLATE "C" NOT NULL,
  kind          smallint    NOT NULL CHECK (kind IN (1, 2)),
  state         smallint    NOT NULL DEFAULT 1,
  currency      text COLLATE "C" NOT NULL,
  amount        bigint      NOT NULL CHECK (amount <> 0),
  order_id      uuid        NOT NULL,
  refund_id     text COLLATE "C" NOT NULL DEFAULT '',
  child_id      text COLLATE "C" NOT NULL DEFAULT '',
  period_start  timestamptz NOT NULL,
  posted_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX adjustments_by_channel ON adjustments (tenant_id, channel_id, posted_at, adjustment_id);

-- refunds whose payment was not accrued yet: parked (not retried in a loop
-- that would hold the consumer); accruing the payment applies them, the
-- parker ticker dead-letters (through the outbox) what waited too long.
CREATE TABLE parked_refunds (
  tenant_id   text COLLATE "C" NOT NULL,
  order_id    uuid        NOT NULL,
  refund_id   text COLLATE "C" NOT NULL,
  event_id    uuid        NOT NULL,
  currency    text COLLATE "C" NOT NULL,
  amount      bigint      NOT NULL,
  traceparent text        NOT NULL DEFAULT '',
  topic       text        NOT NULL,
  payload     bytea       NOT NULL,
  parked_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
  PRIMARY KEY (tenant_id, order_id, refund_id)
);
CREATE INDEX parked_refunds_by_age ON parked_refunds (parked_at);
