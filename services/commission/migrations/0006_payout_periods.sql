-- payouts per period (README.md, "Payouts"): a SettleCommissions that names
-- a period takes only that period's items; period_start records it (NULL:
-- every period). ListPayouts reads a tenant's payouts newest first by
-- payout_id (a UUIDv7), optionally of one channel.
ALTER TABLE payouts ADD COLUMN period_start timestamptz;
CREATE INDEX payouts_by_tenant ON payouts (tenant_id, payout_id);
CREATE INDEX payouts_by_channel ON payouts (tenant_id, channel_id, payout_id);
