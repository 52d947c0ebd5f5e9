#!/usr/bin/env bash
# the configuration tables of README.md come from the binaries' own list
# (commerce-<svc> --config-markdown=common|service), so the README and
# --help cannot drift apart; so do the tables of roles per RPC (commerce-<svc>
# --rpc-markdown, from the method tables the runtime enforces). between the
# markers
#   <!-- config:common -->  ...  <!-- /config:common -->
#   <!-- config:<svc> -->   ...  <!-- /config:<svc> -->
#   <!-- roles:<svc> -->    ...  <!-- /roles:<svc> -->
# the tables are rewritten (no argument) or compared (--check: exit 1 and
# a diff when the README differs).
#
#   scripts/config-tables.sh [--check] [BIN_DIR]     (default build/bin)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
check=0
if [ "${1:-}" = --check ]; then
  check=1
  shift
fi
bin=${1:-$root/build/bin}
readme=$root/README.md
services=()
for b in "$bin"/commerce-*; do
  name=${b##*/commerce-}
  case "$name" in order | inventory | settlement | commission) ;; *) continue ;; esac
  [ -x "$b" ] && services+=("$name")
done
[ "${#services[@]}" -gt 0 ] || { echo "config-tables: no service binaries in $bin" >&2; exit 1; }

tmp=$(mktemp)
trap 'rm -f "$tmp" "$tmp".*' EXIT
cp "$readme" "$tmp"
# replace what lies between a pair of markers (<!-- kind:tag -->, kind
# config unless given) with a file's content
splice() {
  local tag=$1 content=$2 kind=${3:-config}
  grep -q "^<!-- $kind:$tag -->\$" "$tmp" || {
    echo "config-tables: README.md has no <!-- $kind:$tag --> marker" >&2
    exit 1
  }
  awk -v tag="$kind:$tag" -v file="$content" '
    $0 == "<!-- " tag " -->" { print; while ((getline l < file) > 0) print l; skip = 1; next }
    $0 == "<!-- /" tag " -->" { skip = 0 }
    !skip { print }' "$tmp" >"$tmp.new"
  mv "$tmp.new" "$tmp"
}
"$bin/commerce-${services[0]}" --config-markdown=common >"$tmp.common"
splice common "$tmp.common"
for s in "${services[@]}"; do
  "$bin/commerce-$s" --config-markdown=service >"$tmp.$s"
  splice "$s" "$tmp.$s"
  "$bin/commerce-$s" --rpc-markdown >"$tmp.$s.roles"
  splice "$s" "$tmp.$s.roles" roles
done
if [ "$check" = 1 ]; then
  if ! diff -u "$readme" "$tmp"; then
    echo "config-tables: README.md's configuration or roles tables differ from the binaries' (run scripts/config-tables.sh $bin)" >&2
    exit 1
  fi
  echo "config-tables: README.md matches ${services[*]}"
else
  cp "$tmp" "$readme"
  echo "config-tables: README.md rewritten from ${services[*]}"
fi
