-- the quota "channels" counted in a row per tenant (README.md, "Quota
-- `channels`"): PutChannel of a new channel locks its tenant's row and
-- compares `used` with the quota instead of counting the tenant's channels
-- (O(the tenant's channels) per new channel).
CREATE TABLE quota_usage (
  tenant_id text   COLLATE "C" NOT NULL,
  quota     text   COLLATE "C" NOT NULL,
  used      bigint NOT NULL CHECK (used >= 0),
  PRIMARY KEY (tenant_id, quota)
);

-- the counter follows every insert, delete and truncate of channels,
-- whoever writes it, in the transaction of the change. statement triggers
-- with transition tables: one upsert per tenant and statement. the insert
-- transition table of INSERT ... ON CONFLICT DO UPDATE holds only the rows
-- inserted, so a PutChannel updating a channel counts nothing.
-- the functions keep the migration's search_path (this schema): a session
-- with another one (psql, a bulk load) still counts into this quota_usage.
CREATE FUNCTION cms_quota_channels_added() RETURNS trigger LANGUAGE plpgsql
  SET search_path FROM CURRENT AS $$
BEGIN
  INSERT INTO quota_usage AS u (tenant_id, quota, used)
  SELECT tenant_id, 'channels', count(*) FROM added GROUP BY tenant_id
  ON CONFLICT (tenant_id, quota) DO UPDATE SET used = u.used + EXCLUDED.used;
  RETURN NULL;
END $$;
CREATE FUNCTION cms_quota_channels_removed() RETURNS trigger LANGUAGE plpgsql
  SET search_path FROM CURRENT AS $$
BEGIN
  UPDATE quota_usage u SET used = u.used - r.n
    FROM (SELECT tenant_id, count(*) AS n FROM removed GROUP BY tenant_id) r
   WHERE u.tenant_id = r.tenant_id AND u.quota = 'channels';
  RETURN NULL;
END $$;
CREATE FUNCTION cms_quota_channels_truncated() RETURNS trigger LANGUAGE plpgsql
  SET search_path FROM CURRENT AS $$
BEGIN
  DELETE FROM quota_usage WHERE quota = 'channels';
  RETURN NULL;
END $$;
CREATE TRIGGER channels_quota_added AFTER INSERT ON channels REFERENCING NEW TABLE AS added
  FOR EACH STATEMENT EXECUTE FUNCTION cms_quota_channels_added();
CREATE TRIGGER channels_quota_removed AFTER DELETE ON channels REFERENCING OLD TABLE AS removed
  FOR EACH STATEMENT EXECUTE FUNCTION cms_quota_channels_removed();
CREATE TRIGGER channels_quota_truncated AFTER TRUNCATE ON channels
  FOR EACH STATEMENT EXECUTE FUNCTION cms_quota_channels_truncated();

-- the counters recounted from the rows: the backfill of a deployment that
-- already has channels, and a repair. idempotent; quota_usage and then
-- channels are locked against writes (a creating PutChannel's order).
CREATE FUNCTION cms_quota_recount() RETURNS void LANGUAGE sql SET search_path FROM CURRENT AS $$
  LOCK TABLE quota_usage, channels IN SHARE ROW EXCLUSIVE MODE;
  DELETE FROM quota_usage WHERE quota = 'channels';
  INSERT INTO quota_usage (tenant_id, quota, used)
  SELECT tenant_id, 'channels', count(*) FROM channels GROUP BY tenant_id;
$$;
SELECT cms_quota_recount();
