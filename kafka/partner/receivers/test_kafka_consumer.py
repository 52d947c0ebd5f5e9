#!/usr/bin/env python3
"""ctest kafka.partner_kafka_receiver: kafka_consumer.py against a real broker.

The broker: KAFKA_BROKERS, else this checkout's scripts/kafka.sh broker when
it is running; with neither the test is skipped (exit 77). PLAINTEXT: the
SASL listener is not part of scripts/kafka.sh here.

It creates a temporary topic (scripts/kafka.sh topic NAME 1), produces the
example events with kcat as the commission service would (key = channel id,
header content-type), one of them twice (a redelivery), and one record whose
key is not its channel, then runs the consumer twice with one group:
the first run logs each example id once and refuses the bad record (exit
2); the second finds nothing new (the offsets were committed).
Run with the receivers' venv (scripts/partner-python).
"""

import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parents[2]
KAFKA_SH = ROOT / "scripts" / "kafka.sh"
CTYPE = "application/cloudevents+json; charset=UTF-8"
SKIP = 77
passed = failed = 0


def check(ok, what):
    global passed, failed
    print(("ok   " if ok else "FAIL ") + what, flush=True)
    if ok:
        passed += 1
    else:
        failed += 1


def broker():
    if os.environ.get("KAFKA_BROKERS"):
        return os.environ["KAFKA_BROKERS"]
    if subprocess.run([KAFKA_SH, "status"], capture_output=True).returncode == 0:
        return subprocess.run([KAFKA_SH, "bootstrap"], capture_output=True, text=True,
                              check=True).stdout.strip()
    return None


def consume(bootstrap, topic, group, log, tmp):
    cmd = [sys.executable, str(HERE / "kafka_consumer.py"), "--bootstrap", bootstrap,
           "--topic", topic, "--group", group, "--security-protocol", "PLAINTEXT",
           "--from-beginning", "--max-idle", "5", "--log", log,
           "--rejects", os.path.join(tmp, "rejects.jsonl")]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    sys.stdout.write(p.stdout)
    sys.stdout.write(p.stderr)
    return p


def main():
    bootstrap = broker()
    if not bootstrap:
        print("skipped: no broker (set KAFKA_BROKERS or run scripts/kafka.sh start)")
        return SKIP
    examples = [json.loads(p.read_text(encoding="utf-8"))
                for p in sorted((HERE.parent / "examples").glob("*.json"))]
    tenant, channel = examples[0]["tenantid"], examples[0]["partitionkey"]
    topic = f"commerce.partner.v1.{tenant}.{channel}-test{os.getpid()}-{int(time.time())}"
    group = topic + ".test"
    subprocess.run([KAFKA_SH, "topic", topic, "1"], check=True)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            # key TAB value per line, values on one line each
            records = [(d["partitionkey"], d) for d in examples]
            records.append((channel, examples[0]))  # a redelivery: same id
            bad = dict(examples[0], id="01a1f6bc-c9d0-7e34-b737-79ddb0b81bf1")
            records.append(("partner-43", bad))      # key is not its channel
            lines = "".join(k + "\t" + json.dumps(d, separators=(",", ":")) + "\n"
                            for k, d in records)
            src = os.path.join(tmp, "records.tsv")
            with open(src, "w", encoding="utf-8") as f:
                f.write(lines)
            subprocess.run(["kcat", "-P", "-b", bootstrap, "-t", topic, "-K", "\t",
                            "-H", "content-type=" + CTYPE, "-l", src], check=True, timeout=60)

            log = os.path.join(tmp, "accepted.jsonl")
            p = consume(bootstrap, topic, group, log, tmp)
            with open(log, encoding="utf-8") as f:
                ids = [json.loads(line)["id"] for line in f]
            want = sorted(d["id"] for d in examples)
            check(sorted(ids) == want, f"each example id logged once ({len(ids)} lines)")
            check(bad["id"] not in ids, "the record keyed by another channel is not applied")
            check(p.returncode == 2, f"the consumer exits 2 after refusing it ({p.returncode})")
            check("REFUSED" in p.stderr and "partner-43" in p.stderr,
                  "the refusal is reported with the key")
            check("accrued 94500" in p.stdout and "paid out 67500" in p.stdout,
                  "the statement is printed")
            check("1 duplicates" in p.stderr, "the redelivery is counted as a duplicate")

            p = consume(bootstrap, topic, group, log, tmp)
            with open(log, encoding="utf-8") as f:
                again = sum(1 for _ in f)
            check(p.returncode == 0 and again == len(want),
                  f"a second run of the group finds nothing new (offsets committed; "
                  f"exit {p.returncode}, {again} lines)")
    finally:
        subprocess.run([KAFKA_SH, "delete-topic", topic])
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
