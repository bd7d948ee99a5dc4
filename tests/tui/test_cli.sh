#!/usr/bin/env bash
# dsachat's subcommands (send, ls, history, rm) in shell pipelines, without a TTY, against a real dsachatd and the
# real default model: dsachat starts the daemon itself (through $DSACHAT_DAEMON_ARGS) on a temporary socket and
# store.  Each check prints "ok NAME" or "FAIL NAME: why"; the exit status is 1 when one failed.
#
#   bash tests/tui/test_cli.sh build/dsachat
set -uo pipefail
DSACHAT=$(realpath "${1:?usage: test_cli.sh path/to/dsachat}")
command -v jq >/dev/null || { echo "test_cli: jq is needed (scripts/deps.sh)" >&2; exit 1; }
command -v socat >/dev/null || { echo "test_cli: socat is needed (scripts/deps.sh)" >&2; exit 1; }
dir=$(mktemp -d /tmp/dsachat-cli.XXXXXX)
sock=$dir/s.sock
export DSACHAT_DAEMON_ARGS="--store $dir/store --threads 2 --backend cpu"
failed=0

dc() { "$DSACHAT" --socket "$sock" "$@"; }
ok() { echo "ok   $1"; }
fail() { echo "FAIL $1: $2"; failed=1; }
cleanup() {
  [ -S "$sock" ] && printf '%s\n' '{"op":"daemon.shutdown"}' | socat -t 30 - UNIX-CONNECT:"$sock" >/dev/null 2>&1
  for _ in $(seq 100); do [ -S "$sock" ] || break; sleep 0.1; done
  if [ $failed = 0 ]; then rm -rf "$dir"; else echo "kept $dir (daemon log: $dir/dsachatd.log)"; fi
}
trap cleanup EXIT

# --no-spawn: no daemon, none started, exit 3
"$DSACHAT" --socket "$sock" --no-spawn ls >/dev/null 2>"$dir/err"; rc=$?
if [ $rc = 3 ] && [ ! -e "$sock" ] && grep -q "cannot connect" "$dir/err"; then ok no-spawn
else fail no-spawn "rc=$rc socket=$(ls "$sock" 2>&1) err=$(cat "$dir/err")"; fi

# three clients at once on another socket: one daemon starts (the others wait for it), all three get replies
sock2=$dir/s2.sock
pids=()
for i in 1 2 3; do
  DSACHAT_DAEMON_ARGS="--store $dir/store2 --threads 2 --backend cpu" \
    "$DSACHAT" --socket "$sock2" send --new "c$i" --temp 0 -n 8 "Say hi." >"$dir/c$i" 2>&1 &
  pids+=($!)
done
rcs=""
for p in "${pids[@]}"; do wait "$p"; rcs="$rcs$?"; done
n=$(DSACHAT_DAEMON_ARGS= "$DSACHAT" --socket "$sock2" --no-spawn ls --json | jq '.sessions | length')
printf '%s\n' '{"op":"daemon.shutdown"}' | socat -t 30 - UNIX-CONNECT:"$sock2" >/dev/null 2>&1
if [ "$rcs" = 000 ] && [ "$n" = 3 ]; then ok "three concurrent first sends"
else fail "concurrent first sends" "rcs=$rcs sessions=$n: $(cat "$dir"/c1 "$dir"/c2 "$dir"/c3)"; fi

# the first send starts the daemon; the reply streams to stdout through a pipe
echo "What is the capital of France? Answer in one short sentence." |
  dc send --new geo --temp 0 -n 48 - | tee "$dir/reply1" >/dev/null
rc=${PIPESTATUS[1]}
if [ $rc = 0 ] && [ -s "$dir/reply1" ] && [ -S "$sock" ]; then ok "send --new - (spawns the daemon)"
else fail "send --new -" "rc=$rc reply=$(cat "$dir/reply1")"; fi

