#!/usr/bin/env bash
# Make .devcarry/, what a GPU test machine needs that is not in the tree (at most 64 MiB travels, tree included):
# the default model's first 2 layers and their sidecar (dsa slice-model), the binaries built here (nvcc here is the
# GPU machine's CUDA 13.0), and the Debian shared libraries they link that the machine's image lacks.  Then:
#   device run: bash tests/gpu/run.sh .devcarry/build      (carry .devcarry; the binaries travel as build.tar.xz)
# .devcarry/ must be ignored: echo /.devcarry/ >> .git/info/exclude
set -euo pipefail
cd "$(dirname "$0")/../.."
BUILD=${1:-build-gpu}
# a build of its own with the CUDA backend (sm_90 code), whatever build/ was configured with
cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DDSA_WERROR=ON -DDSA_CUDA=ON >/dev/null
grep -q '^CMAKE_CUDA_ARCHITECTURES:STRING=.*90' "$BUILD/CMakeCache.txt" ||
  { echo "prepare.sh: $BUILD has no sm_90 code (CMAKE_CUDA_ARCHITECTURES); remove it and run again" >&2; exit 1; }
cmake --build "$BUILD" -j"$(nproc)" --target dsa test_cuda bench_cuda >/dev/null
model=$(scripts/fetch-model.sh)
rm -rf .devcarry/build .devcarry/build.tar.xz
mkdir -p .devcarry/build/tests .devcarry/build/bench
"$BUILD/dsa" slice-model -m "$model" --layers 2 -o .devcarry/slice2.gguf \
  --indexer indexers/SmolLM2-135M-Instruct.Q4_1.dsa.gguf --indexer-out .devcarry/slice2.dsa.gguf
for f in dsa tests/test_cuda bench/bench_cuda; do
  cp "$BUILD/$f" ".devcarry/build/$f" && strip ".devcarry/build/$f"
done
# packed: with sm_90 code and the PTX the binaries are too large to travel as they are (tests/gpu/env.sh unpacks)
tar -C .devcarry -cf - build | xz -T0 -9 > .devcarry/build.tar.xz && rm -rf .devcarry/build
# the fingerprint of the sources they were built from (tests/gpu/run.sh refuses stale binaries)
git ls-files -z CMakeLists.txt kernels engine sessions tools tests bench | xargs -0 sha256sum > .devcarry/sources.sha256
libs=$(mktemp -d)
mkdir "$libs/devlibs"
ldd "$BUILD/dsa" | awk '/=>/{print $3}' | grep -v -E '/(libc|libm|libgcc_s|ld-linux|libpthread|libdl|librt|libstdc\+\+|libcublas|libcublasLt)\.' |
  xargs -I{} cp -L {} "$libs/devlibs/"
tar -C "$libs" -cf - devlibs | xz -T0 -6 > .devcarry/devlibs.tar.xz
rm -rf "$libs"
du -sh .devcarry
git ls-files -z --cached --others --exclude-standard | xargs -0 du -cb 2>/dev/null | tail -n 1 | sed 's/total/bytes in the tree/'
