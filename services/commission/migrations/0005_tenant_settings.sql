-- per-tenant settings (README.md, "Payable"): the after-sale window. a
-- tenant without a row, or with after_sale_s NULL, uses the service's
-- default (COMMISSION_AFTER_SALE_DAYS). revision: +1 per
-- PutTenantSettings, for compare-and-set.
CREATE TABLE tenant_settings (
  tenant_id    text COLLATE "C" PRIMARY KEY,
  after_sale_s integer CHECK (after_sale_s BETWEEN 0 AND 7776000),
  revision     bigint      NOT NULL,
  updated_at   timestamptz NOT NULL DEFAULT now(),
  updated_by   text        NOT NULL DEFAULT ''
);
