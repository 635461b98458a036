#!/usr/bin/env bash
# Longer fuzzing runs of the libFuzzer harnesses in tests/fuzz (the test suite only runs each for
# a few seconds). Configures a clang build with INSTRUCTBLIP_FUZZ=ON in build-fuzz/, builds the
# harnesses, then fuzzes each in turn for SECONDS (default 300) with -jobs = -workers = JOBS
# (default: nproc) and prints how many inputs each executed.
#
#   scripts/fuzz.sh [SECONDS] [HARNESS...]      e.g. scripts/fuzz.sh 600 image safetensors
#   JOBS=1 scripts/fuzz.sh 60                    (one process per harness)
#
# Corpora accumulate in build-fuzz/fuzz-corpus/<harness>/ (seeded from tests/fuzz/corpus/, which
# is never modified); reproducers of crashes, leaks and timeouts go to build-fuzz/fuzz-artifacts/,
# libFuzzer's per-job logs to build-fuzz/fuzz-logs/<harness>/. Reproduce a finding with
#   build-fuzz/tests/fuzz/fuzz_<harness> build-fuzz/fuzz-artifacts/<harness>-crash-...
# Exit status: 0 if no harness reported a finding, 1 otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${1:-300}"
shift || true
harnesses=("$@")
if [ ${#harnesses[@]} -eq 0 ]; then
  harnesses=(safetensors checkpoint_index config image_processor_config tokenizer_config image tokenizers bpe_files cli_args)
fi
jobs="${JOBS:-$(nproc)}"
build=build-fuzz

CC="${CC:-clang}" CXX="${CXX:-clang++}" cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DINSTRUCTBLIP_FUZZ=ON -DINSTRUCTBLIP_BUILD_TESTS=OFF -DINSTRUCTBLIP_BUILD_BENCHMARKS=OFF \
  -DINSTRUCTBLIP_BUILD_EXAMPLES=OFF
if ! grep -q '^IB_HAVE_LIBFUZZER:INTERNAL=1$' "$build/CMakeCache.txt"; then
  echo "fuzz.sh: the harnesses are not configured (clang's libFuzzer runtime not found? see the cmake warning above)" >&2
  exit 1
fi
targets=()
for h in "${harnesses[@]}"; do targets+=("fuzz_$h"); done
cmake --build "$build" -j"$jobs" --target "${targets[@]}"

root="$(pwd)"
artifacts="$root/$build/fuzz-artifacts"
mkdir -p "$artifacts"
declare -A executions status
failed=0
for h in "${harnesses[@]}"; do
  corpus="$root/$build/fuzz-corpus/$h"
  logs="$root/$build/fuzz-logs/$h"
  mkdir -p "$corpus"
  rm -rf "$logs"
  mkdir -p "$logs"
  cp -n "$root/tests/fuzz/corpus/$h/"* "$corpus/" 2>/dev/null || true
  dict=()
  if [ -f "$root/tests/fuzz/dict/$h.dict" ]; then dict=(-dict="$root/tests/fuzz/dict/$h.dict"); fi
  echo "== fuzz_$h: ${seconds}s x $jobs job(s)"
  rc=0
  # libFuzzer writes one fuzz-<n>.log per job into the working directory.
  (cd "$logs" && "$root/$build/tests/fuzz/fuzz_$h" -max_total_time="$seconds" -jobs="$jobs" -workers="$jobs" \
      -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 -artifact_prefix="$artifacts/$h-" "${dict[@]}" \
      "$corpus" > "$logs/driver.log" 2>&1) || rc=$?
  n=0
  for log in "$logs"/fuzz-*.log; do
    [ -f "$log" ] || continue
    k="$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1 || true)"
    n=$((n + ${k:-0}))
  done
  executions[$h]=$n
  if [ "$rc" -ne 0 ] || grep -lqE '^==[0-9]+==ERROR|^SUMMARY: |IB_FUZZ_CHECK failed|deadly signal|Test unit written' \
      "$logs"/fuzz-*.log 2>/dev/null; then
    status[$h]="FINDING (see $logs and $artifacts/$h-*)"
    failed=1
  else
    status[$h]="ok"
  fi
  echo "   ${executions[$h]} executions: ${status[$h]}"
done

echo
printf '%-24s %14s  %s\n' harness executions result
for h in "${harnesses[@]}"; do printf '%-24s %14s  %s\n' "$h" "${executions[$h]}" "${status[$h]}"; done
exit "$failed"
