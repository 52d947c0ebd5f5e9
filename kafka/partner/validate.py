#!/usr/bin/python3
"""ctest kafka.partner_schema: the partner contract holds together.

- the schema is a valid JSON Schema (draft 2020-12);
- every example in examples/ validates, uses only fields the schema
  declares, and keeps the contract's invariants (key = channel, subject =
  the commission, adjustment or payout, amounts add up, one currency);
- there is one example per known event type;
- deliberately broken documents, made by editing the examples, are rejected
  by the schema.

Run with Debian's python3 (python3-jsonschema): /usr/bin/python3 validate.py

validate.py --records [--key KEY] checks records read from the topic
instead: one `kcat -C -J` line per record on stdin (key, payload, headers).
each payload must validate and keep the invariants, the key must be the
channel id, the content-type header application/cloudevents+json and no
ce_* binary-mode header may be present. with --key only records of that key
are checked (the others are skipped); at least one record must be checked.
with --internal the records are the internal topic's
(commerce.commission.partner.v1, read by the partner feed, never by
partners): they also carry the envelope as binary-mode headers (ce_id,
ce_specversion, ce_type, ce_source, ce_time, tenant-id; traceparent when
the value has one), each equal to the value's attribute.
"""
import copy
import json
import pathlib
import sys

try:
    import jsonschema
except ImportError:
    print("validate.py: python3-jsonschema is missing (scripts/install-deps.sh)", file=sys.stderr)
    sys.exit(1)

HERE = pathlib.Path(__file__).resolve().parent
SCHEMA_PATH = HERE / "schema" / "commission-event.v1.schema.json"
EXAMPLES = HERE / "examples"
TYPE_PREFIX = "com.commerce.commission.v1."
COMMISSION_TYPES = {"accrued", "payable", "settled", "clawed_back"}
ADJUSTMENT_TYPES = {"adjusted", "adjustment_payable"}
PAYOUT_TYPES = {"payout_created", "payout_paid", "payout_failed"}
KNOWN_TYPES = COMMISSION_TYPES | ADJUSTMENT_TYPES | PAYOUT_TYPES

passed = 0
failed = 0


def check(ok, what):
    global passed, failed
    if ok:
        passed += 1
        print(f"ok   {what}")
    else:
        failed += 1
        print(f"FAIL {what}")


def declared_names(node, out):
    """every property name declared anywhere in the schema"""
    if isinstance(node, dict):
        props = node.get("properties")
        if isinstance(props, dict):
            out.update(props.keys())
        for v in node.values():
            declared_names(v, out)
    elif isinstance(node, list):
        for v in node:
            declared_names(v, out)
    return out


def used_names(doc, out, path=""):
    """(path, name) of every object key in a document"""
    if isinstance(doc, dict):
        for k, v in doc.items():
            out.append((path, k))
            used_names(v, out, f"{path}/{k}")
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            used_names(v, out, f"{path}/{i}")
    return out


def amount(m):
    return int(m["amount_minor"])


def adjustment_invariants(doc):
    """adjusted, adjustment_payable"""
    errs = []
    data = doc["data"]
    a = data["adjustment"]
    if doc["partitionkey"] != data["channel_id"] or a["channel_id"] != data["channel_id"]:
        errs.append("partitionkey, data.channel_id and adjustment.channel_id differ")
    if doc["subject"] != a["adjustment_id"]:
        errs.append("subject is not adjustment.adjustment_id")
    if (a["kind"] == "ADJUSTMENT_KIND_PERIOD_CLOSE") == ("order_id" in a):
        errs.append("order_id present exactly for every kind but PERIOD_CLOSE")
    if a["kind"] == "ADJUSTMENT_KIND_PARENT_SHARE" and "child_channel_id" not in a:
        errs.append("a PARENT_SHARE without child_channel_id")
    if a["kind"] not in ("ADJUSTMENT_KIND_PARENT_SHARE", "ADJUSTMENT_KIND_PERIOD_CLOSE") \
            and "child_channel_id" in a:
        errs.append("child_channel_id on an adjustment that is no parent's")
    if a["kind"] == "ADJUSTMENT_KIND_CLAWBACK":
        if amount(a["amount"]) >= 0:
            errs.append("a CLAWBACK adjustment is not negative")
        if "refund_id" not in a:
            errs.append("a CLAWBACK adjustment without refund_id")
    if (a["state"] == "COMMISSION_STATE_FROZEN") == ("payable_at" in a):
        errs.append("payable_at present exactly when not FROZEN")
    return errs


