#!/usr/bin/env python3
"""Reference Kafka consumer for commerce partner events.

    kafka_consumer.py --bootstrap broker:9093 \
        --topic commerce.partner.v1.<tenant>.<partner_id> \
        --group commerce.partner.v1.<tenant>.<partner_id>.statement \
        --username <tenant>.<partner_id> --password ... \
        [--security-protocol SASL_SSL] [--ca-location ca.pem] \
        [--from-beginning] [--dedup-db events.db] [--log accepted.jsonl] \
        [--print-every 10] [--max-idle SECONDS]

Each record must be one CloudEvent in structured JSON mode: header
content-type application/cloudevents+json, key = the channel id =
`partitionkey` = `data.channel_id`, value valid per the schema. A record
that is not is REFUSED: reported on stderr (and --rejects), not applied,
and the consumer exits 2 at the end (a poison record is not retried
forever: it would stop its partition). A valid record is applied once per
event id (DedupStore) to the running statement.

Offsets: enable.auto.commit is off; the offsets of a batch are committed
(synchronously) only after every record of it was processed, so a crash
redelivers at most that batch, which deduplication absorbs.

Authorization or authentication refused (a wrong password, a topic or
group the ACLs do not grant) ends it at once with exit code 3.

Uses confluent-kafka (librdkafka). Exits on SIGTERM/SIGINT, or after
--max-idle seconds without a record (counted from the partition
assignment), printing the statement.
"""

import argparse
import os
import re
import signal
import sys
import time

from confluent_kafka import Consumer, KafkaError, KafkaException

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

CONTENT_TYPE = "application/cloudevents+json"
# errors that retrying cannot fix: the consumer exits 3 on them
DENIED = {KafkaError.TOPIC_AUTHORIZATION_FAILED, KafkaError.GROUP_AUTHORIZATION_FAILED,
          KafkaError._AUTHENTICATION, KafkaError.SASL_AUTHENTICATION_FAILED}
PARTNER_TOPIC = re.compile(r"^commerce\.partner\.v1\.([A-Za-z0-9._-]+)$")


def header(msg, name):
    """a record header's value as str (the last one of that name), or None"""
    value = None
    for k, v in msg.headers() or []:
        if k.lower() == name:
            value = v.decode("utf-8", "replace") if v is not None else ""
    return value


def check_record(msg):
    """-> (doc, problems) for one record"""
    ctype = header(msg, "content-type")
    if ctype is None or ctype.split(";")[0].strip().lower() != CONTENT_TYPE:
        return None, [f"content-type header {ctype!r} is not {CONTENT_TYPE}"]
    doc, problems = common.parse_event(msg.value() or b"")
    if problems:
        return doc, problems
    key = msg.key().decode("utf-8", "replace") if msg.key() is not None else None
    if key != doc["partitionkey"] or key != doc["data"].get("channel_id", key):
        problems.append(f"record key {key!r} is not the channel id "
                        f"(partitionkey {doc['partitionkey']!r})")
    return doc, problems


