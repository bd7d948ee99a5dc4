# Sourced by tests/gpu/*.sh from the repository root: where results go ($OUT), the sliced model, the shared
# libraries a GPU test machine lacks (.devcarry/devlibs.tar.xz, unpacked under /tmp), the binaries when they
# travelled packed ($BIN.tar.xz, unpacked under /tmp) and cuBLAS on the library path.
OUT=${OUT:-/tmp/dsachat-gpu}
mkdir -p "$OUT"
SLICE=${DSA_GPU_SLICE:-.devcarry/slice2.gguf}
if [ -f .devcarry/devlibs.tar.xz ]; then
  tar -C /tmp -xJf .devcarry/devlibs.tar.xz && export LD_LIBRARY_PATH=/tmp/devlibs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
fi
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib; do
  [ -e "$d/libcublas.so.13" ] && export LD_LIBRARY_PATH=${LD_LIBRARY_PATH:+$LD_LIBRARY_PATH:}$d
done
if [ -n "${BIN:-}" ] && [ ! -x "$BIN/dsa" ] && [ -f "$BIN.tar.xz" ]; then
  mkdir -p /tmp/dsabin && tar -C /tmp/dsabin -xJf "$BIN.tar.xz" && BIN=/tmp/dsabin/$(basename "$BIN")
fi
