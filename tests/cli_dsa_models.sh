#!/usr/bin/env bash
# dsa slice-model and synth-model on the real default model: the sliced file keeps the first layers byte for byte
# and its sidecar is accepted with it; a synthetic model has the source's tensor table and runs with finite
# logits; seeds are deterministic; bad input fails with one line.
# usage: cli_dsa_models.sh path/to/dsa
set -u
DSA=${1:?usage: cli_dsa_models.sh DSA_BINARY}
. "$(dirname "$0")/util/cli.sh"
here=$(cd "$(dirname "$0")/.." && pwd)
IX="$here/indexers/SmolLM2-135M-Instruct.Q4_1.dsa.gguf"
[ -r "$IX" ] || { echo "the shipped indexer $IX is missing"; exit 1; }
have_gguf=0
python3 -c 'import gguf, numpy' 2>/dev/null && have_gguf=1

# --- slice-model: 2 layers and the sidecar ------------------------------------------------------------------------
s2="$tmp/s2.gguf" s2ix="$tmp/s2.dsa.gguf"
run "$DSA" -m "$MODEL" slice-model --layers 2 -o "$s2" --indexer "$IX" --indexer-out "$s2ix" --json
[ $rc -eq 0 ] && json '
assert d["n_layer"] == 2 and d["model_bytes"] < 40e6 and d["indexer"]["bytes"] < 1e6, d
assert d["fingerprint"].startswith("xxh3-64:"), d' && ok || bad "slice-model: $out $err"
[ ! -e "$s2.tmp" ] && [ ! -e "$s2ix.tmp" ] && ok || bad "slice-model left a temporary file"
[ $(($(stat -c %s "$s2") + $(stat -c %s "$s2ix"))) -lt $((64 * 1024 * 1024)) ] && ok || bad "the pair does not fit 64 MiB"

run "$DSA" -m "$s2" --indexer "$s2ix" info --json
[ $rc -eq 0 ] && json '
assert d["n_layer"] == 2 and d["n_vocab"] == 49152 and d["chat_template"] == "chatml" and d["tied_output"], d
assert d["name"].endswith(" (first 2 layers)"), d
assert d["tensor_types"] == {"f32": 5, "q4_1": 14, "q8_0": 1}, d
assert d["dsa"]["heads"] == 4 and d["dsa"]["dim"] == 64 and "slice-model" in d["dsa"]["provenance"], d' \
  && ok || bad "info on the sliced model: $out $err"

# the sidecar is the shipped one cut short: the engine takes it, and refuses it for the full model
run "$DSA" -m "$s2" --indexer "$s2ix" generate --json --temp 0 -n 8 hello
[ $rc -eq 0 ] && json 'assert d["stats"]["gen_tokens"] > 0 or d["stats"]["stop"] == "eos", d' && ok \
  || bad "generate on the sliced model: $out $err"
expect_fail 1 "made for another base model" "$DSA" -m "$MODEL" --indexer "$s2ix" info
run "$DSA" -m "$s2" --indexer "$s2ix" chat --temp 0 -n 8 < <(printf 'hello\n/quit\n')
[ $rc -eq 0 ] && ok || bad "chat on the sliced model: $err"

if [ $have_gguf -eq 1 ]; then
  python3 - "$MODEL" "$s2" "$IX" "$s2ix" <<'PY' && ok || bad "the sliced files are not the source's first layers"
