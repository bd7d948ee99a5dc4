#!/usr/bin/env bash
# kernels/cuda's device code run on the host, without a GPU: each CUDA thread a fiber (emu_rt.cpp), blocks with
# real barriers (a cooperative launch runs the whole grid at once, with grid-wide barriers), warp collectives
# (shuffles, votes, mma.m16n8k16, ldmatrix) exchanged lane by lane, cp.async done no earlier than its wait, shared
# memory poisoned with NaN and ending at a guard page.  x86-64 only (the fibers switch with a few lines of assembly).
#
#   The sources are compiled whole for the host: prep.py rewrites only shared memory and inline PTX, cuda_emu.h
#   stands in for the runtime.
#   gemv    the quantised GEMV (test.cpp, with kernels.cu): both callers, the persistent kernel's
#           gemv_phase<NT, true> and k_gemv_q, on random Q4_1 and Q8_0 blocks of the default model's shapes,
#           bit-identical to each other and within 1e-5 of a double reference.
#   decode  test_decode.cpp, with kernels.cu, select.cu and attn.cu: a decode step of up to 16 rows over
#           two layers of the default model's shape, as the shipped kernels, the opt-in kernels and the persistent
#           kernel, with f16 weights and with quantised ones, compared with each other; and the tiled prefill
#           attention against the split-K kernel.  On an emulated device of 2 multiprocessors × 2 persistent blocks
#           (the persistent kernel's grid: 4 blocks), and (not quick) again on 1 × 1 and 3 × 1.
#
#   tests/gpu/emu/run.sh [quick] [gemv|decode] [BUILD_DIR]
#
# quick (ctest): fewer cases, one device, no injected bugs.  Without quick it also builds copies with a bug
# injected on purpose (prep.py --bug N; prep.py --list gemv|decode names them: a wrong swizzle, missing barriers,
# wrong MMA fragments, a wait too short ...) and expects the test it names to catch every one.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
quick= only=
[ "${1:-}" = quick ] && { quick=quick; shift; }
case "${1:-}" in gemv|decode) only=$1; shift ;; esac
B=${1:-$here/../../../build-emu}
mkdir -p "$B"
flags=(-O2 -std=c++17 -fno-strict-aliasing -ffp-contract=off -Wall -Wno-unknown-pragmas -Wno-unused-variable
       -Wno-unused-but-set-variable -Wno-maybe-uninitialized -Wno-sign-compare -Wno-unused-function -I"$here")
# f16 conversions in hardware where the CPU has them (otherwise each is a libgcc call)
grep -qw f16c /proc/cpuinfo 2>/dev/null && flags+=(-mf16c)
dflags=("${flags[@]}" -D__CUDA_ARCH__=900 -I"$here/include") # for kernels/cuda's sources (prep.py)
g++ "${flags[@]}" -c "$here/emu_rt.cpp" -o "$B/emu_rt.o"
g++ "${dflags[@]}" -c "$here/cuda_emu.cpp" -o "$B/cuda_emu.o"
expect_caught() { # LOG WHAT COMMAND...: a build with a bug injected must fail
  if "${@:3}" > "$1" 2>&1; then
    echo "injected bug $2 NOT caught ($1)"
    exit 1
  fi
  echo "injected bug $2 caught: $(grep -c FAIL "$1") failing cases, or an emulator abort"
}

if [ "$only" != decode ]; then
  build_gemv() { # DIR [--bug N]: kernels.cu as prep.py leaves it, and test.cpp
    python3 "$here/prep.py" "$1/src" "${@:2}"
    g++ "${dflags[@]}" -I"$1" "$here/test.cpp" "$B/emu_rt.o" "$B/cuda_emu.o" -o "$1/emu"
  }
  echo "== the quantised GEMV"
  build_gemv "$B/gemv"
  "$B/gemv/emu" $quick
  if [ -z "$quick" ]; then
    python3 "$here/prep.py" --list gemv | while read -r b what; do
      build_gemv "$B/gemv_bug$b" --bug "$b"
      expect_caught "$B/gemv_bug$b.txt" "$b ($what)" "$B/gemv_bug$b/emu" quick
    done
  fi
fi

if [ "$only" != gemv ]; then
  build_decode() { # DIR [--bug N]: the kernels as prep.py leaves them, and test_decode
    python3 "$here/prep.py" "$1/src" "${@:2}"
    local pids=()
    for f in kernels select attn; do
      g++ "${dflags[@]}" -I"$1" -x c++ -c "$1/src/$f.cu" -o "$1/$f.o" & pids+=($!)
    done
    g++ "${dflags[@]}" -I"$1" -c "$here/test_decode.cpp" -o "$1/test_decode.o" & pids+=($!)
    for p in "${pids[@]}"; do wait "$p"; done
    g++ -o "$1/test_decode" "$1"/{test_decode,kernels,select,attn}.o "$B/emu_rt.o" "$B/cuda_emu.o"
  }
  echo "== the decode step and the tiled attention"
  build_decode "$B/decode"
  if [ -n "$quick" ]; then
    "$B/decode/test_decode" quick
  else
    "$B/decode/test_decode"
    for dev in 1x1 3x1; do
      EMU_SMS=${dev%x*} EMU_PER_SM=${dev#*x} "$B/decode/test_decode" quick
    done
    python3 "$here/prep.py" --list decode | while read -r b what; do
      build_decode "$B/decode_bug$b" --bug "$b"
      expect_caught "$B/decode_bug$b.txt" "$b ($what)" "$B/decode_bug$b/test_decode" quick
    done
  fi
fi
