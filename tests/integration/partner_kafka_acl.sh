#!/usr/bin/env bash
# ctest integration.partner_kafka_acl: a partner's SASL/SCRAM user reads its
# own topic through its own consumer groups and nothing else, on the real
# broker of scripts/kafka.sh (started by scripts/test.sh; its PLAINTEXT
# listener is the super user's, its SASL_PLAINTEXT listener the partners').
# two partners A and B of one tenant, fresh names each run (B's id starts
# with A's, so a missing dot in a prefix would show); kcat is the client.
#
#   partner_kafka_acl.sh <scripts/kafka.sh>
#
# exit 77 (skipped) when KAFKA_BROKERS names another broker and
# KAFKA_SASL_BROKERS is not set.
set -euo pipefail

kafka_sh=${1:?usage: partner_kafka_acl.sh KAFKA_SH}
command -v kcat >/dev/null || {
  echo "partner_kafka_acl: kcat is missing (scripts/install-deps.sh)" >&2
  exit 1
}

bs=$("$kafka_sh" bootstrap) || exit 1
if ! sb=$("$kafka_sh" sasl-bootstrap); then
  if [ -n "${KAFKA_BROKERS:-}" ] && [ -z "${KAFKA_SASL_BROKERS:-}" ]; then
    echo "partner_kafka_acl: skipped, KAFKA_BROKERS is not this checkout's broker (set KAFKA_SASL_BROKERS)"
    exit 77
  fi
  exit 1
fi
timeout 20 kcat -b "$bs" -L -m 10 >/dev/null 2>&1 || {
  echo "partner_kafka_acl: no broker serving on $bs (scripts/kafka.sh start)" >&2
  exit 1
}

tmp=$(mktemp -d)
sfx=$(date +%s)$RANDOM
tenant=t-acl.$sfx
pa=pa$sfx
pb=pa${sfx}b
ta=commerce.partner.v1.$tenant.$pa
tb=commerce.partner.v1.$tenant.$pb
ua=$tenant.$pa
ub=$tenant.$pb
pwa=pw-a-$RANDOM$RANDOM
pwb=pw-b-$RANDOM$RANDOM

