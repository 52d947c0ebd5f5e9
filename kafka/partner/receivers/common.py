"""Shared parts of the reference receivers for commerce partner events.

A partner can copy this directory (with ../schema/) and adapt it. It holds:

- schema validation of one CloudEvent against
  ../schema/commission-event.v1.schema.json (jsonschema, draft 2020-12),
  plus the one rule the receivers check beyond the schema: the channel id
  agrees between `partitionkey` and `data.channel_id`;
- `verify()`: the webhook signature check (HMAC-SHA256, several secrets
  during a rotation, a replay window);
- `DedupStore`: the ids of the events already applied, in memory or in a
  sqlite3 file, kept in the same transaction as the statement they changed;
- `Statement`: a running statement per (tenant, channel, currency), in
  integer minor units (never float).

See ../README.md ("Receiving: reference receivers") for the contract.
"""

import datetime
import hashlib
import hmac
import json
import os
import pathlib
import sqlite3
import threading

import jsonschema

TYPE_PREFIX = "com.commerce.commission.v1."
SCHEMA_PATH = pathlib.Path(__file__).resolve().parent.parent / "schema" / \
    "commission-event.v1.schema.json"

# ---------------------------------------------------------------- schema

_validator = None


def validator():
    """the schema's validator (built once; thread-safe to use)"""
    global _validator
    if _validator is None:
        path = pathlib.Path(os.environ.get("PARTNER_SCHEMA", SCHEMA_PATH))
        schema = json.loads(path.read_text(encoding="utf-8"))
        cls = jsonschema.Draft202012Validator
        _validator = cls(schema, format_checker=cls.FORMAT_CHECKER)
    return _validator


def event_problems(doc):
    """why `doc` (parsed JSON) is not a valid event: a list of strings,
    empty when it is one. Unknown types and fields are valid (the contract
    is open for additive change); readers skip what they do not know."""
    if not isinstance(doc, dict):
        return ["not a JSON object"]
    errors = sorted(validator().iter_errors(doc), key=lambda e: list(e.path))
    problems = [f"{'/'.join(map(str, e.path)) or '(root)'}: {e.message}" for e in errors]
    if problems:
        return problems
    data = doc["data"]
    if "channel_id" in data and data["channel_id"] != doc["partitionkey"]:
        problems.append("partitionkey differs from data.channel_id")
    return problems


def parse_event(body):
    """bytes -> (doc, problems). UTF-8 JSON, then the schema."""
    try:
        doc = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        return None, [f"not UTF-8 JSON: {e}"]
    return doc, event_problems(doc)


def channel_of(doc):
    """the channel an event is about (data.channel_id, else partitionkey)"""
    data = doc.get("data")
    if isinstance(data, dict) and isinstance(data.get("channel_id"), str):
        return data["channel_id"]
    return doc.get("partitionkey")


def log_record(doc, received_at=None):
    """the line the receivers' --log writes per accepted new event"""
    return {
        "id": doc["id"],
        "type": doc["type"],
        "channel": channel_of(doc),
        "time": doc["time"],
        "received_at": received_at or utc_now(),
    }


def utc_now():
    """now as RFC 3339 UTC with milliseconds and a Z"""
    now = datetime.datetime.now(datetime.timezone.utc)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"


class JsonLog:
    """append-only JSON lines file, one line per call, flushed at once
    (shared by the threads of a receiver)"""

    def __init__(self, path):
        self._lock = threading.Lock()
        self._f = open(path, "a", encoding="utf-8") if path else None

    def write(self, record):
        if self._f is None:
            return
        line = json.dumps(record, separators=(",", ":"), ensure_ascii=False)
        with self._lock:
            self._f.write(line + "\n")
            self._f.flush()

    def close(self):
        if self._f is not None:
            self._f.close()

# ------------------------------------------------------------ signatures


SIGNATURE_HEADER = "Commerce-Signature"
DEFAULT_TOLERANCE = 300  # seconds: the replay window

