#!/usr/bin/env bash
# the quick start: installs what is missing, builds (release), starts a
# private postgres, an embedded kafka broker (unless KAFKA_BROKERS is set)
# and every service that exists, and shows each one
# answering grpc.health.v1.Health/Check to a client that is not ours
# (python grpcio). Ctrl-C (or SIGTERM) drains and stops everything it
# started, postgres included (its data stays in .run/pg for the next run).
# a postgres that was running already (scripts/pg.sh start, a test run
# with KEEP_INFRA=1) is left running, and the script says so.
#
#   scripts/run.sh           run until interrupted
#   scripts/run.sh --check   start, show the health answers, stop (exit 0 when all serve)
#   scripts/run.sh --demo    start, then run the guided demo (scripts/demo.py: a demo
#                            tenant in all four services, a scenario, a summary),
#                            and keep serving until interrupted
#   scripts/run.sh --check-demo
#                            start, run the demo, stop (exit 0 when it worked)
#   scripts/run.sh --stop    stop what a quick start of this checkout left
#                            running: a run.sh in another terminal (it drains
#                            as on Ctrl-C), services of one that was killed,
#                            and the private postgres
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
# shellcheck source=scripts/lib/ports.sh
. "$root/scripts/lib/ports.sh"
mode=${1:-run}
case "$mode" in
run | --check | --stop | --demo | --check-demo) ;;
*)
  echo "usage: $0 [--check | --demo | --check-demo | --stop]" >&2
  exit 2
  ;;
esac

# each quick start's processes, one "pid path" a line: run.sh itself first
# (path: this checkout), then each server it started (path: its binary)
pidfile=$root/.run/run.$$.pids

# exit 0 when the process $1 is still the one pidfile line "$1 $2" named
# (a pid may have been reused since)
same_process() {
  local exe
  if [ "$2" = "$root" ]; then
    [ "$(readlink "/proc/$1/cwd" 2>/dev/null)" = "$root" ] &&
      tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null | grep -q 'run\.sh'
  else
    exe=$(readlink "/proc/$1/exe" 2>/dev/null) || return 1
    [ "${exe% (deleted)}" = "$2" ]
  fi
}

# waits up to $2 tenths of a second for process $1 to end
wait_gone() {
  local i
  for ((i = 0; i < $2; i++)); do
    kill -0 "$1" 2>/dev/null || return 0
    sleep 0.1
  done
  ! kill -0 "$1" 2>/dev/null
}

stop_pid() { # pid: sigterm, sigkill after 30 s
  kill -TERM "$1" 2>/dev/null || true
  # a service drains for up to DRAIN_GRACE_SECONDS (20); run.sh waits for
  # its services
  wait_gone "$1" 300 || {
    echo "run: pid $1 did not stop within 30 s, killing it" >&2
    kill -KILL "$1" 2>/dev/null || true
  }
}