cleanup() {
  "$kafka_sh" partner-revoke "$tenant" "$pa" >/dev/null 2>&1 || true
  "$kafka_sh" partner-revoke "$tenant" "$pb" >/dev/null 2>&1 || true
  "$kafka_sh" delete-topic "$ta" >/dev/null 2>&1 || true
  "$kafka_sh" delete-topic "$tb" >/dev/null 2>&1 || true
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

# kcat over SASL_PLAINTEXT as user $1, password $2; stdout to $tmp/out,
# stderr to $tmp/err; sets rc (124: timed out)
kc_sasl() {
  local user=$1 pw=$2
  shift 2
  rc=0
  timeout 40 kcat -b "$sb" -X security.protocol=SASL_PLAINTEXT \
    -X sasl.mechanisms=SCRAM-SHA-512 -X sasl.username="$user" -X sasl.password="$pw" \
    "$@" >"$tmp/out" 2>"$tmp/err" || rc=$?
}

# a consumer in group $3 of topic $4 as user $1 / password $2, from the
# beginning to the end of every partition (not -q: that would hide the
# authentication error, which librdkafka only logs)
kc_group() {
  kc_sasl "$1" "$2" -G "$3" -X auto.offset.reset=earliest -X session.timeout.ms=6000 \
    -e -f '%k=%s\n' "$4"
}

# check NAME PATTERN: the last kcat call failed, not by timing out, and
# said PATTERN (an extended regex) on stderr
refused() {
  local name=$1 pattern=$2
  if [ "$rc" = 0 ]; then
    bad "$name: succeeded (stdout: $(head -c 300 "$tmp/out"))"
  elif [ "$rc" = 124 ]; then
    bad "$name: timed out instead of being refused (stderr: $(tail -c 400 "$tmp/err"))"
  elif grep -Eq "$pattern" "$tmp/err"; then
    ok "$name: refused ($(grep -Eo "$pattern" "$tmp/err" | head -n 1))"
  else
    bad "$name: failed (rc $rc) without '$pattern' (stderr: $(tail -c 400 "$tmp/err"))"
  fi
}

# the records produced as the super user on PLAINTEXT: key=value lines
produce() {
  local topic=$1 file=$2
  timeout 30 kcat -b "$bs" -P -t "$topic" -K = -X acks=all -X message.timeout.ms=20000 \
    <"$file"
}

echo "# tenant $tenant, partners $pa and $pb; bootstrap $bs, sasl $sb"

# --- the operator's commands: topics, then users and acls (twice: idempotent)
if "$kafka_sh" partner-topic "$tenant" "$pa" && "$kafka_sh" partner-topic "$tenant" "$pb" 1 &&
  "$kafka_sh" partner-topic "$tenant" "$pa"; then
  ok "partner-topic created $ta and $tb (again: left alone)"
else
  bad "partner-topic failed"
fi
meta=$(timeout 20 kcat -b "$bs" -L -t "$ta" -m 10 2>&1) || true
if printf '%s\n' "$meta" | grep -q "topic \"$ta\" with 3 partitions"; then
  ok "$ta has 3 partitions"
else
  bad "$ta: expected 3 partitions, metadata: $meta"
fi
if "$kafka_sh" partner-access "$tenant" "$pa" "$pwa" && "$kafka_sh" partner-access "$tenant" "$pb" "$pwb" &&
  "$kafka_sh" partner-access "$tenant" "$pa" "$pwa"; then
  ok "partner-access granted $ua and $ub (again for $ua: fine)"
else
  bad "partner-access failed"
fi

# --- records, as the super user on PLAINTEXT
for i in 1 2 3 4 5; do printf 'k%s=a-%s-%s\n' "$i" "$sfx" "$i"; done >"$tmp/a.in"
for i in 1 2 3; do printf 'k%s=b-%s-%s\n' "$i" "$sfx" "$i"; done >"$tmp/b.in"
if produce "$ta" "$tmp/a.in" && produce "$tb" "$tmp/b.in"; then
  ok "produced 5 records to $ta and 3 to $tb on PLAINTEXT"
else
  bad "could not produce on PLAINTEXT $bs"
fi

# --- A reads its own topic through a group under its prefix: exactly the
# records produced (partitions interleave: compared sorted)
kc_group "$ua" "$pwa" "$ta.reader" "$ta"
if [ "$rc" = 0 ] && [ "$(sort "$tmp/out")" = "$(sort "$tmp/a.in")" ]; then
  ok "A reads its own topic in group $ta.reader: the 5 records"
else
  bad "A reading $ta in group $ta.reader: rc $rc, got [$(tr '\n' ' ' <"$tmp/out")] want [$(tr '\n' ' ' <"$tmp/a.in")] (stderr: $(tail -c 400 "$tmp/err"))"
fi
# the group committed its offsets (READ on the group): nothing left
kc_group "$ua" "$pwa" "$ta.reader" "$ta"
if [ "$rc" = 0 ] && [ ! -s "$tmp/out" ]; then
  ok "A's group committed its offsets: a second run reads nothing"
else
  bad "A's second run in $ta.reader: rc $rc, got [$(tr '\n' ' ' <"$tmp/out")] (stderr: $(tail -c 400 "$tmp/err"))"
fi

# --- B reads its own topic with its own credentials
kc_group "$ub" "$pwb" "$tb.reader" "$tb"
if [ "$rc" = 0 ] && [ "$(sort "$tmp/out")" = "$(sort "$tmp/b.in")" ]; then
  ok "B reads its own topic in group $tb.reader: the 3 records"
else
  bad "B reading $tb: rc $rc, got [$(tr '\n' ' ' <"$tmp/out")] (stderr: $(tail -c 400 "$tmp/err"))"
fi

# --- what A must not do
kc_group "$ua" "$pwa" "$ta.reader2" "$tb"
refused "A reads B's topic (group under A's prefix)" 'Topic authorization failed'
kc_sasl "$ua" "$pwa" -C -t "$tb" -o beginning -e -q
refused "A reads B's topic without a group" 'Topic authorization failed'
kc_group "$ua" "$pwa" "$tb.reader" "$ta"
refused "A reads its topic in B's group $tb.reader" 'Group authorization failed'
kc_group "$ua" "$pwa" "$ta" "$ta"
refused "A reads its topic in group $ta (the prefix without its dot)" 'Group authorization failed'
kc_group "$ua" "$pwa" "other.reader" "$ta"
refused "A reads its topic in group other.reader" 'Group authorization failed'
kc_group "$ua" "wrong-$pwa" "$ta.reader3" "$ta"
refused "A with a wrong password" 'Authentication failed|Authentication failure|invalid credentials'
echo "x=written-by-a" >"$tmp/w.in"
kc_sasl "$ua" "$pwa" -P -t "$ta" -K = -X message.timeout.ms=15000 -X acks=all <"$tmp/w.in"
refused "A produces to its own topic" 'Topic authorization failed'
# and nothing it sent arrived: the topic still holds the 5 records
n=$(timeout 30 kcat -b "$bs" -C -t "$ta" -o beginning -e -q 2>/dev/null | wc -l) || n="(kcat failed)"
if [ "$n" = 5 ]; then
  ok "$ta still holds 5 records"
else
  bad "$ta holds $n records, expected 5"
fi

# --- revoked: A can no longer log in
if "$kafka_sh" partner-revoke "$tenant" "$pa" && "$kafka_sh" partner-revoke "$tenant" "$pa"; then
  ok "partner-revoke removed $ua (again: fine)"
else
  bad "partner-revoke failed"
fi
kc_group "$ua" "$pwa" "$ta.reader4" "$ta"
refused "A after partner-revoke" 'Authentication failed|Authentication failure|invalid credentials'

echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
