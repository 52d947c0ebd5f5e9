#!/usr/bin/env bash
# ctest kafka.mock_broker: commerce-kafka-mock serves what the services need
# from a broker, driven by kcat as an ordinary client: the catalogue's topics
# exist with their partition counts, keyed idempotent produce, consumer
# groups with committed offsets, the fixed bootstrap port, clean exit on
# SIGTERM.
#
#   test_mock_broker.sh <commerce-kafka-mock binary> <kafka/topics.tsv>
set -euo pipefail

mock=${1:?usage: test_mock_broker.sh MOCK_BINARY TOPICS_TSV}
catalogue=${2:?usage: test_mock_broker.sh MOCK_BINARY TOPICS_TSV}
command -v kcat >/dev/null || {
  echo "test_mock_broker: kcat is missing (scripts/install-deps.sh)" >&2
  exit 1
}

tmp=$(mktemp -d)
pids=()
cleanup() {
  local p
  for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT

passed=0
failed=0
ok() {
  echo "ok   $*"
  passed=$((passed + 1))
}
bad() {
  echo "FAIL $*"
  failed=$((failed + 1))
}

# starts the mock with the given options; sets mock_pid and bs
start_mock() {
  local out=$tmp/out.$RANDOM
  "$mock" "$@" >"$out" 2>>"$tmp/mock.log" &
  mock_pid=$!
  pids+=("$mock_pid")
  for _ in $(seq 1 100); do
    if grep -q '^KAFKA_BROKERS=' "$out" 2>/dev/null; then
      bs=$(sed -n 's/^KAFKA_BROKERS=//p' "$out" | head -n 1)
      return 0
    fi
    kill -0 "$mock_pid" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}

# consumer settings: a short session keeps the mock's group coordinator
# (which waits up to session.timeout.ms after a member leaves) quick
kc_group() {
  timeout 40 kcat -b "$bs" -G "$1" -X auto.offset.reset=earliest -q -e -X session.timeout.ms=6000 \
    -f '%k=%s\n' "${@:2}"
}

# --- 1. start with a bootstrap file
if start_mock --bootstrap-file "$tmp/bootstrap"; then
  ok "mock printed KAFKA_BROKERS=$bs"
else
  cat "$tmp/mock.log" >&2
  bad "mock did not start"
  echo "$passed passed, $failed failed"
  exit 1
fi
first_pid=$mock_pid
[ "$(cat "$tmp/bootstrap" 2>/dev/null)" = "$bs" ] && ok "bootstrap file holds $bs" ||
  bad "bootstrap file does not hold $bs"

# --- 2. every catalogued topic with its partition count
meta=$(kcat -b "$bs" -L -m 10)
missing=0
while IFS=$'\t' read -r name parts _; do
  case "$name" in '' | '#'* | name) continue ;; esac
  if ! grep -q "topic \"$name\" with $parts partitions" <<<"$meta"; then
    bad "topic $name with $parts partitions is missing"
    missing=1
  fi
done <"$catalogue"
[ $missing = 0 ] && ok "all catalogued topics exist with their partition counts"

# --- 3. keyed, idempotent produce: one key, one partition
printf 'o1:a\no2:b\no1:c\n' |
  kcat -b "$bs" -P -t commerce.order.v1 -K: -X enable.idempotence=true -X acks=all
parts=$(timeout 20 kcat -b "$bs" -C -t commerce.order.v1 -o beginning -e -q -f '%k %p\n' |
  awk '$1 == "o1" { print $2 }' | sort -u | wc -l)
[ "$parts" = 1 ] && ok "records of one key share a partition" ||
  bad "key o1 landed in $parts partitions"

# --- 4. a consumer group reads everything, commits, and a rejoining member
# of the same group reads only what came after
got=$(kc_group inv -c 3 commerce.order.v1 | sort | tr '\n' ' ')
[ "$got" = "o1=a o1=c o2=b " ] && ok "consumer group read the 3 records" ||
  bad "consumer group read '$got'"
printf 'o3:d\n' | kcat -b "$bs" -P -t commerce.order.v1 -K: -X enable.idempotence=true
got=$(kc_group inv -c 1 commerce.order.v1 | tr '\n' ' ')
[ "$got" = "o3=d " ] && ok "rejoined group resumed from its committed offsets" ||
  bad "rejoined group read '$got'"

# --- 5. a fixed bootstrap port (forwarded to the mock)
port=
for _ in 1 2 3 4 5; do
  try=$((20000 + RANDOM % 20000))
  if start_mock --port "$try"; then
    port=$try
    break
  fi
done
if [ -n "$port" ] && [ "$bs" = "127.0.0.1:$port" ]; then
  printf 'k:v\n' | kcat -b "$bs" -P -t commerce.commission.partner.v1 -K: -X enable.idempotence=true
  got=$(timeout 20 kcat -b "$bs" -C -t commerce.commission.partner.v1 -o beginning -e -q \
    -f '%k=%s')
  [ "$got" = "k=v" ] && ok "fixed port $port serves produce and consume" ||
    bad "fixed port $port read '$got'"
  kill -TERM "$mock_pid"
  wait "$mock_pid" || true
else
  bad "mock did not start with --port"
fi

# --- 6. SIGTERM: exit 0, bootstrap file removed
kill -TERM "$first_pid"
rc=0
wait "$first_pid" || rc=$?
[ $rc = 0 ] && ok "SIGTERM: exit 0" || bad "SIGTERM: exit $rc"
[ ! -e "$tmp/bootstrap" ] && ok "bootstrap file removed on exit" || bad "bootstrap file left behind"

if [ $failed != 0 ]; then
  echo "--- mock log" >&2
  tail -n 40 "$tmp/mock.log" >&2
fi
echo "$passed passed, $failed failed"
[ $failed = 0 ]
