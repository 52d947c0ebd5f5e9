#!/usr/bin/env python3
"""Reference webhook receiver for commerce partner events.

    webhook_receiver.py --listen 127.0.0.1:8080 --secret whsec_... \
        [--secret whsec_old...] [--tolerance 300] [--dedup-db events.db] \
        [--log accepted.jsonl] [--print-every 10]

Every POST (any path) carries one CloudEvent (structured JSON) signed with
Commerce-Signature. The receiver answers

    204  a valid event: new (applied to the statement, logged) or a
         duplicate by id (already applied: acknowledged, nothing else)
    401  the signature is missing, malformed, or matches no secret
    400  the timestamp is outside the tolerance (a replay or a clock
         problem), or the body is not a valid event per the schema, or
         Commerce-Event-Id differs from the body's id
    413  a body over 1 MiB; 415 another Content-Type

Anything but 2xx makes the sender retry with backoff: a refusal is for a
delivery that must not be applied, not for a slow one. Processing here is quick; a
receiver doing slow work should store the event, answer 2xx, and work
asynchronously (the sender gives up on a request after 10 s).

GET /healthz answers 200 (for readiness probes); GET /statement the
running statement as JSON. SIGTERM or SIGINT stop it (printing the
statement). Secrets also come from PARTNER_WEBHOOK_SECRETS (comma-separated).
Standard library only, besides jsonschema (common.py).
"""

import argparse
import http.server
import json
import os
import signal
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

MAX_BODY = 1 << 20


class Receiver:
    """what the request handlers share"""

    def __init__(self, args):
        self.secrets = args.secret
        self.tolerance = args.tolerance
        self.statement = common.Statement()
        self.store = common.DedupStore(self.statement, args.dedup_db)
        self.log = common.JsonLog(args.log)
        self.print_every = args.print_every
        self._lock = threading.Lock()
        self.new = 0

    def handle(self, headers, body):
        """-> (status, message): the whole receiving logic, no HTTP in it"""
        # 1. the signature, over the raw bytes, before anything is parsed
        ok, reason = common.verify(headers, body, self.secrets, time.time(), self.tolerance)
        if not ok:
            return common.STATUS[reason], reason
        ctype = (headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if ctype != "application/cloudevents+json":
            return 415, f"content-type {ctype!r} is not application/cloudevents+json"
        # 2. a valid event per the schema
        doc, problems = common.parse_event(body)
        if problems:
            return 400, "invalid event: " + "; ".join(problems[:5])
        hdr_id = headers.get("Commerce-Event-Id")
        if hdr_id is not None and hdr_id != doc["id"]:
            return 400, "Commerce-Event-Id differs from the event's id"
        # 3. once per id: a duplicate is acknowledged and nothing else
        received_at = common.utc_now()
        if not self.store.apply(doc, received_at):
            return 204, "duplicate"
        self.log.write(common.log_record(doc, received_at))
        with self._lock:
            self.new += 1
            if self.print_every and self.new % self.print_every == 0:
                print(self.statement.render(), flush=True)
        return 204, "applied"


class Handler(http.server.BaseHTTPRequestHandler):
    server_version = "partner-webhook-receiver/1"
    protocol_version = "HTTP/1.1"  # keep-alive: the sender may reuse connections

    def do_POST(self):
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            self.answer(411, "Content-Length required", close=True)  # no chunked bodies
            return
        if length < 0 or length > MAX_BODY:
            self.answer(413, "body too large", close=True)
            return
        body = self.rfile.read(length)
        status, message = self.server.receiver.handle(self.headers, body)
        self.answer(status, message)

    def do_GET(self):
        if self.path == "/healthz":
            self.answer(200, "ok")
        elif self.path == "/statement":
            body = json.dumps(self.server.receiver.statement.to_json()).encode()
            self.answer(200, body, ctype="application/json")
        else:
            self.answer(404, "not found")

    def answer(self, status, message, ctype="text/plain; charset=utf-8", close=False):
        body = b"" if status == 204 else (
            message if isinstance(message, bytes) else (message + "\n").encode())
        self.send_response(status)
        if status == 204:
            self.send_header("Commerce-Result", message)  # why, for the curious
        else:
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt, *args):
        if not self.server.quiet:
            sys.stderr.write("webhook_receiver: %s %s\n" % (self.address_string(), fmt % args))


def host_port(value):
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError("expected HOST:PORT")
    return host.strip("[]") or "127.0.0.1", int(port)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--listen", type=host_port, default=("127.0.0.1", 8080),
                   help="HOST:PORT to listen on (port 0: any free one, printed)")
    p.add_argument("--secret", action="append", default=[],
                   help="a signing secret; repeat during a rotation "
                        "(also PARTNER_WEBHOOK_SECRETS, comma-separated)")
    p.add_argument("--tolerance", type=int, default=common.DEFAULT_TOLERANCE,
                   help="accepted |now - t| in seconds (default 300)")
    p.add_argument("--dedup-db", help="sqlite3 file for the applied ids and the statement "
                                      "(default: in memory)")
    p.add_argument("--log", help="append one JSON line per accepted new event")
    p.add_argument("--print-every", type=int, default=0, metavar="N",
                   help="print the statement every N new events (0: only at exit)")
    p.add_argument("--quiet", action="store_true", help="no access log on stderr")
    args = p.parse_args(argv)
    env = os.environ.get("PARTNER_WEBHOOK_SECRETS", "")
    args.secret += [s.strip() for s in env.split(",") if s.strip()]
    if not args.secret:
        p.error("at least one --secret (or PARTNER_WEBHOOK_SECRETS) is required")
    common.validator()  # load the schema now: a bad path fails at start

    receiver = Receiver(args)
    server = http.server.ThreadingHTTPServer(args.listen, Handler)
    server.daemon_threads = True
    server.receiver = receiver
    server.quiet = args.quiet

    def stop(signum, frame):
        # shutdown() waits for serve_forever(), which runs in this thread
        threading.Thread(target=server.shutdown, daemon=True).start()
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    host, port = server.server_address[:2]
    print(f"webhook_receiver: listening on {host}:{port}", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
        print(receiver.statement.render(), flush=True)
        receiver.store.close()
        receiver.log.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
