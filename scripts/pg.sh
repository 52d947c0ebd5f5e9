#!/usr/bin/env bash
# a private postgresql 15 cluster for tests and local runs, under
# <repo>/.run/pg (no system service needed).
#
#   scripts/pg.sh start    initdb if absent, start, create database "commerce"
#   scripts/pg.sh stop     fast shutdown
#   scripts/pg.sh status   exit 0 when accepting connections, 3 when stopped
#   scripts/pg.sh dsn      print the libpq connection string
#   scripts/pg.sh psql ... psql on that connection string
#
# environment: PG_PORT, PG_RUN_DIR (default <repo>/.run/pg), PG_BIN (default
# /usr/lib/postgresql/15/bin). when PG_DSN is set the user brings their own
# server: start/stop do nothing and dsn prints PG_DSN.
#
# the port: PG_PORT when set (refused when something listens on it).
# otherwise start picks a free one in 20000-31999 (scripts/lib/ports.sh), so
# the clusters of several checkouts (a quick start left running, another
# checkout's tests) never fight over one fixed port. the choice is kept in
# <run dir>/port: dsn, status and psql read it, and the next start takes it
# again while it is free, so a restarted cluster keeps its address.
#
# postgres refuses to run as root, so as root every server command runs as
# the "postgres" user on a directory that user owns. commits stay durable
# (fsync on): the services' guarantees are about durable commits.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=scripts/lib/ports.sh
. "$root/scripts/lib/ports.sh"
PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
pinned_port=${PG_PORT:-}
base=${PG_RUN_DIR:-$root/.run/pg}
# as root the server runs as "postgres", which must be able to reach the
# directory (a checkout under /root is not searchable by it), and the unix
# socket path must stay under 104 bytes: otherwise a directory of this
# checkout's own under /tmp
if [ -z "${PG_RUN_DIR:-}" ]; then
  if { [ "$(id -u)" = 0 ] && id postgres >/dev/null 2>&1 &&
    ! runuser -u postgres -- test -x "$root" 2>/dev/null; } ||
    [ "${#base}" -gt 70 ]; then
    base=/tmp/commerce-pg-$(printf '%s' "$root" | md5sum | cut -c1-10)
  fi
fi
data=$base/data
sock=$base/sock
logfile=$base/log/postgres.log
portfile=$base/port
dbname=commerce
superuser=postgres

die() {
  echo "pg.sh: $*" >&2
  exit 1
}

is_root() { [ "$(id -u)" = 0 ]; }

# the port this cluster was last started on: <run dir>/port, or for a
# cluster started by an older pg.sh (always 55432) the port of its config
remembered_port() {
  local p=""
  if [ -f "$portfile" ]; then
    p=$(cat "$portfile")
  elif [ -f "$data/commerce.conf" ]; then
    p=$(sed -n 's/^port = \([0-9]*\)$/\1/p' "$data/commerce.conf" 2>/dev/null) || true
  fi
  if ports_valid "$p"; then echo "$p"; fi
}

# the port every command but start talks to: the pinned one, else the
# remembered one (empty when this cluster never started)
PG_PORT=${pinned_port:-$(remembered_port)}
if [ -n "$pinned_port" ] && ! ports_valid "$pinned_port"; then
  die "PG_PORT must be a port number, got '$pinned_port'"
fi

# the postmaster must not inherit our descriptors: the start/stop lock (fd 9)
# would block every later pg.sh, and a caller's pipe would never see eof
close_fds() {
  local fd n
  for fd in /proc/$BASHPID/fd/*; do
    n=${fd##*/}
    if [ "$n" -gt 2 ]; then
      eval "exec $n>&-" 2>/dev/null || true
    fi
  done
}

# run a server-side command as the cluster's owner, from a directory that
# user can read (initdb and pg_ctl resolve paths relative to it)
as_owner() {
  if is_root; then
    (cd "$base" && runuser -u postgres -- "$@")
  else
    (cd "$base" && "$@")
  fi
}

dsn() {
  if [ -n "${PG_DSN:-}" ]; then
    printf '%s\n' "$PG_DSN"
  elif [ -n "$PG_PORT" ]; then
    printf 'host=127.0.0.1 port=%s dbname=%s user=%s\n' "$PG_PORT" "$dbname" "$superuser"
  else
    die "no cluster has been started in $base yet: run scripts/pg.sh start (or set PG_PORT or PG_DSN)"
  fi
}

