# shellcheck shell=bash
# free tcp ports on 127.0.0.1 for a checkout's private servers, sourced by
# scripts/pg.sh, scripts/kafka.sh and scripts/run.sh (its --check).
#
# the range, 20000-31999, lies below linux's ephemeral range (32768-60999
# by default): no outgoing connection can take one of these ports between
# the probe and the server's bind. the test harness (hs_free_port) and the
# interop test pick their services' ports in the same range, at random.
#
# two checkouts starting their servers at the same moment would probe the
# same free port, and one server would then fail to bind. so a port handed
# out is written down, with its owner (a run directory) and an expiry, in
# $ports_dir/claims under a lock, and no other owner is given it until the
# claim expires; by then its server listens and the probe sees it.

ports_lo=20000
ports_hi=31999
ports_claim_seconds=300
ports_dir=${COMMERCE_PORTS_DIR:-${TMPDIR:-/tmp}/commerce-ports-$(id -u)}

# the local ports of every tcp socket: listeners, and connections whose
# local port it is (an accepted connection, a socket in TIME-WAIT)
ports_used() {
  ss -Htan 2>/dev/null | awk '{ n = split($4, a, ":"); print a[n] }' | sort -un
}

# exit 0 when some socket has port $1 as its local port
ports_in_use() {
  [ -n "$(ss -Htan "sport = :$1" 2>/dev/null)" ]
}

# exit 0 when something listens on port $1
ports_listening() {
  [ -n "$(ss -Hltn "sport = :$1" 2>/dev/null)" ]
}

# who listens on port $1, for messages: 'users:(("postgres",pid=4591,fd=5))'
ports_holder() {
  local who
  who=$(ss -Hltnp "sport = :$1" 2>/dev/null | grep -o 'users:(.*)' | head -n 1) || true
  printf '%s\n' "${who:-a process this user cannot see}"
}

# runs "$@" in this shell with the claims locked (fd closed afterwards, so
# no server started later inherits it)
ports_locked() {
  local fd rc=0
  mkdir -p "$ports_dir"
  exec {fd}>>"$ports_dir/lock"
  flock "$fd"
  "$@" || rc=$?
  exec {fd}>&-
  return "$rc"
}

# the owner of a live claim on port $1, or nothing (call locked)
_ports_owner() {
  [ -f "$ports_dir/claims" ] || return 0
  awk -v p="$1" -v now="$(date +%s)" \
    '$1 == p && $2 > now { sub(/^[^ ]+ [^ ]+ /, ""); o = $0 } END { if (o != "") print o }' \
    "$ports_dir/claims"
}

# claims ports $2... for owner $1, dropping expired claims (call locked)
_ports_claim() {
  local owner=$1 now p
  shift
  now=$(date +%s)
  {
    [ -f "$ports_dir/claims" ] &&
      awk -v now="$now" -v ports=" $* " '$2 > now && index(ports, " " $1 " ") == 0' \
        "$ports_dir/claims"
    for p in "$@"; do
      printf '%s %s %s\n' "$p" $((now + ports_claim_seconds)) "$owner"
    done
  } >"$ports_dir/claims.new"
  mv -f "$ports_dir/claims.new" "$ports_dir/claims"
}

# exit 0 when port $1 is claimed by anyone but owner $2 (call locked)
ports_claimed() {
  local o
  o=$(_ports_owner "$1")
  [ -n "$o" ] && [ "$o" != "${2:-}" ]
}

_ports_pick() {
  local owner=$1 n start i p
  local -A used=()
  for p in $(ports_used); do used[$p]=1; done
  n=$((ports_hi - ports_lo + 1))
  # a random start: pickers that do not use the claims (the test harness,
  # another user) rarely probe the same port
  start=$(((RANDOM * 32768 + RANDOM) % n))
  for ((i = 0; i < n; i++)); do
    p=$((ports_lo + (start + i) % n))
    [ -z "${used[$p]:-}" ] || continue
    [ -z "$(_ports_owner "$p")" ] || continue
    _ports_claim "$owner" "$p"
    echo "$p"
    return 0
  done
  return 1
}

# prints a free port in 20000-31999 and claims it for owner $1 (a run
# directory); exit 1 when there is none
ports_pick() {
  ports_locked _ports_pick "$1"
}

_ports_take() {
  ! ports_listening "$2" && ! ports_claimed "$2" "$1" && _ports_claim "$1" "$2"
}

# claims port $2 for owner $1 when nothing listens on it and no other owner
# was handed it lately (its server may still be starting); exit 1 when not.
# only listeners count: a server binds with SO_REUSEADDR, so the sockets its
# last run left in TIME-WAIT do not keep it from getting its port back
ports_take() {
  ports_locked _ports_take "$1" "$2"
}

# claims ports $2... for owner $1 whatever their state: a port the user
# pinned is theirs to choose, but other pickers should leave it alone
ports_claim() {
  ports_locked _ports_claim "$@"
}

# writes port $2 to file $1 in one step: a status or dsn in another
# process never reads it half written
ports_remember() {
  printf '%s\n' "$2" >"$1.tmp.$$"
  mv -f "$1.tmp.$$" "$1"
}

# exit 0 when $1 is a tcp port number
ports_valid() {
  [[ $1 =~ ^[0-9]+$ ]] && [ "$1" -gt 0 ] && [ "$1" -lt 65536 ]
}
