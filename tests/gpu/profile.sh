#!/usr/bin/env bash
# Where a decode step's time goes on the GPU machine: device time against wall time per call (DSA_CUDA_PROFILE),
# and each kernel's duration over one decode step (Nsight Compute, clocks left as they are).  Output under $OUT.
#   tests/gpu/profile.sh [BUILD_DIR]
set -uo pipefail
cd "$(dirname "$0")/../.."
BIN=${1:-build}
. tests/gpu/env.sh
chmod +x "$BIN/dsa" 2>/dev/null
RAND=/tmp/dsachat-rand.gguf
[ -f $RAND ] || "$BIN/dsa" synth-model --like "$SLICE" --layers 30 --seed 1 -o "$RAND" --indexer-out /tmp/dsachat-rand.dsa.gguf >/dev/null 2>&1
# the shipped kernels, then the opt-in ones (tests/gpu/run.sh's NEW_ENV)
for V in "DSA_CUDA_SHIPPED=1" "DSA_CUDA_GEMV=mma DSA_CUDA_FLASH=1 DSA_CUDA_PERSIST=1 DSA_CUDA_SELECT=new"; do
  for B in 1 16; do
    echo "== batch $B, context 128 and 8192, $V" | tee -a "$OUT/profile.txt"
    env $V DSA_CUDA_PROFILE=1 timeout 120 "$BIN/dsa" bench -m "$RAND" --indexer /tmp/dsachat-rand.dsa.gguf \
      --backend cuda --contexts 128,8192 --batch $B --gen-tokens 64 2>&1 | tee -a "$OUT/profile.txt"
  done
done
echo "== one decode step under ncu"
NCU=$(command -v ncu || ls /usr/local/cuda/bin/ncu /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
timeout 150 "$NCU" --clock-control none --metrics gpu__time_duration.sum --csv --launch-skip 400 --launch-count 200 \
  "$BIN/dsa" generate -m "$RAND" --indexer /tmp/dsachat-rand.dsa.gguf --backend cuda -n 8 --temp 0 hi > "$OUT/ncu.csv" 2> "$OUT/ncu.err"
tail -n 3 "$OUT/ncu.err"
python3 - "$OUT/ncu.csv" <<'PY' | tee -a "$OUT/profile.txt"
import csv, sys, collections
rows = [r for r in csv.reader(open(sys.argv[1])) if len(r) > 10]
if not rows: sys.exit("no ncu rows")
h = rows[0]; ki = h.index("Kernel Name"); vi = h.index("Metric Value"); ui = h.index("Metric Unit")
tot = collections.defaultdict(float); cnt = collections.Counter()
for r in rows[1:]:
    v = float(r[vi].replace(",", "")); u = r[ui]
    us = {"nsecond": v / 1000, "ns": v / 1000, "usecond": v, "us": v, "msecond": v * 1000, "ms": v * 1000}.get(u, v / 1000)
    name = r[ki].split("(")[0][:60]; tot[name] += us; cnt[name] += 1
all_us = sum(tot.values())
print(f"{sum(cnt.values())} kernels, {all_us:.1f} us of kernel time (unit {rows[1][ui]})")
for k, v in sorted(tot.items(), key=lambda x: -x[1]):
    print(f"{v:9.1f} us {cnt[k]:5d}x {v/cnt[k]:7.2f} us  {k}")
PY
