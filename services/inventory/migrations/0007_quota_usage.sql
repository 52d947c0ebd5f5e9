-- the quota "skus" counted in a row per tenant (README.md, "Quotas: skus,
-- flash_sales"): a SetStock creating a sku locks its tenant's row, compares
-- `used` with the quota and inserts, instead of counting the tenant's stock
-- rows under an advisory lock (O(the tenant's skus) per new sku).
CREATE TABLE quota_usage (
  tenant_id text   COLLATE "C" NOT NULL,
  quota     text   COLLATE "C" NOT NULL,
  used      bigint NOT NULL CHECK (used >= 0),
  PRIMARY KEY (tenant_id, quota)
);

-- the counter follows every insert, delete and truncate of stock, whoever
-- writes it (the service, a bulk load in sql, an operator), in the
-- transaction of the change. statement triggers with transition tables: a
-- bulk insert of n rows costs one upsert per tenant, not n. an insert that
-- ON CONFLICT DO NOTHING skips leaves no row in `added`. Reserve only
-- updates stock rows: none of these fire on the hot path.
-- the functions keep the migration's search_path (this schema): a session
-- with another one (psql, a bulk load) still counts into this quota_usage.
CREATE FUNCTION inv_quota_skus_added() RETURNS trigger LANGUAGE plpgsql
  SET search_path FROM CURRENT AS $$
BEGIN
  INSERT INTO quota_usage AS u (tenant_id, quota, used)
  SELECT tenant_id, 'skus', count(*) FROM added GROUP BY tenant_id
  ON CONFLICT (tenant_id, quota) DO UPDATE SET used = u.used + EXCLUDED.used;
  RETURN NULL;
END $$;
CREATE FUNCTION inv_quota_skus_removed() RETURNS trigger LANGUAGE plpgsql
  SET search_path FROM CURRENT AS $$
BEGIN
  UPDATE quota_usage u SET used = u.used - r.n
    FROM (SELECT tenant_id, count(*) AS n FROM removed GROUP BY tenant_id) r
   WHERE u.tenant_id = r.tenant_id AND u.quota = 'skus';
  RETURN NULL;
END $$;
CREATE FUNCTION inv_quota_skus_truncated() RETURNS trigger LANGUAGE plpgsql
  SET search_path FROM CURRENT AS $$
BEGIN
  DELETE FROM quota_usage WHERE quota = 'skus';
  RETURN NULL;
END $$;
CREATE TRIGGER stock_quota_added AFTER INSERT ON stock REFERENCING NEW TABLE AS added
  FOR EACH STATEMENT EXECUTE FUNCTION inv_quota_skus_added();
CREATE TRIGGER stock_quota_removed AFTER DELETE ON stock REFERENCING OLD TABLE AS removed
  FOR EACH STATEMENT EXECUTE FUNCTION inv_quota_skus_removed();
CREATE TRIGGER stock_quota_truncated AFTER TRUNCATE ON stock
  FOR EACH STATEMENT EXECUTE FUNCTION inv_quota_skus_truncated();

-- the counters recounted from the rows: the backfill of a deployment that
-- already has skus, and a repair (e.g. after tenant_id was edited by hand,
-- which the triggers do not follow). idempotent. it locks quota_usage and
-- then stock against writes (the order a creating SetStock takes them in),
-- so no creation runs between the count and the rewrite; Reserve's updates
-- of stock wait for the count, an index-only scan of stock's primary key.
CREATE FUNCTION inv_quota_recount() RETURNS void LANGUAGE sql SET search_path FROM CURRENT AS $$
  LOCK TABLE quota_usage, stock IN SHARE ROW EXCLUSIVE MODE;
  DELETE FROM quota_usage WHERE quota = 'skus';
  INSERT INTO quota_usage (tenant_id, quota, used)
  SELECT tenant_id, 'skus', count(*) FROM stock GROUP BY tenant_id;
$$;
SELECT inv_quota_recount();

-- the quota "flash_sales" counts sales not yet ended, and a sale ends by
-- time (or by an update moving ends_at earlier), with no write at the
-- moment it ends: it stays a count, made O(the tenant's sales not yet
-- ended) by this index (at most the quota) instead of O(all its sales).
CREATE INDEX flash_sale_ends ON flash_sale (tenant_id, ends_at);
