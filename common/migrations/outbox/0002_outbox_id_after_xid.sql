-- an outbox row's id is taken after its transaction has an xid, so the
-- relay's horizon probe (src/outbox.c, "The fetch's lower bound") can tell
-- when every transaction that holds an id up to some value has ended: an
-- id taken before the transaction's first write would belong to a
-- transaction the probe cannot see yet. pg_current_xact_id() assigns the
-- xid when there is none; the CASE evaluates it before nextval. the
-- sequence is the caller's schema's (search_path), as the table is.
CREATE FUNCTION outbox_next_id() RETURNS bigint
LANGUAGE sql VOLATILE AS $$
  SELECT CASE WHEN pg_current_xact_id() IS NOT NULL THEN nextval('outbox_id_seq') END
$$;
ALTER TABLE outbox ALTER COLUMN id SET DEFAULT outbox_next_id();
