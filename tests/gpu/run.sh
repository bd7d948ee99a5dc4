#!/usr/bin/env bash
# The GPU check of the CUDA backend, in one run on a machine with an NVIDIA GPU (an H200 for the numbers in
# docs/cuda.md).  It writes everything under $OUT (default /tmp/dsachat-gpu): the kernel and model agreement
# with the CPU backend (test_cuda), the kernels against their bandwidth floor (bench_cuda), decode and prefill
# throughput on a seeded random model of the default model's shape (dsa bench), and summary.md / summary.json.
# test_cuda and dsa bench run in three variants: the shipped kernels, the opt-in ones, and the opt-in ones with
# quantised weights in decode; all within a time budget (below).
#
#   tests/gpu/run.sh [BUILD_DIR]
#
# BUILD_DIR holds dsa, tests/test_cuda and bench/bench_cuda (default: build; built here with cmake when missing).
# The real-weight agreement uses a slice of the default model, which a GPU test machine can receive:
#   dsa slice-model --layers 2 -o .devcarry/slice2.gguf --indexer indexers/<default>.dsa.gguf \
#       --indexer-out .devcarry/slice2.dsa.gguf
# .devcarry/devlibs.tar.xz, when present, holds shared libraries the machine lacks (unpacked under /tmp).
set -uo pipefail
cd "$(dirname "$0")/../.."
BIN=${1:-build}
. tests/gpu/env.sh
log() { printf '== %s\n' "$*" | tee -a "$OUT/run.log"; }
# At most 8 files come back from the machine, also from a run cut short by its time limit: each step's results
# go into raw.tar as soon as they are written.
keep() { (cd "$OUT" && for f in "$@"; do [ ! -e "$f" ] || { tar -rf raw.tar "$f" && rm -f "$f"; }; done); }
# The script must finish within 8 minutes (and one device call may run 600 s): every step's time-out is cut to
# what is left of DSA_GPU_BUDGET (450 s from here), and a step with under 20 s left is skipped, so the most useful
# steps go first.  (The run of 2026-11-28, one variant, took 45 s.)
T0=$(date +%s)
BUDGET=${DSA_GPU_BUDGET:-450}
tmo() { # tmo CAP STEP: prints the time-out for STEP, or fails when too little time is left
  local left=$((T0 + BUDGET - $(date +%s))) t=$1
  [ "$left" -lt "$t" ] && t=$left
  [ "$t" -ge 20 ] || { log "out of time: $2 skipped" >&2; return 1; }
  echo "$t"
}

# the carried binaries must have been built from this tree (tests/gpu/prepare.sh writes the fingerprint)
if [ -f .devcarry/sources.sha256 ] && ! sha256sum --quiet -c .devcarry/sources.sha256 >/dev/null 2>&1; then
  log "the carried binaries are older than this tree: run tests/gpu/prepare.sh again"
  exit 1
fi

if [ ! -x "$BIN/dsa" ]; then
  log "building into $BIN"
  cmake -S . -B "$BIN" -DCMAKE_BUILD_TYPE=Release -DDSA_WERROR=ON >/dev/null && cmake --build "$BIN" -j"$(nproc)" || exit 1
fi
chmod +x "$BIN/dsa" "$BIN/tests/test_cuda" "$BIN/bench/bench_cuda" 2>/dev/null

log "device"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv,noheader |
  tee "$OUT/device.txt" | tee -a "$OUT/run.log"
keep device.txt
timeout -k 5 30 "$BIN/dsa" info -m "$SLICE" --backend cuda 2>&1 | tee -a "$OUT/run.log" | grep -E 'cuda|dsa'

# Kernels written without a GPU at hand are opt-in until a run like this one has checked them (docs/cuda.md);
# the steps below run with the shipped kernels and again with these switched on.  QUANT_ENV: the opt-in kernels
# with the decode GEMV phases on the GGUF's quantised blocks (the persistent kernel's and, where it does not run,
# k_gemv_q), so that _new and _quant differ in the weights alone (the measured choice between f16 and quantised).
NEW_ENV=(DSA_CUDA_GEMV=mma DSA_CUDA_FLASH=1 DSA_CUDA_PERSIST=1 DSA_CUDA_SELECT=new)
QUANT_ENV=("${NEW_ENV[@]}" DSA_CUDA_QUANT=1)

