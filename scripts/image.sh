#!/usr/bin/env bash
# builds the image from the Dockerfile here, without a registry: a Debian 12
# base made by debootstrap (localhost/debian:12), buildah for the build,
# podman to run it. then it starts every service from the image (read-only
# root, uid 65532, all capabilities dropped, no network but a private
# Postgres's unix socket and the build's embedded Kafka started inside its
# network namespace), runs `commerce-<svc> migrate` twice at once and once
# more (the chart's hook Job), checks each answers gRPC health (SERVING) and
# /healthz, /readyz from inside the container's network namespace, that
# /metrics exposes every metric the alerts and dashboards use, prints the
# image's size and saves it as an OCI archive.
#
#   scripts/image.sh [--no-smoke]     (archive: build/image/commerce-<version>.oci.tar)
#
# podman/buildah keep their own configuration and storage under
# $HOME/.cache/commerce/containers (vfs driver, runc, cgroupfs, no bridge
# network: what works on these machines, see the notes in k8s/README.md), so
# nothing of the machine's container setup is used or changed. the Debian
# packages podman buildah debootstrap runc are installed when missing.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
smoke=1
[ "${1:-}" = --no-smoke ] && smoke=0

version=$(sed -n 's/^project(commerce VERSION \([0-9.]*\).*/\1/p' "$root/CMakeLists.txt")
revision=$(git -C "$root" rev-parse HEAD 2>/dev/null || echo unknown)
image=localhost/commerce:$version
base_image=localhost/debian:12
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
out=$root/build/image
cache=${COMMERCE_CACHE:-$HOME/.cache/commerce}
state=$cache/containers

SUDO=""
[ "$(id -u)" = 0 ] || SUDO=sudo
missing=()
for p in podman buildah debootstrap runc; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "image: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  log=$(mktemp)
  { $SUDO apt-get update -qq && $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"; } >"$log" 2>&1 || {
    tail -20 "$log"
    exit 1
  }
  rm -f "$log"
fi

