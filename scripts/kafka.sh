#!/usr/bin/env bash
# a private single-node apache kafka broker (kraft: broker and controller in
# one jvm) for tests and benchmarks, under <repo>/.run/kafka. the broker's
# jars come from maven central through kafka/pom.xml, once: later starts
# reuse .run/kafka/libs and never touch the network.
#
#   scripts/kafka.sh start      fetch jars if absent, format storage if new,
#                               start, wait until a record round-trips
#   scripts/kafka.sh stop       sigterm (controlled shutdown), sigkill after
#                               KAFKA_STOP_TIMEOUT
#   scripts/kafka.sh status     exit 0 when serving, 3 when stopped
#   scripts/kafka.sh bootstrap  print the bootstrap servers
#   scripts/kafka.sh sasl-bootstrap
#                               print the SASL_PLAINTEXT (SCRAM-SHA-512)
#                               bootstrap servers, where partners' users log in
#   scripts/kafka.sh topics     create every topic of kafka/topics.tsv on the
#                               bootstrap broker (any broker; existing ones are
#                               left alone)
#   scripts/kafka.sh topic NAME PARTITIONS
#                               create one topic (benchmarks); an existing
#                               one is left alone
#   scripts/kafka.sh delete-topic NAME
#   scripts/kafka.sh partner-topic TENANT PARTNER_ID [PARTITIONS]
#                               create a partner's topic
#                               commerce.partner.v1.TENANT.PARTNER_ID (3
#                               partitions, 30 days) when absent
#   scripts/kafka.sh partner-access TENANT PARTNER_ID PASSWORD
#                               create or update the SCRAM-SHA-512 user
#                               TENANT.PARTNER_ID and allow it READ+DESCRIBE
#                               on its topic and READ on the groups
#                               commerce.partner.v1.TENANT.PARTNER_ID.*,
#                               nothing else (idempotent; the recipe for a
#                               real cluster: kafka/partner/kafka-access.md)
#   scripts/kafka.sh partner-revoke TENANT PARTNER_ID
#                               remove those acls and delete the user's
#                               credential (idempotent; the topic stays)
#
# listeners: PLAINTEXT (the bootstrap, no authentication: principal
# ANONYMOUS, a super user, as on the CONTROLLER listener, so tests and
# services may do anything) and SASL_PLAINTEXT with SCRAM-SHA-512 (the
# sasl-bootstrap: partners' users, held to their ACLs by the kraft
# StandardAuthorizer; no ACL means no access).
#
# environment: KAFKA_PORT, KAFKA_CONTROLLER_PORT, KAFKA_SASL_PORT, KAFKA_RUN_DIR
# (<repo>/.run/kafka), KAFKA_HEAP (512m), KAFKA_START_TIMEOUT (120 s),
# KAFKA_STOP_TIMEOUT (30 s), KAFKA_REPLICATION_FACTOR (1, for "topics"),
# JAVA_HOME. when KAFKA_BROKERS is set the user brings their own brokers:
# start/stop do nothing, bootstrap prints KAFKA_BROKERS and topics creates
# the catalogue there (the partner-* commands act there too, as a super
# user); sasl-bootstrap prints KAFKA_SASL_BROKERS when set, and else this
# run dir's SASL listener only when KAFKA_BROKERS is this broker.
#
# the ports (client, controller, sasl): KAFKA_PORT / KAFKA_CONTROLLER_PORT /
# KAFKA_SASL_PORT when set (refused when something listens on them).
# otherwise start picks free ones in 20000-31999 (scripts/lib/ports.sh), so
# the brokers of several checkouts run side by side. the choice is kept in
# <run dir>/port, <run dir>/controller-port and <run dir>/sasl-port:
# bootstrap, status and the topic commands read it, and the next start
# takes the same ports again while they are free (a restarted broker keeps
# its address; test_events restarts it under load). a broker last started
# by a kafka.sh without the SASL listener gets a new sasl port on its next
# start; its data and other ports stay.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=scripts/lib/ports.sh
. "$root/scripts/lib/ports.sh"
pinned_port=${KAFKA_PORT:-}
pinned_controller_port=${KAFKA_CONTROLLER_PORT:-}
pinned_sasl_port=${KAFKA_SASL_PORT:-}
KAFKA_HEAP=${KAFKA_HEAP:-512m}
KAFKA_START_TIMEOUT=${KAFKA_START_TIMEOUT:-120}
KAFKA_STOP_TIMEOUT=${KAFKA_STOP_TIMEOUT:-30}
KAFKA_REPLICATION_FACTOR=${KAFKA_REPLICATION_FACTOR:-1}
base=${KAFKA_RUN_DIR:-$root/.run/kafka}
pom=$root/kafka/pom.xml
catalogue=$root/kafka/topics.tsv
libs=$base/libs
data=$base/data
logdir=$base/log
conf=$base/server.properties
log4j=$base/log4j.properties
pidfile=$base/kafka.pid
portfile=$base/port
controller_portfile=$base/controller-port
sasl_portfile=$base/sasl-port
outfile=$logdir/kafka.out
probe_topic=commerce.probe
# partners' topics, groups and users (kafka/partner/kafka-access.md)
partner_prefix=commerce.partner.v1
partner_retention_ms=$((30 * 86400000))
scram_mechanism=SCRAM-SHA-512
scram_iterations=4096
java=${JAVA_HOME:+$JAVA_HOME/bin/}java

