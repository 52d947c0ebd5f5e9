#!/usr/bin/env python3
"""ctest kafka.partner_receivers: the reference receivers without a broker.

common.verify(), Statement and DedupStore directly, then
webhook_receiver.py as a process on a free loopback port, sent signed
requests built from ../examples/. Run with the receivers' venv:
scripts/partner-python kafka/partner/receivers/test_receivers.py
"""

import copy
import http.client
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time
import unittest

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import common  # noqa: E402

EXAMPLES = {p.stem: json.loads(p.read_text(encoding="utf-8"))
            for p in sorted((HERE.parent / "examples").glob("*.json"))}
NEW = "whsec_" + "n" * 43   # the secret format; treated as opaque
OLD = "whsec_" + "o" * 43
OTHER = "whsec_" + "x" * 43


def body_of(doc):
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def example(name):
    return copy.deepcopy(EXAMPLES[name])


# ------------------------------------------------------------------ verify

class VerifyTest(unittest.TestCase):
    body = body_of(EXAMPLES["accrued"])
    now = 1_800_000_000

    def test_valid_header_value_and_mapping(self):
        sig = common.signature_header([NEW], self.now, self.body)
        self.assertEqual(common.verify(sig, self.body, [NEW], self.now), (True, common.OK))
        # a mapping is searched case-insensitively
        headers = {"commerce-signature": sig}
        self.assertEqual(common.verify(headers, self.body, [NEW], self.now), (True, common.OK))

    def test_signature_is_hmac_sha256_of_t_dot_body(self):
        import hashlib
        import hmac
        want = hmac.new(NEW.encode(), b"%d." % self.now + self.body, hashlib.sha256).hexdigest()
        self.assertEqual(common.sign(NEW, self.now, self.body), want)
        self.assertEqual(common.verify(f"t={self.now},v1={want}", self.body, [NEW], self.now),
                         (True, common.OK))

    def test_missing_and_malformed(self):
        self.assertEqual(common.verify({}, self.body, [NEW], self.now), (False, common.MISSING))
        self.assertEqual(common.verify(None, self.body, [NEW], self.now), (False, common.MISSING))
        good = common.sign(NEW, self.now, self.body)
        for bad in (f"v1={good}", f"t=abc,v1={good}", f"t={self.now}", "garbage",
                    f"t={self.now},t={self.now},v1={good}", f"t=-5,v1={good}"):
            self.assertEqual(common.verify(bad, self.body, [NEW], self.now),
                             (False, common.MALFORMED), bad)
            self.assertEqual(common.STATUS[common.MALFORMED], 401)

    def test_tampered_body_and_unknown_secret(self):
        sig = common.signature_header([NEW], self.now, self.body)
        tampered = self.body.replace(b"94500", b"94501", 1)
        self.assertNotEqual(tampered, self.body)
        self.assertEqual(common.verify(sig, tampered, [NEW], self.now), (False, common.MISMATCH))
        self.assertEqual(common.verify(sig, self.body, [OTHER], self.now),
                         (False, common.MISMATCH))
        # the timestamp is signed too
        moved = sig.replace(f"t={self.now}", f"t={self.now + 1}")
        self.assertEqual(common.verify(moved, self.body, [NEW], self.now),
                         (False, common.MISMATCH))
        self.assertEqual(common.STATUS[common.MISMATCH], 401)

    def test_tolerance(self):
        sig = common.signature_header([NEW], self.now, self.body)
        for skew, ok in ((0, True), (300, True), (-300, True), (301, False), (-301, False),
                         (600, False)):
            got = common.verify(sig, self.body, [NEW], self.now + skew, 300)
            self.assertEqual(got, (True, common.OK) if ok else (False, common.STALE), skew)
        self.assertEqual(common.STATUS[common.STALE], 400)
        # a stale forgery is a bad signature first (401)
        forged = f"t={self.now - 600},v1={'0' * 64}"
        self.assertEqual(common.verify(forged, self.body, [NEW], self.now),
                         (False, common.MISMATCH))

    def test_rotation(self):
        sig = common.signature_header([NEW, OLD], self.now, self.body)
        self.assertEqual(sig.count("v1="), 2)
        for configured in ([NEW], [OLD], [OLD, NEW], [OTHER, OLD]):
            self.assertEqual(common.verify(sig, self.body, configured, self.now),
                             (True, common.OK), configured)
        self.assertEqual(common.verify(sig, self.body, [OTHER], self.now),
                         (False, common.MISMATCH))

    def test_unknown_schemes_ignored(self):
        good = common.sign(NEW, self.now, self.body)
        sig = f"t={self.now},v0=deadbeef,v2=abc,v1={good}"
        self.assertEqual(common.verify(sig, self.body, [NEW], self.now), (True, common.OK))


