-- settlement: the commission cost, booked from the commission service's
-- events (services/settlement/README.md, "Commission cost").

-- party_type 102: a channel's commission account (owner_id: the channel
-- id), credited with what the channel earns and debited with clawbacks.
-- the commission service pays channels itself, so settlement never pays
-- it out: payouts take only party types below 100.
ALTER TABLE accounts DROP CONSTRAINT accounts_party_type_check;
ALTER TABLE accounts ADD CONSTRAINT accounts_party_type_check
  CHECK (party_type IN (1, 2, 3, 4, 5, 100, 101, 102));

-- kind 7: a commission cost entry (the payer debited, the channel's
-- commission account credited, or the reverse for a clawback or a
-- negative adjustment). it belongs to the commission's order; ref is its
-- natural key, unique per tenant through entries_payout_once (kind >= 4):
-- "accrued/<commission id>", "clawback/<commission id>/<refund id>",
-- "adjustment/<adjustment id>" — whatever event ids carry them, each is
-- booked once.
ALTER TABLE entries DROP CONSTRAINT entries_kind_check;
ALTER TABLE entries ADD CONSTRAINT entries_kind_check CHECK (kind BETWEEN 1 AND 7);
ALTER TABLE entries DROP CONSTRAINT entries_shape;
ALTER TABLE entries ADD CONSTRAINT entries_shape CHECK (
    cardinality(account_ids) >= 2
    AND cardinality(buckets) = cardinality(account_ids)
    AND cardinality(amounts) = cardinality(account_ids)
    AND cardinality(due_dates) = cardinality(account_ids)
    AND cardinality(versions) = cardinality(account_ids)
    AND (order_id IS NOT NULL) = (kind IN (1, 2, 7)));