# a private container configuration: crun fails on setrlimit here, the
# default bridge network must not be created, overlay is not available
mkdir -p "$state/storage" "$state/run"
cat >"$state/containers.conf" <<CONF
[containers]
netns = "none"
default_ulimits = ["nofile=4096:4096", "nproc=4096:4096"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
[network]
default_network = "none"
CONF
cat >"$state/storage.conf" <<CONF
[storage]
driver = "vfs"
graphroot = "$state/storage"
runroot = "$state/run"
CONF
export CONTAINERS_CONF=$state/containers.conf CONTAINERS_STORAGE_CONF=$state/storage.conf

# a machine whose container runtime cannot work at all (no user namespaces,
# a locked-down sandbox) skips, saying so, rather than failing the test
# command; one where it works must pass every check below
if ! podman info >"$state/podman-info.log" 2>&1; then
  echo "image: SKIPPED: podman cannot run on this machine (podman info failed: $state/podman-info.log)"
  exit 0
fi

# the base: debian 12 minbase from the configured mirror (~50 s, once)
if ! podman image exists "$base_image"; then
  echo "image: debootstrap bookworm from $mirror"
  tmp=$(mktemp -d)
  $SUDO debootstrap --variant=minbase bookworm "$tmp/rootfs" "$mirror" >"$tmp/debootstrap.log" 2>&1 || {
    tail -20 "$tmp/debootstrap.log"
    exit 1
  }
  $SUDO rm -rf "$tmp/rootfs/var/cache/apt/archives"/*.deb "$tmp/rootfs/var/lib/apt/lists"/*
  $SUDO tar -C "$tmp/rootfs" -c . | podman import - "$base_image" >/dev/null
  $SUDO rm -rf "$tmp"
fi

echo "image: building $image (revision $revision)"
start=$(date +%s)
buildah bud --isolation chroot --network host --layers=false \
  --build-arg BASE="$base_image" --build-arg VERSION="$version" \
  --build-arg REVISION="$revision" -t "$image" "$root" >"$cache/image-build.log" 2>&1 || {
  tail -40 "$cache/image-build.log"
  echo "image: build failed (log: $cache/image-build.log)" >&2
  exit 1
}
echo "image: built in $(($(date +%s) - start)) s"
size=$(podman image inspect --format '{{.Size}}' "$image")
echo "image: $image is $((size / 1000000)) MB ($size bytes)"
podman image inspect --format '{{range $k, $v := .Labels}}{{$k}}={{$v}}{{"\n"}}{{end}}' "$image" |
  grep '^org.opencontainers' | sed 's/^/  /'

if [ "$smoke" = 1 ]; then
  # a private postgres for the smoke run; the containers reach it through
  # its unix socket only (they have no network)
  pgdir=/tmp/commerce-image-pg-$(printf '%s' "$root" | md5sum | cut -c1-8)
  export PG_RUN_DIR=$pgdir
  unset PG_DSN # ours, even when the caller (scripts/test.sh) has its own
  pg_started=0
  "$root/scripts/pg.sh" status >/dev/null 2>&1 || pg_started=1
  "$root/scripts/pg.sh" start >/dev/null
  port=$(cat "$pgdir/port")
  gen=$(mktemp -d)
  containers=()
  mocks=()
  schemas=()
  # the embedded broker, when the build has it (ninja -C build commerce-kafka-mock)
  mock=$root/build/bin/commerce-kafka-mock
  [ -x "$mock" ] || {
    echo "image: no $mock: the services run without Kafka"
    mock=""
  }
  kafka_port=19092
  cleanup() {
    for c in "${containers[@]}"; do podman rm -f "$c" >/dev/null 2>&1 || true; done
    for p in "${mocks[@]}"; do kill "$p" 2>/dev/null || true; done
    for sch in "${schemas[@]}"; do
      "$root/scripts/pg.sh" psql -q -c "DROP SCHEMA IF EXISTS $sch CASCADE" >/dev/null 2>&1 || true
    done
    [ "$pg_started" = 1 ] && "$root/scripts/pg.sh" stop >/dev/null 2>&1 || true
    rm -rf "$gen"
  }
  trap cleanup EXIT
  protoc -I "$root/proto/third_party" --python_out="$gen" grpc/health/v1/health.proto

  fail=0
  for svc in inventory order settlement commission; do
    case $svc in
      inventory) grpc=50052 admin=9092 ;;
      order) grpc=50051 admin=9091 ;;
      settlement) grpc=50053 admin=9093 ;;
      commission) grpc=50054 admin=9094 ;;
    esac
    # settlement's ledger gauges come from its recon ticker, one period
    # after the start (60 s by default): a short period for the scrape
    extra=()
    [ "$svc" = settlement ] && extra=(-e SETTLEMENT_RECON_MS=500 -e SETTLEMENT_PAYOUT_MS=500)
    name=commerce-smoke-$svc-$$
    # a fresh schema per run, dropped at the end
    schema=${svc}_image_$$
    schemas+=("$schema")
    run_opts=(--network none --read-only --read-only-tmpfs=false
      --cap-drop ALL --security-opt no-new-privileges
      -v "$pgdir/sock:/run/postgresql"
      -e PG_DSN="host=/run/postgresql port=$port dbname=commerce user=postgres"
      -e "$(echo "$svc" | tr 'a-z' 'A-Z')_SCHEMA=$schema"
      -e KAFKA_BROKERS=127.0.0.1:$kafka_port -e LOG_LEVEL=warn "${extra[@]}"
      # the image listens on all interfaces (0.0.0.0), where AUTH_MODE=off
      # is refused; this container has no network (--network none)
      -e ALLOW_INSECURE=1)
    # the chart's hook: `commerce-<svc> migrate`, twice at once on the empty
    # schema (the advisory lock serialises them), then once more (nothing to do)
    podman run --rm "${run_opts[@]}" "$image" "commerce-$svc" migrate >"$gen/migrate-$svc-1.log" 2>&1 &
    m1=$!
    podman run --rm "${run_opts[@]}" "$image" "commerce-$svc" migrate >"$gen/migrate-$svc-2.log" 2>&1 &
    m2=$!
    if wait "$m1" && wait "$m2" &&
      podman run --rm "${run_opts[@]}" "$image" "commerce-$svc" migrate >"$gen/migrate-$svc-3.log" 2>&1; then
      echo "image: commerce-$svc migrate: twice at once, then again: all exit 0"
    else
      echo "image: commerce-$svc migrate failed:"
      cat "$gen/migrate-$svc"-*.log
      fail=1
      continue
    fi
    podman run -d --name "$name" "${run_opts[@]}" "$image" "commerce-$svc" >/dev/null
    containers+=("$name")
    pid=$(podman inspect --format '{{.State.Pid}}' "$name")
    # an in-memory Kafka (the build's commerce-kafka-mock) inside the
    # container's network namespace; the service retries until it is up
    if [ -n "$mock" ]; then
      $SUDO nsenter -t "$pid" -n "$mock" --port "$kafka_port" >/dev/null 2>"$gen/kafka-$svc.log" &
      mocks+=($!)
    fi
    user=$(podman inspect --format '{{.Config.User}}' "$name")
    ok=0
    for _ in $(seq 1 100); do
      if status=$($SUDO nsenter -t "$pid" -n env COMMERCE_PY_GEN="$gen" /usr/bin/python3 \
        "$root/tests/interop/commerce_grpc.py" health "127.0.0.1:$grpc" 2>/dev/null) &&
        [ "$status" = SERVING ] &&
        $SUDO nsenter -t "$pid" -n curl -fsS -o /dev/null "http://127.0.0.1:$admin/healthz" &&
        $SUDO nsenter -t "$pid" -n curl -fsS -o /dev/null "http://127.0.0.1:$admin/readyz"; then
        ok=1
        break
      fi
      sleep 0.2
    done
    if [ "$ok" = 1 ]; then
      mkdir -p "$out"
      # with Kafka, wait (up to 30 s) for the consumer's partitions: its lag
      # series appear then; settlement's ledger gauge after its first recon;
      # commission's consumer (commerce.order.v1) gets its partitions, its
      # accrual counters and lag histogram are there from the start
      for _ in $(seq 1 150); do
        $SUDO nsenter -t "$pid" -n curl -fsS "http://127.0.0.1:$admin/metrics" >"$out/metrics-$svc.txt"
        case $svc in
          inventory) [ -n "$mock" ] || break
            grep -q '^consumer_lag' "$out/metrics-$svc.txt" && break ;;
          settlement) grep -q '^settlement_ledger_balanced' "$out/metrics-$svc.txt" && break ;;
          commission) [ -n "$mock" ] || break
            grep -q '^consumer_lag{[^}]*topic="commerce.order.v1"' "$out/metrics-$svc.txt" && break ;;
          *) break ;;
        esac
        sleep 0.2
      done
      echo "image: commerce-$svc in the container (user $user, read-only root): gRPC health SERVING, /healthz and /readyz 200"
    else
      echo "image: commerce-$svc does not answer health in the container; its log:"
      podman logs "$name" 2>&1 | tail -20
      fail=1
    fi
  done
  [ "$fail" = 0 ] || exit 1
  # the alerts' and dashboards' metrics in what the containers expose
  # (series made on first use need Kafka: without the embedded broker an
  # absent one is reported, not fatal)
  if [ -n "$mock" ]; then
    python3 "$root/scripts/k8s-metrics-check.py" "$out"/metrics-*.txt
  else
    python3 "$root/scripts/k8s-metrics-check.py" "$out"/metrics-*.txt ||
      echo "image: (without Kafka, series made on first use may be absent)"
  fi
fi

mkdir -p "$out"
rm -f "$out/commerce-$version.oci.tar"
podman save -q --format oci-archive -o "$out/commerce-$version.oci.tar" "$image"
# the previous build's image, untagged by this one
podman image prune -f >/dev/null
echo "image: saved $out/commerce-$version.oci.tar ($(du -m "$out/commerce-$version.oci.tar" | cut -f1) MB)"
