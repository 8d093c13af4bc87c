#!/usr/bin/env bash
# Fuzz the framing decoders and the PROXY header parser: run each
# cargo-fuzz target in fuzz/ for SECONDS (default 10) and print the number
# of executions per target.
#
#   scripts/fuzz.sh [SECONDS]
#
# Environment:
#   FUZZ_TARGETS    space-separated targets (default: line delimiter length fixed proxy)
#   FUZZ_TOOLCHAIN  "nightly" or "stable"; default: nightly if rustup has it.
#                   cargo-fuzz passes nightly-only flags (-Zsanitizer=address,
#                   sancov passes); on stable they are unlocked with
#                   RUSTC_BOOTSTRAP=1, which works with this crate's toolchain.
#
# Corpora grow in fuzz/corpus/<target>/ and crashes land in
# fuzz/artifacts/<target>/ (both git-ignored). Exits non-zero if any target
# found a crash.
set -euo pipefail

secs="${1:-10}"
case "$secs" in
  '' | *[!0-9]*) echo "usage: $0 [SECONDS]" >&2; exit 2 ;;
esac
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
targets=(${FUZZ_TARGETS:-line delimiter length fixed proxy})

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "installing cargo-fuzz..." >&2
  cargo install cargo-fuzz --locked
fi

toolchain="${FUZZ_TOOLCHAIN:-}"
if [ -z "$toolchain" ]; then
  if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    toolchain=nightly
  else
    toolchain=stable
  fi
fi
if [ "$toolchain" = nightly ]; then
  cargo_cmd=(cargo +nightly)
else
  cargo_cmd=(cargo)
  export RUSTC_BOOTSTRAP=1
fi
echo "toolchain: $toolchain ($("${cargo_cmd[@]}" --version))" >&2

cd "$root/fuzz"
for t in "${targets[@]}"; do
  "${cargo_cmd[@]}" fuzz build "$t" >&2
done

logdir="$(mktemp -d)"
status=0
printf '%-10s %12s %10s  %s\n' target execs exec/s result
for t in "${targets[@]}"; do
  log="$logdir/$t.log"
  set +e
  "${cargo_cmd[@]}" fuzz run "$t" -- \
    -max_total_time="$secs" -print_final_stats=1 >"$log" 2>&1
  rc=$?
  set -e
  execs="$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | awk '{s+=$1} END {print s+0}')"
  rate="$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$log" | grep -o '[0-9]*$' | awk '{s+=$1} END {print s+0}')"
  if [ "$rc" -eq 0 ]; then
    result="no crash"
  else
    result="CRASH (exit $rc), see $log and fuzz/artifacts/$t/"
    status=1
  fi
  printf '%-10s %12s %10s  %s\n' "$t" "$execs" "$rate" "$result"
done
exit "$status"
