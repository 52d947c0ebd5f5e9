#!/usr/bin/env bash
# two checkouts' private servers at the same time (issue 20): clones this
# repository's HEAD twice into a temporary directory and starts, at once,
# the quick start's servers in one ("a": its postgres, as scripts/run.sh
# starts it, and a broker) and the test command's in the other ("b": the
# postgres and the kafka broker scripts/test.sh starts). then checks that
# all of them run together on different free ports and answer (psql
# "select 1", kcat -L), that each clone's scripts find their own servers,
# that a pinned port which is taken is refused, that a restarted cluster
# keeps its port, and that everything stops cleanly (a through
# scripts/run.sh --stop, b as scripts/test.sh does). the second clone must
# get the broker's jars from the local maven repository, offline.
#
#   scripts/side-by-side-test.sh
#
# only the infrastructure is exercised: no build, no test suite (two full
# test runs are too slow for two cores). needs what scripts/install-deps.sh
# installs. every step has a time limit; the whole run takes about a
# minute and at most about 10. exit 0 when every check passed.
# SIDE_BY_SIDE_KEEP=1 keeps the clones (their logs) after a failure.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)

for c in git ss kcat java mvn flock timeout /usr/lib/postgresql/15/bin/initdb; do
  command -v "$c" >/dev/null 2>&1 || {
    echo "side-by-side: $c is missing (run scripts/install-deps.sh)" >&2
    exit 1
  }
done

head=$(git -C "$root" rev-parse HEAD)
if [ -n "$(git -C "$root" status --porcelain -- scripts kafka)" ]; then
  echo "side-by-side: note: uncommitted changes under scripts/ or kafka/ are not tested (clones of HEAD)"
fi

# searchable by the "postgres" user (the clusters run as it when we are
# root) and short enough for the clusters' unix sockets
tmp=$(mktemp -d "${TMPDIR:-/tmp}/commerce-sbs.XXXXXX")
chmod 755 "$tmp"
a=$tmp/a
b=$tmp/b

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
check() { # description, command...
  local what=$1
  shift
  if "$@"; then ok "$what"; else bad "$what"; fi
}
quiet() { "$@" >/dev/null 2>&1; }