# verify()'s reasons, and the HTTP status a receiver answers for each
OK = "ok"
MISSING = "missing signature"
MALFORMED = "malformed signature"
MISMATCH = "no signature matches a configured secret"
STALE = "timestamp outside the tolerance"
STATUS = {OK: 204, MISSING: 401, MALFORMED: 401, MISMATCH: 401, STALE: 400}


def sign(secret, t, body):
    """the lowercase hex HMAC-SHA256 of `<t>.<body>` keyed with the UTF-8
    bytes of `secret` (what the sender puts in each v1=)"""
    msg = str(int(t)).encode("ascii") + b"." + body
    return hmac.new(secret.encode("utf-8"), msg, hashlib.sha256).hexdigest()


def signature_header(secrets, t, body):
    """a Commerce-Signature value as the sender builds it: one v1 per
    secret, in the order given (the new secret first)"""
    return ",".join([f"t={int(t)}"] + [f"v1={sign(s, t, body)}" for s in secrets])


def _header(headers, name):
    """a header from a mapping, case-insensitively (dict, or the
    email.message.Message of http.server, whose get is case-insensitive)"""
    if hasattr(headers, "get_all"):
        return headers.get(name)
    for k, v in headers.items():
        if k.lower() == name.lower():
            return v
    return None


def parse_signature(value):
    """`t=<unix seconds>,v1=<hex>[,v1=<hex>...]` -> (t, [hex...]) or None.
    Other schemes (v0=, a future v2=) are ignored."""
    t, sigs = None, []
    for part in value.split(","):
        key, sep, val = part.strip().partition("=")
        if not sep:
            return None
        if key == "t":
            if t is not None or not val.isascii() or not val.isdigit():
                return None
            t = int(val)
        elif key == "v1":
            sigs.append(val.lower())
    if t is None or not sigs:
        return None
    return t, sigs


def verify(headers_or_sig_header, body, secrets, now, tolerance=DEFAULT_TOLERANCE):
    """check a webhook delivery's signature.

    headers_or_sig_header: the request's headers (a mapping) or the
    Commerce-Signature value itself; body: the raw body bytes, exactly as
    received (verify before parsing); secrets: every secret currently
    configured (during a rotation, old and new); now: unix seconds.

    Returns (ok, reason): ok is True when any v1 matches any secret and
    |now - t| <= tolerance; reason is one of OK, MISSING, MALFORMED,
    MISMATCH, STALE, and STATUS[reason] the status to answer.
    """
    value = headers_or_sig_header
    if value is not None and not isinstance(value, str):
        value = _header(value, SIGNATURE_HEADER)
    if not value:
        return False, MISSING
    parsed = parse_signature(value)
    if parsed is None:
        return False, MALFORMED
    t, sigs = parsed
    # compare every candidate with every secret in constant time; no early
    # exit that would tell which one matched
    matched = False
    for secret in secrets:
        expected = sign(secret, t, body)
        for sig in sigs:
            if hmac.compare_digest(expected, sig):
                matched = True
    if not matched:
        return False, MISMATCH
    # the timestamp is signed, so it is checked after the signature: a
    # stale but authentic delivery is a replay (or a clock problem), 400
    if abs(now - t) > tolerance:
        return False, STALE
    return True, OK

# ----------------------------------------------------------------- money


def minor(money):
    """a Money object -> (int minor units, currency). amount_minor is a
    decimal string; int() of it is exact at any size (never float)."""
    return int(money["amount_minor"]), money["currency"]

# ------------------------------------------------------------- statement


