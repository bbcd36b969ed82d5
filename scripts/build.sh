#!/usr/bin/env bash
# Configure and build into build/ (or $1 with extra CMake args after it).
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-build}
shift || true
cmake -S . -B "$dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMQS_WERROR=ON "$@" >/dev/null
cmake --build "$dir" -j"$(nproc)"
