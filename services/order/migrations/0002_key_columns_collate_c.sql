-- key columns compare bytewise (COLLATE "C"): the reasons and the cost of
-- this migration are in inventory's 0005_key_columns_collate_c.sql. every
-- text column an index or a lookup uses; the order ids are uuids already.
ALTER TABLE orders
  ALTER COLUMN tenant_id TYPE text COLLATE "C",
  ALTER COLUMN request_id TYPE text COLLATE "C",
  ALTER COLUMN buyer_id TYPE text COLLATE "C",
  ALTER COLUMN merchant_id TYPE text COLLATE "C",
  ALTER COLUMN channel_id TYPE text COLLATE "C",
  ALTER COLUMN payment_id TYPE text COLLATE "C";
ALTER TABLE refunds
  ALTER COLUMN tenant_id TYPE text COLLATE "C",
  ALTER COLUMN refund_id TYPE text COLLATE "C";
ALTER TABLE requests
  ALTER COLUMN tenant_id TYPE text COLLATE "C",
  ALTER COLUMN request_id TYPE text COLLATE "C";
ALTER TABLE payment_rejections
  ALTER COLUMN tenant_id TYPE text COLLATE "C",
  ALTER COLUMN payment_id TYPE text COLLATE "C";
ALTER TABLE tenant_settings
  ALTER COLUMN tenant_id TYPE text COLLATE "C";
