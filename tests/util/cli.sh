# Sourced by the tests/cli_*.sh scripts: the model, a scratch directory, counters and the run/expect_fail/json
# helpers.  Needs $DSA set by the caller.
MODEL=${DSA_MODEL:-${XDG_CACHE_HOME:-$HOME/.cache}/dsachat/models/SmolLM2-135M-Instruct.Q4_1.gguf}
[ -r "$MODEL" ] || { echo "default model not found at $MODEL: run scripts/fetch-model.sh first"; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
pass=0 fail=0

ok() { pass=$((pass + 1)); }
bad() { fail=$((fail + 1)); echo "FAIL: $*"; }

# run CMD...: sets $out, $err, $rc
run() {
  "$@" >"$tmp/out" 2>"$tmp/err"
  rc=$?
  out=$(cat "$tmp/out")
  err=$(cat "$tmp/err")
}

# expect_fail RC PATTERN CMD...: exits with RC, stderr is one line matching PATTERN, stdout empty
expect_fail() {
  local want=$1 pat=$2
  shift 2
  run "$@"
  if [ "$rc" -ne "$want" ]; then bad "$*: exit $rc, want $want (stderr: $err)"; return; fi
  if [ "$(wc -l <"$tmp/err")" -ne 1 ]; then bad "$*: stderr is not one line: $err"; return; fi
  if ! grep -qE "$pat" "$tmp/err"; then bad "$*: stderr '$err' does not match '$pat'"; return; fi
  if [ -s "$tmp/out" ]; then bad "$*: wrote to stdout on error"; return; fi
  ok
}

json() { python3 -c "import json,sys; d=json.load(sys.stdin); $1" <<<"$out"; }