stop_leftovers() {
  local f pid path i
  local -a lines
  for f in "$root"/.run/run.*.pids; do
    [ -f "$f" ] || continue
    mapfile -t lines <"$f"
    # a live run.sh drains its own servers, as on Ctrl-C
    read -r pid path <<<"${lines[0]:-}"
    if [ -n "$pid" ] && same_process "$pid" "$path"; then
      echo "== stopping the quick start running as pid $pid"
      stop_pid "$pid"
    fi
    # what a killed one left: in reverse start order, the broker last
    for ((i = ${#lines[@]} - 1; i >= 1; i--)); do
      read -r pid path <<<"${lines[$i]}"
      same_process "$pid" "$path" || continue
      echo "== stopping ${path##*/} (pid $pid), left by a quick start"
      stop_pid "$pid"
    done
    rm -f "$f"
  done
  if [ -z "${PG_DSN:-}" ]; then
    echo "== private postgres"
    "$root/scripts/pg.sh" stop
  fi
}
if [ "$mode" = --stop ]; then
  stop_leftovers
  exit 0
fi

"$root/scripts/install-deps.sh"
build=${BUILD_DIR:-$root/build}
echo "== build ($build, release)"
cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCOMMERCE_SANITIZE=OFF >/dev/null
ninja -C "$build"

logs="$root/.run/logs"
mkdir -p "$logs"
pids=()
names=()
mock_pid=""
started_pg=0
stop_all() {
  for i in "${!pids[@]}"; do
    kill -TERM "${pids[$i]}" 2>/dev/null || true
  done
  for i in "${!pids[@]}"; do
    wait "${pids[$i]}" 2>/dev/null || true
  done
  pids=()
  # the broker last: services flush their producers while draining
  if [ -n "$mock_pid" ]; then
    kill -TERM "$mock_pid" 2>/dev/null || true
    wait "$mock_pid" 2>/dev/null || true
    mock_pid=""
  fi
  rm -f "$pidfile"
  if [ "$started_pg" = 1 ]; then
    started_pg=0
    "$root/scripts/pg.sh" stop || true
  fi
}
trap stop_all EXIT
trap 'echo; echo "== draining"; stop_all; exit 0' INT TERM
echo "$$ $root" >"$pidfile"

echo "== private postgres"
# what this run starts it stops; a cluster that was running stays running
if [ -z "${PG_DSN:-}" ] && ! "$root/scripts/pg.sh" status >/dev/null 2>&1; then
  started_pg=1
fi
"$root/scripts/pg.sh" start
PG_DSN=$("$root/scripts/pg.sh" dsn)
export PG_DSN

# kafka: the user's brokers, else the embedded broker (librdkafka's mock
# cluster: zero setup, in memory); the services cannot tell the difference
if [ -z "${KAFKA_BROKERS:-}" ]; then
  echo "== embedded kafka broker"
  rm -f "$logs/kafka-mock.addr"
  "$build/bin/commerce-kafka-mock" --bootstrap-file "$logs/kafka-mock.addr" \
    >"$logs/kafka-mock.out" 2>"$logs/kafka-mock.log" &
  mock_pid=$!
  echo "$mock_pid $(readlink -f "$build/bin/commerce-kafka-mock")" >>"$pidfile"
  for _ in $(seq 1 100); do
    [ -s "$logs/kafka-mock.addr" ] && break
    sleep 0.05
  done
  [ -s "$logs/kafka-mock.addr" ] || { echo "run: embedded broker did not start ($logs/kafka-mock.log)" >&2; exit 1; }
  KAFKA_BROKERS=$(head -1 "$logs/kafka-mock.addr")
fi
export KAFKA_BROKERS
echo "   KAFKA_BROKERS=$KAFKA_BROKERS"

# service, grpc port, admin port (DESIGN: configuration table), in start
# order: a service comes after the services it calls
services=(
  "inventory 50052 9092"
  "order 50051 9091"
  "settlement 50053 9093"
  "commission 50054 9094"
)

# a port is taken when any socket has it as its local port: a listener, or
# a connection whose ephemeral port (32768-60999 on linux) happens to be it
# (scripts/lib/ports.sh)
port_busy() {
  ports_in_use "$1"
}
# --check (the test command's smoke run) must not depend on the default
# ports being free on a shared machine: it shifts every port by one offset
# into 20000-32000, below the ephemeral range, where no outgoing
# connection can take a port between this check and the bind, and skips
# the ports another checkout's scripts were handed lately and may not
# have bound yet (the claims of scripts/lib/ports.sh; it claims its own).
# RUN_PORT_OFFSET shifts them on purpose (e.g. -10000). Shifted, a
# service's admin port is its gRPC port + 50 (the default admin ports,
# 909x, have no room below them).
offset=${RUN_PORT_OFFSET:-}
block_of() { # offset: every port of the shifted block
  local s name grpc admin
  for s in "${services[@]}"; do
    read -r name grpc admin <<<"$s"
    echo $((grpc + $1)) $((grpc + $1 + 50))
  done
}
all_free() { # offset (call with the claims locked)
  local p
  for p in $(block_of "$1"); do
    if port_busy "$p" || ports_claimed "$p" "$root"; then
      return 1
    fi
  done
}
find_offset() {
  local o
  for o in $(seq -29000 100 -20000); do
    if all_free "$o"; then
      offset=$o
      # (the claims are locked: ports_locked runs this)
      # shellcheck disable=SC2046 # one word per port
      _ports_claim "$root" $(block_of "$o")
      return 0
    fi
  done
}
if [ -z "$offset" ]; then
  offset=0
  if [ "$mode" = --check ] || [ "$mode" = --check-demo ]; then
    ports_locked find_offset
  fi
fi
port_of() { echo $(($1 + offset)); }
admin_of() { # grpc port, admin port (both unshifted)
  if [ "$offset" = 0 ]; then echo "$2"; else echo $(($1 + offset + 50)); fi
}

inventory_grpc=$(port_of 50052)
started=0
start_service() { # name binary grpc admin
  local name=$1 bin=$2 grpc=$3 admin=$4 p
  for p in "$grpc" "$admin"; do
    if port_busy "$p"; then
      echo "run: port $p for $name is in use:" >&2
      ss -Htanp "sport = :$p" >&2 || true
      echo "run: free it, or shift every port with RUN_PORT_OFFSET=-10000" >&2
      exit 1
    fi
  done
  local extra=()
  # the quick start runs on one machine: the demo's partner receives its
  # webhooks on loopback over plain http, which production refuses
  # webhook secrets sealed at rest as in production, under a key made
  # once for this checkout (.run/, never committed)
  if [ "$name" = commission ]; then
    local keys="$root/.run/commission-secrets.keys"
    if [ ! -s "$keys" ]; then
      (umask 077 && printf 'run1:%s\n' "$(head -c 32 /dev/urandom | base64)" >"$keys")
    fi
    extra=(COMMISSION_WEBHOOK_ALLOW_HTTP=on COMMISSION_WEBHOOK_ALLOW_CIDRS=127.0.0.0/8
      COMMISSION_SECRETS_KEY_FILE="$keys")
  fi
  env GRPC_LISTEN="127.0.0.1:$grpc" ADMIN_LISTEN="127.0.0.1:$admin" \
    INVENTORY_TARGET="127.0.0.1:$inventory_grpc" "${extra[@]}" \
    "$bin" 2>"$logs/$name.log" &
  pids+=($!)
  echo "$! $(readlink -f "$bin")" >>"$pidfile"
  names+=("$name 127.0.0.1:$grpc admin http://127.0.0.1:$admin")
  started=$((started + 1))
}
for s in "${services[@]}"; do
  read -r name grpc admin <<<"$s"
  bin="$build/bin/commerce-$name"
  [ -x "$bin" ] && start_service "$name" "$bin" "$(port_of "$grpc")" "$(admin_of "$grpc" "$admin")"
done
if [ "$started" = 0 ]; then
  # no business service is built yet: show the runtime with its test service
  echo "(no business service built yet: starting the runtime's test service)"
  start_service testsvc "$build/bin/commerce-testsvc" "$(port_of 50059)" "$(admin_of 50059 9099)"
fi

echo "== health (python grpcio)"
ok=1
for n in "${names[@]}"; do
  target=$(awk '{print $2}' <<<"$n")
  status=UNREACHABLE
  for _ in $(seq 1 100); do
    status=$(COMMERCE_PY_GEN="$build/gen/python" /usr/bin/python3 \
      "$root/tests/interop/commerce_grpc.py" health "$target" 2>/dev/null | head -1) || true
    [ "$status" = SERVING ] && break
    sleep 0.1
  done
  printf '  %-70s %s\n' "$n" "$status"
  [ "$status" = SERVING ] || ok=0
done
if [ "$ok" != 1 ]; then
  echo "run: a service is not serving; logs in $logs" >&2
  for f in "$logs"/*.log; do
    echo "--- last lines of $f" >&2
    tail -n 15 "$f" >&2
  done
  exit 1
fi

if [ "$mode" = --check ]; then
  exit 0
fi
if [ "$mode" = --demo ] || [ "$mode" = --check-demo ]; then
  demo_rc=0
  COMMERCE_PY_GEN="$build/gen/python" /usr/bin/python3 "$root/scripts/demo.py" \
    --order "127.0.0.1:$(port_of 50051)" --inventory "127.0.0.1:$(port_of 50052)" \
    --settlement "127.0.0.1:$(port_of 50053)" --commission "127.0.0.1:$(port_of 50054)" ||
    demo_rc=$?
  if [ "$mode" = --check-demo ]; then
    [ "$demo_rc" = 0 ] || {
      echo "run: the demo failed; logs in $logs" >&2
      for f in "$logs"/*.log; do
        echo "--- last lines of $f" >&2
        tail -n 15 "$f" >&2
      done
    }
    exit "$demo_rc"
  fi
fi
if [ "$started_pg" = 1 ]; then
  echo "== running; logs in $logs; Ctrl-C stops the services and postgres"
else
  echo "== running; logs in $logs; Ctrl-C stops the services"
  echo "   postgres was running before this quick start and keeps running after it;"
  echo "   scripts/run.sh --stop (or scripts/pg.sh stop) stops it"
fi
wait
