-- ListOrders' paid filter (reconciling settlement against order, by the
-- time the provider captured the payment): the paid orders of a tenant by
-- paid_at. unpaid orders have no entry. the listing is still ordered by
-- creation; a range of paid_at picks its rows here, then they are sorted.
CREATE INDEX orders_by_paid ON orders (tenant_id, paid_at) WHERE paid_at IS NOT NULL;
