#!/usr/bin/env bash
# The main job: install what is missing, build, fetch the default model and start the chat TUI, dsachat, which
# starts the daemon (build/dsachatd) in the background when none is running.  Arguments go to dsachat (e.g.
# -s SESSION, or a subcommand: send, ls, history, rm; see man/dsachat.1).  `build/dsa chat` is the engine-only chat.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
scripts/build.sh
scripts/fetch-model.sh >/dev/null
exec build/dsachat "$@"
