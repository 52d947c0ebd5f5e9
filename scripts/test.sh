#!/usr/bin/env bash
# the test command: installs what is missing, builds with ASan+UBSan and
# warnings as errors, runs the source checks, starts a private postgres and
# a real kafka broker (or uses PG_DSN / KAFKA_BROKERS when set), runs every
# test (ctest: unit, integration, interop) and the quick start check, and
# exits non-zero on any failure. what it started is stopped at the end
# (KEEP_INFRA=1 keeps it running; unset or 0 stops it); a server of this
# checkout that was running already (a quick start's postgres) is used and
# left running. postgres and the broker listen on free ports that pg.sh and
# kafka.sh pick (PG_PORT, KAFKA_PORT, KAFKA_CONTROLLER_PORT pin them), so
# the tests of two checkouts can run at the same time.
#
#   scripts/test.sh            everything
#   scripts/test.sh -R regex   only the ctest tests matching regex
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

"$root/scripts/install-deps.sh"

build=${BUILD_DIR:-$root/build-asan}
echo "== build ($build, ASan+UBSan)"
cmake -S "$root" -B "$build" -G Ninja -DCOMMERCE_SANITIZE=ON -DCMAKE_BUILD_TYPE=Debug >/dev/null
ninja -C "$build"

echo "== source checks"
"$root/scripts/check.sh"
"$root/scripts/config-tables.sh" --check "$build/bin"

started_pg=0
started_kafka=0
cleanup() {
  [ "${KEEP_INFRA:-0}" != 0 ] && return 0
  if [ "$started_kafka" = 1 ]; then
    "$root/scripts/kafka.sh" stop || true
  fi
  if [ "$started_pg" = 1 ]; then
    "$root/scripts/pg.sh" stop || true
  fi
}
trap cleanup EXIT

echo "== private postgres"
if [ -z "${PG_DSN:-}" ]; then
  "$root/scripts/pg.sh" status >/dev/null 2>&1 || started_pg=1
  "$root/scripts/pg.sh" start
fi
PG_DSN=$("$root/scripts/pg.sh" dsn)
export PG_DSN
echo "== kafka broker (KRaft, single node)"
if [ -z "${KAFKA_BROKERS:-}" ]; then
  "$root/scripts/kafka.sh" status >/dev/null 2>&1 || started_kafka=1
  "$root/scripts/kafka.sh" start
fi
"$root/scripts/kafka.sh" topics
KAFKA_BROKERS=$("$root/scripts/kafka.sh" bootstrap)
export KAFKA_BROKERS

# leaks inside gRPC core's and libpq's own process-lifetime singletons are
# not ours; everything else must be clean
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0:strict_string_checks=1}
export LSAN_OPTIONS=${LSAN_OPTIONS:-suppressions=$root/tests/lsan.supp:print_suppressions=0}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}

echo "== tests"
(cd "$build" && ctest --output-on-failure -j2 --timeout 600 "$@")

# the decoders fuzzed (tests/fuzz/README.md): libFuzzer + ASan/UBSan, every
# regression input once, then each harness for a bounded time from its
# seeds (FUZZ_SECONDS per harness, 15 by default; about 3 minutes)
if [ $# -eq 0 ]; then
  echo "== fuzz (scripts/fuzz.sh)"
  "$root/scripts/fuzz.sh" "${FUZZ_SECONDS:-15}"
fi

# the deploy artefacts: the chart linted, rendered and validated offline,
# its schema refusing bad values, the alert rules tested, installed and
# upgraded into a local kube-apiserver (tools cached under
# ~/.cache/commerce: a cold machine builds them once, ~10 min)
if [ $# -eq 0 ]; then
  echo "== deploy checks (scripts/k8s-check.sh)"
  "$root/scripts/k8s-check.sh" "$build/bin"
fi

# the quick start must keep working: release build (other warnings at -O2),
# the embedded broker, and every service answering health to a non-C client
if [ $# -eq 0 ]; then
  echo "== quick start and its demo (scripts/run.sh --check-demo)"
  env -u KAFKA_BROKERS "$root/scripts/run.sh" --check-demo
fi

# the image: built from the Dockerfile with buildah on a debootstrap base,
# each service run from it read-only as a non-root user and answering
# health from inside, beside the quick start's embedded broker (its release
# build is there by now); skipped, saying so, where no container runtime
# works
if [ $# -eq 0 ]; then
  echo "== image smoke test (scripts/image.sh)"
  env -u KAFKA_BROKERS "$root/scripts/image.sh"
fi
