#!/usr/bin/env bash
# ctest integration.reflection_grpcurl: the real grpcurl (scripts/install-deps.sh
# puts it in .tools/bin) against commerce-order and commerce-inventory, with
# no proto files: list, describe, and calls whose requests and replies
# grpcurl builds from what server reflection told it.
#
#   reflection_grpcurl.sh <commerce-order> <commerce-inventory>
#
# needs PG_DSN and KAFKA_BROKERS (scripts/test.sh sets them).
set -euo pipefail

order_bin=${1:?usage: reflection_grpcurl.sh ORDER_BIN INVENTORY_BIN}
inventory_bin=${2:?usage: reflection_grpcurl.sh ORDER_BIN INVENTORY_BIN}
root=$(cd "$(dirname "$0")/../.." && pwd)
grpcurl=${GRPCURL:-$root/.tools/bin/grpcurl}
[ -x "$grpcurl" ] || grpcurl=$(command -v grpcurl || true)
[ -n "$grpcurl" ] || {
  echo "reflection_grpcurl: grpcurl is missing (scripts/install-deps.sh)" >&2
  exit 1
}
: "${PG_DSN:?PG_DSN is not set: run the tests through scripts/test.sh}"
: "${KAFKA_BROKERS:?KAFKA_BROKERS is not set: run the tests through scripts/test.sh}"

tmp=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT

fails=0
fail() {
  echo "FAIL: $*" >&2
  fails=$((fails + 1))
}

# a free port in 20000-31999, as the C harness picks them
free_port() {
  local p
  while :; do
    p=$((20000 + RANDOM % 12000))
    ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null && {
      echo "$p"
      return
    }
  done
}

# start NAME BIN [VAR=VALUE...]: runs BIN on fresh ports until it serves;
# sets port_NAME
start() {
  local name=$1 bin=$2
  shift 2
  local gp ap
  gp=$(free_port)
  ap=$(free_port)
  env GRPC_LISTEN="127.0.0.1:$gp" ADMIN_LISTEN="127.0.0.1:$ap" LOG_LEVEL=warn WORKERS=2 "$@" \
    "$bin" >"$tmp/$name.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 1 300); do
    if curl -fsS "http://127.0.0.1:$ap/readyz" >/dev/null 2>&1; then
      printf -v "port_$name" '%s' "$gp"
      return
    fi
    sleep 0.1
  done
  cat "$tmp/$name.log" >&2
  echo "reflection_grpcurl: $name did not become ready" >&2
  exit 1
}

gc() { timeout 20 "$grpcurl" -plaintext "$@"; }

port_inventory='' port_order='' port_order_off='' # set by start
sfx=$$_$RANDOM
start inventory "$inventory_bin" "INVENTORY_SCHEMA=refl_inv_$sfx"
start order "$order_bin" "ORDER_SCHEMA=refl_ord_$sfx" "INVENTORY_TARGET=127.0.0.1:$port_inventory"
start order_off "$order_bin" "ORDER_SCHEMA=refl_ord_$sfx" "INVENTORY_TARGET=127.0.0.1:$port_inventory" \
  GRPC_REFLECTION=off
o=127.0.0.1:$port_order
i=127.0.0.1:$port_inventory

# list: the api, health and both reflection services, nothing else
want=$'commerce.order.v1.OrderService\ngrpc.health.v1.Health\ngrpc.reflection.v1.ServerReflection\ngrpc.reflection.v1alpha.ServerReflection'
got=$(gc "$o" list) || fail "list failed: $got"
[ "$got" = "$want" ] || fail "list on order: got [$got], want [$want]"
got=$(gc "$i" list) || fail "list on inventory failed: $got"
grep -qx 'commerce.inventory.v1.InventoryService' <<<"$got" || fail "list on inventory: [$got]"

# describe: a service with its methods, a message with its fields and types
got=$(gc "$o" describe commerce.order.v1.OrderService) || fail "describe service: $got"
grep -q 'rpc GetOrder ( .commerce.order.v1.GetOrderRequest ) returns ( .commerce.order.v1.GetOrderResponse );' <<<"$got" ||
  fail "describe OrderService: [$got]"
got=$(gc "$o" describe commerce.order.v1.CreateOrderRequest) || fail "describe message: $got"
grep -q 'string buyer_id = 2;' <<<"$got" || fail "describe CreateOrderRequest: [$got]"
grep -q 'google.protobuf.Duration payment_timeout' <<<"$got" || fail "describe CreateOrderRequest: [$got]"
got=$(gc "$o" describe commerce.order.v1.NoSuchThing 2>&1) && fail "describe of an unknown symbol succeeded: $got"
grep -q 'not found' <<<"$got" || fail "describe of an unknown symbol: [$got]"

# calls built from reflection alone: a NotFound with its details ...
got=$(gc -H 'x-tenant-id: t1' -d '{"order_id":"0192d5a8-7b3c-8e4f-9a1b-2c3d4e5f6a7b"}' \
  "$o" commerce.order.v1.OrderService/GetOrder 2>&1) && fail "GetOrder of an unknown id succeeded: $got"
grep -q 'Code: NotFound' <<<"$got" || fail "GetOrder of an unknown id: [$got]"
grep -q '"reason": "RESOURCE_NOT_FOUND"' <<<"$got" || fail "GetOrder's details: [$got]"
grep -q '"domain": "order.commerce"' <<<"$got" || fail "GetOrder's details: [$got]"

# ... and a write and a read that succeed, on inventory
sku=refl-$sfx
got=$(gc -H 'x-tenant-id: t1' -d "{\"request_id\":\"r-$sfx\",\"sku\":\"$sku\",\"available\":7,\"reason\":\"grpcurl test\",\"actor\":\"ci\"}" \
  "$i" commerce.inventory.v1.InventoryService/SetStock 2>&1) || fail "SetStock: $got"
got=$(gc -H 'x-tenant-id: t1' -d "{\"sku\":\"$sku\"}" "$i" commerce.inventory.v1.InventoryService/GetStock 2>&1) ||
  fail "GetStock: $got"
grep -q '"available": "7"' <<<"$got" || fail "GetStock: [$got]"

# GRPC_REFLECTION=off: the service still serves, reflection does not
got=$(gc "127.0.0.1:$port_order_off" list 2>&1) && fail "list with GRPC_REFLECTION=off succeeded: $got"
grep -qi 'does not support the reflection API' <<<"$got" || fail "list with reflection off: [$got]"

# SIGTERM: a clean drain (exit 0) after the streams above
kill -TERM "${pids[1]}"
rc=0
wait "${pids[1]}" || rc=$?
[ "$rc" = 0 ] || fail "order exited $rc on SIGTERM"

if [ "$fails" -gt 0 ]; then
  echo "reflection_grpcurl: $fails failure(s)" >&2
  for f in "$tmp"/*.log; do
    echo "--- $f" >&2
    tail -20 "$f" >&2
  done
  exit 1
fi
echo "reflection_grpcurl: ok"