die() {
  echo "kafka.sh: $*" >&2
  exit 1
}

note() { echo "kafka.sh: $*" >&2; }

is_uint() { [[ $1 =~ ^[0-9]+$ ]]; }

# a port this broker was last started on: the file $1, or for a broker
# started by an older kafka.sh (always 59092/59093) its server.properties
# (listener $2, the whole name: PLAINTEXT is not SASL_PLAINTEXT)
remembered_port() {
  local p=""
  if [ -f "$1" ]; then
    p=$(cat "$1")
  elif [ -f "$conf" ]; then
    p=$(sed -n "s/^listeners=\(.*,\)*$2:\/\/127\.0\.0\.1:\([0-9]*\).*/\2/p" "$conf") || true
  fi
  if ports_valid "$p"; then echo "$p"; fi
}

# the ports every command but start talks to: the pinned ones, else the
# remembered ones (empty when this broker never started)
KAFKA_PORT=${pinned_port:-$(remembered_port "$portfile" PLAINTEXT)}
KAFKA_CONTROLLER_PORT=${pinned_controller_port:-$(remembered_port "$controller_portfile" CONTROLLER)}
KAFKA_SASL_PORT=${pinned_sasl_port:-$(remembered_port "$sasl_portfile" SASL_PLAINTEXT)}

check_env() {
  [ -z "$pinned_port" ] || ports_valid "$pinned_port" ||
    die "KAFKA_PORT must be a port number, got '$pinned_port'"
  [ -z "$pinned_controller_port" ] || ports_valid "$pinned_controller_port" ||
    die "KAFKA_CONTROLLER_PORT must be a port number, got '$pinned_controller_port'"
  [ -z "$pinned_sasl_port" ] || ports_valid "$pinned_sasl_port" ||
    die "KAFKA_SASL_PORT must be a port number, got '$pinned_sasl_port'"
  [ -z "$pinned_port" ] || [ "$pinned_port" != "$pinned_controller_port" ] ||
    die "KAFKA_PORT and KAFKA_CONTROLLER_PORT must differ"
  [ -z "$pinned_sasl_port" ] || [ "$pinned_sasl_port" != "$pinned_port" ] ||
    die "KAFKA_SASL_PORT and KAFKA_PORT must differ"
  [ -z "$pinned_sasl_port" ] || [ "$pinned_sasl_port" != "$pinned_controller_port" ] ||
    die "KAFKA_SASL_PORT and KAFKA_CONTROLLER_PORT must differ"
  [[ $KAFKA_HEAP =~ ^[0-9]+[kKmMgG]$ ]] || die "KAFKA_HEAP must look like 512m, got '$KAFKA_HEAP'"
  is_uint "$KAFKA_START_TIMEOUT" || die "KAFKA_START_TIMEOUT must be seconds, got '$KAFKA_START_TIMEOUT'"
  is_uint "$KAFKA_STOP_TIMEOUT" || die "KAFKA_STOP_TIMEOUT must be seconds, got '$KAFKA_STOP_TIMEOUT'"
}

bootstrap() {
  if [ -n "${KAFKA_BROKERS:-}" ]; then
    printf '%s\n' "$KAFKA_BROKERS"
  elif [ -n "$KAFKA_PORT" ]; then
    printf '127.0.0.1:%s\n' "$KAFKA_PORT"
  else
    die "no broker has been started in $base yet: run scripts/kafka.sh start (or set KAFKA_PORT or KAFKA_BROKERS)"
  fi
}

# the SASL_PLAINTEXT listener: KAFKA_SASL_BROKERS, else this run dir's
# (when KAFKA_BROKERS, if set, is this broker)
sasl_bootstrap() {
  if [ -n "${KAFKA_SASL_BROKERS:-}" ]; then
    printf '%s\n' "$KAFKA_SASL_BROKERS"
    return 0
  fi
  if [ -n "${KAFKA_BROKERS:-}" ] && [ "$KAFKA_BROKERS" != "127.0.0.1:${KAFKA_PORT:-none}" ]; then
    die "KAFKA_BROKERS ($KAFKA_BROKERS) is not the broker of $base: set KAFKA_SASL_BROKERS to its SASL listener"
  fi
  [ -n "$KAFKA_PORT" ] ||
    die "no broker has been started in $base yet: run scripts/kafka.sh start (or set KAFKA_SASL_BROKERS)"
  # the listener is in the config only when this kafka.sh wrote it
  if [ -z "$KAFKA_SASL_PORT" ] || ! grep -q "^listeners=.*SASL_PLAINTEXT://127\.0\.0\.1:$KAFKA_SASL_PORT" "$conf" 2>/dev/null; then
    die "the broker in $base has no SASL listener (started by an older kafka.sh): scripts/kafka.sh stop, then start"
  fi
  printf '127.0.0.1:%s\n' "$KAFKA_SASL_PORT"
}

