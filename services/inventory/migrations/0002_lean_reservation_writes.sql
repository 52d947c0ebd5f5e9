-- reservations are written in batches of hundreds of rows per transaction
-- (README.md, "hot path"); every index and trigger on those rows is paid
-- per reservation. the line -> reservation foreign key is enforced by
-- construction (lines are only written in the statement that writes their
-- reservation, and never deleted), and the per-sku indexes on lines and
-- audit rows served only CheckInvariants, which aggregates whole tables
-- anyway.
ALTER TABLE reservation_line DROP CONSTRAINT reservation_line_tenant_id_order_id_fkey;
DROP INDEX reservation_line_sku;
DROP INDEX stock_change_sku;