# --------------------------------------------------------------- statement

def row(stmt, channel="partner-42", currency="CNY", tenant="shop-cn-01"):
    for r in stmt.to_json()["statements"]:
        if (r["tenant"], r["channel"], r["currency"]) == (tenant, channel, currency):
            return r
    raise AssertionError(f"no statement row for {tenant}/{channel}/{currency}")


class StatementTest(unittest.TestCase):
    def test_examples_in_contract_order(self):
        s = common.Statement()
        for name in ("accrued", "adjusted", "payable", "adjustment_payable", "payout_created",
                     "settled", "payout_paid", "clawed_back", "payout_failed"):
            self.assertTrue(s.apply(example(name)), name)
        r = row(s)
        # by hand: accrued 94500; adjusted -27000 (TRUE_UP, FROZEN); payable:
        # the commission's net 94500 + the adjustment's -27000 when payable;
        # settled: the commission at its payable figure 94500; paid out the
        # payout's 67500; clawed back 23625 after settlement
        self.assertEqual(r["accrued"], "94500")
        self.assertEqual(r["clawed_back"], "23625")
        self.assertEqual(r["adjustments"], "-27000")
        self.assertEqual(r["clawback_adjustments"], "0")
        self.assertEqual(r["payable"], "67500")
        self.assertEqual(r["settled"], "94500")
        self.assertEqual(r["paid_out"], "67500")
        self.assertEqual(r["net"], str(94500 - 23625 - 27000))
        self.assertEqual(r["counts"], {k: 1 for k in EXAMPLES})

    def test_clawback_after_payable_counted_once_in_net(self):
        # a refund after PAYABLE: clawed_back on the commission AND a
        # negative CLAWBACK adjustment, payable at once
        s = common.Statement()
        s.apply(example("accrued"))
        s.apply(example("payable"))
        back = example("clawed_back")
        c = back["data"]["commission"]
        c["state"] = "COMMISSION_STATE_PAYABLE"
        del c["settled_at"], c["payout_id"]
        back["data"]["after_settlement"] = False
        s.apply(back)
        adj = example("adjustment_payable")   # a PAYABLE adjustment
        adj["type"] = common.TYPE_PREFIX + "adjusted"
        a = adj["data"]["adjustment"]
        a["kind"] = "ADJUSTMENT_KIND_CLAWBACK"
        a["amount"]["amount_minor"] = "-23625"
        self.assertEqual(common.event_problems(adj), [])
        s.apply(adj)
        settled = example("settled")  # its net is 70875 now; paid at 94500
        settled["data"]["commission"]["clawed_back_amount"]["amount_minor"] = "23625"
        settled["data"]["commission"]["net_amount"]["amount_minor"] = "70875"
        s.apply(settled)
        r = row(s)
        self.assertEqual(r["clawed_back"], "23625")
        self.assertEqual(r["adjustments"], "-23625")
        self.assertEqual(r["clawback_adjustments"], "-23625")
        self.assertEqual(r["net"], "70875")            # not 47250
        self.assertEqual(r["payable"], "70875")        # 94500 - 23625
        self.assertEqual(r["settled"], "94500")        # its payable figure

    def test_exact_integers_and_currencies(self):
        s = common.Statement()
        big = "9007199254740993"  # 2^53 + 1: a double would round it
        for n in range(3):
            doc = example("accrued")
            doc["data"]["commission"]["amount"]["amount_minor"] = big
            s.apply(doc)
        usd = example("accrued")
        for m in ("order_amount", "period_sales_before", "amount", "clawed_back_amount",
                  "net_amount"):
            usd["data"]["commission"][m]["currency"] = "USD"
        s.apply(usd)
        self.assertEqual(row(s)["accrued"], str(3 * 9007199254740993))
        self.assertEqual(row(s, currency="USD")["accrued"], "94500")
        other = example("payout_paid")
        other["tenantid"] = "shop-de-02"
        s.apply(other)
        self.assertEqual(row(s, tenant="shop-de-02")["paid_out"], "67500")
        self.assertEqual(row(s)["paid_out"], "0")

    def test_unknown_type_skipped(self):
        s = common.Statement()
        doc = example("accrued")
        doc["type"] = common.TYPE_PREFIX + "something_new"
        doc["data"] = {"anything": True}
        self.assertEqual(common.event_problems(doc), [])
        self.assertFalse(s.apply(doc))
        self.assertEqual(s.to_json(), {"statements": [], "unknown_types": 1})

    def test_event_problems(self):
        self.assertEqual(common.event_problems(example("accrued")), [])
        bad = example("accrued")
        bad["data"]["commission"]["amount"]["amount_minor"] = 94500
        self.assertTrue(common.event_problems(bad))
        other = example("payout_paid")
        other["partitionkey"] = "partner-43"
        self.assertIn("partitionkey differs from data.channel_id", common.event_problems(other))
        self.assertTrue(common.parse_event(b"\xff{")[1])
        self.assertTrue(common.parse_event(b"[1]")[1])