import sys, gguf, numpy as np
def tensors(r): return {t.name: t for t in r.tensors}
def field(f): return [bytes(f.parts[i]) for i in f.data]
for src, dst in ((sys.argv[1], sys.argv[2]), (sys.argv[3], sys.argv[4])):
    a, b = gguf.GGUFReader(src), gguf.GGUFReader(dst)
    ta, tb = tensors(a), tensors(b)
    want = {n for n in ta if not n.startswith("blk.") or int(n.split(".")[1]) < 2}
    assert set(tb) == want, (dst, sorted(set(tb) ^ want))
    for n, t in tb.items():
        s = ta[n]
        assert t.tensor_type == s.tensor_type and list(t.shape) == list(s.shape), n
        assert np.asarray(t.data).tobytes() == np.asarray(s.data).tobytes(), n
    changed = {"llama.block_count", "general.name", "dsa.indexer.block_count", "dsa.base.fingerprint",
               "dsa.base.name", "dsa.provenance"}
    assert set(a.fields) == set(b.fields), dst
    for k, f in a.fields.items():
        if k.startswith("GGUF.") or k in changed: continue
        assert f.types == b.fields[k].types and field(f) == field(b.fields[k]), (dst, k)
    bc = "llama.block_count" if "llama.block_count" in b.fields else "dsa.indexer.block_count"
    assert int(b.fields[bc].parts[-1][0]) == 2, dst
PY
else
  echo "note: python3 gguf/numpy not installed: the byte-for-byte comparison is skipped"
fi

# --- synth-model ------------------------------------------------------------------------------------------------
syn="$tmp/syn.gguf" synix="$tmp/syn.dsa.gguf"
run "$DSA" synth-model --like "$s2" --layers 30 --seed 1 -o "$syn" --indexer-out "$synix" --json
[ $rc -eq 0 ] && json 'assert d["n_layer"] == 30 and d["indexer"]["bytes"] > 0, d' && ok || bad "synth-model: $out $err"
[ ! -e "$syn.tmp" ] && ok || bad "synth-model left a temporary file"

# grown back from the sliced file: the default model's shape, types and metadata
run "$DSA" -m "$MODEL" --dense info --json
ref=$out
run "$DSA" -m "$syn" --indexer "$synix" info --json
[ $rc -eq 0 ] && REF=$ref json '
import os
r = json.loads(os.environ["REF"])
for k in ("arch", "n_layer", "n_embd", "n_ff", "n_head", "n_head_kv", "head_dim", "n_vocab", "n_ctx_train", "rope_dim",
          "rope_base", "norm_eps", "tied_output", "tensor_types", "tensors", "params", "bos", "eos", "chat_template"):
    assert d[k] == r[k], (k, d[k], r[k])
assert "synthetic" in d["name"] and "first" not in d["name"], d["name"]
assert d["dsa"]["heads"] == 4 and d["dsa"]["dim"] == 64 and d["dsa"]["rope_dims"] == 32 and d["dsa"]["top_k"] == 512, d' \
  && ok || bad "info on the synthetic model: $out $err"
if [ $have_gguf -eq 1 ]; then
  python3 - "$MODEL" "$syn" <<'PY' && ok || bad "the synthetic model's tensor table differs from the default model's"
import sys, gguf, numpy as np
from gguf.quants import dequantize
a, b = gguf.GGUFReader(sys.argv[1]), gguf.GGUFReader(sys.argv[2])
ta = sorted((t.name, int(t.tensor_type), list(map(int, t.shape))) for t in a.tensors)
tb = sorted((t.name, int(t.tensor_type), list(map(int, t.shape))) for t in b.tensors)
assert ta == tb
for t in b.tensors:
    if t.name not in ("token_embd.weight", "blk.29.attn_q.weight", "blk.7.attn_norm.weight"): continue
    x = dequantize(t.data, t.tensor_type).astype(np.float64)
    if "norm" in t.name: assert abs(x.mean() - 1) < 0.01 and x.std() < 0.05, (t.name, x.mean(), x.std())
    else: assert abs(x.mean()) < 0.005 and 0.015 < x.std() < 0.025, (t.name, x.mean(), x.std())
PY
fi

# it runs, with finite logits through all 30 layers, with and without its random indexer
run "$DSA" -m "$syn" --indexer "$synix" logits --json --top 49152 "The capital of France is"
[ $rc -eq 0 ] && json '
import math
l = [t["logit"] for t in d["top"]]
assert len(l) == 49152 and all(math.isfinite(v) for v in l) and l[0] > l[-1], (l[0], l[-1])' \
  && ok || bad "logits on the synthetic model: $err"
