#!/usr/bin/env python3
"""Make tests/fixtures/forward.json: the yardsticks tests/test_forward.c holds the engine's forward pass to.

For each prompt (chat-formatted conversations, code, prose, numbers, JSON, non-English text, a single token, and
a >= 1500-token passage of real English read from a file on this system) it records:

  ids                     token ids, from llama.cpp's tokenizer (llama-cpp-python, special=True, no BOS --
                          the model's add_bos_token is false).  The C test feeds these ids; it does not tokenize.
  ref_last_logits_b64     logits of the LAST position from the float64 reference (forward_ref.py), all n_vocab
                          of them, as base64 of float32 little-endian (49152 * 4 bytes -> 262 KB of base64 per
                          prompt; the whole file stays under 5 MB).  float32 keeps ~7 significant digits, far below
                          any tolerance a test can use.
  ref_top                 the reference's 10 best (id, logit) at the last position, readable without decoding.
  llamacpp_tf_top1        llama.cpp's teacher-forced argmax at EVERY position (logits_all=True, argmax per row).
  llamacpp_tf_margin      llama.cpp's top1 - top2 logit gap at every position (rounded to 1e-4): positions with
                          a tiny gap are near-ties that any other implementation may legitimately break the other
                          way; the test prints them when it disagrees.
  llamacpp_greedy         llama.cpp's 64-token greedy continuation: pure argmax of the last row of logits, fed
                          back one token at a time through Llama.eval (no sampler, no repetition penalty), and NOT
                          stopped at end-of-turn/EOS tokens -- exactly 64 steps.
  llamacpp_greedy_margin  top1 - top2 gap at each greedy step.
  llamacpp_vs_ref         how far llama.cpp is from the float64 reference: max |delta logit| at the last position
                          and over all positions, and how often their teacher-forced argmax agree.  llama.cpp
                          quantises activations to 8 bits for its quantised dot products, so it is not exact; these
                          numbers are what the C test's tolerance is derived from.

plus the llama-cpp-python version, the llama.cpp settings, the model's sha256, and whether two llama.cpp runs
gave bit-identical logits (the script runs every prompt twice to check).

Determinism, as measured with llama-cpp-python 0.3.36 on an AVX-512 CPU: two runs of this script write
byte-identical files; llama.cpp's logits were also bit-identical with 1 or 2 threads and with batches of 64 or
512.  A llama.cpp built with other CPU features (AMX, plain AVX2) may round differently; the settings block
records which libllama was used.  `forward_ref.py --noise` reruns the study behind the C test's tolerances.

Rerun:  python3 scripts/ref/make_forward_fixtures.py [--model FILE] [--out tests/fixtures/forward.json]
Needs:  numpy, gguf, jinja2, llama-cpp-python (the version recorded in the fixture).  Takes a few minutes on 2 cores.

If the llama-cpp-python wheel dies with "Illegal instruction" (a native build that uses AMX on a virtual machine
that advertises AMX but traps it), run with the libraries bench/build-llamacpp.sh builds from the same source:
    LLAMA_CPP_LIB_PATH=~/.cache/dsachat/llamacpp/build-0.3.36/bin python3 scripts/ref/make_forward_fixtures.py
"""

import argparse
import base64
import hashlib
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from forward_ref import DEFAULT_MODEL, RefModel  # noqa: E402

N_CTX = 2048          # llama.cpp context; the long prompt + 64 generated tokens must fit
N_THREADS = 2         # llama.cpp threads (fixed, though 1 and 2 measured bit-identical)
N_GREEDY = 64
LONG_SOURCE = "/usr/share/common-licenses/GPL-3"   # Debian's base-files: public text present on every Debian box
LONG_MIN_TOKENS = 1500
LONG_TARGET_TOKENS = 1600


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def chat_text(reader, messages):
    """Render a conversation with the model's own chat template (the GGUF's tokenizer.chat_template)."""
    import jinja2
    tmpl = reader.fields["tokenizer.chat_template"].contents()
    return jinja2.Environment().from_string(tmpl).render(messages=messages, add_generation_prompt=True)


