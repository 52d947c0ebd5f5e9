-- who bears each commission and adjustment (CommissionPayer: 1 merchant,
-- 2 platform), fixed when it is posted: a commission takes the payer of the
-- schedule revision it accrued under, an adjustment the payer and merchant
-- of the commission of the order that caused it (the child's, for a parent
-- share). the events carry both, so settlement books the cost against the
-- right account (services/settlement/README.md, "Commission cost").
ALTER TABLE commissions ADD COLUMN payer smallint NOT NULL DEFAULT 1 CHECK (payer IN (1, 2));
UPDATE commissions c SET payer = s.payer FROM tier_schedules s
  WHERE s.tenant_id = c.tenant_id AND s.schedule_id = c.schedule_id
    AND s.revision = c.schedule_revision AND s.payer <> 1;

ALTER TABLE adjustments ADD COLUMN payer smallint NOT NULL DEFAULT 1 CHECK (payer IN (1, 2));
ALTER TABLE adjustments ADD COLUMN merchant_id text COLLATE "C" NOT NULL DEFAULT '';
UPDATE adjustments a SET payer = c.payer, merchant_id = c.merchant_id FROM commissions c
  WHERE c.tenant_id = a.tenant_id AND c.order_id = a.order_id;
