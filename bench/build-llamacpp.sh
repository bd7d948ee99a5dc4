#!/usr/bin/env bash
# Build llama.cpp's own `llama-bench` for bench/vs_llamacpp.py, from the llama.cpp source vendored inside the
# llama-cpp-python sdist of a pinned version (the same llama.cpp that made tests/fixtures/forward.json).
#
#   bench/build-llamacpp.sh            -> prints the path of the llama-bench binary on its last line
#
# Everything lives under ${XDG_CACHE_HOME:-~/.cache}/dsachat/llamacpp/ (never in the repository):
#   src/llama_cpp_python-<v>.tar.gz    the sdist (copied from $LCP_SDIST_DIR, default /tmp/lcp, or pip-downloaded)
#   src/llama_cpp_python-<v>/          unpacked
#   build-<v>/                         cmake build tree: Release, GGML_NATIVE=ON, shared libraries
#   build-<v>/bin/llama-bench          the binary, next to libllama.so and libggml*.so
#
# The libraries are shared on purpose: the same build serves llama-cpp-python through
#   LLAMA_CPP_LIB_PATH=~/.cache/dsachat/llamacpp/build-<v>/bin python3 scripts/ref/make_forward_fixtures.py
# which matters on machines where a pip-built llama-cpp-python dies with SIGILL (see AMX below).
#
# AMX: GGML_NATIVE=ON compiles with -march=native, which turns on ggml's AMX kernels whenever the CPU advertises
# AMX.  Some virtual machines advertise it but trap the tile instructions (SIGILL on the first matrix multiply).
# A ten-line probe program decides: when AMX does not actually run here, the build adds -mno-amx-*.
#
# Idempotent: a second run with the binary present does nothing.  Environment: LLAMACPP_PY_VERSION (default
# 0.3.36), JOBS (default 2).  The compile runs under `nice`: the machine may be shared.
set -euo pipefail

VERSION="${LLAMACPP_PY_VERSION:-0.3.36}"
JOBS="${JOBS:-2}"
ROOT="${XDG_CACHE_HOME:-$HOME/.cache}/dsachat/llamacpp"
NAME="llama_cpp_python-$VERSION"
SDIST="$ROOT/src/$NAME.tar.gz"
SRC="$ROOT/src/$NAME"
BUILD="$ROOT/build-$VERSION"
BIN="$BUILD/bin/llama-bench"
STAMP="$BUILD/.dsachat-built"

if [ -x "$BIN" ] && [ -f "$STAMP" ]; then
    echo "$BIN"
    exit 0
fi
for tool in cmake cc c++ tar; do
    command -v "$tool" >/dev/null || { echo "build-llamacpp.sh: $tool not found" >&2; exit 1; }
done
mkdir -p "$ROOT/src"

# 1. The sdist: reuse a local copy when there is one, else ask PyPI for the source distribution only.
if [ ! -s "$SDIST" ]; then
    local_copy="${LCP_SDIST_DIR:-/tmp/lcp}/$NAME.tar.gz"
    if [ -s "$local_copy" ]; then
        cp "$local_copy" "$SDIST.tmp" && mv "$SDIST.tmp" "$SDIST"
    else
        python3 -m pip download --no-deps --no-binary :all: "llama-cpp-python==$VERSION" -d "$ROOT/src" >&2
    fi
    [ -s "$SDIST" ] || { echo "build-llamacpp.sh: no sdist at $SDIST" >&2; exit 1; }
fi

# 2. Unpack (under a temporary name first, so an interrupted run never leaves a half tree that looks complete).
if [ ! -f "$SRC/vendor/llama.cpp/CMakeLists.txt" ]; then
    rm -rf "$SRC" "$SRC.tmp"
    mkdir -p "$SRC.tmp"
    tar -xzf "$SDIST" -C "$SRC.tmp" --strip-components=1
    mv "$SRC.tmp" "$SRC"
fi

# 3. Does AMX really run here?  (Only asked when the compiler's native target includes it.)
EXTRA_FLAGS=""
if cc -march=native -dM -E - </dev/null 2>/dev/null | grep -q __AMX_TILE__; then
    probe_dir=$(mktemp -d)
    cat >"$probe_dir/amx.c" <<'EOF'
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>
int main(void) {
    /* Linux: request the AMX tile-data state (ARCH_REQ_XCOMP_PERM = 0x1023, XFEATURE_XTILEDATA = 18), then use a tile. */
    if (syscall(SYS_arch_prctl, 0x1023, 18)) return 1;
    struct { unsigned char palette, start, pad[14]; unsigned short colsb[16]; unsigned char rows[16]; }
        __attribute__((aligned(64))) cfg = {0};
    cfg.palette = 1; cfg.colsb[0] = 64; cfg.rows[0] = 16;
    _tile_loadconfig(&cfg);
    _tile_zero(0);
    _tile_release();
    return 0;
}
EOF
    if cc -O1 -mamx-tile "$probe_dir/amx.c" -o "$probe_dir/amx" 2>/dev/null &&
        sh -c 'ulimit -c 0; "$1"' probe "$probe_dir/amx" >/dev/null 2>&1; then
        echo "build-llamacpp.sh: AMX works here: ggml keeps its AMX kernels" >&2
    else
        EXTRA_FLAGS="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
        echo "build-llamacpp.sh: the CPU advertises AMX but it does not run here: building with $EXTRA_FLAGS" >&2
    fi
    rm -rf "$probe_dir"
fi

# 4. Configure and build the llama-bench target (and what it links: libllama, libggml*).  No network at build
#    time: no curl/openssl, no web UI.  GCC keeps explicit -mno-* over what -march=native implies.
start=$(date +%s)
cmake -S "$SRC/vendor/llama.cpp" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON \
    -DCMAKE_C_FLAGS="$EXTRA_FLAGS" -DCMAKE_CXX_FLAGS="$EXTRA_FLAGS" \
    -DBUILD_SHARED_LIBS=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF \
    -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_COMMON=ON -DLLAMA_BUILD_APP=OFF -DLLAMA_BUILD_UI=OFF \
    -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_LLGUIDANCE=OFF \
    -DGGML_CUDA=OFF -DGGML_METAL=OFF -DGGML_VULKAN=OFF >&2
nice -n 10 cmake --build "$BUILD" --target llama-bench -j "$JOBS" >&2
[ -x "$BIN" ] || { echo "build-llamacpp.sh: build finished without $BIN" >&2; exit 1; }
printf 'version=%s\nextra_flags=%s\n' "$VERSION" "$EXTRA_FLAGS" >"$STAMP"
echo "build-llamacpp.sh: built llama-bench $VERSION in $(( $(date +%s) - start ))s" >&2
echo "$BIN"
