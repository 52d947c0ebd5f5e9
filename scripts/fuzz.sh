#!/usr/bin/env bash
# the fuzz step of the test command (tests/fuzz/README.md): builds the
# libFuzzer harnesses with clang-14 and ASan+UBSan into build-fuzz, runs
# every regression input once, then each harness for a bounded time from
# its committed seed corpus, and prints executions per second and coverage
# per target. exits non-zero on any crash, leak, sanitizer report or
# broken invariant; the input that did it is left in
# build-fuzz/fuzz-artifacts/ (keep it as a regression input, see the README).
#
#   scripts/fuzz.sh              every harness, 15 s each
#   scripts/fuzz.sh 180          every harness, 3 minutes each
#   scripts/fuzz.sh 60 jwt text  only those harnesses
#
# what a run finds beyond the seeds goes into build-fuzz/fuzz-corpus/<target>
# (kept between runs, never into the checkout), so longer runs build on
# earlier ones.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
secs=${1:-15}
[ $# -gt 0 ] && shift
case "$secs" in '' | *[!0-9]*)
  echo "fuzz.sh: seconds per target must be a number, got \"$secs\"" >&2
  exit 2
  ;;
esac
build=${FUZZ_BUILD_DIR:-$root/build-fuzz}
cc=${FUZZ_CC:-clang-14}
if ! command -v "$cc" >/dev/null; then
  echo "fuzz.sh: $cc not found (scripts/install-deps.sh installs clang-14 and libclang-rt-14-dev)" >&2
  exit 2
fi

echo "== fuzz build ($build, $cc, libFuzzer + ASan + UBSan)"
CC=$cc cmake -S "$root" -B "$build" -G Ninja -DCOMMERCE_FUZZ=ON -DCMAKE_BUILD_TYPE=Debug >/dev/null
ninja -C "$build" fuzz

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  for b in "$build"/bin/fuzz_*; do targets+=("$(basename "$b" | sed 's/^fuzz_//')"); done
fi

export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0:strict_string_checks=1}
export LSAN_OPTIONS=${LSAN_OPTIONS:-suppressions=$root/tests/lsan.supp:print_suppressions=0}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
artifacts=$build/fuzz-artifacts
mkdir -p "$artifacts"
fail=0
summary=()
for t in "${targets[@]}"; do
  bin=$build/bin/fuzz_$t
  if [ ! -x "$bin" ]; then
    echo "fuzz.sh: no harness fuzz_$t" >&2
    exit 2
  fi
  seeds=$root/tests/fuzz/corpus/$t
  regress=$root/tests/fuzz/regressions/$t
  work=$build/fuzz-corpus/$t
  mkdir -p "$work"
  log=$build/fuzz-$t.log
  if [ -d "$regress" ] && [ -n "$(ls -A "$regress")" ]; then
    echo "== fuzz_$t: regression inputs"
    if ! "$bin" -runs=1 "$regress"/* >"$log.regress" 2>&1; then
      echo "fuzz.sh: fuzz_$t fails on a regression input:" >&2
      tail -30 "$log.regress" >&2
      fail=1
      continue
    fi
  fi
  echo "== fuzz_$t: ${secs}s"
  [ -d "$seeds" ] || seeds=
  if ! "$bin" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2560 -max_len=8192 \
    -print_final_stats=1 -artifact_prefix="$artifacts/$t-" "$work" ${seeds:+"$seeds"} \
    >"$log" 2>&1; then
    echo "fuzz.sh: fuzz_$t found a failure (artifacts in $artifacts, log $log):" >&2
    grep -v '^#\|^INFO\|^"' "$log" | tail -40 >&2
    fail=1
    continue
  fi
  done_line=$(grep -a 'DONE  ' "$log" | tail -1 || true)
  cov=$(sed -n 's/.* cov: \([0-9]*\) ft: \([0-9]*\) corp: \([0-9]*\).*/cov \1, features \2, corpus \3/p' <<<"$done_line")
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
  eps=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log")
  summary+=("$(printf '%-16s %10s runs %8s exec/s  %s' "$t" "$runs" "$eps" "$cov")")
done
echo "== fuzz summary (${secs}s per target)"
for s in "${summary[@]}"; do echo "  $s"; done
if [ "$fail" != 0 ]; then
  echo "fuzz.sh: FAILED" >&2
  exit 1
fi
echo "fuzz.sh: ok"
