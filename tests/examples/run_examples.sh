#!/usr/bin/env bash
# runs the client examples (examples/<lang>) against the four services, as
# the test command does (ctest examples.<lang>):
#
#   tests/examples/run_examples.sh BIN_DIR [python] [go] [java]
#
# starts commerce-{inventory,order,settlement,commission} from BIN_DIR on
# free ports, with schemas and kafka topics of their own (made for this run,
# dropped at the end), so it runs beside other tests and reruns never see
# an earlier run's data; then generates each language's stubs with its own
# tools, builds and runs its client against those ports, and stops the
# services. exits non-zero when a service does not start or a client fails.
# needs PG_DSN and KAFKA_BROKERS (scripts/test.sh exports them) and the
# toolchains scripts/install-deps.sh installs (scripts/lib/examples-tools.sh).
# EXAMPLES_OUT: where generated stubs and builds go (default: BIN_DIR/../examples).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
bin=$(cd "${1:?usage: run_examples.sh BIN_DIR [python] [go] [java]}" && pwd)
shift
langs=("$@")
[ ${#langs[@]} -gt 0 ] || langs=(python go java)
: "${PG_DSN:?PG_DSN: the postgres of the test run (scripts/pg.sh dsn)}"
: "${KAFKA_BROKERS:?KAFKA_BROKERS: the broker of the test run (scripts/kafka.sh bootstrap)}"
# shellcheck source=scripts/lib/examples-tools.sh
. "$root/scripts/lib/examples-tools.sh"
out=${EXAMPLES_OUT:-$(dirname "$bin")/examples}
mkdir -p "$out"

run=ex$(date +%s)$$
work=$(mktemp -d "/tmp/commerce-examples.$run.XXXX")
topics=("$run.order" "$run.settlement" "$run.commission" "$run.commission.partner")
schemas=("${run}_inventory" "${run}_order" "${run}_settlement" "${run}_commission")
pids=() names=()

since() { awk -v s="$1" -v e="$(date +%s.%N)" 'BEGIN { printf "%.1f", e - s }'; }

# free ports below the ephemeral range, as the harness picks them
free_ports() {
  /usr/bin/python3 - "$1" <<'EOF'
import random, socket, sys
rng, got, held = random.SystemRandom(), [], []
while len(got) < int(sys.argv[1]):
    p = rng.randrange(20000, 32000)
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", p))
    except OSError:
        s.close()
        continue
    held.append(s)
    got.append(p)
print(" ".join(map(str, got)))
EOF
}

# topics made and deleted with confluent-kafka's admin client, from the
# partner receivers' venv that install-deps.sh builds (scripts/partner-python)
kafka_admin() { # create|delete topic...
  "$root/scripts/partner-python" - "$KAFKA_BROKERS" "$@" <<'EOF'
import sys
from confluent_kafka.admin import AdminClient, NewTopic
brokers, verb, names = sys.argv[1], sys.argv[2], sys.argv[3:]
a = AdminClient({"bootstrap.servers": brokers})
fs = (a.create_topics([NewTopic(n, 1, 1) for n in names]) if verb == "create"
      else a.delete_topics(names))
for n, f in fs.items():
    f.result(30)
EOF
}

cleanup() {
  local rc=$? i code
  for i in "${!pids[@]}"; do kill -TERM "${pids[$i]}" 2>/dev/null || true; done
  # a service must drain and exit 0 (under ASan: no leak, no error report)
  for i in "${!pids[@]}"; do
    code=0
    wait "${pids[$i]}" 2>/dev/null || code=$?
    if [ "$code" != 0 ]; then
      echo "run_examples: commerce-${names[$i]} exited $code after SIGTERM; see $work/${names[$i]}.log" >&2
      [ "$rc" = 0 ] && rc=1
    fi
  done
  for s in "${schemas[@]}"; do
    psql "$PG_DSN" -qAt -c "drop schema if exists \"$s\" cascade" >/dev/null 2>&1 || true
  done
  kafka_admin delete "${topics[@]}" >/dev/null 2>&1 || true
  if [ "$rc" = 0 ]; then rm -rf "$work"; else echo "run_examples: service logs kept in $work" >&2; fi
  exit "$rc"
}
trap cleanup EXIT

t0=$(date +%s.%N)
kafka_admin create "${topics[@]}"
read -r -a p <<<"$(free_ports 8)"
common=(PG_DSN="$PG_DSN" KAFKA_BROKERS="$KAFKA_BROKERS" LOG_LEVEL=warn WORKERS=2 DRAIN_GRACE_SECONDS=2)
start() { # name grpc_port admin_port env...
  local name=$1 g=$2 a=$3
  shift 3
  env "${common[@]}" GRPC_LISTEN=127.0.0.1:"$g" ADMIN_LISTEN=127.0.0.1:"$a" "$@" \
    "$bin/commerce-$name" 2>"$work/$name.log" &
  pids+=($!) names+=("$name")
}
start inventory "${p[0]}" "${p[1]}" INVENTORY_SCHEMA="${schemas[0]}" \
  INVENTORY_ORDER_TOPIC="${topics[0]}" INVENTORY_ORDER_GROUP="$run.inventory"
start order "${p[2]}" "${p[3]}" ORDER_SCHEMA="${schemas[1]}" ORDER_TOPIC="${topics[0]}" \
  INVENTORY_TARGET=127.0.0.1:"${p[0]}"
start settlement "${p[4]}" "${p[5]}" SETTLEMENT_SCHEMA="${schemas[2]}" \
  SETTLEMENT_TOPIC="${topics[1]}" SETTLEMENT_ORDER_TOPIC="${topics[0]}" \
  SETTLEMENT_ORDER_GROUP="$run.settlement" SETTLEMENT_COMMISSION_TOPIC="${topics[2]}" \
  SETTLEMENT_COMMISSION_GROUP="$run.settlement.commission"
start commission "${p[6]}" "${p[7]}" COMMISSION_SCHEMA="${schemas[3]}" \
  COMMISSION_TOPIC="${topics[2]}" COMMISSION_PARTNER_TOPIC="${topics[3]}" \
  COMMISSION_ORDER_TOPIC="${topics[0]}" COMMISSION_ORDER_GROUP="$run.commission" COMMISSION_FEED=off

deadline=$(($(date +%s) + 60))
for a in "${p[1]}" "${p[3]}" "${p[5]}" "${p[7]}"; do
  until curl -sf -o /dev/null "http://127.0.0.1:$a/readyz"; do
    for pid in "${pids[@]}"; do
      kill -0 "$pid" 2>/dev/null || { echo "run_examples: a service exited; logs in $work" >&2; exit 1; }
    done
    [ "$(date +%s)" -lt "$deadline" ] || { echo "run_examples: services not ready in 60 s" >&2; exit 1; }
    sleep 0.1
  done
done
export ORDER_TARGET=127.0.0.1:${p[2]} INVENTORY_TARGET=127.0.0.1:${p[0]}
export SETTLEMENT_TARGET=127.0.0.1:${p[4]} COMMISSION_TARGET=127.0.0.1:${p[6]}
printf '== services ready in %s s (order %s, inventory %s, settlement %s, commission %s)\n' \
  "$(since "$t0")" "${p[2]}" "${p[0]}" "${p[4]}" "${p[6]}"

# runs a step, says how long it took and returns its status (callers chain
# steps with &&: set -e does not apply inside a function called with ||)
timed() { # label command...
  local s rc=0
  s=$(date +%s.%N)
  "${@:2}" || rc=$?
  printf '   (%s: %s s%s)\n' "$1" "$(since "$s")" "$([ "$rc" = 0 ] || echo ", exit $rc")"
  return "$rc"
}

# each returns 77 when its toolchain is missing (install-deps.sh installs
# it; only a machine without go or maven lacks one)
run_python() {
  [ -f "$examples_py_stamp" ] || { echo "skipped: no venv at $examples_py_venv (scripts/install-deps.sh builds it)"; return 77; }
  timed "generate stubs" env PYTHON="$examples_py_python" "$root/examples/python/generate.sh" "$out/python-gen" &&
    timed "run" env PYTHONPATH="$out/python-gen" "$examples_py_python" "$root/examples/python/client.py"
}

run_go() {
  command -v go >/dev/null || { echo "skipped: no go on PATH"; return 77; }
  [ -x "$examples_go_bin/protoc-gen-go-grpc" ] || { echo "skipped: no protoc plugins in $examples_go_bin (scripts/install-deps.sh installs them)"; return 77; }
  timed "generate stubs" env PATH="$examples_go_bin:$PATH" "$root/examples/go/generate.sh" &&
    timed "build" bash -c "cd '$root/examples/go' && go build -o '$out/go-client' ." &&
    timed "run" "$out/go-client"
}

run_java() {
  command -v mvn >/dev/null || { echo "skipped: no mvn on PATH"; return 77; }
  # maven generates the stubs (protoc and protoc-gen-grpc-java from maven
  # central, cached in ~/.m2), compiles and runs the client. debian's maven
  # 3.8 writes colour resets even in batch mode into a pipe: stripped
  timed "generate, compile, run" java_mvn compile exec:java
}
java_mvn() {
  mvn -q -B -f "$root/examples/java/pom.xml" -Dexamples.build.dir="$out/java-target" "$@" 2>&1 |
    sed -u 's/\x1b\[[0-9;]*m//g'
}

status=0 ran=0
for lang in "${langs[@]}"; do
  echo "== $lang client"
  rc=0
  "run_$lang" || rc=$?
  case $rc in
    0) echo "== $lang: ok"; ran=1 ;;
    77) echo "== $lang: skipped" ;;
    *) echo "== $lang: FAILED"; status=1 ;;
  esac
done
[ $status = 0 ] && [ $ran = 0 ] && exit 77
exit $status
