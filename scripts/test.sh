#!/usr/bin/env bash
# Builds and runs the whole test suite through CTest, in three configurations:
#  1. build/       Release: every unit, reference, CLI and package test, and the one-node Slurm cluster test.
#  2. build-asan/  AddressSanitizer + UndefinedBehaviorSanitizer: the same tests (but the real-width
#                  ViT-g shape test, the exhaustive bf16-compute kernel sweeps and the larger engine
#                  equivalence runs, which Release covers; the server and its load test included) plus a
#                  10-second libFuzzer run of every parser harness
#                  (tests/fuzz, label "fuzz"); built with clang when its fuzzer runtime is present,
#                  else with g++ and without the fuzzers.
#  3. build-tsan/  ThreadSanitizer: one model serving generate() from several threads, the pool, the
#                  batching engine (submit / stream / cancel / shutdown from other threads).
set -euo pipefail
cd "$(dirname "$0")/.."
jobs="$(nproc)"

# The one-node Slurm cluster test (tests/cluster) needs slurm-wlm and munge: installed when missing and root;
# without them (no apt, not root, no network) that test is skipped, never this script failed.
if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1 &&
   ! (PATH="$PATH:/usr/sbin:/sbin"; command -v slurmctld && command -v slurmd && command -v munged) >/dev/null 2>&1; then
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends slurm-wlm munge; } ||
    echo "could not install slurm-wlm munge: the cluster test will be skipped"
fi

# The server test drives instructblip-server with the official OpenAI npm client: node and npm
# are installed when missing (as root, through apt-get; the test is skipped without them).
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nodejs npm; } ||
      echo "could not install nodejs / npm: the OpenAI client test (server.openai_client) will be skipped"
  else
    echo "node / npm not found: the OpenAI client test (server.openai_client) will be skipped"
  fi
fi

cmake -S . -B build -DCMAKE_BUILD_TYPE=Release
cmake --build build -j"$jobs"
ctest --test-dir build --output-on-failure -j"$jobs"

san_flags=(-DCMAKE_BUILD_TYPE=Sanitize -DCMAKE_CXX_FLAGS_SANITIZE="-O1 -g1" -DCMAKE_C_FLAGS_SANITIZE="-O1 -g1"
           -DINSTRUCTBLIP_SANITIZE=ON -DINSTRUCTBLIP_BUILD_BENCHMARKS=OFF -DINSTRUCTBLIP_BUILD_EXAMPLES=OFF
           -DINSTRUCTBLIP_BUILD_SERVER=ON)
if command -v clang++ >/dev/null 2>&1; then
  CC=clang CXX=clang++ cmake -S . -B build-asan "${san_flags[@]}" -DINSTRUCTBLIP_FUZZ=ON -DIB_FUZZ_SECONDS=10
else
  echo "clang not found: the sanitizer configuration is built with g++, without the fuzz harnesses"
  cmake -S . -B build-asan "${san_flags[@]}"
fi
cmake --build build-asan -j"$jobs"
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  ctest --test-dir build-asan --output-on-failure -j"$jobs" \
    -E 'RealWidthsAgreeWithThePortableKernels|Bf16Compute(Fallbacks)?Match(es)?ExactReference|BatchEngine\.(Llama|SixteenRows|ShapesDemo|Blip2)|ShapesDemoTrained\.(Float32AnswersEqualPyTorch|CorrectAnswers(Bf16|Q8_0|Q4_0))'

cmake -S . -B build-tsan -DCMAKE_BUILD_TYPE=Tsan -DCMAKE_CXX_FLAGS_TSAN="-O1 -g1 -fsanitize=thread" \
      -DCMAKE_C_FLAGS_TSAN="-O1 -g1 -fsanitize=thread" -DCMAKE_EXE_LINKER_FLAGS="-fsanitize=thread" \
      -DINSTRUCTBLIP_BUILD_BENCHMARKS=OFF -DINSTRUCTBLIP_BUILD_EXAMPLES=OFF
cmake --build build-tsan -j"$jobs" --target test_concurrency test_engine
TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1 \
  ctest --test-dir build-tsan --output-on-failure -j"$jobs" \
    -R '^(Concurrency|ThreadPool)\.|^BatchEngine\.(Streams|BadImages|Cancel|FullQueue|StopStrings|Shutdown)'
