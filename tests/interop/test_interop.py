"""Interop: a stock Python grpcio client (Debian python3-grpcio) calls the
runtime's health service and the test service, and checks status codes and
the google.rpc.Status details in grpc-status-details-bin.

Run by ctest with TESTSVC_BIN, PG_DSN and COMMERCE_PY_GEN set."""
import os
import random
import signal
import socket
import subprocess
import sys
import time
import unittest
import uuid

import grpc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import commerce_grpc as cg  # noqa: E402

health = cg.load("grpc/health/v1/health_pb2.py")
status_pb2 = cg.load("google/rpc/status_pb2.py")
details_pb2 = cg.load("google/rpc/error_details_pb2.py")
test_pb2 = cg.load("commerce/test/v1/test_pb2.py")

SVC = "/commerce.test.v1.TestService/"
TENANT = (("x-tenant-id", "tenant-py"),)


def free_port():
    """A port nothing has bound, below the kernel's ephemeral range (32768
    and up) so no outgoing connection can take it before the service binds
    it; random, as the C harness's hs_free_port, so that tests running side
    by side rarely probe the same one."""
    rng = random.Random(os.getpid() ^ time.monotonic_ns())
    for _ in range(1000):
        port = rng.randrange(20000, 32000)
        if port in _handed_out:  # not bound yet by whoever got it
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            _handed_out.add(port)
            return port
    raise RuntimeError("no free port in 20000-31999")


_handed_out = set()


def status_details(err):
    """google.rpc.Status from the trailer, or None."""
    for k, v in err.trailing_metadata() or ():
        if k == "grpc-status-details-bin":
            st = status_pb2.Status()
            st.ParseFromString(v)
            return st
    return None


def detail(st, cls, type_name):
    for any_ in st.details:
        if any_.type_url == "type.googleapis.com/" + type_name:
            m = cls()
            m.ParseFromString(any_.value)
            return m
    return None


def start_testsvc(log_path, **extra):
    port = free_port()
    env = dict(os.environ)
    env.update(
        GRPC_LISTEN="127.0.0.1:%d" % port,
        ADMIN_LISTEN="127.0.0.1:%d" % free_port(),
        LOG_LEVEL="warn",
        WORKERS="2",
        INVENTORY_TARGET="127.0.0.1:%d" % port,  # Forward calls itself
    )
    env.update(extra)
    log = open(log_path, "w")
    proc = subprocess.Popen([os.environ["TESTSVC_BIN"]], env=env, stderr=log)
    target = "127.0.0.1:%d" % port
    deadline = time.time() + 20
    while True:
        try:
            if cg.health_check(target, timeout=1) == "SERVING":
                return proc, target, log
        except grpc.RpcError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            raise RuntimeError("testsvc did not start; see %s" % log_path)
        time.sleep(0.05)


class Watch(unittest.TestCase):
    def test_watch_streams_serving_then_not_serving_on_drain(self):
        # logs named by pid: another checkout's tests may run at the same time
        proc, target, log = start_testsvc("/tmp/commerce-interop-watch.%d.log" % os.getpid())
        try:
            ch = grpc.insecure_channel(target)
            watch = ch.unary_stream(
                "/grpc.health.v1.Health/Watch",
                request_serializer=lambda m: m.SerializeToString(),
                response_deserializer=health.HealthCheckResponse.FromString)
            stream = watch(health.HealthCheckRequest(service=""), timeout=30)
            first = next(stream)
            self.assertEqual(first.status, health.HealthCheckResponse.SERVING)

            unknown = watch(health.HealthCheckRequest(service="no.such.Service"), timeout=30)
            self.assertEqual(next(unknown).status, health.HealthCheckResponse.SERVICE_UNKNOWN)
            unknown.cancel()  # a client leaving must not hold the server

            t0 = time.time()
            proc.send_signal(signal.SIGTERM)
            statuses = []
            with self.assertRaises(grpc.RpcError) as e:
                for msg in stream:
                    statuses.append(msg.status)
            self.assertEqual(statuses, [health.HealthCheckResponse.NOT_SERVING])
            self.assertEqual(e.exception.code(), grpc.StatusCode.UNAVAILABLE)
            # the open stream did not hold the drain for its grace period
            self.assertEqual(proc.wait(timeout=15), 0)
            self.assertLess(time.time() - t0, 10)
            ch.close()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            log.close()


