-- auto-completion: a shipped order nobody completed is completed by the
-- sweeper once the tenant's auto_complete_after has passed since shipped_at
-- (NULL: the service default, ORDER_AUTO_COMPLETE_DAYS). the audit trail
-- records it before and after like the timeouts (NULL: the default).
ALTER TABLE tenant_settings
  ADD COLUMN auto_complete_after_s int
    CHECK (auto_complete_after_s BETWEEN 1 AND 7776000);
ALTER TABLE tenant_settings_changes
  ADD COLUMN old_auto_complete_after_s int,
  ADD COLUMN new_auto_complete_after_s int
    CHECK (new_auto_complete_after_s BETWEEN 1 AND 7776000);

-- who completed an order: 'system:auto-complete' (the sweeper), the
-- caller's principal, or 'caller'; '' for orders completed before this
-- migration and for orders not completed.
ALTER TABLE orders ADD COLUMN completed_by text NOT NULL DEFAULT '';

-- the sweeper's scans of shipped orders not completed, oldest shipment
-- first: across the tenants on the default window, and per tenant with a
-- window of its own. each reads only rows that are due.
CREATE INDEX orders_to_complete ON orders (shipped_at)
  WHERE state IN (3, 6) AND completed_at IS NULL AND shipped_at IS NOT NULL;
CREATE INDEX orders_to_complete_by_tenant ON orders (tenant_id, shipped_at)
  WHERE state IN (3, 6) AND completed_at IS NULL AND shipped_at IS NOT NULL;