def prompts(reader, tokenize):
    """The prompt set: (name, kind, text, extra-metadata).  Fixed text, so the fixture is reproducible."""
    out = [
        ("chat_capital", "chat", chat_text(reader, [
            {"role": "user", "content": "What is the capital of France, and what river runs through it?"}]), {}),
        ("chat_multiturn", "chat", chat_text(reader, [
            {"role": "system", "content": "You are a concise cooking assistant."},
            {"role": "user", "content": "How long should I boil dried spaghetti?"},
            {"role": "assistant", "content": "About 9 to 11 minutes in salted, rapidly boiling water. "
                                             "Taste a strand a minute before the packet time."},
            {"role": "user", "content": "And how much salt per litre of water?"}]), {}),
        ("code_python", "code",
         "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n    if n < 2:\n        return n\n"
         "    a, b = 0, 1\n    for _ in range(n - 1):\n", {}),
        ("code_c", "code",
         "#include <stdio.h>\n\nstruct point { int x, y; };\n\nint main(void) {\n"
         "    struct point pts[3] = {{1, 2}, {3, 4}, {5, 6}};\n    int sum = 0;\n"
         "    for (int i = 0; i < 3; i++)\n", {}),
        ("prose_story", "prose",
         "The lighthouse keeper had not seen a ship in eleven days. Each evening he climbed the spiral stairs, "
         "trimmed the wick, and watched the grey water fold over itself until the stars came out. On the twelfth "
         "morning, a small boat with a red sail appeared on the horizon, and", {}),
        ("numbers", "numbers",
         "1, 1, 2, 3, 5, 8, 13, 21, 34, 55, 89,\n12 + 35 = 47\n7 * 8 = 56\n1024 / 16 = 64\n3.14159 * 2 = ", {}),
        ("capital_short", "prose", "The capital of France is", {}),
        ("json", "markup",
         '{"users": [{"name": "Alice", "age": 30, "city": "Paris"}, {"name": "Bob", "age": 25, "city": ', {}),
        ("multilingual", "prose",
         "Le chat dort sur le canapé. Der Hund läuft im Park. El niño come una manzana. "
         "Naïve café owners say “déjà vu” — 東京 is far away. In English: the cat sleeps on the", {}),
        ("single_token", "edge", "Hello", {}),
    ]
    out.append(long_prompt(tokenize))
    return out


def long_prompt(tokenize):
    """Whole lines of LONG_SOURCE from its start until the text tokenizes to >= LONG_TARGET_TOKENS tokens."""
    with open(LONG_SOURCE, encoding="utf-8") as f:
        lines = f.read().splitlines(keepends=True)
    text = ""
    for line in lines:
        text += line
        if len(tokenize(text)) >= LONG_TARGET_TOKENS:
            break
    n = len(tokenize(text))
    assert LONG_MIN_TOKENS <= n <= N_CTX - N_GREEDY, n
    return ("long_gpl3", "long", text,
            {"source_file": LONG_SOURCE, "source_sha256": sha256_file(LONG_SOURCE), "source_chars": len(text)})


def b64_f32(a):
    return base64.b64encode(np.asarray(a, dtype="<f4").tobytes()).decode("ascii")


def top2_margin(rows):
    """top1 - top2 of each row (float64)."""
    part = np.partition(rows, -2, axis=-1)
    return part[..., -1] - part[..., -2]


def llamacpp_run(llm, ids):
    """Teacher-forced logits of every position (float32, T x V) and the 64-token greedy continuation."""
    llm.reset()
    llm.eval(ids)
    tf = np.array(llm.scores[: len(ids)], dtype=np.float32, copy=True)
    greedy, margins = [], []
    for _ in range(N_GREEDY):
        row = np.asarray(llm.scores[llm.n_tokens - 1], dtype=np.float64)
        tok = int(np.argmax(row))
        greedy.append(tok)
        margins.append(float(top2_margin(row)))
        llm.eval([tok])
    return tf, greedy, margins


def write_fixture(path, fixture):
    """JSON with one field per line (long arrays kept on one line), so a regenerated file diffs readably."""
    dump = lambda v: json.dumps(v, ensure_ascii=False)  # noqa: E731
    lines = ["{"]
    items = list(fixture.items())
    for n, (k, v) in enumerate(items):
        end = "," if n + 1 < len(items) else ""
        if k == "prompts":
            lines.append(f' {dump(k)}: [')
            for i, rec in enumerate(v):
                fields = [f'   {dump(fk)}: {dump(fv)}' for fk, fv in rec.items()]
                lines.append("  {\n" + ",\n".join(fields) + "\n  }" + ("," if i + 1 < len(v) else ""))
            lines.append(" ]" + end)
        else:
            lines.append(f" {dump(k)}: {dump(v)}{end}")
    lines.append("}")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    json.loads(open(path, encoding="utf-8").read())  # sanity: it parses


