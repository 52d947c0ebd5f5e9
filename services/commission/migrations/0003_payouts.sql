-- payouts (README.md, "Payouts"): one payment to a channel of its PAYABLE
-- commissions and adjustments, netted. state: PayoutState (1 pending,
-- 2 paid, 3 failed). a failed payout's items lose their payout_id (they
-- are payable again); its row stays, for the record and request_id.
CREATE TABLE payouts (
  payout_id          uuid PRIMARY KEY,
  tenant_id          text COLLATE "C" NOT NULL,
  channel_id         text COLLATE "C" NOT NULL,
  currency           text COLLATE "C" NOT NULL,
  request_id         text COLLATE "C" NOT NULL,
  state              smallint    NOT NULL CHECK (state IN (1, 2, 3)),
  amount             bigint      NOT NULL CHECK (amount > 0),
  commissions        bigint      NOT NULL,
  adjustments        bigint      NOT NULL,
  provider_reference text        NOT NULL DEFAULT '',
  failure_reason     text        NOT NULL DEFAULT '',
  created_at         timestamptz NOT NULL DEFAULT now(),
  reported_at        timestamptz,
  UNIQUE (tenant_id, request_id)
);

-- state 3: SETTLED (its payout was reported paid)
ALTER TABLE commissions DROP CONSTRAINT commissions_state_check;
ALTER TABLE commissions ADD CONSTRAINT commissions_state_check CHECK (state IN (1, 2, 3, 4));
ALTER TABLE commissions ADD COLUMN payout_id uuid;
ALTER TABLE commissions ADD COLUMN settled_at timestamptz;
CREATE INDEX commissions_payable ON commissions (tenant_id, channel_id) WHERE state = 2 AND payout_id IS NULL;
CREATE INDEX commissions_by_payout ON commissions (payout_id) WHERE payout_id IS NOT NULL;

ALTER TABLE adjustments DROP CONSTRAINT adjustments_state_check;
ALTER TABLE adjustments ADD CONSTRAINT adjustments_state_check CHECK (state IN (1, 2, 3));
ALTER TABLE adjustments ADD COLUMN payout_id uuid;
ALTER TABLE adjustments ADD COLUMN settled_at timestamptz;
CREATE INDEX adjustments_payable ON adjustments (tenant_id, channel_id) WHERE state = 2 AND payout_id IS NULL;
CREATE INDEX adjustments_by_payout ON adjustments (payout_id) WHERE payout_id IS NOT NULL;
