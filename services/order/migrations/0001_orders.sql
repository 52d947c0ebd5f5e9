-- orders: one row per order, its lines inline as parallel arrays (always read
-- and written with the order; only the refund counters ever change), the
-- payment and the shipment as columns (at most one of each per order).
-- see services/order/README.md.
--
-- state: 1 PENDING_PAYMENT, 2 PAID, 3 SHIPPED, 4 COMPLETED, 5 CANCELLED,
-- 6 PARTIALLY_REFUNDED, 7 REFUNDED (commerce.order.v1.OrderState).
-- body_hash: sha-256 of the canonical CreateOrder request, compared when the
-- request_id comes again (same: a retry; different: ALREADY_EXISTS).
CREATE TABLE orders (
  tenant_id        text        NOT NULL,
  order_id         uuid        NOT NULL,
  request_id       text        NOT NULL,
  body_hash        text        NOT NULL,
  state            smallint    NOT NULL CHECK (state BETWEEN 1 AND 7),
  buyer_id         text        NOT NULL,
  merchant_id      text        NOT NULL,
  channel_id       text        NOT NULL DEFAULT '',
  currency         char(3)     NOT NULL,
  total_amount     bigint      NOT NULL CHECK (total_amount >= 0),
  refunded_amount  bigint      NOT NULL DEFAULT 0,
  flash_sale       boolean     NOT NULL DEFAULT false,
  external_ref     text        NOT NULL DEFAULT '',
  line_sku         text[]      NOT NULL,
  line_qty         bigint[]    NOT NULL,
  line_price       bigint[]    NOT NULL,
  line_flash_sale  text[]      NOT NULL,
  line_refunded_qty    bigint[] NOT NULL,
  line_refunded_amount bigint[] NOT NULL,
  created_at       timestamptz NOT NULL,
  updated_at       timestamptz NOT NULL,
  payment_deadline timestamptz NOT NULL,
  reservation_expires_at timestamptz NOT NULL,
  cancelled_at     timestamptz,
  cancel_reason    smallint    NOT NULL DEFAULT 0,
  cancel_note      text        NOT NULL DEFAULT '',
  completed_at     timestamptz,
  payment_id       text,
  payment_hash     text,
  pay_amount       bigint,
  pay_provider     text,
  pay_reference    text,
  paid_at          timestamptz,
  pay_recorded_at  timestamptz,
  carrier          text,
  tracking_number  text,
  shipped_at       timestamptz,
  version          bigint      NOT NULL DEFAULT 1,
  PRIMARY KEY (tenant_id, order_id),
  CONSTRAINT orders_request_unique UNIQUE (tenant_id, request_id),
  CONSTRAINT orders_refund_bounded CHECK (refunded_amount >= 0 AND refunded_amount <= total_amount),
  CONSTRAINT orders_lines_shaped CHECK (
    cardinality(line_sku) BETWEEN 1 AND 100
    AND cardinality(line_qty) = cardinality(line_sku)
    AND cardinality(line_price) = cardinality(line_sku)
    AND cardinality(line_flash_sale) = cardinality(line_sku)
    AND cardinality(line_refunded_qty) = cardinality(line_sku)
    AND cardinality(line_refunded_amount) = cardinality(line_sku)),
  CONSTRAINT orders_paid_has_payment CHECK (
    (state IN (1, 5)) = (payment_id IS NULL)),
  CONSTRAINT orders_payment_equals_total CHECK (
    payment_id IS NULL OR pay_amount = total_amount)
);
CREATE UNIQUE INDEX orders_payment ON orders (tenant_id, payment_id) WHERE payment_id IS NOT NULL;
CREATE INDEX orders_by_buyer ON orders (tenant_id, buyer_id, created_at DESC, order_id DESC);
CREATE INDEX orders_by_merchant ON orders (tenant_id, merchant_id, created_at DESC, order_id DESC);
CREATE INDEX orders_by_created ON orders (tenant_id, created_at DESC, order_id DESC);
-- the payment-timeout sweeper's queue: only unpaid orders
CREATE INDEX orders_due ON orders (payment_deadline) WHERE state = 1;

-- refunds: one row per refund_id (RefundOrder's idempotency key), the
-- per-line breakdown as parallel arrays in the order's line order.
CREATE TABLE refunds (
  tenant_id   text        NOT NULL,
  refund_id   text        NOT NULL,
  order_id    uuid        NOT NULL,
  body_hash   text        NOT NULL,
  scope       smallint    NOT NULL CHECK (scope BETWEEN 1 AND 3),
  amount      bigint      NOT NULL CHECK (amount > 0),
  line_sku    text[]      NOT NULL,
  line_qty    bigint[]    NOT NULL,
  line_amount bigint[]    NOT NULL,
  reason      text        NOT NULL DEFAULT '',
  created_at  timestamptz NOT NULL,
  PRIMARY KEY (tenant_id, refund_id)
);
CREATE INDEX refunds_by_order ON refunds (tenant_id, order_id, created_at);

-- request_id keys of CancelOrder (op 1), ShipOrder (2) and CompleteOrder
-- (3): a retry with the same key and body answers without applying again.
CREATE TABLE requests (
  tenant_id  text        NOT NULL,
  request_id text        NOT NULL,
  op         smallint    NOT NULL,
  order_id   uuid        NOT NULL,
  body_hash  text        NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (tenant_id, request_id)
);

-- payments refused by MarkPaid although the money was captured: the order
-- was cancelled first (too late) or was already paid by another payment
-- (a double payment). the caller must refund them with its provider; this
-- table is the operator's list of them (also counted by the metric
-- order_payments_rejected_total and logged).
CREATE TABLE payment_rejections (
  tenant_id     text        NOT NULL,
  payment_id    text        NOT NULL,
  order_id      uuid        NOT NULL,
  body_hash     text        NOT NULL,
  amount        bigint      NOT NULL,
  currency      char(3)     NOT NULL,
  provider      text        NOT NULL,
  provider_reference text   NOT NULL DEFAULT '',
  paid_at       timestamptz NOT NULL,
  reason        text        NOT NULL,
  rejected_at   timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (tenant_id, payment_id)
);

-- per-tenant payment timeouts; a tenant without a row gets the service
-- defaults (ORDER_PAYMENT_TIMEOUT_S, ORDER_FLASH_PAYMENT_TIMEOUT_S).
CREATE TABLE tenant_settings (
  tenant_id               text PRIMARY KEY,
  payment_timeout_s       int  NOT NULL CHECK (payment_timeout_s BETWEEN 60 AND 259200),
  flash_payment_timeout_s int  NOT NULL CHECK (flash_payment_timeout_s BETWEEN 60 AND 259200),
  updated_at              timestamptz NOT NULL DEFAULT now()
);