class Interop(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.port = free_port()
        env = dict(os.environ)
        env.update(
            GRPC_LISTEN="127.0.0.1:%d" % cls.port,
            ADMIN_LISTEN="127.0.0.1:%d" % free_port(),
            LOG_LEVEL="warn",
            WORKERS="2",
            INVENTORY_TARGET="127.0.0.1:%d" % cls.port,  # Forward calls itself
        )
        cls.log_path = "/tmp/commerce-interop-testsvc.%d.log" % os.getpid()
        cls.log = open(cls.log_path, "w")
        cls.proc = subprocess.Popen([os.environ["TESTSVC_BIN"]], env=env, stderr=cls.log)
        cls.target = "127.0.0.1:%d" % cls.port
        deadline = time.time() + 20
        while True:
            try:
                if cg.health_check(cls.target, timeout=1) == "SERVING":
                    break
            except grpc.RpcError:
                pass
            if cls.proc.poll() is not None or time.time() > deadline:
                raise RuntimeError("testsvc did not start; see %s" % cls.log_path)
            time.sleep(0.05)
        cls.ch = grpc.insecure_channel(cls.target)

    @classmethod
    def tearDownClass(cls):
        cls.ch.close()
        cls.proc.send_signal(signal.SIGTERM)
        code = cls.proc.wait(timeout=30)
        cls.log.close()
        assert code == 0, "testsvc exited %d after SIGTERM" % code

    def call(self, method, req, resp_cls, metadata=TENANT, timeout=5):
        return cg.unary(self.ch, SVC + method, req, resp_cls)(req, metadata=metadata, timeout=timeout)

    def test_health_check_serving(self):
        self.assertEqual(cg.health_check(self.target), "SERVING")
        self.assertEqual(cg.health_check(self.target, "commerce.test.v1.TestService"), "SERVING")

    def test_health_check_unknown_service_is_not_found(self):
        with self.assertRaises(grpc.RpcError) as e:
            cg.health_check(self.target, "no.such.Service")
        self.assertEqual(e.exception.code(), grpc.StatusCode.NOT_FOUND)

    def test_echo_round_trip_with_metadata(self):
        md = TENANT + (("x-request-id", "py-1"),)
        r = self.call("Echo", test_pb2.EchoRequest(text="你好"), test_pb2.EchoResponse, metadata=md)
        self.assertEqual(r.text, "你好")
        self.assertEqual(r.tenant, "tenant-py")
        self.assertEqual(r.request_id, "py-1")

    def test_put_then_get_from_postgres(self):
        key = str(uuid.uuid4())
        r = self.call("Put", test_pb2.PutRequest(key=key, value="v"), test_pb2.PutResponse)
        self.assertTrue(r.created)
        g = self.call("Get", test_pb2.GetRequest(key=key), test_pb2.GetResponse)
        self.assertEqual(g.value, "v")

    def test_invalid_argument_carries_bad_request_details(self):
        with self.assertRaises(grpc.RpcError) as e:
            self.call("Put", test_pb2.PutRequest(key="", value="v"), test_pb2.PutResponse)
        err = e.exception
        self.assertEqual(err.code(), grpc.StatusCode.INVALID_ARGUMENT)
        st = status_details(err)
        self.assertIsNotNone(st, "no grpc-status-details-bin trailer")
        self.assertEqual(st.code, grpc.StatusCode.INVALID_ARGUMENT.value[0])
        info = detail(st, details_pb2.ErrorInfo, "google.rpc.ErrorInfo")
        self.assertEqual(info.reason, "INVALID_ARGUMENT")
        self.assertEqual(info.domain, "testsvc.commerce")
        bad = detail(st, details_pb2.BadRequest, "google.rpc.BadRequest")
        self.assertEqual(bad.field_violations[0].field, "key")

    def test_error_info_metadata(self):
        with self.assertRaises(grpc.RpcError) as e:
            self.call("Fail", test_pb2.FailRequest(code=9), test_pb2.FailResponse)
        self.assertEqual(e.exception.code(), grpc.StatusCode.FAILED_PRECONDITION)
        st = status_details(e.exception)
        info = detail(st, details_pb2.ErrorInfo, "google.rpc.ErrorInfo")
        self.assertEqual(info.reason, "REQUESTED_FAILURE")
        self.assertEqual(info.metadata["requested_code"], "9")
        # a service's own typed detail travels as an Any beside ErrorInfo
        echoed = detail(st, test_pb2.FailRequest, "commerce.test.v1.FailRequest")
        self.assertIsNotNone(echoed, [a.type_url for a in st.details])
        self.assertEqual(echoed.code, 9)

    def test_malformed_bytes_are_invalid_argument(self):
        raw = self.ch.unary_unary(SVC + "Echo", request_serializer=None, response_deserializer=None)
        with self.assertRaises(grpc.RpcError) as e:
            raw(b"\x0a\xff\xff\xff\xff\x0f", metadata=TENANT, timeout=5)
        self.assertEqual(e.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)

    def test_missing_tenant_is_invalid_argument(self):
        with self.assertRaises(grpc.RpcError) as e:
            self.call("Echo", test_pb2.EchoRequest(text="x"), test_pb2.EchoResponse, metadata=())
        self.assertEqual(e.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)
        bad = detail(status_details(e.exception), details_pb2.BadRequest, "google.rpc.BadRequest")
        self.assertEqual(bad.field_violations[0].field, "metadata.x-tenant-id")

    def test_unknown_method_is_unimplemented(self):
        with self.assertRaises(grpc.RpcError) as e:
            raw = self.ch.unary_unary(SVC + "Nope", request_serializer=None, response_deserializer=None)
            raw(b"", metadata=TENANT, timeout=5)
        self.assertEqual(e.exception.code(), grpc.StatusCode.UNIMPLEMENTED)

    def test_oversized_message_is_resource_exhausted(self):
        with self.assertRaises(grpc.RpcError) as e:
            self.call("Echo", test_pb2.EchoRequest(blob=b"\0" * (5 << 20)), test_pb2.EchoResponse)
        self.assertEqual(e.exception.code(), grpc.StatusCode.RESOURCE_EXHAUSTED)
        # and the server still answers
        self.assertEqual(cg.health_check(self.target), "SERVING")

    def test_random_bytes_never_crash_the_server(self):
        # a seeded stream of garbage to every method: each call gets a status
        # (OK for bytes that happen to parse), and the server stays up
        import random

        rnd = random.Random(20261127)
        allowed = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT,
                   grpc.StatusCode.NOT_FOUND, grpc.StatusCode.ALREADY_EXISTS,
                   grpc.StatusCode.FAILED_PRECONDITION}
        for method in ("Echo", "Put", "Get", "Fail", "Forward"):
            raw = self.ch.unary_unary(SVC + method, request_serializer=None,
                                      response_deserializer=None)
            for _ in range(60):
                blob = bytes(rnd.getrandbits(8) for _ in range(rnd.randint(0, 64)))
                try:
                    raw(blob, metadata=TENANT, timeout=5)
                    code = grpc.StatusCode.OK
                except grpc.RpcError as e:
                    code = e.code()
                self.assertIn(code, allowed, "%s with %r" % (method, blob))
        self.assertEqual(cg.health_check(self.target), "SERVING")

    def test_deadline_exceeded(self):
        with self.assertRaises(grpc.RpcError) as e:
            self.call("Sleep", test_pb2.SleepRequest(millis=1500), test_pb2.SleepResponse, timeout=0.2)
        self.assertEqual(e.exception.code(), grpc.StatusCode.DEADLINE_EXCEEDED)


if __name__ == "__main__":
    unittest.main(verbosity=2)