n=$(dc ls --json | jq -r '.sessions[] | select(.name=="geo") | .messages')
[ "$n" = 2 ] && ok "ls --json" || fail "ls --json" "geo has '$n' messages, expected 2"
dc ls | grep -q '^[0-9]* *geo ' && ok "ls" || fail ls "$(dc ls)"

# history holds exactly what send printed
dc history geo --json | jq -j '.messages[1].content' >"$dir/hist1"
printf '\n' >>"$dir/hist1"
cmp -s "$dir/reply1" "$dir/hist1" && ok "history --json = send's output" ||
  fail "history --json" "send printed '$(cat "$dir/reply1")', history has '$(cat "$dir/hist1")'"
dc history geo | grep -q "^user: What is the capital of France" && ok history || fail history "$(dc history geo)"

# --json send: one object, the session's id even when named, a stop of eos or length
geo_id=$(dc ls --json | jq '.sessions[] | select(.name=="geo") | .id')
out=$(dc send -s geo --json --temp 0 -n 24 "And the capital of Italy?")
if echo "$out" | jq -e --argjson id "$geo_id" \
     '.session == $id and (.stop == "eos" or .stop == "length") and (.text | length) > 0 and .stats.generated_tokens > 0' \
     >/dev/null; then ok "send --json"; else fail "send --json" "$out"; fi

# a pipeline of pipelines: a new unnamed session, its reply counted; UTF-8 names and text
n=$(echo "Say hello in French." | dc send --new - | wc -c)
[ "$n" -gt 1 ] && ok "echo | send --new - | wc" || fail "send --new - | wc" "$n bytes"
dc send --new "日本語 🙂" --temp 0 -n 8 "こんにちは" >/dev/null && dc ls | grep -q "日本語 🙂" && ok "UTF-8 name" ||
  fail "UTF-8 name" "$(dc ls)"
[ "$(dc ls --json | jq '.sessions | length')" = 3 ] && ok "three sessions" || fail "three sessions" "$(dc ls)"

# errors: the daemon's (1), usage (2)
dc send -s nope "hi" >/dev/null 2>"$dir/err"; rc=$?
[ $rc = 1 ] && grep -q "no_session" "$dir/err" && ok "exit 1 on no_session" || fail "no_session" "rc=$rc $(cat "$dir/err")"
dc send --temp x hi >/dev/null 2>&1; rc1=$?
dc frob >/dev/null 2>&1; rc2=$?
dc send </dev/null >/dev/null 2>&1; rc3=$?
dc history >/dev/null 2>&1; rc4=$?
dc </dev/null >/dev/null 2>&1; rc5=$?
[ "$rc1$rc2$rc3$rc4$rc5" = 22222 ] && ok "exit 2 on usage (and the TUI without a TTY)" ||
  fail usage "rcs $rc1 $rc2 $rc3 $rc4 $rc5"

# a reply cancelled from elsewhere: exit 4, the part so far on stdout
dc send -s geo --temp 0 -n 400 "Tell me a very long story about a dragon who learns to bake bread." >"$dir/long" 2>"$dir/err" &
pid=$!
for _ in $(seq 300); do
  [ "$(dc ls --json | jq '.sessions[] | select(.name=="geo") | .generating')" = true ] && [ -s "$dir/long" ] && break
  sleep 0.1
done
printf '%s\n' "{\"op\":\"chat.cancel\",\"session\":$geo_id}" | socat -t 10 - UNIX-CONNECT:"$sock" >"$dir/cancel"
wait $pid; rc=$?
if [ $rc = 4 ] && grep -q cancelled "$dir/err" && [ -s "$dir/long" ]; then ok "exit 4 when cancelled"
else fail "cancelled" "rc=$rc err=$(cat "$dir/err") cancel=$(cat "$dir/cancel")"; fi

# rm
out=$(dc rm geo --json)
[ "$(echo "$out" | jq -r .deleted)" = geo ] && ! dc history geo >/dev/null 2>&1 && ok "rm --json" || fail rm "$out"

exit $failed
