"""Helpers for talking to the commerce services from Python grpcio, the
"client that is not ours". Message classes come from protoc --python_out in
the build tree (build*/gen/python)."""
import importlib.util
import os
import sys


def gen_dir():
    """The generated python modules of the build to use (COMMERCE_PY_GEN)."""
    d = os.environ.get("COMMERCE_PY_GEN")
    if not d:
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        for b in ("build-asan", "build"):
            cand = os.path.join(root, b, "gen", "python")
            if os.path.isdir(cand):
                d = cand
                break
    if not d or not os.path.isdir(d):
        sys.exit("no generated python modules: build first (scripts/test.sh or scripts/run.sh)")
    return d


def load(relpath):
    """Imports a generated module by file path: the generated grpc/health/v1
    directory would otherwise shadow the grpc package itself."""
    d = gen_dir()
    if d not in sys.path:
        sys.path.append(d)  # after site-packages: for cross-file imports (google.rpc)
    path = os.path.join(d, relpath)
    name = relpath[:-3].replace("/", "_")
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def unary(channel, path, req, resp_cls):
    return channel.unary_unary(
        path,
        request_serializer=lambda m: m.SerializeToString(),
        response_deserializer=resp_cls.FromString,
    )


def health_check(target, service="", timeout=2.0):
    """Returns the ServingStatus name for target ("SERVING", ...)."""
    import grpc

    health = load("grpc/health/v1/health_pb2.py")
    with grpc.insecure_channel(target) as ch:
        call = unary(ch, "/grpc.health.v1.Health/Check", None, health.HealthCheckResponse)
        resp = call(health.HealthCheckRequest(service=service), timeout=timeout)
        return health.HealthCheckResponse.ServingStatus.Name(resp.status)


if __name__ == "__main__":
    # usage: commerce_grpc.py health <target> [service]
    if len(sys.argv) >= 3 and sys.argv[1] == "health":
        try:
            print(health_check(sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else ""))
        except Exception as e:  # noqa: BLE001 - a CLI reporting why
            print("UNREACHABLE: %s" % getattr(e, "details", lambda: e)())
            sys.exit(1)
    else:
        sys.exit("usage: commerce_grpc.py health <host:port> [service]")