class Statement:
    """a running statement per (tenant, channel, currency), from the events
    applied in order. All amounts are integer minor units.

    accrued      Σ commission.amount of `accrued`
    clawed_back  Σ clawback_amount of `clawed_back`
    adjustments  Σ adjustment.amount of `adjusted` (signed)
      of which clawback_adjustments: kind ADJUSTMENT_KIND_CLAWBACK. A
      refund after PAYABLE (or SETTLED) is announced twice: `clawed_back`
      on the commission AND a negative CLAWBACK adjustment that nets it
      from the next payout (services/commission/README.md, "Refunds after
      PAYABLE"), so net leaves those out.
    net          accrued - clawed_back + (adjustments - clawback_adjustments):
                 what the channel has earned, net of refunds
    payable      what became payable: a commission's net_amount at its
                 `payable` (its payable figure; later refunds come as
                 CLAWBACK adjustments), an adjustment's amount at its
                 `adjustment_payable`, or at `adjusted` when posted PAYABLE
    settled      Σ the payable figure of each `settled` commission (what the
                 payout paid for it; its net_amount when its `payable` was
                 not seen). Adjustments settle with their payout, unannounced.
    paid_out     Σ payout.amount of `payout_paid` (commissions and
                 adjustments netted)
    counts       events per type (short name), unknown types included
    """

    FIELDS = ("accrued", "clawed_back", "adjustments", "clawback_adjustments",
              "payable", "settled", "paid_out")

    def __init__(self):
        self.rows = {}        # (tenant, channel, currency) -> row dict
        self.payable_of = {}  # commission_id -> payable figure (minor units)
        self.unknown = 0      # events of types this code does not know

    def _row(self, tenant, channel, currency):
        key = (tenant, channel, currency)
        if key not in self.rows:
            self.rows[key] = dict({f: 0 for f in self.FIELDS}, counts={})
        return self.rows[key]

    def apply(self, doc):
        """apply one valid, new event (dedup first). Returns False for a
        type it does not know (skipped, as the contract asks)."""
        kind = doc["type"][len(TYPE_PREFIX):] if doc["type"].startswith(TYPE_PREFIX) else None
        data = doc["data"]
        tenant, channel = doc["tenantid"], data.get("channel_id", doc["partitionkey"])
        if kind in ("accrued", "payable", "settled", "clawed_back"):
            c = data["commission"]
            amount, cur = minor(c["amount"])
            row = self._row(tenant, channel, cur)
            if kind == "accrued":
                row["accrued"] += amount
            elif kind == "payable":
                net, _ = minor(c["net_amount"])
                self.payable_of[c["commission_id"]] = net
                row["payable"] += net
            elif kind == "settled":
                net, _ = minor(c["net_amount"])
                row["settled"] += self.payable_of.pop(c["commission_id"], net)
            else:
                back, cur = minor(data["clawback_amount"])
                row["clawed_back"] += back
        elif kind in ("adjusted", "adjustment_payable"):
            a = data["adjustment"]
            amount, cur = minor(a["amount"])  # signed
            row = self._row(tenant, channel, cur)
            if kind == "adjusted":
                row["adjustments"] += amount
                if a["kind"] == "ADJUSTMENT_KIND_CLAWBACK":
                    row["clawback_adjustments"] += amount
                if a["state"] == "COMMISSION_STATE_PAYABLE":
                    row["payable"] += amount  # payable at once
            else:
                row["payable"] += amount
        elif kind in ("payout_created", "payout_paid", "payout_failed"):
            amount, cur = minor(data["payout"]["amount"])
            row = self._row(tenant, channel, cur)
            if kind == "payout_paid":
                row["paid_out"] += amount
        else:
            self.unknown += 1
            return False
        row["counts"][kind] = row["counts"].get(kind, 0) + 1
        return True

    @staticmethod
    def net(row):
        return (row["accrued"] - row["clawed_back"]
                + row["adjustments"] - row["clawback_adjustments"])

    def to_json(self):
        """JSON-ready: a list of rows, amounts as decimal strings (like the
        events), plus net"""
        out = []
        for (tenant, channel, cur), row in sorted(self.rows.items()):
            r = {"tenant": tenant, "channel": channel, "currency": cur}
            r.update({f: str(row[f]) for f in self.FIELDS})
            r["net"] = str(self.net(row))
            r["counts"] = dict(sorted(row["counts"].items()))
            out.append(r)
        return {"statements": out, "unknown_types": self.unknown}

    def dump(self):
        """the whole state (for DedupStore's file), JSON-ready"""
        return {"rows": [[list(k), v] for k, v in self.rows.items()],
                "payable_of": self.payable_of, "unknown": self.unknown}

    def load(self, state):
        self.rows = {tuple(k): v for k, v in state["rows"]}
        self.payable_of = dict(state["payable_of"])
        self.unknown = state["unknown"]

    def render(self):
        """a human-readable table"""
        lines = []
        for r in self.to_json()["statements"]:
            lines.append(f"{r['tenant']} / {r['channel']} ({r['currency']}, minor units): "
                         f"accrued {r['accrued']}, clawed back {r['clawed_back']}, "
                         f"adjustments {r['adjustments']} "
                         f"(clawbacks {r['clawback_adjustments']}), net {r['net']}; "
                         f"payable {r['payable']}, settled {r['settled']}, "
                         f"paid out {r['paid_out']}; events {r['counts']}")
        if self.unknown:
            lines.append(f"events of unknown types skipped: {self.unknown}")
        return "\n".join(lines) or "(no events yet)"

