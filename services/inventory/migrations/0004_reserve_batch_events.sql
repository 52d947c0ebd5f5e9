-- the flash-sale reserve path (inv_reserve_batch) also reports what the
-- service needs to write its outbox events in the same transaction, so
-- that every reservation, on every path, emits one StockChanged per line:
--   req -2, outcome 8: one row per reserved line, in order: item (the
--     request's index), sku, requested (the quantity) and the audit row
--     (change_id, the counters after the line, at_ms = occurred_at);
--   req -1, outcome 9: a sku whose available reached 0 in the batch, with
--     its counters (flash_sale_id also carries the tenant, as in 0003, for
--     a replica still running the previous version);
--   req -1, outcome 10: a flash sale whose reserved + sold reached its
--     sale_stock in the batch (SoldOut of the sale), with the sku's counters.
-- the result type changes, so the function is dropped and created again;
-- the columns of 0003 keep their names, positions and meanings.
DROP FUNCTION inv_reserve_batch(text[], text[], text[], bigint[], text[], int[], text[], text[],
                                bigint[], text[]);

CREATE FUNCTION inv_reserve_batch(p_tenant text[], p_order text[], p_buyer text[],
                                  p_ttl_ms bigint[], p_body text[], p_nlines int[],
                                  p_line_tenant text[], p_sku text[], p_qty bigint[],
                                  p_principal text[])
RETURNS TABLE (req int, outcome int, sku text, requested bigint, avail bigint,
               flash_sale_id text, created_ms bigint, expires_ms bigint,
               item int, tenant text, change_id text, l_available bigint, l_reserved bigint,
               l_sold bigint, l_on_hand bigint, l_version bigint, at_ms bigint)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
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
  v_full boolean;
  r reservation;
  c stock_change;
  bad int;
  zero_skus text[] := '{}';
  zero_tenants text[] := '{}';
  full_skus text[] := '{}';
  full_tenants text[] := '{}';
  full_ids text[] := '{}';
BEGIN
  PERFORM 1 FROM stock s
   WHERE (s.tenant_id, s.sku) IN (SELECT * FROM unnest(p_line_tenant, p_sku))
   ORDER BY s.tenant_id, s.sku FOR UPDATE;
  FOR i IN 1 .. n LOOP
    SELECT x.body, x.state INTO v_body, v_state FROM reservation x
     WHERE x.tenant_id = p_tenant[i] AND x.order_id = p_order[i];
    IF FOUND THEN
      RETURN QUERY SELECT i, CASE WHEN v_body = '' THEN 4 WHEN v_body = p_body[i] THEN 1 ELSE 2 END,
                          ''::text, 0::bigint, 0::bigint, ''::text, 0::bigint, 0::bigint,
                          i, p_tenant[i], ''::text, 0::bigint, 0::bigint, 0::bigint, 0::bigint,
                          0::bigint, 0::bigint;
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
      RETURN QUERY SELECT i, bad, ''::text, 0::bigint, 0::bigint, ''::text, 0::bigint, 0::bigint,
                          i, p_tenant[i], ''::text, 0::bigint, 0::bigint, 0::bigint, 0::bigint,
                          0::bigint, 0::bigint;
      first := first + p_nlines[i];
      CONTINUE;
    END IF;
    IF cardinality(short_skus) > 0 THEN
      RETURN QUERY SELECT i, 3, u.s, u.q, u.a, u.f, 0::bigint, 0::bigint,
                          i, p_tenant[i], ''::text, 0::bigint, 0::bigint, 0::bigint, 0::bigint,
                          0::bigint, 0::bigint
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
                          ''::text, 0::bigint, 0::bigint, ''::text, 0::bigint, 0::bigint,
                          i, p_tenant[i], ''::text, 0::bigint, 0::bigint, 0::bigint, 0::bigint,
                          0::bigint, 0::bigint;
      first := first + p_nlines[i];
      CONTINUE;
    END IF;
    FOR j IN 0 .. p_nlines[i] - 1 LOOP
      k := first + j;
      INSERT INTO reservation_line (tenant_id, order_id, idx, sku, quantity, flash_sale_id)
      VALUES (p_tenant[i], p_order[i], j, p_sku[k], p_qty[k], fs_ids[j + 1]);
      c := inv_apply(p_tenant[i], p_sku[k], 3, -p_qty[k], p_qty[k], 0, p_order[i], p_principal[i]);
      RETURN QUERY SELECT -2, 8, p_sku[k], p_qty[k], 0::bigint, fs_ids[j + 1], 0::bigint, 0::bigint,
                          i, p_tenant[i], c.change_id::text, c.available, c.reserved, c.sold,
                          c.on_hand, c.version, (extract(epoch FROM c.occurred_at) * 1000)::bigint;
      IF c.available = 0 THEN
        zero_tenants := zero_tenants || p_tenant[i];
        zero_skus := zero_skus || p_sku[k];
      END IF;
      IF fs_ids[j + 1] <> '' THEN
        UPDATE flash_sale f SET reserved = f.reserved + p_qty[k], version = f.version + 1
         WHERE f.tenant_id = p_tenant[i] AND f.flash_sale_id = fs_ids[j + 1]
        RETURNING f.reserved + f.sold >= f.sale_stock INTO v_full;
        IF v_full THEN
          full_tenants := full_tenants || p_tenant[i];
          full_skus := full_skus || p_sku[k];
          full_ids := full_ids || fs_ids[j + 1];
        END IF;
        INSERT INTO flash_buyer AS b (tenant_id, flash_sale_id, buyer_id, units, limit_units)
        SELECT p_tenant[i], fs_ids[j + 1], p_buyer[i], p_qty[k], f.per_buyer_limit
          FROM flash_sale f WHERE f.tenant_id = p_tenant[i] AND f.flash_sale_id = fs_ids[j + 1]
        ON CONFLICT (tenant_id, flash_sale_id, buyer_id)
        DO UPDATE SET units = b.units + excluded.units, limit_units = excluded.limit_units;
      END IF;
    END LOOP;
    RETURN QUERY SELECT i, 0, ''::text, 0::bigint, 0::bigint, ''::text,
                        (extract(epoch FROM r.created_at) * 1000)::bigint,
                        (extract(epoch FROM r.expires_at) * 1000)::bigint,
                        i, p_tenant[i], ''::text, 0::bigint, 0::bigint, 0::bigint, 0::bigint,
                        0::bigint, 0::bigint;
    first := first + p_nlines[i];
  END LOOP;
  RETURN QUERY SELECT -1, 9, s.sku, 0::bigint, 0::bigint, s.tenant_id, 0::bigint, 0::bigint,
                      0, s.tenant_id, ''::text, s.available, s.reserved, s.sold, s.on_hand,
                      s.version, (extract(epoch FROM s.updated_at) * 1000)::bigint
    FROM stock s JOIN (SELECT DISTINCT * FROM unnest(zero_tenants, zero_skus)) AS u(t, k)
      ON s.tenant_id = u.t AND s.sku = u.k;
  RETURN QUERY SELECT -1, 10, s.sku, 0::bigint, 0::bigint, u.f, 0::bigint, 0::bigint,
                      0, s.tenant_id, ''::text, s.available, s.reserved, s.sold, s.on_hand,
                      s.version, (extract(epoch FROM s.updated_at) * 1000)::bigint
    FROM stock s JOIN unnest(full_tenants, full_skus, full_ids) AS u(t, k, f)
      ON s.tenant_id = u.t AND s.sku = u.k;
END $$;