run "$DSA" -m "$syn" --indexer "$synix" generate --json --temp 0 -n 8 hello
[ $rc -eq 0 ] && json 'assert d["stats"]["gen_tokens"] > 0 or d["stats"]["stop"] == "eos", d' && ok \
  || bad "generate on the synthetic model: $out $err"
run "$DSA" -m "$syn" --dense generate --json --temp 0 -n 4 hello
[ $rc -eq 0 ] && ok || bad "generate --dense on the synthetic model: $err"

# deterministic: the same seed gives the same bytes, another seed other bytes; default depth is the source's
mkdir -p "$tmp/b"
run "$DSA" synth-model --like "$s2" --layers 30 --seed 1 -o "$tmp/b/syn.gguf" --indexer-out "$tmp/b/syn.dsa.gguf"
[ $rc -eq 0 ] && cmp -s "$syn" "$tmp/b/syn.gguf" && ok || bad "the same seed gave different model files"
cmp -s "$synix" "$tmp/b/syn.dsa.gguf" && ok || bad "the same seed gave different sidecars"
run "$DSA" synth-model --like "$s2" --seed 2 -o "$tmp/syn2.gguf"
[ $rc -eq 0 ] && ! cmp -s "$syn" "$tmp/syn2.gguf" && ok || bad "seeds 1 and 2 gave the same model"
run "$DSA" -m "$tmp/syn2.gguf" --dense info --json
[ $rc -eq 0 ] && json 'assert d["n_layer"] == 2 and d["tensor_types"] == {"f32": 5, "q4_1": 14, "q8_0": 1}, d' && ok \
  || bad "synth-model without --layers: $out $err"

# --- errors -------------------------------------------------------------------------------------------------------
expect_fail 2 "slice-model: -o OUT.gguf is required" "$DSA" -m "$MODEL" slice-model --layers 2
expect_fail 2 "slice-model: --layers N is required" "$DSA" -m "$MODEL" slice-model -o "$tmp/x.gguf"
expect_fail 2 "not an integer" "$DSA" -m "$MODEL" slice-model --layers 0 -o "$tmp/x.gguf"
expect_fail 2 "the model has 30 layers" "$DSA" -m "$MODEL" slice-model --layers 31 -o "$tmp/x.gguf"
expect_fail 2 "slice-model: --indexer-out needs --indexer" "$DSA" -m "$MODEL" slice-model --layers 2 -o "$tmp/x.gguf" \
  --indexer-out "$tmp/x.dsa.gguf"
expect_fail 1 "cannot read model" "$DSA" -m "$tmp/none.gguf" slice-model --layers 2 -o "$tmp/x.gguf"
expect_fail 1 "made for another base model" "$DSA" -m "$s2" slice-model --layers 1 -o "$tmp/x.gguf" --indexer "$IX" \
  --indexer-out "$tmp/x.dsa.gguf"
expect_fail 1 "cannot write" "$DSA" -m "$MODEL" slice-model --layers 2 -o "$tmp/no/such/dir/x.gguf"
expect_fail 2 "is the input file" "$DSA" -m "$s2" slice-model --layers 1 -o "$s2"
expect_fail 2 "synth-model: -o OUT.gguf is required" "$DSA" synth-model --like "$s2"
expect_fail 1 "cannot read model" "$DSA" synth-model --like "$tmp/none.gguf" -o "$tmp/x.gguf"
echo "hello" >"$tmp/text.gguf"
expect_fail 1 "not a GGUF file" "$DSA" synth-model --like "$tmp/text.gguf" -o "$tmp/x.gguf"
[ ! -e "$tmp/x.gguf" ] && [ ! -e "$tmp/x.gguf.tmp" ] && ok || bad "a failed run left a file behind"

echo "cli_dsa_models: $pass passed, $fail failed"
[ $fail -eq 0 ]
