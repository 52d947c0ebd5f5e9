-- gross margin (README.md, "Cost and margin"). each line's unit cost is
-- recorded at creation from inventory's Reserve answer and never changed;
-- -1 marks a line without a known cost (none in the order's currency).
-- line_cost_reversed is what refunds reversed so far, per line
-- (cumulative floor, exact once the line is fully refunded). cost_amount
-- and cost_reversed are the order's sums, kept as columns for the margin
-- query (QueryMargin). orders and refunds from before this migration have
-- no cost: NULL arrays read as every line unknown.
ALTER TABLE orders
  ADD COLUMN line_unit_cost bigint[],
  ADD COLUMN line_cost_reversed bigint[],
  ADD COLUMN cost_amount bigint NOT NULL DEFAULT 0,
  ADD COLUMN cost_reversed bigint NOT NULL DEFAULT 0,
  ADD COLUMN cost_complete boolean NOT NULL DEFAULT false;

ALTER TABLE refunds
  ADD COLUMN line_cost bigint[],
  ADD COLUMN cost_reversed bigint NOT NULL DEFAULT 0;
