#!/usr/bin/env bash
# Install the Debian packages dsachat needs to build and test.  As root it runs apt-get; otherwise it prints the
# exact command to run and fails if anything is missing.
set -euo pipefail

PKGS=(build-essential cmake pkg-config python3 python3-pip libpcre2-dev libjansson-dev libxxhash-dev libopenblas-dev libsqlite3-dev sqlite3 libuv1-dev socat jq gnuplot-nox clang libclang-rt-dev libncurses-dev tmux)

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -eq 0 ]; then
  echo "deps: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
else
  echo "deps: missing Debian packages; run:" >&2
  echo "  sudo apt-get install -y ${missing[*]}" >&2
  exit 1
fi