def payout_invariants(doc):
    """payout_created, payout_paid, payout_failed"""
    errs = []
    data = doc["data"]
    p = data["payout"]
    if doc["partitionkey"] != data["channel_id"] or p["channel_id"] != data["channel_id"]:
        errs.append("partitionkey, data.channel_id and payout.channel_id differ")
    if doc["subject"] != p["payout_id"]:
        errs.append("subject is not payout.payout_id")
    if int(p["commissions"]) < 0 or int(p["adjustments"]) < 0:
        errs.append("negative item counts")
    if int(p["commissions"]) + int(p["adjustments"]) == 0:
        errs.append("a payout of no items")
    if "provider_reference" in p and "failure_reason" in p:
        errs.append("both provider_reference and failure_reason")
    return errs


def invariants(doc):
    """the rules the schema cannot say; returns a list of violations"""
    kind = doc["type"][len(TYPE_PREFIX):] if doc["type"].startswith(TYPE_PREFIX) else ""
    if kind in ADJUSTMENT_TYPES:
        return adjustment_invariants(doc)
    if kind in PAYOUT_TYPES:
        return payout_invariants(doc)
    if kind not in COMMISSION_TYPES:
        return []  # a type this checker does not know: readers skip it
    errs = []
    data = doc["data"]
    c = data["commission"]
    if doc["partitionkey"] != data["channel_id"] or c["channel_id"] != data["channel_id"]:
        errs.append("partitionkey, data.channel_id and commission.channel_id differ")
    if doc["subject"] != c["commission_id"]:
        errs.append("subject is not commission.commission_id")
    monies = [c[k] for k in ("order_amount", "period_sales_before", "amount",
                             "clawed_back_amount", "net_amount")]
    for b in c["brackets"]:
        monies += [b["from_sales"], b["sales"], b["commission"]]
    if "clawback_amount" in data:
        monies.append(data["clawback_amount"])
    if len({m["currency"] for m in monies}) != 1:
        errs.append("more than one currency")
    if amount(c["net_amount"]) != amount(c["amount"]) - amount(c["clawed_back_amount"]):
        errs.append("net_amount != amount - clawed_back_amount")
    if amount(c["clawed_back_amount"]) > amount(c["amount"]):
        errs.append("clawed_back_amount > amount")
    if sum(amount(b["commission"]) for b in c["brackets"]) != amount(c["amount"]):
        errs.append("bracket commissions do not sum to amount")
    if sum(amount(b["sales"]) for b in c["brackets"]) != amount(c["order_amount"]):
        errs.append("bracket sales do not sum to order_amount")
    for b in c["brackets"]:
        # each portion earns its bracket's rate, rounded to the minor unit
        exact = amount(b["sales"]) * b["rate_bps"] / 10000
        if abs(amount(b["commission"]) - exact) >= 1:
            errs.append(f"bracket from {b['from_sales']['amount_minor']}: commission is not sales * rate")
    if doc["type"] == TYPE_PREFIX + "settled" and data["payout_id"] != c.get("payout_id"):
        errs.append("payout_id differs from commission.payout_id")
    if doc["type"] == TYPE_PREFIX + "clawed_back":
        if amount(data["clawback_amount"]) > amount(c["clawed_back_amount"]):
            errs.append("clawback_amount exceeds commission.clawed_back_amount")
        if data["after_settlement"] != ("settled_at" in c):
            errs.append("after_settlement disagrees with commission.settled_at")
    return errs


# --- broken documents: (description, example, edit)
def set_path(doc, path, value):
    *parents, last = path
    node = doc
    for p in parents:
        node = node[p]
    if value is DELETE:
        del node[last]
    else:
        node[last] = value