# sets the port named $1 (KAFKA_PORT, KAFKA_CONTROLLER_PORT or
# KAFKA_SASL_PORT) for a start and remembers it in file $3: the pinned port
# $2, else the remembered one (of listener $4) while it is free, else a free
# one; never one of the other ports, $5 (space separated)
choose_port() {
  local name=$1 pinned=$2 file=$3 listener=$4 others=" ${5:-} " prev port
  if [ -n "$pinned" ]; then
    [[ $others != *" $pinned "* ]] || die "$name $pinned is also another listener's port; they must differ"
    if ports_listening "$pinned"; then
      die "port $pinned ($name) on 127.0.0.1 is in use by $(ports_holder "$pinned"); choose another, or unset $name to get a free one"
    fi
    ports_claim "$base" "$pinned"
    port=$pinned
  else
    prev=$(remembered_port "$file" "$listener")
    if [ -n "$prev" ] && [[ $others != *" $prev "* ]] && ports_take "$base" "$prev"; then
      port=$prev
    else
      port=$(ports_pick "$base") || die "no free port in $ports_lo-$ports_hi"
      [ -z "$prev" ] || note "port $prev is taken now; $name moves to $port"
    fi
  fi
  ports_remember "$file" "$port"
  printf -v "$name" '%s' "$port"
}

# the broker must not inherit our descriptors: the start/stop lock (fd 9)
# would block every later kafka.sh, and a caller's pipe would never see eof
close_fds() {
  local fd n
  for fd in /proc/$BASHPID/fd/*; do
    n=${fd##*/}
    if [ "$n" -gt 2 ]; then
      eval "exec $n>&-" 2>/dev/null || true
    fi
  done
}

need_java() {
  command -v "$java" >/dev/null 2>&1 || die "no java found (run scripts/install-deps.sh or set JAVA_HOME)"
}

need_kcat() {
  command -v kcat >/dev/null 2>&1 || die "no kcat found (run scripts/install-deps.sh)"
}

mvn_copy() {
  (cd "$root/kafka" && mvn -B -q "$@" -f "$pom" dependency:copy-dependencies \
    -DoutputDirectory="$libs.tmp" </dev/null >"$logdir/mvn.log" 2>&1)
}

# the jars of kafka/pom.xml in $libs; fetched again only when the pom changes
ensure_libs() {
  local stamp
  stamp=$(sha256sum "$pom" | cut -d' ' -f1)
  if [ -f "$libs/.pom.sha256" ] && [ "$(cat "$libs/.pom.sha256")" = "$stamp" ]; then
    return 0
  fi
  command -v mvn >/dev/null 2>&1 || die "no mvn found (run scripts/install-deps.sh)"
  note "fetching the kafka broker jars (kafka/pom.xml) into $libs"
  mkdir -p "$base" "$logdir"
  rm -rf "$libs.tmp"
  # offline first: when ~/.m2 already holds everything (any other checkout
  # fetched them once), no network at all
  if mvn_copy -o; then
    note "copied the jars from the local maven repository, offline"
  elif mvn_copy; then
    note "downloaded the jars (maven central, through the local maven repository)"
  else
    tail -n 30 "$logdir/mvn.log" >&2 || true
    die "could not fetch the kafka jars with maven (log: $logdir/mvn.log)"
  fi
  ls "$libs.tmp"/kafka_2.13-*.jar >/dev/null 2>&1 || die "maven ran but fetched no kafka_2.13 jar (log: $logdir/mvn.log)"
  echo "$stamp" >"$libs.tmp/.pom.sha256"
  rm -rf "$libs"
  mv "$libs.tmp" "$libs"
}

# a short-lived admin tool (StorageTool, TopicCommand, ConfigCommand,
# AclCommand) from the broker jars;
# it logs warnings to stderr, never into the broker's server.log
run_tool() {
  local tlog4j=$base/tools-log4j.properties
  [ -f "$tlog4j" ] || cat >"$tlog4j" <<'EOF'
# written by scripts/kafka.sh: logging of the admin tools it runs
log4j.rootLogger=WARN, stderr
log4j.appender.stderr=org.apache.log4j.ConsoleAppender
log4j.appender.stderr.Target=System.err
log4j.appender.stderr.layout=org.apache.log4j.PatternLayout
log4j.appender.stderr.layout.ConversionPattern=[%d] %p %m (%c)%n
EOF
  "$java" -Xmx256m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Djava.awt.headless=true \
    -Dlog4j.configuration="file:$tlog4j" -cp "$libs/*" "$@"
}