def main():
    ap = argparse.ArgumentParser(description="Make tests/fixtures/forward.json")
    ap.add_argument("--model", default=DEFAULT_MODEL)
    here = os.path.dirname(os.path.abspath(__file__))
    ap.add_argument("--out", default=os.path.normpath(os.path.join(here, "..", "..", "tests", "fixtures",
                                                                   "forward.json")))
    args = ap.parse_args()

    import llama_cpp
    llm = llama_cpp.Llama(model_path=args.model, n_ctx=N_CTX, n_threads=N_THREADS, n_threads_batch=N_THREADS,
                          n_batch=512, n_ubatch=512, logits_all=True, flash_attn=False, n_gpu_layers=0,
                          seed=0, verbose=False)
    tokenize = lambda text: llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)  # noqa: E731

    ref = RefModel(args.model)
    W = ref.output_weight()
    model_sha = sha256_file(args.model)
    records = []
    all_deterministic = True
    for name, kind, text, extra in prompts(ref.reader, tokenize):
        t0 = time.time()
        ids = tokenize(text)
        assert len(ids) + N_GREEDY <= N_CTX

        tf, greedy, gmargin = llamacpp_run(llm, ids)
        tf2, greedy2, _ = llamacpp_run(llm, ids)          # second run: is llama.cpp deterministic here?
        same = bool(np.array_equal(tf, tf2) and greedy == greedy2)
        all_deterministic &= same
        repeat_max = float(np.max(np.abs(tf.astype(np.float64) - tf2)))

        h = ref.hidden(ids)                              # float64 final-normed hidden states, T x n_embd
        last = h[-1] @ W.T
        # llama.cpp vs reference over every position, in chunks (T x 49152 float64 would be large).
        max_all, sq, cnt, agree = 0.0, 0.0, 0, 0
        for i in range(0, len(ids), 128):
            r = h[i:i + 128] @ W.T
            d = np.abs(r - tf[i:i + 128])
            max_all = max(max_all, float(d.max()))
            sq += float((d * d).sum())
            cnt += d.size
            agree += int((np.argmax(r, axis=-1) == np.argmax(tf[i:i + 128], axis=-1)).sum())
        d_last = np.abs(last - tf[-1])
        top = np.argsort(-last, kind="stable")[:10]
        rec = {
            "name": name, "kind": kind, "text": text, **extra,
            "n_tokens": len(ids), "ids": [int(t) for t in ids],
            "ref_top1": int(np.argmax(last)),
            "ref_top": [[int(i), round(float(last[i]), 5)] for i in top],
            "ref_last_logits_b64": b64_f32(last),
            "llamacpp_tf_top1": [int(t) for t in np.argmax(tf, axis=-1)],
            "llamacpp_tf_margin": [round(float(m), 4) for m in top2_margin(tf.astype(np.float64))],
            "llamacpp_greedy": greedy,
            "llamacpp_greedy_margin": [round(m, 4) for m in gmargin],
            "llamacpp_greedy_text": llm.detokenize(greedy, special=True).decode("utf-8", "replace"),
            "llamacpp_vs_ref": {
                "last_max_abs": round(float(d_last.max()), 5),
                "last_mean_abs": round(float(d_last.mean()), 5),
                "all_max_abs": round(max_all, 5),
                "all_rms": round((sq / cnt) ** 0.5, 5),
                "tf_top1_agree": round(agree / len(ids), 5),
                "last_top1_equal": bool(int(np.argmax(tf[-1])) == int(np.argmax(last))),
            },
            "llamacpp_repeat_identical": same,
            "llamacpp_repeat_max_abs": repeat_max,
        }
        records.append(rec)
        v = rec["llamacpp_vs_ref"]
        print(f"{name:16s} T={len(ids):5d} last max|d|={v['last_max_abs']:.4f} all max|d|={v['all_max_abs']:.4f} "
              f"rms={v['all_rms']:.4f} tf agree={v['tf_top1_agree']:.4f} top1 eq={v['last_top1_equal']} "
              f"repeat identical={same} ({time.time() - t0:.1f}s)", file=sys.stderr)

    fixture = {
        "about": "Forward-pass yardsticks for tests/test_forward.c; see the generator's docstring for every field.",
        "generator": "scripts/ref/make_forward_fixtures.py (reference: scripts/ref/forward_ref.py, float64 numpy)",
        "model": {"file": os.path.basename(args.model), "sha256": model_sha, "arch": ref.arch,
                  "n_vocab": ref.n_vocab},
        "llama_cpp_python": llama_cpp.__version__,
        "llamacpp_settings": {"n_ctx": N_CTX, "n_threads": N_THREADS, "n_batch": 512, "n_ubatch": 512,
                              "libllama": "bench/build-llamacpp.sh build" if os.environ.get("LLAMA_CPP_LIB_PATH")
                              else "llama-cpp-python wheel",
                              "flash_attn": False, "kv_cache": "f16", "add_bos": False, "special": True,
                              "logits_all": True, "greedy": "argmax of the last scores row, fed back by Llama.eval, "
                                                            "64 steps, not stopped at EOS"},
        "logits_encoding": "base64 of n_vocab float32 little-endian",
        "llamacpp_deterministic": all_deterministic,
        "summary": {
            "last_max_abs": max(r["llamacpp_vs_ref"]["last_max_abs"] for r in records),
            "all_max_abs": max(r["llamacpp_vs_ref"]["all_max_abs"] for r in records),
            "tf_top1_agree": round(sum(r["llamacpp_vs_ref"]["tf_top1_agree"] * r["n_tokens"] for r in records)
                                   / sum(r["n_tokens"] for r in records), 5),
        },
        "prompts": records,
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    write_fixture(args.out, fixture)
    print(f"wrote {args.out} ({os.path.getsize(args.out)} bytes); summary {fixture['summary']}; "
          f"llama.cpp deterministic: {all_deterministic}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
