#!/usr/bin/env bash
# Build the DSA indexer warm-up corpus (see docs/corpus.md): install the Debian documentation packages it
# reads, extract their text into train/ and heldout/ (scripts/corpus/make-corpus.py), and add chat
# transcripts sampled from the model itself (scripts/corpus/sample-chats.sh).
#
#   scripts/make-corpus.sh [--chats N] [--no-chats] [--no-install] [--out DIR] [-- make-corpus.py options]
#
#   --chats N      sample N conversations (builds dsa when it is missing); default: 24 when the dsa binary
#                  and the default model exist, none otherwise.  --turns/-n/--seed of sample-chats.sh can be
#                  set through SAMPLE_CHATS_ARGS, e.g. SAMPLE_CHATS_ARGS="--turns 6 -n 200".
#   --no-chats     no chat transcripts (the ones already there stay and remain in the manifest)
#   --no-install   do not run apt-get (use what is installed)
#   --out DIR      output folder; default $DSACHAT_CORPUS, else $XDG_CACHE_HOME/dsachat/corpus
#
# Installing needs root and Debian's package archive (apt-get); without root the apt-get line is printed and
# the corpus is built from what is installed.  Idempotent: a second run changes nothing.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
py="$root/scripts/corpus/make-corpus.py"

chats="" install=1
out="${DSACHAT_CORPUS:-${XDG_CACHE_HOME:-$HOME/.cache}/dsachat/corpus}"
extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --chats) chats="$2"; shift 2 ;;
    --no-chats) chats=0; shift ;;
    --no-install) install=0; shift ;;
    --out) out="$2"; shift 2 ;;
    --) shift; extra=("$@"); break ;;
    -h|--help) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "make-corpus: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done

# 1. the Debian packages (only those this Debian release has)
read -r -a pkgs <<< "$(python3 "$py" --list-packages)"
need=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || need+=("$p")
done
if [ "${#need[@]}" -gt 0 ] && [ "$install" = 1 ]; then
  avail=()
  for p in "${need[@]}"; do
    if apt-cache show "$p" >/dev/null 2>&1; then avail+=("$p"); else echo "make-corpus: no package $p here; skipped" >&2; fi
  done
  cmd=(apt-get install -y --no-install-recommends "${avail[@]}")
  if [ "${#avail[@]}" -eq 0 ]; then
    :
  elif [ "$(id -u)" = 0 ]; then
    echo "make-corpus: installing ${avail[*]}" >&2
    if ! DEBIAN_FRONTEND=noninteractive "${cmd[@]}" >&2; then
      echo "make-corpus: apt-get install failed; trying again after apt-get update" >&2
      apt-get update >&2 || true
      DEBIAN_FRONTEND=noninteractive "${cmd[@]}" >&2 || echo "make-corpus: apt-get failed; using what is installed" >&2
    fi
  else
    echo "make-corpus: not root; to install the sources run:" >&2
    echo "  sudo DEBIAN_FRONTEND=noninteractive ${cmd[*]}" >&2
    echo "make-corpus: continuing with what is installed" >&2
  fi
fi

# 2. the documents
python3 "$py" --out "$out" "${extra[@]}"

# 3. chat transcripts from the model itself
model="${XDG_CACHE_HOME:-$HOME/.cache}/dsachat/models/SmolLM2-135M-Instruct.Q4_1.gguf"
if [ -z "$chats" ]; then
  chats=0
  if { [ -x "$root/build/dsa" ] || [ -x "$root/build/tools/dsa" ] || [ -n "${DSA:-}" ]; } && [ -f "$model" ]; then
    chats=24
  else
    echo "make-corpus: no dsa binary or model; no chat transcripts (build, fetch the model, or use --chats N)" >&2
  fi
fi
if [ "$chats" -gt 0 ]; then
  # shellcheck disable=SC2086
  bash "$root/scripts/corpus/sample-chats.sh" --out "$out" --chats "$chats" ${SAMPLE_CHATS_ARGS:-}
  python3 "$py" --out "$out" --manifest-only
fi