write_config() {
  mkdir -p "$data" "$logdir"
  # rewritten on every start so a changed port takes effect
  cat >"$conf" <<EOF
# written by scripts/kafka.sh on every start; edits here are overwritten
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$KAFKA_CONTROLLER_PORT
listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$KAFKA_CONTROLLER_PORT,SASL_PLAINTEXT://127.0.0.1:$KAFKA_SASL_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,SASL_PLAINTEXT://127.0.0.1:$KAFKA_SASL_PORT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
# partners log in with SCRAM-SHA-512 on SASL_PLAINTEXT (users: kafka.sh
# partner-access); PLAINTEXT and CONTROLLER are unauthenticated, principal
# ANONYMOUS, a super user: tests and services keep full access
sasl.enabled.mechanisms=$scram_mechanism
listener.name.sasl_plaintext.sasl.enabled.mechanisms=$scram_mechanism
listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
super.users=User:ANONYMOUS
allow.everyone.if.no.acl.found=false
log.dirs=$data
num.partitions=6
default.replication.factor=1
min.insync.replicas=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=6
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=6
auto.create.topics.enable=false
group.initial.rebalance.delay.ms=0
log.retention.hours=168
log.segment.bytes=134217728
num.network.threads=2
num.io.threads=4
EOF
  # the broker's own log: a rolling file, quiet request loggers
  cat >"$log4j" <<'EOF'
# written by scripts/kafka.sh on every start; edits here are overwritten
log4j.rootLogger=INFO, file
log4j.appender.file=org.apache.log4j.RollingFileAppender
log4j.appender.file.File=${kafka.logs.dir}/server.log
log4j.appender.file.MaxFileSize=20MB
log4j.appender.file.MaxBackupIndex=3
log4j.appender.file.layout=org.apache.log4j.PatternLayout
log4j.appender.file.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.logger.kafka.request.logger=WARN
log4j.logger.kafka.network.RequestChannel$=WARN
log4j.logger.state.change.logger=WARN
log4j.logger.org.apache.kafka.clients=WARN
log4j.logger.org.apache.kafka.common.utils.AppInfoParser=WARN
EOF
}

format_storage() {
  [ -f "$data/meta.properties" ] && return 0
  local cluster_id
  cluster_id=$(run_tool kafka.tools.StorageTool random-uuid 2>>"$outfile") ||
    die "could not make a cluster id (log: $outfile)"
  note "formatting $data (cluster $cluster_id)"
  run_tool kafka.tools.StorageTool format -t "$cluster_id" -c "$conf" --ignore-formatted \
    >>"$outfile" 2>&1 || {
    tail -n 20 "$outfile" >&2 || true
    die "could not format $data (log: $outfile)"
  }
}

broker_pid() {
  local pid
  [ -f "$pidfile" ] || return 1
  pid=$(cat "$pidfile")
  is_uint "$pid" || return 1
  # a stale pid file may name an unrelated process by now
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q "kafka\.Kafka $conf" || return 1
  echo "$pid"
}

