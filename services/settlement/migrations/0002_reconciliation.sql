-- settlement: the payment provider's daily statements, reconciled against
-- the ledger (services/settlement/recon.c, RECONCILIATION.md).

-- one statement per tenant and bill date: the current import. a later
-- import of the same date replaces its lines (a corrected bill).
CREATE TABLE statements (
  tenant_id   text COLLATE "C" NOT NULL,
  bill_date   date        NOT NULL,
  request_id  text COLLATE "C" NOT NULL,
  lines       int         NOT NULL CHECK (lines >= 0),
  imported_at timestamptz NOT NULL DEFAULT now(),
  imported_by text        NOT NULL DEFAULT '',
  PRIMARY KEY (tenant_id, bill_date)
);

-- every import, for ImportStatement's idempotency (by request_id, with the
-- hash of the body) and as an audit trail
CREATE TABLE statement_imports (
  tenant_id     text COLLATE "C" NOT NULL,
  request_id    text COLLATE "C" NOT NULL,
  body_hash     text        NOT NULL,
  bill_date     date        NOT NULL,
  lines         int         NOT NULL,
  payment_count int         NOT NULL,
  refund_count  int         NOT NULL,
  replaced      boolean     NOT NULL,
  imported_at   timestamptz NOT NULL DEFAULT now(),
  imported_by   text        NOT NULL DEFAULT '',
  PRIMARY KEY (tenant_id, request_id)
);

-- the lines of the current statement of each date. kind 1 payment, 2
-- refund (refund_id: the order's refund id; '' for a payment). amounts in
-- minor units of currency; transaction_time as the provider printed it
-- (local time).
CREATE TABLE statement_lines (
  tenant_id        text COLLATE "C" NOT NULL,
  bill_date        date        NOT NULL,
  line_no          int         NOT NULL,
  kind             smallint    NOT NULL CHECK (kind IN (1, 2)),
  transaction_time timestamp   NOT NULL,
  provider_txn_id  text COLLATE "C" NOT NULL,
  order_id         uuid        NOT NULL,
  refund_id        text COLLATE "C" NOT NULL DEFAULT '',
  currency         text COLLATE "C" NOT NULL,
  amount           bigint      NOT NULL CHECK (amount >= 0),
  fee              bigint      NOT NULL CHECK (fee >= 0),
  PRIMARY KEY (tenant_id, bill_date, line_no),
  CHECK ((kind = 1) = (refund_id = ''))
);
CREATE UNIQUE INDEX statement_lines_once
  ON statement_lines (tenant_id, bill_date, order_id, kind, refund_id);
-- the ledger's side looks its postings up in the statements of any date
CREATE INDEX statement_lines_by_order ON statement_lines (tenant_id, order_id, kind, refund_id);
