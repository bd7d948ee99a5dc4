#!/usr/bin/env bash
# The dsa tool as users and scripts see it: JSON shapes, exit codes, one-line errors, determinism, bad input.
# usage: cli_dsa.sh path/to/dsa     (ctest passes the built binary)
set -u
DSA=${1:?usage: cli_dsa.sh DSA_BINARY}
. "$(dirname "$0")/util/cli.sh"

# --- JSON outputs -----------------------------------------------------------------------------------------
run "$DSA" -m "$MODEL" tokenize --json "Hello, world!"
[ $rc -eq 0 ] && json 'assert d == {"ids": [19556, 28, 905, 17]}, d' && ok || bad "tokenize --json: $out $err"

run "$DSA" tokenize --json -m "$MODEL" "<|im_start|>user"
[ $rc -eq 0 ] && json 'assert d["ids"] == [1, 4093], d' && ok || bad "special tokens: $out $err"
run "$DSA" tokenize --json --no-special -m "$MODEL" "<|im_start|>"
[ $rc -eq 0 ] && json 'assert 1 not in d["ids"] and len(d["ids"]) > 1, d' && ok || bad "--no-special: $out $err"

run "$DSA" -m "$MODEL" tokenize --json - < <(printf 'from stdin')
[ $rc -eq 0 ] && json 'assert len(d["ids"]) == 3, d' && ok || bad "tokenize -: $out $err"

run "$DSA" -m "$MODEL" generate --json --temp 0 -n 8 "The capital of France is"
[ $rc -eq 0 ] && json '
assert d["text"].startswith(" Paris"), d
assert len(d["ids"]) == 8 and d["stats"]["gen_tokens"] == 8 and d["stats"]["prompt_tokens"] == 5, d
assert d["stats"]["stop"] == "length" and d["stats"]["prefill_tok_s"] > 0 and d["stats"]["decode_tok_s"] > 0, d' \
  && ok || bad "generate --json: $out $err"

run "$DSA" -m "$MODEL" logits --json --top 3 "The capital of France is"
[ $rc -eq 0 ] && json '
t = d["top"]
assert len(t) == 3 and t[0]["text"] == " Paris" and t[0]["logit"] >= t[1]["logit"] >= t[2]["logit"], d' \
  && ok || bad "logits --json: $out $err"

run "$DSA" -m "$MODEL" info --json
[ $rc -eq 0 ] && json '
assert d["arch"] == "llama" and d["n_layer"] == 30 and d["n_vocab"] == 49152 and d["chat_template"] == "chatml", d
assert d["tied_output"] is True and d["tensor_types"] == {"f32": 61, "q4_1": 210, "q8_0": 1}, d' \
  && ok || bad "info --json: $out $err"

# --- chat: the template, and an answer that ends with end-of-generation ----------------------------------------
run "$DSA" -m "$MODEL" generate --chat --json --temp 0 -n 64 "Say hello."
[ $rc -eq 0 ] && json 'assert d["stats"]["stop"] == "eos" and len(d["text"]) > 0, d' && ok || bad "chat: $out $err"

# interactive chat driven through stdin: two turns; the first reply is exactly what generate --chat says
run "$DSA" -m "$MODEL" generate --chat --json --temp 0 -n 40 "My name is Ada."
first=$(json 'print(d["text"])')
run "$DSA" -m "$MODEL" chat --temp 0 -n 40 < <(printf 'My name is Ada.\nWhat is my name?\n/quit\n')
if [ $rc -eq 0 ] && [ "$(wc -l <"$tmp/out")" -eq 2 ] && [ "$(head -n 1 "$tmp/out")" = "$first" ] &&
   [ -n "$(sed -n 2p "$tmp/out")" ]; then ok; else bad "chat REPL: '$out' (first turn should be '$first') $err"; fi

