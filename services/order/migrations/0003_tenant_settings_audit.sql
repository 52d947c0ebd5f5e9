-- tenant settings become an admin rpc (PutTenantSettings): a revision for
-- compare-and-set and who changed them last, and the audit trail. rows
-- written by sql before this migration start at revision 1 with no
-- updated_by.
ALTER TABLE tenant_settings
  ADD COLUMN revision   bigint NOT NULL DEFAULT 1 CHECK (revision >= 1),
  ADD COLUMN updated_by text   NOT NULL DEFAULT '';

-- one row per PutTenantSettings: who (actor as the caller named it, the
-- authenticated principal), when, why, the settings before (NULL: the
-- tenant had none, the service defaults applied) and after. it is also the
-- idempotency record of the call: (tenant_id, request_id) is unique and
-- body_hash tells a retry (same body) from a reused key (another body).
CREATE TABLE tenant_settings_changes (
  tenant_id                    text COLLATE "C" NOT NULL,
  request_id                   text COLLATE "C" NOT NULL,
  change_id                    uuid        NOT NULL UNIQUE,
  body_hash                    text        NOT NULL,
  revision                     bigint      NOT NULL CHECK (revision >= 1),
  old_payment_timeout_s        int,
  old_flash_payment_timeout_s  int,
  old_revision                 bigint      NOT NULL DEFAULT 0,
  new_payment_timeout_s        int         NOT NULL
    CHECK (new_payment_timeout_s BETWEEN 60 AND 259200),
  new_flash_payment_timeout_s  int         NOT NULL
    CHECK (new_flash_payment_timeout_s BETWEEN 60 AND 259200),
  actor                        text        NOT NULL,
  principal                    text        NOT NULL DEFAULT '',
  reason                       text        NOT NULL,
  changed_at                   timestamptz NOT NULL,
  PRIMARY KEY (tenant_id, request_id),
  CONSTRAINT tenant_settings_changes_old_both CHECK (
    (old_payment_timeout_s IS NULL) = (old_flash_payment_timeout_s IS NULL))
);
CREATE INDEX tenant_settings_changes_by_time ON tenant_settings_changes (tenant_id, changed_at);