DELETE = object()
BROKEN = [
    ("amount_minor as a JSON number", "accrued",
     ["data", "commission", "amount", "amount_minor"], 94500),
    ("amount_minor with a fraction", "accrued",
     ["data", "commission", "amount", "amount_minor"], "945.00"),
    ("negative money", "accrued",
     ["data", "commission", "order_amount", "amount_minor"], "-1200000"),
    ("lower-case currency", "accrued", ["data", "commission", "amount", "currency"], "cny"),
    ("missing id", "accrued", ["id"], DELETE),
    ("id not a UUIDv7", "accrued", ["id"], "8c1e2f7a-5b9d-4c3e-9f21-0a6b7c8d9e0f"),
    ("specversion 0.3", "accrued", ["specversion"], "0.3"),
    ("wrong source", "accrued", ["source"], "/commerce/order"),
    ("type from another package", "accrued", ["type"], "com.commerce.order.v1.paid"),
    ("datacontenttype protobuf", "accrued", ["datacontenttype"], "application/protobuf"),
    ("time without a zone", "accrued", ["time"], "2026-11-20T02:15:30.112"),
    ("time with an offset instead of Z", "accrued", ["time"], "2026-11-20T10:15:30.112+08:00"),
    ("missing tenantid", "payable", ["tenantid"], DELETE),
    ("missing data", "payable", ["data"], DELETE),
    ("accrued but PAYABLE", "accrued", ["data", "commission", "state"], "COMMISSION_STATE_PAYABLE"),
    ("payable without payable_at", "payable", ["data", "commission", "payable_at"], DELETE),
    ("settled without payout_id", "settled", ["data", "payout_id"], DELETE),
    ("settled but FROZEN", "settled", ["data", "commission", "state"], "COMMISSION_STATE_FROZEN"),
    ("clawback of zero", "clawed_back", ["data", "clawback_amount", "amount_minor"], "0"),
    ("after_settlement as a string", "clawed_back", ["data", "after_settlement"], "true"),
    ("clawed back without refund_id", "clawed_back", ["data", "refund_id"], DELETE),
    ("rate above 100 %", "accrued", ["data", "commission", "brackets", 0, "rate_bps"], 10001),
    ("no brackets", "accrued", ["data", "commission", "brackets"], []),
    ("tier_schedule_revision as a number", "accrued",
     ["data", "commission", "tier_schedule_revision"], 3),
    ("channel id with a space", "accrued", ["data", "channel_id"], "partner 42"),
    ("commission without order_id", "settled", ["data", "commission", "order_id"], DELETE),
    ("order_id not a UUIDv8 (a UUIDv4)", "accrued", ["data", "commission", "order_id"],
     "8c1e2f7a-5b9d-4c3e-9f21-0a6b7c8d9e0f"),
    ("order_id in upper case", "accrued", ["data", "commission", "order_id"],
     "E1D05D68-9690-8A54-B4B1-BCCE4BDA6785"),
    ("adjustment amount of zero", "adjusted", ["data", "adjustment", "amount", "amount_minor"], "0"),
    ("adjustment amount as a number", "adjusted",
     ["data", "adjustment", "amount", "amount_minor"], -27000),
    ("adjustment without kind", "adjusted", ["data", "adjustment", "kind"], DELETE),
    ("true-up without order_id", "adjusted", ["data", "adjustment", "order_id"], DELETE),
    ("period close with an order_id", "adjusted", ["data", "adjustment", "kind"],
     "ADJUSTMENT_KIND_PERIOD_CLOSE"),
    ("adjustment kind not an enum name", "adjusted", ["data", "adjustment", "kind"], "true_up"),
    ("adjusted but SETTLED", "adjusted", ["data", "adjustment", "state"],
     "COMMISSION_STATE_SETTLED"),
    ("adjusted without the adjustment", "adjusted", ["data", "adjustment"], DELETE),
    ("adjustment_payable without payable_at", "adjustment_payable",
     ["data", "adjustment", "payable_at"], DELETE),
    ("adjustment_payable but FROZEN", "adjustment_payable", ["data", "adjustment", "state"],
     "COMMISSION_STATE_FROZEN"),
    ("payout of zero", "payout_created", ["data", "payout", "amount", "amount_minor"], "0"),
    ("payout_created but PAID", "payout_created", ["data", "payout", "state"],
     "PAYOUT_STATE_PAID"),
    ("payout without created_at", "payout_created", ["data", "payout", "created_at"], DELETE),
    ("payout commissions as a number", "payout_created", ["data", "payout", "commissions"], 1),
    ("payout_paid without provider_reference", "payout_paid",
     ["data", "payout", "provider_reference"], DELETE),
    ("payout_paid without reported_at", "payout_paid", ["data", "payout", "reported_at"], DELETE),
    ("payout_failed without failure_reason", "payout_failed",
     ["data", "payout", "failure_reason"], DELETE),
    ("payout_failed but PENDING", "payout_failed", ["data", "payout", "state"],
     "PAYOUT_STATE_PENDING"),
    ("payout id not a UUIDv7", "payout_paid", ["data", "payout", "payout_id"],
     "8c1e2f7a-5b9d-4c3e-9f21-0a6b7c8d9e0f"),
]


