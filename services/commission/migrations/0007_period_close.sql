-- period close (README.md, "Closing a period"): a finished whole-volume
-- period of a channel (every schedule revision's row of one schedule and
-- period start) is repriced once under its newest revision; the
-- difference is a PERIOD_CLOSE adjustment (kind 4, no order, PAYABLE at
-- once) and every row of the period is marked closed. a closed period is
-- never repriced again: late refunds claw back the order's own commission
-- only, late payments earn their own commission without a true-up.
ALTER TABLE channel_periods ADD COLUMN closed_at timestamptz;
ALTER TABLE channel_periods ADD COLUMN close_true_up bigint;
ALTER TABLE channel_periods ADD COLUMN close_adjustment_id uuid;
CREATE INDEX channel_periods_open ON channel_periods (period_end) WHERE closed_at IS NULL;

ALTER TABLE adjustments DROP CONSTRAINT adjustments_kind_check;
ALTER TABLE adjustments ADD CONSTRAINT adjustments_kind_check CHECK (kind IN (1, 2, 3, 4));
ALTER TABLE adjustments ALTER COLUMN order_id DROP NOT NULL;
ALTER TABLE adjustments ADD CONSTRAINT adjustments_order_check CHECK ((kind = 4) = (order_id IS NULL));