# ----------------------------------------------------------------- dedup


class DedupStore:
    """the ids of the events applied, with the statement they built.

    In memory by default; with `path`, a sqlite3 file holding the ids and
    the statement, written in ONE transaction per event, so after a crash
    either both the id and its effect are there or neither (a redelivery
    then applies it again). Keep ids at least as long as events can come
    back (the topic's 30 days of retention, a replay); `prune()` drops
    older ones.
    """

    def __init__(self, statement, path=None):
        self.statement = statement
        self._lock = threading.Lock()
        self._ids = set()
        self._db = None
        if path:
            # one connection shared by the server's threads, under _lock
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("CREATE TABLE IF NOT EXISTS applied "
                             "(id TEXT PRIMARY KEY, received_at TEXT NOT NULL)")
            self._db.execute("CREATE TABLE IF NOT EXISTS statement "
                             "(one INTEGER PRIMARY KEY CHECK (one = 1), state TEXT NOT NULL)")
            row = self._db.execute("SELECT state FROM statement").fetchone()
            if row:
                statement.load(json.loads(row[0]))

    def seen(self, event_id):
        with self._lock:
            return self._known(event_id)

    def _known(self, event_id):
        if event_id in self._ids:
            return True
        if self._db is not None:
            return self._db.execute("SELECT 1 FROM applied WHERE id = ?",
                                    (event_id,)).fetchone() is not None
        return False

    def apply(self, doc, received_at=None):
        """apply a valid event once: returns True when it was new (the
        statement changed and the id is kept), False for a duplicate"""
        with self._lock:
            if self._known(doc["id"]):
                return False
            received_at = received_at or utc_now()
            if self._db is None:
                self.statement.apply(doc)
                self._ids.add(doc["id"])
                return True
            before = json.dumps(self.statement.dump())
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self.statement.apply(doc)
                self._db.execute("INSERT INTO applied (id, received_at) VALUES (?, ?)",
                                 (doc["id"], received_at))
                self._db.execute("INSERT OR REPLACE INTO statement (one, state) VALUES (1, ?)",
                                 (json.dumps(self.statement.dump()),))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                self.statement.load(json.loads(before))  # undo in memory too
                raise
            return True

    def prune(self, older_than):
        """forget ids received before `older_than` (RFC 3339 string)"""
        if self._db is not None:
            with self._lock:
                self._db.execute("DELETE FROM applied WHERE received_at < ?", (older_than,))

    def close(self):
        if self._db is not None:
            self._db.close()
