#!/usr/bin/env bash
# Measure the shipped (or given) DSA indexer and write the report: dsa eval (perplexity, recall vs baselines,
# passkey) and dsa bench --contexts (decode speed), then scripts/dsa-report.py renders docs/dsa-report.md.
# usage: scripts/dsa-eval-report.sh [INDEXER]      env: N_TEXTS (2), PASSKEY_TRIALS (3), THREADS, BUILD_DIR
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
build=${BUILD_DIR:-$here/build}
ix=${1:-$here/indexers/SmolLM2-135M-Instruct.Q4_1.dsa.gguf}
out=$here/docs/dsa-data
mkdir -p "$out"
thr=()
[ -n "${THREADS:-}" ] && thr=(--threads "$THREADS")
"$build/dsa" --indexer "$ix" "${thr[@]}" eval --json --n-texts "${N_TEXTS:-2}" --passkey-trials "${PASSKEY_TRIALS:-3}" \
  > "$out/eval.json"
"$build/dsa" --indexer "$ix" "${thr[@]}" bench --json --contexts 1024,2048,4096,8192 --gen-tokens 64 --reps 2 \
  > "$out/bench.json"
args=(--eval "$out/eval.json" --bench "$out/bench.json" --out "$here/docs/dsa-report.md" --plots-dir "$here/docs/img")
csv="${ix%.gguf}.train.csv"
[ -f "$csv" ] && args+=(--train "$csv")
[ -f "$out/sweep.json" ] && args+=(--sweep "$out/sweep.json")
python3 "$here/scripts/dsa-report.py" "${args[@]}" --machine "${MACHINE:-$(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)}"