# --- sampling determinism --------------------------------------------------------------------------------------
ids() { json 'print(d["ids"])'; }
run "$DSA" -m "$MODEL" generate --json --seed 7 --temp 1.0 -n 24 "Once upon a time"; a=$(ids)
run "$DSA" -m "$MODEL" generate --json --seed 7 --temp 1.0 -n 24 "Once upon a time"; b=$(ids)
run "$DSA" -m "$MODEL" generate --json --seed 8 --temp 1.0 -n 24 "Once upon a time"; c=$(ids)
[ -n "$a" ] && [ "$a" = "$b" ] && ok || bad "same seed gave different tokens: $a / $b"
[ -n "$a" ] && [ "$a" != "$c" ] && ok || bad "seeds 7 and 8 gave the same 24 tokens"

# --- errors -------------------------------------------------------------------------------------------------------
expect_fail 2 "unknown command" "$DSA" -m "$MODEL" frobnicate
expect_fail 2 "unknown or missing" "$DSA" --no-such-option info
expect_fail 2 "not an integer" "$DSA" -n lots generate hi
expect_fail 2 "missing text" "$DSA" -m "$MODEL" generate
expect_fail 1 "cannot read model" "$DSA" -m "$tmp/none.gguf" info
XDG_CACHE_HOME="$tmp/empty" expect_fail 1 "scripts/fetch-model.sh" "$DSA" info
echo "hello" >"$tmp/text.gguf"
expect_fail 1 "not a GGUF file" "$DSA" -m "$tmp/text.gguf" info
head -c 700000 "$MODEL" >"$tmp/cut.gguf"
expect_fail 1 "malformed GGUF at byte [0-9]+: " "$DSA" -m "$tmp/cut.gguf" info
head -c 90000000 "$MODEL" >"$tmp/short.gguf"
expect_fail 1 "extends past the end" "$DSA" -m "$tmp/short.gguf" info
python3 - "$MODEL" "$tmp/mamba.gguf" <<'PY'
import sys
data = bytearray(open(sys.argv[1], "rb").read())
k = data.index(b"general.architecture")
v = data.index(b"llama", k)
data[v:v + 5] = b"mamba"
open(sys.argv[2], "wb").write(data)
PY
expect_fail 1 "unsupported architecture 'mamba' \(supported: llama, qwen2\)" "$DSA" -m "$tmp/mamba.gguf" info
expect_fail 1 "does not fit the context" "$DSA" -m "$MODEL" --ctx 16 generate "$(printf 'word %.0s' {1..40})"
run "$DSA" -m "$MODEL" --ctx 32 --truncate -n 4 --temp 0 --json generate "$(printf 'word %.0s' {1..40})"
[ $rc -eq 0 ] && json 'assert d["stats"]["prompt_tokens"] == 28, d' && ok || bad "--truncate: $out $err"
expect_fail 2 "does not go with" "$DSA" -m "$MODEL" --dense --topk 64 generate hi
expect_fail 1 "not an indexer" "$DSA" -m "$MODEL" --indexer "$MODEL" generate hi

# --- the indexer shipped for the default model ------------------------------------------------------------
# It is picked up without being named, and while a conversation is shorter than k the reply is dense attention's.
shipped=$(cd "$(dirname "$0")/.." && pwd)/indexers/SmolLM2-135M-Instruct.Q4_1.dsa.gguf
if [ -z "${DSA_MODEL:-}" ]; then
  run "$DSA" info --json
  [ $rc -eq 0 ] && json "assert d['dsa'] and d['dsa']['indexer'] == '$shipped' and d['dsa']['top_k'] == 512, d['dsa']" && ok \
    || bad "the shipped indexer is not the default: $rc $err $(json 'print(d.get(\"dsa\"))' 2>/dev/null)"
  q="In two sentences, why is the sky blue?"
  run "$DSA" generate --chat --temp 0 -n 60 --json "$q"
  ids_dsa=$(json 'print(d["ids"], d["stats"]["prompt_tokens"] + d["stats"]["gen_tokens"] <= 512)' 2>/dev/null)
  run "$DSA" --dense generate --chat --temp 0 -n 60 --json "$q"
  ids_dense=$(json 'print(d["ids"], True)' 2>/dev/null)
  [ -n "$ids_dsa" ] && [ "$ids_dsa" = "$ids_dense" ] && ok || bad "shipped indexer, short chat: DSA $ids_dsa vs dense $ids_dense"
fi

echo "cli_dsa: $pass passed, $fail failed"
[ $fail -eq 0 ]