class DedupStoreTest(unittest.TestCase):
    def test_memory(self):
        s = common.Statement()
        store = common.DedupStore(s)
        self.assertTrue(store.apply(example("accrued")))
        self.assertFalse(store.apply(example("accrued")))
        self.assertEqual(row(s)["accrued"], "94500")

    def test_file_survives_a_restart(self):
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "dedup.db")
            s = common.Statement()
            store = common.DedupStore(s, path)
            self.assertTrue(store.apply(example("accrued")))
            self.assertTrue(store.apply(example("payout_paid")))
            self.assertFalse(store.apply(example("accrued")))
            store.close()
            s2 = common.Statement()
            store2 = common.DedupStore(s2, path)
            self.assertTrue(store2.seen(EXAMPLES["accrued"]["id"]))
            self.assertFalse(store2.apply(example("payout_paid")))
            self.assertEqual(s2.to_json(), s.to_json())
            self.assertTrue(store2.apply(example("clawed_back")))
            self.assertEqual(row(s2)["net"], "70875")
            store2.close()


# ------------------------------------------------------- webhook_receiver.py

class ReceiverProcess:
    """webhook_receiver.py on a free loopback port"""

    def __init__(self, tmp, *args, env=None, log=None):
        # its own log unless told (a restarted receiver appends to its log)
        self.log = log or tempfile.mktemp(prefix="accepted-", suffix=".jsonl", dir=tmp)
        cmd = [sys.executable, str(HERE / "webhook_receiver.py"), "--listen", "127.0.0.1:0",
               "--log", self.log, "--quiet", *args]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     env=dict(os.environ, **(env or {})), text=True)
        line = self.proc.stdout.readline()
        if "listening on" not in line:
            self.proc.kill()
            raise AssertionError(f"receiver did not start: {line!r} {self.proc.stderr.read()}")
        self.port = int(line.rsplit(":", 1)[1])

    def post(self, body, secrets=(NEW,), t=None, headers=None):
        t = int(time.time()) if t is None else t
        doc_id = None
        try:
            doc_id = json.loads(body)["id"]
        except (ValueError, KeyError, TypeError):
            pass
        h = {"Content-Type": "application/cloudevents+json; charset=UTF-8",
             "Commerce-Delivery-Attempt": "1"}
        if doc_id:
            h["Commerce-Event-Id"] = doc_id
        if secrets:
            h["Commerce-Signature"] = common.signature_header(secrets, t, body)
        h.update(headers or {})
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request("POST", "/webhooks/commerce", body=body, headers=h)
            resp = conn.getresponse()
            resp.read()
            return resp.status
        finally:
            conn.close()

    def statement(self):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request("GET", "/statement")
            return json.loads(conn.getresponse().read())
        finally:
            conn.close()

    def logged(self):
        if not os.path.exists(self.log):
            return []
        with open(self.log, encoding="utf-8") as f:
            return [json.loads(line) for line in f]

    def stop(self):
        self.proc.terminate()
        out, err = self.proc.communicate(timeout=10)
        return self.proc.returncode, out


class WebhookTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.procs = []

    def tearDown(self):
        for p in self.procs:
            if p.proc.poll() is None:
                p.proc.kill()
                p.proc.communicate()
        self.tmp.cleanup()

    def start(self, *args, env=None, log=None):
        p = ReceiverProcess(self.tmp.name, *args, env=env, log=log)
        self.procs.append(p)
        return p

    def test_valid_then_duplicate(self):
        r = self.start("--secret", NEW)
        body = body_of(EXAMPLES["accrued"])
        self.assertIn(r.post(body), (200, 204))
        log = r.logged()
        self.assertEqual([e["id"] for e in log], [EXAMPLES["accrued"]["id"]])
        self.assertEqual(log[0]["type"], EXAMPLES["accrued"]["type"])
        self.assertEqual(log[0]["channel"], "partner-42")
        self.assertEqual(log[0]["time"], EXAMPLES["accrued"]["time"])
        self.assertTrue(log[0]["received_at"].endswith("Z"))
        # the same id again (a retry): acknowledged, not applied twice
        self.assertIn(r.post(body, headers={"Commerce-Delivery-Attempt": "2"}), (200, 204))
        self.assertEqual(len(r.logged()), 1)
        self.assertEqual(r.statement()["statements"][0]["accrued"], "94500")
        code, out = r.stop()
        self.assertEqual(code, 0)
        self.assertIn("accrued 94500", out)

    def test_refusals(self):
        r = self.start("--secret", NEW)
        body = body_of(EXAMPLES["payable"])
        now = int(time.time())
        # one byte changed after signing
        sig = common.signature_header([NEW], now, body)
        tampered = body.replace(b"partner-42", b"partner-43", 1)
        self.assertEqual(r.post(tampered, secrets=None, headers={"Commerce-Signature": sig}), 401)
        self.assertEqual(r.post(body, t=now - 600), 400)       # 10 minutes old
        self.assertEqual(r.post(body, t=now + 600), 400)       # or ahead
        self.assertEqual(r.post(body, secrets=(OTHER,)), 401)  # unknown secret
        self.assertEqual(r.post(body, secrets=None), 401)      # unsigned
        self.assertEqual(r.post(body, secrets=None,
                                headers={"Commerce-Signature": "t=1,v1=zz"}), 401)
        # signed correctly, but not a valid event
        bad = example("payable")
        bad["data"]["commission"]["amount"]["amount_minor"] = 94500
        self.assertEqual(r.post(body_of(bad)), 400)
        self.assertEqual(r.post(b"{not json"), 400)
        # the header's id must be the body's
        self.assertEqual(r.post(body, headers={"Commerce-Event-Id": EXAMPLES["accrued"]["id"]}),
                         400)
        self.assertEqual(r.logged(), [])
        # and the same event, correctly signed, is still accepted
        self.assertEqual(r.post(body), 204)
        self.assertEqual(len(r.logged()), 1)

    def test_rotation_either_secret(self):
        body = body_of(EXAMPLES["settled"])
        old_only = self.start("--secret", OLD)
        new_only = self.start(env={"PARTNER_WEBHOOK_SECRETS": f"{NEW}, {OTHER}"})
        for r in (old_only, new_only):
            self.assertEqual(r.post(body, secrets=(NEW, OLD)), 204)
            self.assertEqual(len(r.logged()), 1)
        self.assertEqual(old_only.post(body_of(EXAMPLES["accrued"]), secrets=(NEW,)), 401)

    def test_statement_after_a_sequence(self):
        r = self.start("--secret", NEW, "--print-every", "2")
        for name in ("accrued", "clawed_back", "adjusted", "payout_paid"):
            self.assertEqual(r.post(body_of(EXAMPLES[name])), 204, name)
        # a redelivery of one of them changes nothing
        self.assertEqual(r.post(body_of(EXAMPLES["clawed_back"])), 204)
        st = r.statement()["statements"]
        self.assertEqual(len(st), 1)
        s = st[0]
        self.assertEqual((s["tenant"], s["channel"], s["currency"]),
                         ("shop-cn-01", "partner-42", "CNY"))
        self.assertEqual(s["accrued"], "94500")
        self.assertEqual(s["clawed_back"], "23625")
        self.assertEqual(s["adjustments"], "-27000")
        self.assertEqual(s["paid_out"], "67500")
        self.assertEqual(s["payable"], "0")   # the adjustment is FROZEN
        self.assertEqual(s["settled"], "0")
        self.assertEqual(s["net"], "43875")   # 94500 - 23625 - 27000
        self.assertEqual(s["counts"], {"accrued": 1, "adjusted": 1, "clawed_back": 1,
                                       "payout_paid": 1})
        self.assertEqual(len(r.logged()), 4)

    def test_dedup_db_survives_a_restart(self):
        db = os.path.join(self.tmp.name, "dedup.db")
        r = self.start("--secret", NEW, "--dedup-db", db)
        self.assertEqual(r.post(body_of(EXAMPLES["accrued"])), 204)
        r.proc.kill()  # no clean shutdown
        r.proc.communicate()
        r2 = self.start("--secret", NEW, "--dedup-db", db, log=r.log)
        self.assertEqual(r2.post(body_of(EXAMPLES["accrued"])), 204)
        self.assertEqual(r2.post(body_of(EXAMPLES["payout_paid"])), 204)
        self.assertEqual([e["id"] for e in r2.logged()],
                         [EXAMPLES["accrued"]["id"], EXAMPLES["payout_paid"]["id"]])
        s = r2.statement()["statements"][0]
        self.assertEqual((s["accrued"], s["paid_out"]), ("94500", "67500"))


if __name__ == "__main__":
    unittest.main(verbosity=2)
