#!/usr/bin/env bash
# The main job: install what is missing, build, fetch the default model and start an interactive chat.
# Arguments go to `dsa chat` (e.g. --system "You are terse." or -m other.gguf).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
scripts/build.sh
scripts/fetch-model.sh >/dev/null
exec build/dsa chat "$@"