running() {
  [ -f "$data/PG_VERSION" ] && as_owner "$PG_BIN/pg_ctl" -D "$data" status >/dev/null 2>&1
}

ready() {
  "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT" -U "$superuser" -d postgres
}

wait_ready() {
  for _ in $(seq 1 300); do
    ready && return 0
    sleep 0.1
  done
  tail -n 20 "$logfile" >&2 2>/dev/null || true
  die "server did not accept connections on 127.0.0.1:$PG_PORT within 30s (log: $logfile)"
}

prepare_dirs() {
  [ -x "$PG_BIN/initdb" ] || die "no postgresql 15 binaries in $PG_BIN (run scripts/install-deps.sh)"
  # a unix socket path is limited to 107 bytes (the port has at most 5 digits)
  local s="$sock/.s.PGSQL.65535"
  [ "${#s}" -lt 104 ] || die "socket path too long ($s); set PG_RUN_DIR to a shorter directory"
  mkdir -p "$base"
  if is_root; then
    id postgres >/dev/null 2>&1 || die "running as root needs the 'postgres' user (apt-get install postgresql)"
    chown postgres:postgres "$base"
    runuser -u postgres -- test -w "$base" ||
      die "user postgres cannot reach $base (a parent directory is not searchable); set PG_RUN_DIR"
  fi
  as_owner mkdir -p "$sock" "$base/log"
}

write_config() {
  # rewritten on every start so a changed PG_PORT takes effect
  as_owner tee "$data/commerce.conf" >/dev/null <<EOF
# written by scripts/pg.sh on every start; edits here are overwritten
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$sock'
max_connections = 200
shared_buffers = 1GB
effective_cache_size = 1GB
work_mem = 8MB
maintenance_work_mem = 128MB
fsync = on
synchronous_commit = on
full_page_writes = on
# full-page images dominate the WAL of insert-heavy batches after each
# checkpoint; compressing them cost less cpu than writing and syncing them
# (order benchmark: ~+10 % creates/s, README "Benchmarks")
wal_compression = lz4
wal_buffers = 16MB
# checkpoints by time every 15 min rather than by volume every minute or so
# under load: after each checkpoint the first change of every page logs the
# whole page (one order-benchmark round that met a checkpoint cost postgres
# ~290 us per order against ~220; a common production setting for
# write-heavy databases)
max_wal_size = 8GB
checkpoint_timeout = 15min
checkpoint_completion_target = 0.9
random_page_cost = 1.1
jit = off
max_pred_locks_per_transaction = 256
timezone = 'UTC'
log_timezone = 'UTC'
log_line_prefix = '%m [%p] %q%u@%d '
log_min_duration_statement = 1000
EOF
  as_owner tee "$data/pg_hba.conf" >/dev/null <<EOF
# written by scripts/pg.sh: a private test cluster reachable only from this host
local all all trust
# roles in commerce_password_auth log in with a password (the secrets
# hygiene test's DSN carries one); everyone else is trusted
host  all +commerce_password_auth 127.0.0.1/32 scram-sha-256
host  all all 127.0.0.1/32 trust
EOF
}

init_cluster() {
  echo "pg.sh: initdb $data" >&2
  as_owner "$PG_BIN/initdb" -D "$data" -U "$superuser" -A trust -E UTF8 \
    --locale=C.UTF-8 >"$base/log/initdb.log" 2>&1 ||
    {
      cat "$base/log/initdb.log" >&2
      die "initdb failed"
    }
  echo "include_if_exists = 'commerce.conf'" | as_owner tee -a "$data/postgresql.conf" >/dev/null
}

create_db() {
  local exists
  exists=$("$PG_BIN/psql" -X -q -h 127.0.0.1 -p "$PG_PORT" -U "$superuser" -d postgres -tAc \
    "select 1 from pg_database where datname = '$dbname'")
  if [ "$exists" != 1 ]; then
    "$PG_BIN/createdb" -h 127.0.0.1 -p "$PG_PORT" -U "$superuser" "$dbname"
  fi
}