def config(args):
    conf = {
        "bootstrap.servers": args.bootstrap,
        "group.id": args.group,
        "enable.auto.commit": False,          # commit after processing only
        "auto.offset.reset": "earliest" if args.from_beginning else "latest",
        "security.protocol": args.security_protocol,
        "client.id": "partner-reference-consumer",
        # client-level errors (authentication, brokers down) on stderr
        "error_cb": lambda err: print(f"kafka_consumer: {err}", file=sys.stderr, flush=True),
    }
    if args.security_protocol.startswith("SASL"):
        if not args.username or not args.password:
            sys.exit("kafka_consumer: --username and --password are required for "
                     + args.security_protocol)
        conf.update({"sasl.mechanism": "SCRAM-SHA-512",
                     "sasl.username": args.username, "sasl.password": args.password})
    if args.ca_location:
        conf["ssl.ca.location"] = args.ca_location
    return conf


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bootstrap", required=True, help="bootstrap servers, host:port[,...]")
    p.add_argument("--topic", required=True,
                   help="the partner's topic, commerce.partner.v1.<tenant>.<partner_id>")
    p.add_argument("--group", help="consumer group id; must start with the topic name and a "
                                   "dot (default: <topic>.reference)")
    p.add_argument("--username", help="SASL/SCRAM-SHA-512 user, <tenant>.<partner_id>")
    p.add_argument("--password", default=os.environ.get("PARTNER_KAFKA_PASSWORD"),
                   help="its password (or PARTNER_KAFKA_PASSWORD)")
    p.add_argument("--security-protocol", default="SASL_SSL",
                   choices=["SASL_SSL", "SASL_PLAINTEXT", "SSL", "PLAINTEXT"])
    p.add_argument("--ca-location", help="CA bundle for SSL (default: the system's)")
    p.add_argument("--from-beginning", action="store_true",
                   help="a new group starts at the earliest offset (default: latest)")
    p.add_argument("--dedup-db", help="sqlite3 file for applied ids and the statement")
    p.add_argument("--log", help="append one JSON line per accepted new event")
    p.add_argument("--rejects", help="append one JSON line per refused record")
    p.add_argument("--print-every", type=int, default=0, metavar="N",
                   help="print the statement every N new events (0: only at exit)")
    p.add_argument("--max-idle", type=float, default=0, metavar="SECONDS",
                   help="exit after this long without a record (0: never)")
    p.add_argument("--batch", type=int, default=100, help="records per poll (default 100)")
    args = p.parse_args(argv)
    args.group = args.group or args.topic + ".reference"
    if PARTNER_TOPIC.match(args.topic) and not args.group.startswith(args.topic + "."):
        print(f"kafka_consumer: warning: group {args.group!r} does not start with "
              f"{args.topic + '.'!r}; the broker's ACLs will refuse it", file=sys.stderr)
    common.validator()

    statement = common.Statement()
    store = common.DedupStore(statement, args.dedup_db)
    log, rejects = common.JsonLog(args.log), common.JsonLog(args.rejects)
    stopping = False

    def stop(signum, frame):
        nonlocal stopping
        stopping = True
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    assigned_at = None

    def on_assign(consumer, partitions):
        nonlocal assigned_at
        assigned_at = time.monotonic()
        print(f"kafka_consumer: assigned {[(t.topic, t.partition) for t in partitions]}",
              file=sys.stderr, flush=True)

    consumer = Consumer(config(args))
    consumer.subscribe([args.topic], on_assign=on_assign)
    started = last = time.monotonic()
    new = duplicates = refused = 0
    denied = False
    try:
        while not stopping:
            msgs = consumer.consume(num_messages=args.batch, timeout=1.0)
            now = time.monotonic()
            if not msgs:
                # idle since the later of the assignment and the last record;
                # before any assignment, allow a minute more for the group join
                since = max(last, assigned_at or started)
                limit = args.max_idle + (0 if assigned_at else 60)
                if args.max_idle and now - since > limit:
                    break
                continue
            last = now
            for msg in msgs:
                if msg.error():
                    if msg.error().code() == KafkaError._PARTITION_EOF:
                        continue
                    if msg.error().fatal():
                        raise KafkaException(msg.error())
                    print(f"kafka_consumer: {msg.error()}", file=sys.stderr, flush=True)
                    if msg.error().code() in DENIED:
                        # not retriable: the credentials or the ACLs are wrong
                        denied = True
                        stopping = True
                        break
                    continue
                where = f"{msg.topic()}/{msg.partition()}@{msg.offset()}"
                doc, problems = check_record(msg)
                if problems:
                    refused += 1
                    print(f"kafka_consumer: REFUSED {where}: {'; '.join(problems[:5])}",
                          file=sys.stderr, flush=True)
                    rejects.write({"where": where, "problems": problems,
                                   "key": (msg.key() or b"").decode("utf-8", "replace"),
                                   "value": (msg.value() or b"").decode("utf-8", "replace")})
                    continue
                received_at = common.utc_now()
                if store.apply(doc, received_at):
                    new += 1
                    log.write(common.log_record(doc, received_at))
                    if args.print_every and new % args.print_every == 0:
                        print(statement.render(), flush=True)
                else:
                    duplicates += 1
            # the batch's effects are durable (the dedup db commits per
            # event): now its offsets (each partition's last + 1)
            try:
                consumer.commit(asynchronous=False)
            except KafkaException as e:
                if e.args[0].code() != KafkaError._NO_OFFSET:  # nothing to commit
                    raise
    finally:
        consumer.close()  # leaves the group at once
        print(statement.render(), flush=True)
        print(f"kafka_consumer: {new} new, {duplicates} duplicates, {refused} refused",
              file=sys.stderr, flush=True)
        store.close()
        log.close()
        rejects.close()
    if denied:
        return 3
    return 2 if refused else 0


if __name__ == "__main__":
    sys.exit(main())
