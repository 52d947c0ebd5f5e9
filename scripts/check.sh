#!/usr/bin/env bash
# source checks run by scripts/test.sh: formatting, banned calls, error reasons
# against their catalogue, proto lint.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
fail=0

mapfile -t csrc < <(git ls-files -co --exclude-standard -- '*.c' '*.h' | grep -v '^build')
if ((${#csrc[@]})); then
  # a file of this run's own: another checkout may run its checks meanwhile
  fmt_out=$(mktemp "${TMPDIR:-/tmp}/commerce-format.XXXXXX")
  if ! clang-format --dry-run --Werror "${csrc[@]}" 2>"$fmt_out"; then
    echo "check: clang-format differs (run: clang-format -i <file>):"
    grep -E '^[^ ].*: (error|warning)' "$fmt_out" | cut -d: -f1 | sort -u | sed 's/^/  /'
    fail=1
  fi
  rm -f "$fmt_out"
  # curl's checksrc rule: no unbounded string calls
  if grep -nE '\b(sprintf|vsprintf|strcat|strcpy|strtok|gets|atoi|atol)\s*\(' "${csrc[@]}"; then
    echo "check: banned call above (use snprintf, memcpy with bounds, strtol with checks)"
    fail=1
  fi
fi

# every error reason the code can send is in error_reason.proto
/usr/bin/python3 "$root/scripts/check_error_reasons.py" "$root" || fail=1

# every SQL statement is parameterised (formatting into SQL text only where
# marked sql-safe), and the checker still finds its planted cases
/usr/bin/python3 "$root/scripts/check_sql_params.py" "$root" || fail=1
/usr/bin/python3 "$root/scripts/check_sql_params.py" --expect "$root/tests/check/sql_params_cases.c" >/dev/null ||
  { echo "check: check_sql_params.py misses its planted cases"; fail=1; }

buf="$root/.tools/node_modules/.bin/buf"
if [ -d proto/commerce ]; then
  "$buf" lint proto || { echo "check: buf lint failed"; fail=1; }
  if [ -n "$("$buf" format -d proto)" ]; then
    echo "check: buf format differs (run: .tools/node_modules/.bin/buf format -w proto)"
    fail=1
  fi
fi
[ "$fail" = 0 ] && echo "check: ok"
exit "$fail"