def main():
    schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    try:
        jsonschema.Draft202012Validator.check_schema(schema)
        check(True, "schema is valid draft 2020-12")
    except jsonschema.SchemaError as e:
        check(False, f"schema is valid draft 2020-12: {e.message}")
        return
    validator = jsonschema.Draft202012Validator(
        schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)
    declared = declared_names(schema, set())

    examples = {}
    for path in sorted(EXAMPLES.glob("*.json")):
        doc = json.loads(path.read_text(encoding="utf-8"))
        examples[path.stem] = doc
        errors = sorted(validator.iter_errors(doc), key=lambda e: list(e.path))
        check(not errors, f"examples/{path.name} validates" +
              "".join(f"\n       {'/'.join(map(str, e.path))}: {e.message}" for e in errors))
        if errors:
            continue
        unknown = [f"{p}/{k}" for p, k in used_names(doc, []) if k not in declared]
        check(not unknown, f"examples/{path.name} uses only declared fields {unknown or ''}")
        check(doc["type"] == TYPE_PREFIX + path.stem,
              f"examples/{path.name} is of type {TYPE_PREFIX + path.stem}")
        errs = invariants(doc)
        check(not errs, f"examples/{path.name} keeps the invariants {errs or ''}")

    missing = KNOWN_TYPES - examples.keys()
    check(not missing, f"one example per known type {sorted(missing) or ''}")

    for what, base, path, value in BROKEN:
        if base not in examples:
            check(False, f"rejects {what} (no example {base})")
            continue
        doc = copy.deepcopy(examples[base])
        set_path(doc, path, value)
        check(not validator.is_valid(doc), f"rejects {what}")

    # forward compatibility: additive changes must not break old readers
    doc = copy.deepcopy(examples["accrued"])
    doc["newattr"] = "x"
    doc["data"]["new_field"] = {"a": 1}
    doc["data"]["commission"]["new_field"] = "x"
    check(validator.is_valid(doc), "accepts unknown attributes and fields (additive change)")
    doc = copy.deepcopy(examples["accrued"])
    doc["type"] = TYPE_PREFIX + "something_new"
    doc["data"] = {"anything": True}
    check(validator.is_valid(doc), "accepts an unknown event type (skipped by readers)")


# the internal topic's envelope headers and the attributes they repeat
ENVELOPE_HEADERS = {"ce_id": "id", "ce_specversion": "specversion", "ce_type": "type",
                    "ce_source": "source", "ce_time": "time", "tenant-id": "tenantid"}


def records(only_key, internal):
    """records from kcat -J on stdin (integration.partner_kcat)"""
    schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    validator = jsonschema.Draft202012Validator(
        schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)
    seen = 0
    for n, line in enumerate(sys.stdin, 1):
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            rec = json.loads(line)
        except ValueError as e:
            check(False, f"record {n} is kcat json: {e}")
            continue
        key = rec.get("key")
        if only_key is not None and key != only_key:
            continue
        seen += 1
        where = f"record {rec.get('partition')}/{rec.get('offset')} (key {key})"
        hdrs = rec.get("headers") or []
        names = hdrs[0::2]
        values = dict(zip(hdrs[0::2], hdrs[1::2]))
        ctype = values.get("content-type", "")
        check(ctype.lower().startswith("application/cloudevents+json"),
              f"{where}: content-type header is application/cloudevents+json ({ctype!r})")
        binary = [h for h in names if h.startswith("ce_")]
        if not internal:
            check(not binary, f"{where}: no binary-mode ce_* headers {binary or ''}")
        try:
            doc = json.loads(rec.get("payload") or "")
        except ValueError as e:
            check(False, f"{where}: value is json: {e}")
            continue
        if internal and isinstance(doc, dict):
            for h, attr in ENVELOPE_HEADERS.items():
                check(values.get(h) == doc.get(attr),
                      f"{where}: header {h} equals the value's {attr} "
                      f"({values.get(h)!r} vs {doc.get(attr)!r})")
            if "traceparent" in values or "traceparent" in doc:
                check(values.get("traceparent") == doc.get("traceparent"),
                      f"{where}: header traceparent equals the value's")
        errors = sorted(validator.iter_errors(doc), key=lambda e: list(e.path))
        check(not errors, f"{where}: {doc.get('type')} validates" +
              "".join(f"\n       {'/'.join(map(str, e.path))}: {e.message}" for e in errors))
        if errors:
            continue
        check(key == doc["partitionkey"] == doc["data"]["channel_id"],
              f"{where}: key is the channel id")
        errs = invariants(doc)
        check(not errs, f"{where}: keeps the invariants {errs or ''}")
    check(seen > 0, f"records checked: {seen}")


if len(sys.argv) > 1 and sys.argv[1] == "--records":
    args = sys.argv[2:]
    internal = "--internal" in args
    args = [a for a in args if a != "--internal"]
    records(args[1] if len(args) > 1 and args[0] == "--key" else None, internal)
else:
    main()
print(f"{passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