# kill -0 is not enough: a broker that died as our own child stays a zombie
alive() {
  local st
  st=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  st=${st##*) }
  [ "${st%% *}" != Z ]
}

port_open() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

log_tail() {
  tail -n 25 "$logdir/server.log" >&2 2>/dev/null || true
  tail -n 10 "$outfile" >&2 2>/dev/null || true
}

# the broker serves when a record produced to the probe topic comes back,
# and a consumer group (the coordinator, __consumer_offsets) answers
probe() {
  local bs=$1 token got
  token="probe-$$-$RANDOM-$(date +%s%N)"
  printf '%s\n' "$token" | timeout 20 kcat -b "$bs" -P -t "$probe_topic" -p 0 \
    -X enable.idempotence=true -X acks=all -X message.timeout.ms=15000 2>/dev/null || return 1
  got=$(timeout 15 kcat -b "$bs" -C -t "$probe_topic" -p 0 -o -1 -c 1 -e -q \
    -X fetch.wait.max.ms=100 -m 5 2>/dev/null) || return 1
  [ "$got" = "$token" ] || return 1
  timeout 20 kcat -b "$bs" -G commerce-probe -o beginning -c 1 -e -q \
    -X session.timeout.ms=6000 -m 5 "$probe_topic" >/dev/null 2>&1 || return 1
}

# returns 1 (after the log tail) when the broker does not serve in time, 2
# when it exited
wait_serving() {
  local pid=$1 bs deadline created=0
  bs=$(bootstrap)
  deadline=$((SECONDS + KAFKA_START_TIMEOUT))
  while [ $SECONDS -lt $deadline ]; do
    if ! alive "$pid"; then
      log_tail
      rm -f "$pidfile"
      return 2
    fi
    if port_open "$KAFKA_PORT" && timeout 10 kcat -b "$bs" -L -t "$probe_topic" -m 2 >/dev/null 2>&1; then
      if [ $created = 0 ]; then
        run_tool org.apache.kafka.tools.TopicCommand --bootstrap-server "$bs" --create \
          --if-not-exists --topic "$probe_topic" --partitions 1 --replication-factor 1 \
          --config retention.ms=3600000 >>"$outfile" 2>&1 && created=1
      fi
      if [ $created = 1 ] && probe "$bs"; then
        return 0
      fi
    fi
    sleep 0.5
  done
  log_tail
  return 1
}

# why wait_serving returned $1
start_failure() {
  if [ "$1" = 2 ]; then
    echo "broker exited during start (logs: $logdir)"
  else
    echo "broker did not serve produce and consume on $(bootstrap) within ${KAFKA_START_TIMEOUT}s (logs: $logdir)"
  fi
}

# starts the broker in the background; sets pid
launch() {
  # setsid: the broker outlives the caller's terminal and process group.
  # as a background job this subshell is no group leader, so setsid execs
  # java in place and $! is the broker's pid
  (
    close_fds
    cd "$base"
    exec setsid "$java" -Xms"$KAFKA_HEAP" -Xmx"$KAFKA_HEAP" -XX:+UseG1GC \
      -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35 \
      -XX:+ExplicitGCInvokesConcurrent -Djava.awt.headless=true \
      -Dlog4j.configuration="file:$log4j" -Dkafka.logs.dir="$logdir" \
      -cp "$libs/*" kafka.Kafka "$conf" </dev/null >>"$outfile" 2>&1
  ) &
  pid=$!
  echo "$pid" >"$pidfile"
}

# after the broker exited during start: picks again each port it picked
# that something else listens on by now (a process that ignores the claims,
# such as a test's service, bound it first); exit 1 when there was none
repick_taken() {
  local again=1
  if [ -z "$pinned_port" ] && ports_listening "$KAFKA_PORT"; then
    choose_port KAFKA_PORT "" "$portfile" PLAINTEXT "$KAFKA_CONTROLLER_PORT $KAFKA_SASL_PORT"
    again=0
  fi
  if [ -z "$pinned_controller_port" ] && ports_listening "$KAFKA_CONTROLLER_PORT"; then
    choose_port KAFKA_CONTROLLER_PORT "" "$controller_portfile" CONTROLLER \
      "$KAFKA_PORT $KAFKA_SASL_PORT"
    again=0
  fi
  if [ -z "$pinned_sasl_port" ] && ports_listening "$KAFKA_SASL_PORT"; then
    choose_port KAFKA_SASL_PORT "" "$sasl_portfile" SASL_PLAINTEXT \
      "$KAFKA_PORT $KAFKA_CONTROLLER_PORT"
    again=0
  fi
  return "$again"
}

start() {
  if [ -n "${KAFKA_BROKERS:-}" ]; then
    note "KAFKA_BROKERS is set, not starting a private broker"
    return 0
  fi
  check_env
  need_java
  need_kcat
  local pid t0=$SECONDS
  if pid=$(broker_pid); then
    KAFKA_PORT=$(remembered_port "$portfile" PLAINTEXT)
    KAFKA_CONTROLLER_PORT=$(remembered_port "$controller_portfile" CONTROLLER)
    KAFKA_SASL_PORT=$(remembered_port "$sasl_portfile" SASL_PLAINTEXT)
    if [ -n "$pinned_port" ] && [ "$pinned_port" != "$KAFKA_PORT" ]; then
      die "already running on 127.0.0.1:$KAFKA_PORT, not KAFKA_PORT=$pinned_port: scripts/kafka.sh stop first"
    fi
    if [ -n "$pinned_sasl_port" ] && [ "$pinned_sasl_port" != "$KAFKA_SASL_PORT" ]; then
      die "already running with sasl on 127.0.0.1:${KAFKA_SASL_PORT:-none}, not KAFKA_SASL_PORT=$pinned_sasl_port: scripts/kafka.sh stop first"
    fi
    local rc=0
    wait_serving "$pid" || rc=$?
    [ "$rc" = 0 ] || die "$(start_failure "$rc")"
    grep -q '^listeners=.*SASL_PLAINTEXT://' "$conf" 2>/dev/null ||
      note "this broker was started by an older kafka.sh and has no SASL listener: scripts/kafka.sh stop, then start"
    note "already running on $(bootstrap) (pid $pid)"
    return 0
  fi
  rm -f "$pidfile"
  mkdir -p "$base"
  # pinned controller and sasl ports are claimed first, so the broker's
  # port, when picked, cannot be one of them
  [ -z "$pinned_controller_port" ] || ports_claim "$base" "$pinned_controller_port"
  [ -z "$pinned_sasl_port" ] || ports_claim "$base" "$pinned_sasl_port"
  choose_port KAFKA_PORT "$pinned_port" "$portfile" PLAINTEXT \
    "$pinned_controller_port $pinned_sasl_port"
  choose_port KAFKA_CONTROLLER_PORT "$pinned_controller_port" "$controller_portfile" CONTROLLER \
    "$KAFKA_PORT $pinned_sasl_port"
  choose_port KAFKA_SASL_PORT "$pinned_sasl_port" "$sasl_portfile" SASL_PLAINTEXT \
    "$KAFKA_PORT $KAFKA_CONTROLLER_PORT"
  ensure_libs
  write_config
  : >"$outfile"
  format_storage
  local tries=1 rc
  while :; do
    launch
    rc=0
    wait_serving "$pid" || rc=$?
    [ "$rc" != 0 ] || break
    if [ "$rc" = 2 ] && [ "$tries" -lt 3 ] && repick_taken; then
      note "a port was taken while the broker started; trying again on $(bootstrap)"
      write_config
      tries=$((tries + 1))
      continue
    fi
    # a broker that never served is of no use to anyone: do not leave it
    [ "$rc" = 2 ] || stop_pid "$pid"
    die "$(start_failure "$rc")"
  done
  note "kafka running on $(bootstrap), sasl on $(sasl_bootstrap) (pid $pid, data: $data, started in $((SECONDS - t0))s)"
}

stop() {
  local pid
  check_env
  if ! pid=$(broker_pid); then
    rm -f "$pidfile"
    note "not running"
    return 0
  fi
  stop_pid "$pid"
  note "stopped"
}

# sigterm (the broker's controlled shutdown), sigkill after KAFKA_STOP_TIMEOUT
stop_pid() {
  local pid=$1 waited=0
  kill -TERM "$pid" 2>/dev/null || true
  while alive "$pid"; do
    if [ $waited -ge $((KAFKA_STOP_TIMEOUT * 10)) ]; then
      note "broker did not stop within ${KAFKA_STOP_TIMEOUT}s, killing it"
      kill -KILL "$pid" 2>/dev/null || true
      break
    fi
    sleep 0.1
    waited=$((waited + 1))
  done
  while alive "$pid"; do sleep 0.1; done
  rm -f "$pidfile"
}

status() {
  need_kcat
  local bs
  if [ -z "${KAFKA_BROKERS:-}" ] && ! broker_pid >/dev/null; then
    echo "kafka.sh: stopped"
    return 3
  fi
  bs=$(bootstrap)
  if timeout 15 kcat -b "$bs" -L -m 5 >/dev/null 2>&1; then
    echo "kafka.sh: serving on $bs"
    return 0
  fi
  echo "kafka.sh: not reachable on $bs"
  return 3
}

# "7d" "12h" "-1" -> retention.ms
retention_ms() {
  case "$1" in
  -1) echo -1 ;;
  *d) is_uint "${1%d}" && echo $((${1%d} * 86400000)) ;;
  *h) is_uint "${1%h}" && echo $((${1%h} * 3600000)) ;;
  *) return 1 ;;
  esac
}

