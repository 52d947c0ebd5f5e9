-- inventory: stock counters, reservations, flash sales and the audit trail.
-- the invariant (on_hand = available + reserved + sold, nothing negative) is
-- a CHECK on every row, so no transaction can ever commit a broken counter.
-- the write paths are plpgsql functions so that one round trip applies a
-- whole batch of reservations (see services/inventory/README.md).

CREATE FUNCTION uuid7() RETURNS uuid LANGUAGE sql VOLATILE AS $$
  SELECT encode(set_bit(set_bit(overlay(uuid_send(gen_random_uuid()) PLACING
         substring(int8send(floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint) FROM 3)
         FROM 1 FOR 6), 52, 1), 53, 1), 'hex')::uuid
$$;

CREATE TABLE stock (
  tenant_id  text        NOT NULL,
  sku        text        NOT NULL,
  available  bigint      NOT NULL CHECK (available >= 0),
  reserved   bigint      NOT NULL CHECK (reserved >= 0),
  sold       bigint      NOT NULL CHECK (sold >= 0),
  on_hand    bigint      NOT NULL,
  version    bigint      NOT NULL DEFAULT 1,
  updated_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (tenant_id, sku),
  CONSTRAINT stock_on_hand_balanced CHECK (on_hand = available + reserved + sold)
);

-- state: 1 active, 2 confirmed, 3 released, 4 expired. body is the
-- canonical request (buyer, ttl, lines) for the idempotency comparison; ''
-- for a release tombstone.
CREATE TABLE reservation (
  tenant_id   text        NOT NULL,
  order_id    text        NOT NULL,
  state       smallint    NOT NULL CHECK (state BETWEEN 1 AND 4),
  buyer_id    text        NOT NULL DEFAULT '',
  body        text        NOT NULL,
  flash_sale  boolean     NOT NULL DEFAULT false,
  created_at  timestamptz NOT NULL DEFAULT now(),
  expires_at  timestamptz NOT NULL,
  resolved_at timestamptz,
  PRIMARY KEY (tenant_id, order_id)
);
CREATE INDEX reservation_due ON reservation (expires_at) WHERE state = 1;

CREATE TABLE reservation_line (
  tenant_id     text   NOT NULL,
  order_id      text   NOT NULL,
  idx           int    NOT NULL,
  sku           text   NOT NULL,
  quantity      bigint NOT NULL CHECK (quantity >= 1),
  flash_sale_id text   NOT NULL DEFAULT '',
  PRIMARY KEY (tenant_id, order_id, idx),
  FOREIGN KEY (tenant_id, order_id) REFERENCES reservation (tenant_id, order_id)
);
CREATE INDEX reservation_line_sku ON reservation_line (tenant_id, sku);

