#!/usr/bin/env bash
# Host emulation of the quantised GEMV (kernels/cuda/kernels.cu) without a GPU: each CUDA thread a fiber, blocks
# of 256 with real barriers, shared memory poisoned with NaN and ending at a guard page.  extract.py copies the
# device code verbatim from the source (only the __shared__ declarations become per-block emulator buffers), and
# test.cpp runs both callers of gemv_q_units on random Q4_1 and Q8_0 blocks of the default model's shapes (QKV
# with the indexer's f32 rows, RoPE and the K/V append; Wo and down accumulating; gate/up with SwiGLU): the
# persistent kernel's gemv_phase<NT, true> (gemv_q_call) and k_gemv_q, over several grid sizes and three thread
# orders.  Both must give the same bits, and match a double-precision reference on the dequantised weights
# within 1e-5.  x86-64 only (the fibers switch with a few lines of assembly).
#
#   tests/gpu/emu/run.sh [quick] [BUILD_DIR]   quick: n = 1 and 9 rows only, and no injected bugs (ctest)
#
# Without quick it also builds four copies with a bug injected on purpose (a wrong swizzle, the block loop off
# by one, each of stage_x's two barriers dropped) and expects every one to be caught.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
quick=
[ "${1:-}" = quick ] && { quick=quick; shift; }
B=${1:-$here/../../../build-emu}
mkdir -p "$B"
flags=(-O2 -std=c++17 -fno-strict-aliasing -ffp-contract=off -Wall -Wno-unknown-pragmas -Wno-unused-variable
       -Wno-unused-but-set-variable -Wno-maybe-uninitialized -I"$here" -I"$B")
build() { # build NAME [--bug N]
  python3 "$here/extract.py" "$B/$1.inc" "${@:2}"
  g++ "${flags[@]}" -DEXTRACTED="\"$1.inc\"" "$here/test.cpp" "$B/emu_rt.o" -o "$B/$1"
}
g++ "${flags[@]}" -c "$here/emu_rt.cpp" -o "$B/emu_rt.o"
build emu
"$B/emu" $quick
[ -n "$quick" ] && exit 0
for b in 1 2 3 4; do
  build "emu_bug$b" --bug "$b"
  if "$B/emu_bug$b" quick > "$B/emu_bug$b.txt" 2>&1; then
    echo "injected bug $b NOT caught ($B/emu_bug$b.txt)"
    exit 1
  fi
  echo "injected bug $b caught: $(grep -c FAIL "$B/emu_bug$b.txt") failing cases or an emulator abort"
done