# whatever happens, nothing of ours stays running: each clone's own scripts
# stop its own servers (by data directory and pid file, never by name)
cleanup() {
  local rc=$? c
  trap - EXIT INT TERM
  for c in "$a" "$b"; do
    [ -d "$c/.run" ] || continue
    timeout 90 "$c/scripts/kafka.sh" stop >/dev/null 2>&1 || true
    timeout 90 "$c/scripts/pg.sh" stop >/dev/null 2>&1 || true
  done
  if [ "$rc" != 0 ] && [ "${SIDE_BY_SIDE_KEEP:-0}" = 1 ]; then
    echo "side-by-side: kept $tmp"
  else
    rm -rf "$tmp"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

echo "== two clones of $head in $tmp"
for c in "$a" "$b"; do
  git clone -q --no-checkout "$root" "$c"
  git -C "$c" checkout -q --detach "$head"
done

# the environment a user has: nothing pinned, no servers of their own
unset PG_PORT PG_RUN_DIR PG_DSN KAFKA_PORT KAFKA_CONTROLLER_PORT KAFKA_RUN_DIR KAFKA_BROKERS
export KAFKA_START_TIMEOUT=150

echo "== postgres in both at once"
timeout 150 "$a/scripts/pg.sh" start >"$tmp/a.pg.log" 2>&1 &
pa_job=$!
timeout 150 "$b/scripts/pg.sh" start >"$tmp/b.pg.log" 2>&1 &
pb_job=$!
rc=0
wait "$pa_job" || rc=$?
check "a: scripts/pg.sh start (the quick start's postgres)" [ "$rc" = 0 ]
[ "$rc" = 0 ] || cat "$tmp/a.pg.log"
rc=0
wait "$pb_job" || rc=$?
check "b: scripts/pg.sh start (the test command's postgres)" [ "$rc" = 0 ]
[ "$rc" = 0 ] || cat "$tmp/b.pg.log"

echo "== kafka brokers in both at once"
timeout 240 "$a/scripts/kafka.sh" start >"$tmp/a.kafka.log" 2>&1 &
ka_job=$!
# b starts once a has its jars: with a cold maven repository a downloads
# them, and b must then find them there and stay offline
for _ in $(seq 1 1200); do
  [ -f "$a/.run/kafka/libs/.pom.sha256" ] && break
  kill -0 "$ka_job" 2>/dev/null || break
  sleep 0.1
done
timeout 240 "$b/scripts/kafka.sh" start >"$tmp/b.kafka.log" 2>&1 &
kb_job=$!
rc=0
wait "$ka_job" || rc=$?
check "a: scripts/kafka.sh start" [ "$rc" = 0 ]
[ "$rc" = 0 ] || cat "$tmp/a.kafka.log"
rc=0
wait "$kb_job" || rc=$?
check "b: scripts/kafka.sh start" [ "$rc" = 0 ]
[ "$rc" = 0 ] || cat "$tmp/b.kafka.log"
check "b: the broker's jars came from the local maven repository, offline" \
  grep -q 'offline' "$tmp/b.kafka.log"

echo "== both at once"
port_of_dsn() { sed -n 's/.*port=\([0-9]*\).*/\1/p' <<<"$1"; }
pga=$(port_of_dsn "$("$a/scripts/pg.sh" dsn 2>/dev/null)") || true
pgb=$(port_of_dsn "$("$b/scripts/pg.sh" dsn 2>/dev/null)") || true
ka=$("$a/scripts/kafka.sh" bootstrap 2>/dev/null) || true
kb=$("$b/scripts/kafka.sh" bootstrap 2>/dev/null) || true
kca=$(cat "$a/.run/kafka/controller-port" 2>/dev/null) || true
kcb=$(cat "$b/.run/kafka/controller-port" 2>/dev/null) || true
echo "   a: postgres $pga, kafka ${ka:-?} (controller ${kca:-?})"
echo "   b: postgres $pgb, kafka ${kb:-?} (controller ${kcb:-?})"
ports=("$pga" "$pgb" "${ka##*:}" "${kb##*:}" "$kca" "$kcb")
in_range() {
  local p
  for p in "${ports[@]}"; do
    [[ $p =~ ^[0-9]+$ ]] && [ "$p" -ge 20000 ] && [ "$p" -le 31999 ] || return 1
  done
}
check "six ports, each in 20000-31999: ${ports[*]}" in_range
check "six different ports" [ "$(printf '%s\n' "${ports[@]}" | sort -u | wc -l)" = 6 ]
listening() { [ -n "$(ss -Hltn "sport = :$1")" ]; }
for p in "${ports[@]}"; do
  check "something listens on $p" listening "$p"
done

for c in a b; do
  dir=${!c}
  check "$c: scripts/pg.sh status" quiet "$dir/scripts/pg.sh" status
  got=$(timeout 30 "$dir/scripts/pg.sh" psql -tAc 'select 1' 2>&1) || true
  check "$c: psql select 1 (got '$got')" [ "$got" = 1 ]
  # each clone's scripts reach their own cluster, not the other's
  got=$(timeout 30 "$dir/scripts/pg.sh" psql -tAc 'show data_directory' 2>&1) || true
  check "$c: its own cluster ($got)" [ "${got#"$dir"/}" != "$got" ]
  check "$c: scripts/kafka.sh status" quiet timeout 60 "$dir/scripts/kafka.sh" status
  bs=$("$dir/scripts/kafka.sh" bootstrap)
  meta=$(timeout 30 kcat -b "$bs" -L -m 10 2>&1) || true
  check "$c: kcat -L on $bs names its broker" grep -q "broker 1 at $bs" <<<"$meta"
done

echo "== a pinned port that is taken is refused, naming the variable"
refused() { # exit code, variable, output
  [ "$1" != 0 ] && grep -q "$2" <<<"$3"
}
out=$(PG_PORT=$pga PG_RUN_DIR=$tmp/pinned timeout 60 "$b/scripts/pg.sh" start 2>&1) && rc=0 || rc=$?
check "PG_PORT=$pga (a's) refused: $out" refused "$rc" PG_PORT "$out"
out=$(KAFKA_PORT=${kb##*:} KAFKA_RUN_DIR=$tmp/pinned-kafka timeout 60 "$a/scripts/kafka.sh" start 2>&1) &&
  rc=0 || rc=$?
check "KAFKA_PORT=${kb##*:} (b's) refused: $out" refused "$rc" KAFKA_PORT "$out"

echo "== b's postgres restarted keeps its port"
timeout 90 "$b/scripts/pg.sh" stop >/dev/null 2>&1 || true
timeout 150 "$b/scripts/pg.sh" start >>"$tmp/b.pg.log" 2>&1 || true
again=$(port_of_dsn "$("$b/scripts/pg.sh" dsn 2>/dev/null)") || true
check "b: back on $pgb (got $again)" [ "$again" = "$pgb" ]
got=$(timeout 30 "$b/scripts/pg.sh" psql -tAc 'select 1' 2>&1) || true
check "b: psql select 1 after the restart" [ "$got" = 1 ]

echo "== stop: a through scripts/run.sh --stop, b as scripts/test.sh does"
check "a: scripts/run.sh --stop" quiet timeout 120 "$a/scripts/run.sh" --stop
check "a: scripts/kafka.sh stop" quiet timeout 90 "$a/scripts/kafka.sh" stop
check "b: scripts/kafka.sh stop" quiet timeout 90 "$b/scripts/kafka.sh" stop
check "b: scripts/pg.sh stop" quiet timeout 90 "$b/scripts/pg.sh" stop
stopped() { # script: exit 3 (stopped) from its status
  local rc=0
  timeout 60 "$@" status >/dev/null 2>&1 || rc=$?
  [ "$rc" = 3 ]
}
for c in a b; do
  dir=${!c}
  check "$c: postgres stopped" stopped "$dir/scripts/pg.sh"
  check "$c: kafka stopped" stopped "$dir/scripts/kafka.sh"
done
not_listening() { [ -z "$(ss -Hltn "sport = :$1")" ]; }
for p in "${ports[@]}"; do
  check "nothing listens on $p any more" not_listening "$p"
done

echo "side-by-side: $passed passed, $failed failed"
[ "$failed" = 0 ]