-- kind: 1 set, 2 adjust, 3 reserve, 4 confirm, 5 release, 6 expire.
CREATE TABLE stock_change (
  change_id       uuid        PRIMARY KEY DEFAULT uuid7(),
  tenant_id       text        NOT NULL,
  sku             text        NOT NULL,
  kind            smallint    NOT NULL,
  available_delta bigint      NOT NULL,
  reserved_delta  bigint      NOT NULL,
  sold_delta      bigint      NOT NULL,
  available       bigint      NOT NULL,
  reserved        bigint      NOT NULL,
  sold            bigint      NOT NULL,
  on_hand         bigint      NOT NULL,
  version         bigint      NOT NULL,
  order_id        text        NOT NULL DEFAULT '',
  request_id      text        NOT NULL DEFAULT '',
  request_body    text        NOT NULL DEFAULT '',
  reason          text        NOT NULL DEFAULT '',
  actor           text        NOT NULL DEFAULT '',
  principal       text        NOT NULL DEFAULT '',
  occurred_at     timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX stock_change_request ON stock_change (tenant_id, request_id)
  WHERE request_id <> '';
CREATE INDEX stock_change_sku ON stock_change (tenant_id, sku);

CREATE TABLE flash_sale (
  tenant_id       text        NOT NULL,
  flash_sale_id   text        NOT NULL,
  sku             text        NOT NULL,
  starts_at       timestamptz NOT NULL,
  ends_at         timestamptz NOT NULL,
  sale_stock      bigint      NOT NULL CHECK (sale_stock >= 1),
  per_buyer_limit bigint      NOT NULL CHECK (per_buyer_limit >= 1),
  reserved        bigint      NOT NULL DEFAULT 0 CHECK (reserved >= 0),
  sold            bigint      NOT NULL DEFAULT 0 CHECK (sold >= 0),
  version         bigint      NOT NULL DEFAULT 1,
  request_id      text        NOT NULL,
  request_body    text        NOT NULL,
  created_at      timestamptz NOT NULL DEFAULT now(),
  updated_at      timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (tenant_id, flash_sale_id),
  CONSTRAINT flash_sale_within_stock CHECK (reserved + sold <= sale_stock),
  CHECK (ends_at > starts_at)
);
CREATE INDEX flash_sale_sku ON flash_sale (tenant_id, sku, starts_at);
CREATE TABLE flash_sale_request (
  tenant_id     text NOT NULL,
  request_id    text NOT NULL,
  request_body  text NOT NULL,
  flash_sale_id text NOT NULL,
  PRIMARY KEY (tenant_id, request_id)
);

-- units a buyer holds (active + confirmed) in a sale. the CHECK makes the
-- database itself refuse a purchase over the limit, whichever replica asks.
CREATE TABLE flash_buyer (
  tenant_id     text   NOT NULL,
  flash_sale_id text   NOT NULL,
  buyer_id      text   NOT NULL,
  units         bigint NOT NULL CHECK (units >= 0),
  limit_units   bigint NOT NULL,
  PRIMARY KEY (tenant_id, flash_sale_id, buyer_id),
  CONSTRAINT flash_buyer_within_limit CHECK (units <= limit_units)
);

-- one reservation line's effect on its stock row, with the audit entry.
-- the caller holds the row lock. returns the audit row.
CREATE FUNCTION inv_apply(p_tenant text, p_sku text, p_kind int, p_da bigint, p_dr bigint,
                          p_ds bigint, p_order text, p_principal text)
RETURNS stock_change LANGUAGE plpgsql AS $$
DECLARE
  s stock;
  c stock_change;
BEGIN
  UPDATE stock SET available = available + p_da, reserved = reserved + p_dr,
         sold = sold + p_ds, on_hand = on_hand + p_da + p_dr + p_ds,
         version = version + 1, updated_at = now()
   WHERE tenant_id = p_tenant AND sku = p_sku RETURNING * INTO s;
  INSERT INTO stock_change (tenant_id, sku, kind, available_delta, reserved_delta, sold_delta,
                            available, reserved, sold, on_hand, version, order_id, principal)
  VALUES (p_tenant, p_sku, p_kind, p_da, p_dr, p_ds, s.available, s.reserved, s.sold,
          s.on_hand, s.version, p_order, p_principal)
  RETURNING * INTO c;
  RETURN c;
END $$;

-- a batch of reservations in one transaction. requests are processed in
-- array order; lines are flattened (req i owns nlines[i] entries). every
-- stock row the batch touches is locked first, in (tenant, sku) order, so
-- two batches (two replicas) never deadlock.
-- outcome: 0 reserved, 1 exists with the same body, 2 exists with another
-- body, 3 sold out (one row per short sku), 4 released before (tombstone),
-- 5 buyer required (flash sale), 6 per-buyer limit exceeded,
-- 9 (req -1) a sku's available reached 0 in this batch.
CREATE FUNCTION inv_reserve_batch(p_tenant text[], p_order text[], p_buyer text[],
                                  p_ttl_ms bigint[], p_body text[], p_nlines int[],
                                  p_line_tenant text[], p_sku text[], p_qty bigint[],
                                  p_principal text[])
RETURNS TABLE (req int, outcome int, sku text, requested bigint, avail bigint,
               flash_sale_id text, created_ms bigint, expires_ms bigint)
LANGUAGE plpgsql AS $$
DECLARE
  n int := coalesce(array_length(p_order, 1), 0);
  first int := 1;
  i int; j int; k int;
  v_avail bigint;
  v_body text; v_state int;
  short_skus text[]; short_req bigint[]; short_av bigint[]; short_fs text[];
  sale flash_sale;
  fs_ids text[];
  v_buyer bigint;
  v_flash boolean;
  r reservation;
  c stock_change;
  bad int;
  zero_skus text[] := '{}';
  zero_tenants text[] := '{}';
BEGIN
  PERFORM 1 FROM stock s
   WHERE (s.tenant_id, s.sku) IN (SELECT * FROM unnest(p_line_tenant, p_sku))
   ORDER BY s.tenant_id, s.sku FOR UPDATE;
  FOR i IN 1 .. n LOOP
    SELECT x.body, x.state INTO v_body, v_state FROM reservation x
     WHERE x.tenant_id = p_tenant[i] AND x.order_id = p_order[i];
    IF FOUND THEN
      IF v_body = '' THEN
        RETURN QUERY SELECT i, 4, ''::text, 0::bigint, 0::bigint, ''::text, 0::bigint, 0::bigint;
      ELSIF v_body = p_body[i] THEN
        RETURN QUERY SELECT i, 1, ''::text, 0::bigint, 0::bigint, ''::text, 0::bigint, 0::bigint;
      ELSE
        RETURN QUERY SELECT i, 2, ''::text, 0::bigint, 0::bigint, ''::text, 0::bigint, 0::bigint;
      END IF;
      first := first + p_nlines[i];
      CONTINUE;
    END IF;
    short_skus := '{}'; short_req := '{}'; short_av := '{}'; short_fs := '{}';
    fs_ids := array_fill(''::text, ARRAY[p_nlines[i]]);
    bad := 0;
    FOR j IN 0 .. p_nlines[i] - 1 LOOP
      k := first + j;
      SELECT s.available INTO v_avail FROM stock s
       WHERE s.tenant_id = p_tenant[i] AND s.sku = p_sku[k];
      IF NOT FOUND THEN v_avail := 0; END IF;
      SELECT * INTO sale FROM flash_sale f
       WHERE f.tenant_id = p_tenant[i] AND f.sku = p_sku[k]
         AND f.starts_at <= now() AND f.ends_at > now() FOR UPDATE;
      IF FOUND THEN
        fs_ids[j + 1] := sale.flash_sale_id;
        IF p_buyer[i] = '' THEN
          bad := 5;
        ELSE
          SELECT b.units INTO v_buyer FROM flash_buyer b
           WHERE b.tenant_id = p_tenant[i] AND b.flash_sale_id = sale.flash_sale_id
             AND b.buyer_id = p_buyer[i];
          IF NOT FOUND THEN v_buyer := 0; END IF;
          IF v_buyer + p_qty[k] > sale.per_buyer_limit AND bad = 0 THEN
            bad := 6;
          END IF;
        END IF;
        v_avail := least(v_avail, sale.sale_stock - sale.reserved - sale.sold);
      END IF;
      IF v_avail < p_qty[k] THEN
        short_skus := short_skus || p_sku[k];
        short_req := short_req || p_qty[k];
        short_av := short_av || greatest(v_avail, 0);
        short_fs := short_fs || fs_ids[j + 1];
      END IF;
    END LOOP;
    IF bad = 5 OR (bad = 6 AND cardinality(short_skus) = 0) THEN
      RETURN QUERY SELECT i, bad, ''::text, 0::bigint, 0::bigint, ''::text, 0::bigint, 0::bigint;
      first := first + p_nlines[i];
      CONTINUE;
    END IF;
    IF cardinality(short_skus) > 0 THEN
      RETURN QUERY SELECT i, 3, u.s, u.q, u.a, u.f, 0::bigint, 0::bigint
        FROM unnest(short_skus, short_req, short_av, short_fs) AS u(s, q, a, f);
      first := first + p_nlines[i];
      CONTINUE;
    END IF;
    v_flash := EXISTS (SELECT 1 FROM unnest(fs_ids) AS f(id) WHERE f.id <> '');
    INSERT INTO reservation (tenant_id, order_id, state, buyer_id, body, flash_sale, expires_at)
    VALUES (p_tenant[i], p_order[i], 1, p_buyer[i], p_body[i], v_flash,
            now() + p_ttl_ms[i] * interval '1 millisecond')
    ON CONFLICT DO NOTHING RETURNING * INTO r;
    IF NOT FOUND THEN
      -- another transaction reserved this order_id meanwhile
      SELECT x.body INTO v_body FROM reservation x
       WHERE x.tenant_id = p_tenant[i] AND x.order_id = p_order[i];
      RETURN QUERY SELECT i, CASE WHEN v_body = '' THEN 4 WHEN v_body = p_body[i] THEN 1 ELSE 2 END,
                          ''::text, 0::bigint, 0::bigint, ''::text, 0::bigint, 0::bigint;
      first := first + p_nlines[i];
      CONTINUE;
    END IF;
    FOR j IN 0 .. p_nlines[i] - 1 LOOP
      k := first + j;
      INSERT INTO reservation_line (tenant_id, order_id, idx, sku, quantity, flash_sale_id)
      VALUES (p_tenant[i], p_order[i], j, p_sku[k], p_qty[k], fs_ids[j + 1]);
      c := inv_apply(p_tenant[i], p_sku[k], 3, -p_qty[k], p_qty[k], 0, p_order[i], p_principal[i]);
      IF c.available = 0 THEN
        zero_tenants := zero_tenants || p_tenant[i];
        zero_skus := zero_skus || p_sku[k];
      END IF;
      IF fs_ids[j + 1] <> '' THEN
        UPDATE flash_sale f SET reserved = f.reserved + p_qty[k], version = f.version + 1
         WHERE f.tenant_id = p_tenant[i] AND f.flash_sale_id = fs_ids[j + 1];
        INSERT INTO flash_buyer AS b (tenant_id, flash_sale_id, buyer_id, units, limit_units)
        SELECT p_tenant[i], fs_ids[j + 1], p_buyer[i], p_qty[k], f.per_buyer_limit
          FROM flash_sale f WHERE f.tenant_id = p_tenant[i] AND f.flash_sale_id = fs_ids[j + 1]
        ON CONFLICT (tenant_id, flash_sale_id, buyer_id)
        DO UPDATE SET units = b.units + excluded.units, limit_units = excluded.limit_units;
      END IF;
    END LOOP;
    RETURN QUERY SELECT i, 0, ''::text, 0::bigint, 0::bigint, ''::text,
                        (extract(epoch FROM r.created_at) * 1000)::bigint,
                        (extract(epoch FROM r.expires_at) * 1000)::bigint;
    first := first + p_nlines[i];
  END LOOP;
  RETURN QUERY SELECT -1, 9, u.s, 0::bigint, 0::bigint, u.t, 0::bigint, 0::bigint
    FROM (SELECT DISTINCT * FROM unnest(zero_skus, zero_tenants)) AS u(s, t);
END $$;

-- moves one reservation out of ACTIVE (to 2 confirmed, 3 released or 4
-- expired). the caller holds the reservation's row lock and has checked it
-- is ACTIVE. returns the audit rows, one per line.
CREATE FUNCTION inv_resolve_lines(p_tenant text, p_order text, p_to int, p_principal text)
RETURNS SETOF stock_change LANGUAGE plpgsql AS $$
DECLARE
  l reservation_line;
  c stock_change;
BEGIN
  PERFORM 1 FROM stock s
   WHERE s.tenant_id = p_tenant
     AND s.sku IN (SELECT x.sku FROM reservation_line x
                    WHERE x.tenant_id = p_tenant AND x.order_id = p_order)
   ORDER BY s.sku FOR UPDATE;
  FOR l IN SELECT * FROM reservation_line x WHERE x.tenant_id = p_tenant AND x.order_id = p_order
           ORDER BY x.idx LOOP
    IF p_to = 2 THEN
      c := inv_apply(p_tenant, l.sku, 4, 0, -l.quantity, l.quantity, p_order, p_principal);
      IF l.flash_sale_id <> '' THEN
        UPDATE flash_sale f SET reserved = f.reserved - l.quantity, sold = f.sold + l.quantity,
               version = f.version + 1
         WHERE f.tenant_id = p_tenant AND f.flash_sale_id = l.flash_sale_id;
      END IF;
    ELSE
      c := inv_apply(p_tenant, l.sku, CASE WHEN p_to = 3 THEN 5 ELSE 6 END, l.quantity,
                     -l.quantity, 0, p_order, p_principal);
      IF l.flash_sale_id <> '' THEN
        UPDATE flash_sale f SET reserved = f.reserved - l.quantity, version = f.version + 1
         WHERE f.tenant_id = p_tenant AND f.flash_sale_id = l.flash_sale_id;
        UPDATE flash_buyer b SET units = b.units - l.quantity
         WHERE b.tenant_id = p_tenant AND b.flash_sale_id = l.flash_sale_id
           AND b.buyer_id = (SELECT buyer_id FROM reservation x
                              WHERE x.tenant_id = p_tenant AND x.order_id = p_order);
      END IF;
    END IF;
    RETURN NEXT c;
  END LOOP;
  UPDATE reservation x SET state = p_to, resolved_at = now()
   WHERE x.tenant_id = p_tenant AND x.order_id = p_order;
END $$;
