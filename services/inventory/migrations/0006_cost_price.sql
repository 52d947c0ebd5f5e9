-- cost price per sku (README.md, "Cost and margin"). the cost lives on the
-- stock row, which every reservation already reads and locks, so Reserve
-- gets it without another lookup; a reservation line keeps the cost it was
-- made with, so a later SetCost never changes an order's recorded cost.
-- adding columns with constant defaults does not rewrite the table.
ALTER TABLE stock
  ADD COLUMN unit_cost bigint NOT NULL DEFAULT 0 CHECK (unit_cost >= 0),
  ADD COLUMN cost_currency text COLLATE "C" NOT NULL DEFAULT '',
  ADD COLUMN cost_version bigint NOT NULL DEFAULT 0;

-- cost_currency NULL means "not given by the writer": the trigger below
-- fills it from the stock row (the flash-sale path, inv_reserve_batch,
-- inserts lines without it). the batch path writes both columns itself,
-- so the trigger's WHEN clause skips it without calling the function.
-- rows from before this migration read as no cost ('').
ALTER TABLE reservation_line
  ADD COLUMN unit_cost bigint NOT NULL DEFAULT 0,
  ADD COLUMN cost_currency text COLLATE "C";

CREATE FUNCTION inv_line_cost() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  SELECT s.unit_cost, s.cost_currency INTO NEW.unit_cost, NEW.cost_currency FROM stock s
   WHERE s.tenant_id = NEW.tenant_id AND s.sku = NEW.sku;
  IF NOT FOUND THEN
    NEW.unit_cost := 0;
    NEW.cost_currency := '';
  END IF;
  RETURN NEW;
END $$;
CREATE TRIGGER reservation_line_cost BEFORE INSERT ON reservation_line
  FOR EACH ROW WHEN (NEW.cost_currency IS NULL) EXECUTE FUNCTION inv_line_cost();

-- the cost audit trail: one row per SetCost, keyed for idempotency by
-- (tenant, request_id); request_body is the canonical request.
CREATE TABLE cost_change (
  change_id         uuid        PRIMARY KEY DEFAULT uuid7(),
  tenant_id         text        COLLATE "C" NOT NULL,
  sku               text        COLLATE "C" NOT NULL,
  unit_cost         bigint      NOT NULL CHECK (unit_cost >= 0),
  currency          text        COLLATE "C" NOT NULL,
  previous_cost     bigint      NOT NULL,
  previous_currency text        COLLATE "C" NOT NULL,
  cost_version      bigint      NOT NULL,
  request_id        text        COLLATE "C" NOT NULL,
  request_body      text        NOT NULL,
  reason            text        NOT NULL,
  actor             text        NOT NULL,
  principal         text        NOT NULL,
  occurred_at       timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX cost_change_request ON cost_change (tenant_id, request_id);
CREATE INDEX cost_change_sku ON cost_change (tenant_id, sku, cost_version);

-- SetCost in one round trip. verdict: 0 applied, 1 replay of request_id,
-- 2 request_id reused with another body, 3 cost_version mismatch, 4 sku
-- never stocked. the row returned is the change (applied or replayed) and
-- the sku's cost after it.
CREATE FUNCTION inv_set_cost(p_tenant text, p_sku text, p_cost bigint, p_currency text,
                             p_expected bigint, p_request text, p_body text, p_reason text,
                             p_actor text, p_principal text)
RETURNS TABLE (verdict int, change_id text, sku text, unit_cost bigint, currency text,
               previous_cost bigint, previous_currency text, cost_version bigint,
               request_id text, reason text, actor text, principal text, at_ms bigint)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
  c cost_change;
  s stock;
  v int := 0;
BEGIN
  SELECT * INTO c FROM cost_change x WHERE x.tenant_id = p_tenant AND x.request_id = p_request;
  IF FOUND THEN
    v := CASE WHEN c.request_body = p_body THEN 1 ELSE 2 END;
  ELSE
    SELECT * INTO s FROM stock x WHERE x.tenant_id = p_tenant AND x.sku = p_sku FOR UPDATE;
    IF NOT FOUND THEN
      v := 4;
    ELSIF p_expected > 0 AND s.cost_version <> p_expected THEN
      v := 3;
    ELSE
      UPDATE stock x SET unit_cost = p_cost, cost_currency = p_currency,
                         cost_version = x.cost_version + 1
       WHERE x.tenant_id = p_tenant AND x.sku = p_sku;
      INSERT INTO cost_change (tenant_id, sku, unit_cost, currency, previous_cost,
                               previous_currency, cost_version, request_id, request_body,
                               reason, actor, principal)
      VALUES (p_tenant, p_sku, p_cost, p_currency, s.unit_cost, s.cost_currency,
              s.cost_version + 1, p_request, p_body, p_reason, p_actor, p_principal)
      RETURNING * INTO c;
    END IF;
  END IF;
  IF v >= 2 THEN
    RETURN QUERY SELECT v, ''::text, ''::text, 0::bigint, ''::text, 0::bigint, ''::text,
                        0::bigint, ''::text, ''::text, ''::text, ''::text, 0::bigint;
    RETURN;
  END IF;
  RETURN QUERY SELECT v, c.change_id::text, c.sku, c.unit_cost, c.currency, c.previous_cost,
                      c.previous_currency, c.cost_version, c.request_id, c.reason, c.actor,
                      c.principal, (extract(epoch FROM c.occurred_at) * 1000)::bigint;
END $$;
