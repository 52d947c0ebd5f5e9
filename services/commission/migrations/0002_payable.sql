-- PAYABLE (README.md, "Payable"): an order's completion, the state and
-- payable figures of commissions and adjustments, clawbacks after PAYABLE.

-- completions of orders with a channel, whatever arrives first: the
-- payable ticker joins them to the commissions, so an OrderCompleted that
-- comes before its OrderPaid (or in the same batch) is not lost.
CREATE TABLE completed_orders (
  tenant_id    text COLLATE "C" NOT NULL,
  order_id     uuid        NOT NULL,
  completed_at timestamptz NOT NULL,
  event_id     uuid        NOT NULL,
  PRIMARY KEY (tenant_id, order_id)
);

-- state 2: PAYABLE. payable_amount: the commission's net when it became
-- payable, what payouts count; a later clawback is a CLAWBACK adjustment
-- (negative, PAYABLE at once) so the payable sum stays exact.
ALTER TABLE commissions DROP CONSTRAINT commissions_state_check;
ALTER TABLE commissions ADD CONSTRAINT commissions_state_check CHECK (state IN (1, 2, 4));
ALTER TABLE commissions ADD COLUMN payable_at timestamptz;
ALTER TABLE commissions ADD COLUMN payable_amount bigint NOT NULL DEFAULT 0;
CREATE INDEX commissions_frozen ON commissions (tenant_id, order_id) WHERE state = 1;

-- kind 3: CLAWBACK, a refund of an order whose commission was PAYABLE.
-- state: 1 frozen, 2 payable (with its order's commission).
ALTER TABLE adjustments DROP CONSTRAINT adjustments_kind_check;
ALTER TABLE adjustments ADD CONSTRAINT adjustments_kind_check CHECK (kind IN (1, 2, 3));
ALTER TABLE adjustments ADD CONSTRAINT adjustments_state_check CHECK (state IN (1, 2));
ALTER TABLE adjustments ADD COLUMN payable_at timestamptz;
CREATE INDEX adjustments_frozen ON adjustments (tenant_id, order_id) WHERE state = 1;
