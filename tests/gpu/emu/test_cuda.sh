#!/usr/bin/env bash
# test_cuda without a GPU: the whole CUDA backend (kernels/cuda, model.cu included) built by the host compiler for
# the fiber emulator (cmake -DDSA_CUDA=OFF -DDSA_CUDA_EMU=ON; cuda_emu.h stands in for the runtime, graphs and
# cuBLAS), then tests/test_cuda.c as the GPU machine runs it (tests/gpu/run.sh): every kernel against its C
# counterpart, and the model against the CPU backend on the default model's first two layers and their sidecar.
# Once with the shipped kernels, once with the opt-in ones (new), once with them and quantised weights (quant), as
# run.sh's variants.  Slow: 7 to 10 minutes a variant on two cores.  Logs and JSON reports in BUILD_DIR.
#
#   tests/gpu/emu/test_cuda.sh [shipped|new|quant ...] [BUILD_DIR]      (default: all three, build-cuemu)
set -euo pipefail
cd "$(dirname "$0")/../../.."
variants=()
while [ $# -gt 0 ]; do
  case "$1" in shipped|new|quant) variants+=("$1"); shift ;; *) break ;; esac
done
[ ${#variants[@]} -gt 0 ] || variants=(shipped new quant)
B=${1:-build-cuemu}
cmake -S . -B "$B" -DCMAKE_BUILD_TYPE=Release -DDSA_CUDA=OFF -DDSA_CUDA_EMU=ON >/dev/null
cmake --build "$B" -j"$(nproc)" --target dsa test_cuda >/dev/null
model=$(scripts/fetch-model.sh)
[ -f "$B/slice2.gguf" ] ||
  "$B/dsa" slice-model -m "$model" --layers 2 -o "$B/slice2.gguf" \
    --indexer indexers/SmolLM2-135M-Instruct.Q4_1.dsa.gguf --indexer-out "$B/slice2.dsa.gguf" >/dev/null
new=(DSA_CUDA_GEMV=mma DSA_CUDA_FLASH=1 DSA_CUDA_PERSIST=1 DSA_CUDA_SELECT=new) # as tests/gpu/run.sh
rc=0
for v in "${variants[@]}"; do
  vars=()
  [ "$v" = new ] && vars=("${new[@]}")
  [ "$v" = quant ] && vars=("${new[@]}" DSA_CUDA_QUANT=1)
  echo "== test_cuda, $v kernels ${vars[*]}"
  start=$(date +%s)
  if env "${vars[@]}" DSA_MODEL="$B/slice2.gguf" DSA_CUDA_REPORT="$B/test_cuda_$v.json" stdbuf -oL \
       "$B/tests/test_cuda" > "$B/test_cuda_$v.log" 2>&1; then
    echo "passed in $(($(date +%s) - start)) s ($B/test_cuda_$v.log)"
  else
    rc=1
    echo "FAILED after $(($(date +%s) - start)) s: $B/test_cuda_$v.log"
  fi
  grep -E "^(teacher|greedy|top-k|FP8|batched|cache|dsa: CUDA)" "$B/test_cuda_$v.log" | sed 's/^/  /' || true
done
exit $rc
