#!/usr/bin/env bash
# Configure and build into build/ (Release).  Extra arguments go to cmake's configure step,
# e.g. scripts/build.sh -DDSA_SANITIZE=ON.  In CI (CI=true) warnings are errors.
set -euo pipefail
cd "$(dirname "$0")/.."
args=(-DCMAKE_BUILD_TYPE=Release)
[ "${CI:-}" = "true" ] && args+=(-DDSA_WERROR=ON)
cmake -S . -B "${BUILD_DIR:-build}" "${args[@]}" "$@" >/dev/null
cmake --build "${BUILD_DIR:-build}" -j"$(nproc)"
