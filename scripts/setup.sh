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
# The demo: the whole pipeline (load, preprocess, vision encoder, Q-Former, Flan-T5, decode) on the bundled
# models/shapes-demo, a tiny InstructBLIP trained only on pictures of one coloured shape on a coloured
# background, asked four questions about two bundled pictures.
questions=("What shape is in the image?" "What color is the shape?" "What color is the background?"
           "Describe the image.")
for image in examples/images/shapes/red-circle-on-blue.png examples/images/shapes/yellow-star-on-purple.png; do
  echo "${image}:"
  for q in "${questions[@]}"; do
    a=$(./build/examples/instructblip-generate --model models/shapes-demo --image "$image" --prompt "$q" \
        --max-new-tokens 32 --quiet)
    echo "  $q -> $a"
  done
done