# sets PG_PORT for a start and remembers it: the pinned port, else the
# remembered one while it is free, else a free one
choose_port() {
  local prev
  if [ -n "$pinned_port" ]; then
    if ports_listening "$pinned_port"; then
      die "port $pinned_port (PG_PORT) on 127.0.0.1 is in use by $(ports_holder "$pinned_port"); choose another, or unset PG_PORT to get a free one"
    fi
    ports_claim "$base" "$pinned_port"
    PG_PORT=$pinned_port
  else
    prev=$(remembered_port)
    if [ -n "$prev" ] && ports_take "$base" "$prev"; then
      PG_PORT=$prev
    else
      PG_PORT=$(ports_pick "$base") || die "no free port in $ports_lo-$ports_hi"
      if [ -n "$prev" ]; then
        echo "pg.sh: port $prev is taken now; this cluster moves to $PG_PORT" >&2
      fi
    fi
  fi
  ports_remember "$portfile" "$PG_PORT"
}

start() {
  if [ -n "${PG_DSN:-}" ]; then
    echo "pg.sh: PG_DSN is set, not starting a private server" >&2
    return 0
  fi
  prepare_dirs
  if running; then
    PG_PORT=$(remembered_port)
    [ -n "$PG_PORT" ] || die "a server runs on $data, but its port is unknown: scripts/pg.sh stop, then start"
    if [ -n "$pinned_port" ] && [ "$pinned_port" != "$PG_PORT" ]; then
      die "already running on 127.0.0.1:$PG_PORT, not PG_PORT=$pinned_port: scripts/pg.sh stop first"
    fi
    wait_ready
    create_db
    return 0
  fi
  choose_port
  if is_root && [ -d "$data" ] && [ "$(stat -c %U "$data")" != postgres ]; then
    chown -R postgres:postgres "$base"
  fi
  [ -f "$data/PG_VERSION" ] || init_cluster
  write_config
  local tries=1
  until (
    close_fds
    as_owner "$PG_BIN/pg_ctl" -D "$data" -l "$logfile" -w -t 60 start >/dev/null
  ); do
    # a process that ignores the claims (a test's service, another user's
    # server) may bind a picked port first: pick again, twice at most
    if [ -z "$pinned_port" ] && [ "$tries" -lt 3 ] && ! running && ports_listening "$PG_PORT"; then
      echo "pg.sh: port $PG_PORT was taken while postgres started; trying another" >&2
      PG_PORT=$(ports_pick "$base") || die "no free port in $ports_lo-$ports_hi"
      ports_remember "$portfile" "$PG_PORT"
      write_config
      tries=$((tries + 1))
      continue
    fi
    tail -n 20 "$logfile" >&2 2>/dev/null || true
    die "could not start postgres (log: $logfile)"
  done
  wait_ready
  create_db
  echo "pg.sh: postgres running on 127.0.0.1:$PG_PORT (data: $data)" >&2
}

stop() {
  if running; then
    as_owner "$PG_BIN/pg_ctl" -D "$data" -m fast -w -t 60 stop >/dev/null
    echo "pg.sh: stopped" >&2
  else
    echo "pg.sh: not running" >&2
  fi
}

status() {
  if [ -n "${PG_DSN:-}" ]; then
    if "$PG_BIN/pg_isready" -q -d "$PG_DSN"; then
      echo "pg.sh: PG_DSN server accepting connections"
      return 0
    fi
    echo "pg.sh: PG_DSN server not reachable"
    return 3
  fi
  if [ -n "$PG_PORT" ] && running && ready; then
    echo "pg.sh: running on 127.0.0.1:$PG_PORT (data: $data)"
    return 0
  fi
  echo "pg.sh: stopped"
  return 3
}

# serialise start/stop so scripts/test.sh and scripts/run.sh can race safely
with_lock() {
  mkdir -p "$base"
  exec 9>"$base/.lock"
  flock 9
  "$@"
}

cmd=${1:-}
[ $# -gt 0 ] && shift
case "$cmd" in
start)
  if [ -n "${PG_DSN:-}" ]; then
    start
  else
    with_lock start
  fi
  ;;
stop)
  if [ -n "${PG_DSN:-}" ] && [ ! -f "$data/PG_VERSION" ]; then
    echo "pg.sh: PG_DSN is set, nothing to stop" >&2
  else
    with_lock stop
  fi
  ;;
status) status ;;
dsn) dsn ;;
psql) exec "$PG_BIN/psql" -X "$(dsn)" "$@" ;;
*)
  echo "usage: $0 start|stop|status|dsn|psql [args]" >&2
  exit 2
  ;;
esac
