-- the inbox's key compares bytewise (COLLATE "C"), as the services' key
-- columns do (inventory's 0005_key_columns_collate_c.sql has the reasons).
-- the primary key's index is rebuilt.
ALTER TABLE inbox
  ALTER COLUMN consumer_group TYPE text COLLATE "C",
  ALTER COLUMN tenant_id TYPE text COLLATE "C";
