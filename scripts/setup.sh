#!/usr/bin/env bash
# Installs what the build needs (Debian 12 packages), configures a Release build in build/,
# builds it and runs an example. Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(cmake g++ make pkg-config libeigen3-dev libsentencepiece-dev libstb-dev nlohmann-json3-dev
          libgtest-dev libbenchmark-dev libjpeg62-turbo-dev libutf8proc-dev libwebp-dev clang libclang-rt-14-dev
          libarchive-dev libcpp-httplib-dev)
missing=()
# and for the one-node Slurm cluster test (tests/cluster; skipped without them)
packages+=(slurm-wlm munge)
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "installing: ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

cmake -S . -B build -DCMAKE_BUILD_TYPE=Release
cmake --build build -j"$(nproc)"
# The demo: the whole pipeline on the bundled tiny checkpoint (random weights: the answer is noise).
./build/examples/instructblip-generate --model models/tiny-random-flan-t5 \
    --image examples/images/Confusing-Pictures.jpg --prompt "What is unusual about this image?" \
    --num-beams 5 --max-new-tokens 20
