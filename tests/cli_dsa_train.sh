#!/usr/bin/env bash
# dsa train-indexer, eval and DSA generation end to end on the real default model, at toy sizes: a tiny corpus
# made from the repository's own documentation, a few sequences of 128 tokens, a resume from the checkpoint, then
# the sidecar in use.
# usage: cli_dsa_train.sh path/to/dsa
set -u
DSA=${1:?usage: cli_dsa_train.sh DSA_BINARY}
. "$(dirname "$0")/util/cli.sh"
here=$(cd "$(dirname "$0")/.." && pwd)

mkdir -p "$tmp/train" "$tmp/held"
cp "$here/README.md" "$tmp/train/a.txt"
man -l -Tutf8 "$here/man/dsa.1" 2>/dev/null | col -b >"$tmp/train/b.txt" || cp "$here/man/dsa.1" "$tmp/train/b.txt"
cp "$here/docs/correctness.md" "$tmp/held/c.txt"
ix="$tmp/ix.dsa.gguf"
common=(-m "$MODEL" --threads 2 --corpus "$tmp/train" --heldout "$tmp/held" -o "$ix" --heads 2 --dim 16 --rope-dims 8
        --topk 32 --seq-len 128 --rows 64 --checkpoint-every 2 --heldout-every 2)

# usage errors
run "$DSA" "${common[@]}" train-indexer
[ $rc -eq 2 ] && grep -q -- "--tokens N or --minutes M" <<<"$err" && ok || bad "train-indexer without a length: $rc $err"
run "$DSA" "${common[@]}" --dim 24 --tokens 256 train-indexer
[ $rc -eq 2 ] && grep -q "power of two" <<<"$err" && ok || bad "--dim 24: $rc $err"

# 4 sequences, then resume to 6
run "$DSA" "${common[@]}" --tokens 512 train-indexer --json
[ $rc -eq 0 ] && json 'assert d["indexer"].endswith("ix.dsa.gguf")' && ok || bad "train-indexer: $rc $err"
csv="$tmp/ix.dsa.train.csv"
[ "$(tail -n +2 "$csv" | wc -l)" -eq 4 ] && ok || bad "the loss log has $(tail -n +2 "$csv" | wc -l) rows, want 4"
[ -s "$tmp/ix.dsa.ckpt" ] && ok || bad "no checkpoint"
python3 - "$csv" <<'EOF' && ok || bad "loss log: held-out KL missing or training KL not decreasing"
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
held = [float(r["heldout_kl"]) for r in rows if r["heldout_kl"]]
kl = [float(r["train_kl"]) for r in rows]
assert len(held) == 2, held
assert len(rows[0]) == 5 + 30, len(rows[0])
assert kl[-1] < kl[0], kl
EOF
if command -v gnuplot >/dev/null; then [ -s "$tmp/ix.dsa.train.png" ] && ok || bad "no loss plot"; fi
run "$DSA" "${common[@]}" --tokens 768 train-indexer
[ $rc -eq 0 ] && ok || bad "resume: $rc $err"
python3 - "$csv" <<'EOF' && ok || bad "resume did not continue the log at sequence 5"
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
assert [int(r["seq"]) for r in rows] == [1, 2, 3, 4, 5, 6], [r["seq"] for r in rows]
EOF

# the sidecar in use: short prompts (context <= k) give dense attention's exact reply; long ones run sparse
ids_of() { python3 -c "import json,sys; print(json.load(sys.stdin)['ids'])" <<<"$out"; }
run "$DSA" -m "$MODEL" --indexer "$ix" -n 12 --temp 0 --json generate "The capital of France is"
dsa_ids=$(ids_of)
run "$DSA" -m "$MODEL" --dense -n 12 --temp 0 --json generate "The capital of France is"
[ "$dsa_ids" = "$(ids_of)" ] && ok || bad "DSA with context <= k differs from dense: $dsa_ids vs $(ids_of)"
run "$DSA" -m "$MODEL" --indexer "$ix" --topk 16 -n 8 --temp 0 --json generate - <"$tmp/held/c.txt"
[ $rc -eq 0 ] && json 'assert d["stats"]["gen_tokens"] >= 1' && ok || bad "sparse generation: $rc $err"

# eval at a toy size: every section present
run "$DSA" -m "$MODEL" --indexer "$ix" --contexts 256 --ks 32,64 --texts "$tmp/train" --n-texts 1 --passkey-trials 0 --json eval
[ $rc -eq 0 ] && json '
r = {(x["context"], x["k"]): x for x in d["recall"]}
assert set(r) == {(256, 32), (256, 64)}, r
for x in r.values():
    assert 0 < x["indexer"] <= 1.0001 and 0 < x["window"] <= 1.0001 and x["oracle"] >= x["indexer"] - 1e-6, x
    assert len(x["indexer_per_layer"]) == 30
p = {(x["context"], x["k"]): x for x in d["ppl"]}
assert all(v["dsa"] > 1 and v["dense"] > 1 for v in p.values()), p
' && ok || bad "eval: $rc $err $out"

# a sidecar for another model is refused
tiny="$here/tests/fixtures/tiny/llama-mqa.gguf"
run "$DSA" -m "$tiny" --indexer "$ix" generate hi
[ $rc -eq 1 ] && grep -q "another base model" <<<"$err" && ok || bad "sidecar for another model: $rc $err"

echo "cli_dsa_train: $pass passed, $fail failed"
[ $fail -eq 0 ]