topics() {
  need_kcat
  [ -f "$catalogue" ] || die "no topic catalogue at $catalogue"
  is_uint "$KAFKA_REPLICATION_FACTOR" && [ "$KAFKA_REPLICATION_FACTOR" -ge 1 ] ||
    die "KAFKA_REPLICATION_FACTOR must be a positive number, got '$KAFKA_REPLICATION_FACTOR'"
  local bs meta line name parts retention cleanup rest ms have n_existing=0 t
  local -a todo=()
  bs=$(bootstrap)
  meta=$(timeout 30 kcat -b "$bs" -L -m 10 2>&1) ||
    die "could not read metadata from $bs: $(printf '%s\n' "$meta" | tail -n 1)"
  while IFS= read -r line || [ -n "$line" ]; do
    case "$line" in '' | '#'*) continue ;; esac
    IFS=$'\t' read -r name parts retention cleanup rest <<<"$line"
    [ "$name" = name ] && continue
    [[ $name =~ ^[A-Za-z0-9._-]+$ ]] || die "topics.tsv: bad topic name '$name'"
    is_uint "$parts" && [ "$parts" -ge 1 ] || die "topics.tsv: $name: bad partitions '$parts'"
    ms=$(retention_ms "$retention") || die "topics.tsv: $name: bad retention '$retention'"
    case "$cleanup" in
    delete | compact | compact,delete) ;;
    *) die "topics.tsv: $name: bad cleanup '$cleanup'" ;;
    esac
    have=$(printf '%s\n' "$meta" | sed -n "s/^  topic \"${name//./\\.}\" with \([0-9]*\) partitions:.*/\1/p")
    if [ -n "$have" ]; then
      [ "$have" = "$parts" ] ||
        note "$name exists with $have partitions, the catalogue says $parts (left as it is)"
      n_existing=$((n_existing + 1))
    else
      todo+=("$name $parts $ms $cleanup $retention")
    fi
  done <"$catalogue"
  if ((${#todo[@]})); then
    # only creating needs the jars (and java); a broker that has every topic
    # (the embedded one creates them itself) needs neither
    need_java
    with_lock ensure_libs
    exec 9>&-
    mkdir -p "$logdir"
    for t in "${todo[@]}"; do
      read -r name parts ms cleanup retention <<<"$t"
      if ! run_tool org.apache.kafka.tools.TopicCommand --bootstrap-server "$bs" --create \
        --if-not-exists --topic "$name" --partitions "$parts" \
        --replication-factor "$KAFKA_REPLICATION_FACTOR" \
        --config "retention.ms=$ms" --config "cleanup.policy=$cleanup" \
        >"$logdir/topics.log" 2>&1; then
        tail -n 5 "$logdir/topics.log" >&2 || true
        die "could not create topic $name on $bs (log: $logdir/topics.log)"
      fi
      note "created $name ($parts partitions, retention $retention, $cleanup)"
    done
  fi
  note "topics on $bs: ${#todo[@]} created, $n_existing already there"
}

# serialise start/stop so scripts/test.sh and scripts/run.sh can race safely
# one topic outside the catalogue, for benchmarks and tests
one_topic() {
  local name=${1:-} parts=${2:-} bs
  [[ $name =~ ^[A-Za-z0-9._-]+$ ]] || die "topic: bad topic name '$name'"
  is_uint "$parts" && [ "$parts" -ge 1 ] || die "topic: bad partitions '$parts'"
  need_java
  with_lock ensure_libs
  exec 9>&-
  bs=$(bootstrap)
  run_tool org.apache.kafka.tools.TopicCommand --bootstrap-server "$bs" --create \
    --if-not-exists --topic "$name" --partitions "$parts" \
    --replication-factor "$KAFKA_REPLICATION_FACTOR" >/dev/null ||
    die "could not create topic $name on $bs"
}

delete_topic() {
  local name=${1:-} bs
  [[ $name =~ ^[A-Za-z0-9._-]+$ ]] || die "delete-topic: bad topic name '$name'"
  need_java
  with_lock ensure_libs
  exec 9>&-
  bs=$(bootstrap)
  run_tool org.apache.kafka.tools.TopicCommand --bootstrap-server "$bs" --delete \
    --if-exists --topic "$name" >/dev/null || die "could not delete topic $name on $bs"
}

# --- partners (kafka/partner/kafka-access.md): topic
# commerce.partner.v1.<tenant>.<partner_id>, groups under that name and a
# dot, scram user <tenant>.<partner_id>

# checks the partner arguments $1 (command) $2 (tenant) $3 (partner id)
partner_args() {
  [ -n "$2" ] || die "$1: no TENANT given"
  [ -n "$3" ] || die "$1: no PARTNER_ID given"
  [[ $2 =~ ^[A-Za-z0-9._-]{1,64}$ ]] ||
    die "$1: bad tenant '$2': 1-64 of A-Z a-z 0-9 . _ -"
  [[ $3 =~ ^[A-Za-z0-9_-]{1,64}$ ]] ||
    die "$1: bad partner id '$3': 1-64 of A-Z a-z 0-9 _ - (no dots: the last dot of the topic separates it from the tenant)"
}

# a partner's topic: commerce.partner.v1.TENANT.PARTNER_ID, PARTITIONS (3)
# partitions, 30 days retention, when absent
partner_topic() {
  if [ $# -lt 2 ] || [ $# -gt 3 ]; then
    die "usage: kafka.sh partner-topic TENANT PARTNER_ID [PARTITIONS]"
  fi
  local tenant=$1 partner=$2 parts=${3:-3} topic bs
  partner_args partner-topic "$tenant" "$partner"
  if ! is_uint "$parts" || [ "$parts" -lt 1 ] || [ "$parts" -gt 1000 ]; then
    die "partner-topic: bad partitions '$parts' (1-1000)"
  fi
  if ! is_uint "$KAFKA_REPLICATION_FACTOR" || [ "$KAFKA_REPLICATION_FACTOR" -lt 1 ]; then
    die "KAFKA_REPLICATION_FACTOR must be a positive number, got '$KAFKA_REPLICATION_FACTOR'"
  fi
  topic=$partner_prefix.$tenant.$partner
  need_java
  with_lock ensure_libs
  exec 9>&-
  bs=$(bootstrap)
  mkdir -p "$logdir"
  if ! run_tool org.apache.kafka.tools.TopicCommand --bootstrap-server "$bs" --create \
    --if-not-exists --topic "$topic" --partitions "$parts" \
    --replication-factor "$KAFKA_REPLICATION_FACTOR" \
    --config "retention.ms=$partner_retention_ms" --config cleanup.policy=delete \
    >"$logdir/partner.log" 2>&1; then
    tail -n 5 "$logdir/partner.log" >&2 || true
    die "could not create topic $topic on $bs (log: $logdir/partner.log)"
  fi
  note "topic $topic on $bs (created with $parts partitions and 30 days retention unless it existed)"
}

# the partner's scram user and its acls, nothing else: READ and DESCRIBE on
# the literal topic, READ on the prefixed groups (READ implies DESCRIBE).
# adding what exists changes nothing, so a second run only sets the
# password again
partner_access() {
  [ $# -eq 3 ] || die "usage: kafka.sh partner-access TENANT PARTNER_ID PASSWORD"
  local tenant=$1 partner=$2 password=$3 topic user bs cfg rc=0
  partner_args partner-access "$tenant" "$partner"
  [ -n "$password" ] || die "partner-access: empty PASSWORD"
  if [ ${#password} -lt 8 ] || [ ${#password} -gt 256 ]; then
    die "partner-access: the password must be 8-256 characters, got ${#password}"
  fi
  # printable ascii without space and the separators of kafka-configs'
  # scram value (iterations=N,password=P) nor the escape of the
  # properties file that carries it
  if ! [[ $password =~ ^[!-~]+$ ]] || [[ $password == *[],[=\\]* ]]; then
    die "partner-access: the password may hold printable ascii but space , [ ] = \\"
  fi
  topic=$partner_prefix.$tenant.$partner
  user=$tenant.$partner
  need_java
  with_lock ensure_libs
  exec 9>&-
  bs=$(bootstrap)
  mkdir -p "$logdir"
  : >"$logdir/partner.log"
  # the password through a private file, not the tools' command lines
  cfg=$(mktemp "$base/.scram.XXXXXX")
  chmod 600 "$cfg"
  printf '%s=iterations=%s,password=%s\n' "$scram_mechanism" "$scram_iterations" "$password" >"$cfg"
  run_tool kafka.admin.ConfigCommand --bootstrap-server "$bs" --alter \
    --entity-type users --entity-name "$user" --add-config-file "$cfg" \
    >>"$logdir/partner.log" 2>&1 || rc=$?
  rm -f "$cfg"
  if [ "$rc" != 0 ]; then
    tail -n 5 "$logdir/partner.log" >&2 || true
    die "partner-access: could not set the $scram_mechanism credential of user $user on $bs (log: $logdir/partner.log)"
  fi
  if ! run_tool kafka.admin.AclCommand --bootstrap-server "$bs" --add \
    --allow-principal "User:$user" --operation Read --operation Describe \
    --topic "$topic" --resource-pattern-type literal >>"$logdir/partner.log" 2>&1; then
    tail -n 5 "$logdir/partner.log" >&2 || true
    die "partner-access: could not add the acls of $user on topic $topic (log: $logdir/partner.log)"
  fi
  if ! run_tool kafka.admin.AclCommand --bootstrap-server "$bs" --add \
    --allow-principal "User:$user" --operation Read \
    --group "$topic." --resource-pattern-type prefixed >>"$logdir/partner.log" 2>&1; then
    tail -n 5 "$logdir/partner.log" >&2 || true
    die "partner-access: could not add the acl of $user on groups $topic.* (log: $logdir/partner.log)"
  fi
  note "user $user ($scram_mechanism) on $bs: READ+DESCRIBE on topic $topic, READ on groups $topic.*"
}

# undoes partner-access: its acls removed, the user's scram credential
# deleted (connections already open keep working until they close; the
# topic stays). idempotent
partner_revoke() {
  [ $# -eq 2 ] || die "usage: kafka.sh partner-revoke TENANT PARTNER_ID"
  local tenant=$1 partner=$2 topic user bs rc=0
  partner_args partner-revoke "$tenant" "$partner"
  topic=$partner_prefix.$tenant.$partner
  user=$tenant.$partner
  need_java
  with_lock ensure_libs
  exec 9>&-
  bs=$(bootstrap)
  mkdir -p "$logdir"
  : >"$logdir/partner.log"
  if ! run_tool kafka.admin.AclCommand --bootstrap-server "$bs" --remove --force \
    --allow-principal "User:$user" --operation Read --operation Describe \
    --topic "$topic" --resource-pattern-type literal >>"$logdir/partner.log" 2>&1 ||
    ! run_tool kafka.admin.AclCommand --bootstrap-server "$bs" --remove --force \
      --allow-principal "User:$user" --operation Read \
      --group "$topic." --resource-pattern-type prefixed >>"$logdir/partner.log" 2>&1; then
    tail -n 5 "$logdir/partner.log" >&2 || true
    die "partner-revoke: could not remove the acls of $user (log: $logdir/partner.log)"
  fi
  run_tool kafka.admin.ConfigCommand --bootstrap-server "$bs" --alter \
    --entity-type users --entity-name "$user" --delete-config "$scram_mechanism" \
    >>"$logdir/partner.log" 2>&1 || rc=$?
  # a user without the credential (revoked before) is what we want
  if [ "$rc" != 0 ] && ! grep -q 'credential that does not exist' "$logdir/partner.log"; then
    tail -n 5 "$logdir/partner.log" >&2 || true
    die "partner-revoke: could not delete the $scram_mechanism credential of $user (log: $logdir/partner.log)"
  fi
  note "user $user on $bs: acls removed, $scram_mechanism credential deleted"
}

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
  if [ -n "${KAFKA_BROKERS:-}" ]; then
    start
  else
    with_lock start
  fi
  ;;
stop)
  if [ -n "${KAFKA_BROKERS:-}" ] && [ ! -f "$pidfile" ]; then
    note "KAFKA_BROKERS is set, nothing to stop"
  else
    with_lock stop
  fi
  ;;
status) status ;;
bootstrap) bootstrap ;;
sasl-bootstrap) sasl_bootstrap ;;
topics) topics ;;
topic) one_topic "$@" ;;
delete-topic) delete_topic "$@" ;;
partner-topic) partner_topic "$@" ;;
partner-access) partner_access "$@" ;;
partner-revoke) partner_revoke "$@" ;;
*)
  echo "usage: $0 start|stop|status|bootstrap|sasl-bootstrap|topics|topic NAME PARTITIONS|delete-topic NAME|partner-topic TENANT PARTNER_ID [PARTITIONS]|partner-access TENANT PARTNER_ID PASSWORD|partner-revoke TENANT PARTNER_ID" >&2
  exit 2
  ;;
esac
