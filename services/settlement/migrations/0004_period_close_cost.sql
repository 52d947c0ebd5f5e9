-- settlement: a COMMISSION entry (kind 7) may have no order. the
-- commission service's PERIOD_CLOSE adjustment (the final true-up of a
-- whole-volume period, one per merchant of the period) belongs to a
-- channel's period, not to an order; its entry is keyed like any
-- adjustment's ("adjustment/<adjustment id>") and names its merchant
-- (services/settlement/README.md, "Commission cost").
ALTER TABLE entries DROP CONSTRAINT entries_shape;
ALTER TABLE entries ADD CONSTRAINT entries_shape CHECK (
    cardinality(account_ids) >= 2
    AND cardinality(buckets) = cardinality(account_ids)
    AND cardinality(amounts) = cardinality(account_ids)
    AND cardinality(due_dates) = cardinality(account_ids)
    AND cardinality(versions) = cardinality(account_ids)
    AND (kind = 7 OR (order_id IS NOT NULL) = (kind IN (1, 2))));
