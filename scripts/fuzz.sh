#!/usr/bin/env bash
# fuzz.sh - build the libFuzzer targets (tests/fuzz) with clang and run each
# for a bounded time from its seed corpus. A crash, leak or sanitizer
# report fails the run; the input that caused it is kept in
# build-fuzz/artifacts/ and printed as a reproduction command.
#
#   scripts/fuzz.sh [--seconds N] [--jobs J] [TARGET...]
#     --seconds N   time per target (default 600: the issue's 10 minutes)
#     TARGET        fuzz_frame, fuzz_client_uri (default: all)
# CI runs it with --seconds 45. Inputs found that add coverage go to a
# scratch corpus, not to tests/fuzz/corpus (add interesting ones by hand).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=600
targets=()
while [ $# -gt 0 ]; do
  case $1 in
    --seconds) seconds=$2; shift ;;
    --help|-h) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) echo "fuzz.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    *) targets+=("$1") ;;
  esac
  shift
done
[ ${#targets[@]} -gt 0 ] || targets=(fuzz_frame fuzz_client_uri)
command -v clang >/dev/null || { echo "fuzz.sh: clang is not installed (scripts/install-deps.sh installs it)" >&2; exit 1; }
CC=clang cmake -S . -B build-fuzz -DMQS_FUZZ=ON -DMQS_BUILD_TESTS=OFF \
  -DCMAKE_BUILD_TYPE=Debug >/dev/null
cmake --build build-fuzz -j2 --target "${targets[@]}" >/dev/null
mkdir -p build-fuzz/artifacts
rc=0
for t in "${targets[@]}"; do
  seeds=tests/fuzz/corpus/${t#fuzz_}
  work=$(mktemp -d)
  cp "$seeds"/* "$work"/ 2>/dev/null || true
  echo "fuzz.sh: $t for ${seconds}s (seeds: $seeds)" >&2
  if ! build-fuzz/bin/"$t" -max_total_time="$seconds" -timeout=10 \
      -rss_limit_mb=1024 -print_final_stats=1 \
      -artifact_prefix=build-fuzz/artifacts/"$t"- "$work" 2> build-fuzz/"$t".log; then
    rc=1
    tail -40 build-fuzz/"$t".log >&2
    echo "fuzz.sh: $t FAILED; reproduce with: build-fuzz/bin/$t build-fuzz/artifacts/$t-*" >&2
  else
    grep -E 'stat::number_of_executed_units|cov:' build-fuzz/"$t".log | tail -2 >&2 || true
    echo "fuzz.sh: $t: nothing found" >&2
  fi
  rm -rf "$work"
done
exit $rc
