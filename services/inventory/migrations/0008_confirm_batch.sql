-- the order-event consumer's confirms, a batch at a time (README.md,
-- "Confirm, release, expiry": "Paid orders in batches"). for each event in
-- array order: the reservation is locked; an ACTIVE one not yet due is
-- confirmed as inv_resolve_lines does it (its stock rows locked in sku
-- order, one audit row per line, flash-sale counters moved) and the event
-- gets a row (ok) followed by one row per change; anything else (no
-- reservation, already resolved, due to expire first) gets a row (not ok)
-- and is left untouched for the caller's per-event path, which knows those
-- cases. so is every later event of an order once one of its events was
-- left: an order's events keep their order. one statement per batch
-- instead of three round trips per event.
CREATE FUNCTION inv_confirm_batch(p_tenant text[], p_order text[], p_principal text)
RETURNS TABLE (ev int, ok boolean, ch stock_change) LANGUAGE plpgsql AS $$
DECLARE
  st int;
  due boolean;
  c stock_change;
  left_keys text[] := '{}';
  k text;
BEGIN
  FOR i IN 1 .. coalesce(array_length(p_order, 1), 0) LOOP
    k := p_tenant[i] || E'\x1f' || p_order[i];
    st := NULL;
    IF NOT (k = ANY (left_keys)) THEN
      SELECT x.state, x.expires_at <= now() INTO st, due FROM reservation x
       WHERE x.tenant_id = p_tenant[i] AND x.order_id = p_order[i] FOR UPDATE;
    END IF;
    IF st IS NULL OR st <> 1 OR due THEN
      left_keys := left_keys || k;
      ev := i; ok := false; ch := NULL;
      RETURN NEXT;
      CONTINUE;
    END IF;
    ev := i; ok := true; ch := NULL;
    RETURN NEXT;
    FOR c IN SELECT * FROM inv_resolve_lines(p_tenant[i], p_order[i], 2, p_principal) LOOP
      ch := c;
      RETURN NEXT;
    END LOOP;
  END LOOP;
END $$;
