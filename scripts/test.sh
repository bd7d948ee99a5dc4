#!/usr/bin/env bash
# Build everything and run the whole test suite (with the real default model, fetched if needed).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
scripts/build.sh
scripts/fetch-model.sh >/dev/null
ctest --test-dir "${BUILD_DIR:-build}" --output-on-failure -j"$(nproc)" "$@"