# check V CAP: test_cuda (kernels and the model against the CPU backend) in variant V ("", _new, _quant)
check() {
  local v=$1 t vars=(DSA_CUDA_SHIPPED=1)
  [ "$v" = _new ] && vars=("${NEW_ENV[@]}")
  [ "$v" = _quant ] && vars=("${QUANT_ENV[@]}")
  t=$(tmo "$2" "test_cuda (${vars[*]})") || return 0
  log "kernels and model against the CPU backend (test_cuda; ${vars[*]})"
  env "${vars[@]}" DSA_MODEL=$SLICE DSA_CUDA_REPORT=$OUT/agreement$v.json timeout -k 5 "$t" "$BIN/tests/test_cuda" 2>&1 |
    tee "$OUT/test_cuda$v.log" | tail -n 14
  echo "test_cuda (${vars[*]}) exit ${PIPESTATUS[0]}" | tee -a "$OUT/run.log"
  keep "test_cuda$v.log" "agreement$v.json"
}

# bench V B CAP: decode and prefill throughput of the random model, variant V, batch B
bench() {
  local v=$1 b=$2 t vars=(DSA_CUDA_SHIPPED=1)
  [ "$v" = _new ] && vars=("${NEW_ENV[@]}")
  [ "$v" = _quant ] && vars=("${QUANT_ENV[@]}")
  t=$(tmo "$3" "dsa bench, batch $b (${vars[*]})") || return 0
  log "decode and prefill, batch $b (${vars[*]})"
  env "${vars[@]}" timeout -k 5 "$t" "$BIN/dsa" bench -m "$RAND" --indexer /tmp/dsachat-rand.dsa.gguf --backend cuda \
    --contexts 128,1024,8192 --batch "$b" --gen-tokens 128 --reps 2 --json > "$OUT/bench${v}_b$b.json" \
    2> >(tee -a "$OUT/run.log" >&2)
  cat "$OUT/bench${v}_b$b.json"
  keep "bench${v}_b$b.json"
}

check "" 90
check _new 90
check _quant 60

if t=$(tmo 60 bench_cuda); then
  log "kernels against their floor (bench_cuda)"
  timeout -k 5 "$t" "$BIN/bench/bench_cuda" > "$OUT/kernels.json" 2> >(tee -a "$OUT/run.log" >&2)
  cat "$OUT/kernels.json"
  keep kernels.json
fi

RAND=/tmp/dsachat-rand.gguf
if t=$(tmo 60 synth-model); then
  log "a seeded random model of the default shape"
  timeout -k 5 "$t" "$BIN/dsa" synth-model --like "$SLICE" --layers 30 --seed 1 -o "$RAND" \
    --indexer-out /tmp/dsachat-rand.dsa.gguf 2>&1 | tail -n 2
fi

for B in 1 16; do
  for V in "" _new _quant; do bench "$V" "$B" 60; done
done

# Which path the opt-in decode steps took (persistent kernel or graph replays) and their device against wall time
# per call: DSA_CUDA_PROFILE's lines at exit (tests/gpu/profile.sh goes further, with Nsight Compute).
if t=$(tmo 40 "the profile of the opt-in kernels"); then
  log "device time per call with ${NEW_ENV[*]} (DSA_CUDA_PROFILE)"
  env "${NEW_ENV[@]}" DSA_CUDA_PROFILE=1 timeout -k 5 "$t" "$BIN/dsa" bench -m "$RAND" \
    --indexer /tmp/dsachat-rand.dsa.gguf --backend cuda --contexts 128,8192 --batch 1 --gen-tokens 32 --reps 1 \
    > /dev/null 2> "$OUT/profile_new.log"
  grep -E 'cuda profile|CUDA' "$OUT/profile_new.log" | tee -a "$OUT/run.log"
  keep profile_new.log
fi

log "summary"
raw=$(mktemp -d)
tar -C "$raw" -xf "$OUT/raw.tar" 2>/dev/null
python3 tests/gpu/summary.py "$raw" | tee "$OUT/summary.md"
mv "$raw/summary.json" "$OUT/" 2>/dev/null
rm -rf "$raw"
ls "$OUT"
