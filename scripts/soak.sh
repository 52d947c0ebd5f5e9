#!/usr/bin/env bash
# the end-to-end fault harness for as long as asked (bounded): the four
# services on the repo's postgres and broker (started here when not
# running), 1,000 orders, then SECONDS of load while every service is
# killed with SIGKILL in turn and the broker and postgres are restarted,
# printing each service's RSS, consumer lag and outbox backlog every 5 s;
# then the invariants of tests/e2e/test_e2e.py. Exit 0 when they hold.
#
#   scripts/soak.sh [SECONDS]     (default 600, at most 86400)
#
# builds the release tree (build/) first, as the quick start does. it
# restarts the repo's broker and postgres: do not run it beside the tests.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
seconds=${1:-600}
[[ "$seconds" =~ ^[0-9]+$ ]] && [ "$seconds" -ge 1 ] && [ "$seconds" -le 86400 ] ||
  { echo "usage: scripts/soak.sh [SECONDS: 1..86400]" >&2; exit 2; }
build=${BUILD_DIR:-$root/build}
cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCOMMERCE_SANITIZE=OFF >/dev/null
ninja -C "$build" >/dev/null
"$root/scripts/pg.sh" start >/dev/null
"$root/scripts/kafka.sh" start >/dev/null
PG_DSN=$("$root/scripts/pg.sh" dsn) KAFKA_BROKERS=$("$root/scripts/kafka.sh" bootstrap) \
  COMMERCE_BIN="$build/bin" COMMERCE_PY_GEN="$build/gen/python" E2E_RESTART_INFRA=1 \
  exec /usr/bin/python3 "$root/tests/e2e/test_e2e.py" --orders 1000 --fault-seconds "$seconds" --soak
