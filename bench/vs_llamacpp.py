#!/usr/bin/env python3
"""dsachat vs llama.cpp on the same GGUF and thread count: prefill and decode speed.

    bench/vs_llamacpp.py [--model FILE] [--threads N] [--rounds 3] [--prompt-tokens 512] [--gen-tokens 128]
                         [--contexts 2048,8192] [--dsa build/dsa] [--llama-bench PATH] [--json]

With --contexts, decode at each context length instead: ours `dsa bench --contexts C` (the cache filled with C
tokens, then G tokens decoded with dense attention and with DSA, same run) against `llama-bench -d C -p 0 -n G`
(llama.cpp's dense decode after a C-token context); the ratios are our dense and our DSA over theirs.

Each round runs ours, then theirs (alternating, so a slow spell of a shared machine hits both alike):

  ours    build/dsa bench --json --threads N --prompt-tokens P --gen-tokens G -m MODEL
          -> one JSON object with "prefill_tok_s" and "decode_tok_s"
  theirs  llama-bench -m MODEL -t N -p P -n G -r 1 -o json   (llama.cpp's own benchmark; its default warm-up run,
          flash-attention setting and batch sizes; built by bench/build-llamacpp.sh, found automatically)
          -> the pp<P> test's and the tg<G> test's tokens/s

and the script prints the median of each figure over the rounds and the ratios ours/theirs (> 1: we are faster).
Note what each side measures: llama-bench times its generation test from an empty context, while `dsa bench`
may decode after its prompt; at P=512 the attention share of a 135M model's decode step is small either way.
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
DEFAULT_MODEL = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"),
                             "dsachat", "models", "SmolLM2-135M-Instruct.Q4_1.gguf")


def die(msg):
    print(f"vs_llamacpp.py: {msg}", file=sys.stderr)
    sys.exit(1)


def run_json(cmd, what):
    """Run cmd; parse its stdout as JSON; exit with a one-line error on failure."""
    try:
        p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, check=False)
    except OSError as e:
        die(f"{what}: {e}")
    if p.returncode != 0:
        tail = (p.stderr.strip().splitlines() or ["(no stderr)"])[-1]
        die(f"{what} exited {p.returncode}: {tail}")
    try:
        return json.loads(p.stdout)
    except json.JSONDecodeError as e:
        die(f"{what}: output is not JSON ({e})")


def ours(args):
    j = run_json([args.dsa, "bench", "--json", "--threads", str(args.threads), "--prompt-tokens",
                  str(args.prompt_tokens), "--gen-tokens", str(args.gen_tokens), "-m", args.model], "dsa bench")
    try:
        return float(j["prefill_tok_s"]), float(j["decode_tok_s"])
    except (KeyError, TypeError, ValueError):
        die(f"dsa bench: no prefill_tok_s/decode_tok_s in {json.dumps(j)[:200]}")


def theirs(args):
    j = run_json([args.llama_bench, "-m", args.model, "-t", str(args.threads), "-p", str(args.prompt_tokens),
                  "-n", str(args.gen_tokens), "-r", "1", "-o", "json"], "llama-bench")
    pp = [t for t in j if t.get("n_prompt") == args.prompt_tokens and t.get("n_gen") == 0]
    tg = [t for t in j if t.get("n_gen") == args.gen_tokens and t.get("n_prompt") == 0]
    if not pp or not tg:
        die("llama-bench: no pp/tg results in its JSON")
    info = {k: pp[0].get(k) for k in ("build_commit", "cpu_info", "n_batch", "n_ubatch", "flash_attn", "type_k",
                                      "type_v", "n_threads")}
    return float(pp[0]["avg_ts"]), float(tg[0]["avg_ts"]), info


def ours_ctx(args, c):
    j = run_json([args.dsa, "bench", "--json", "--threads", str(args.threads), "--contexts", str(c),
                  "--gen-tokens", str(args.gen_tokens), "-m", args.model], "dsa bench --contexts")
    try:
        r = j["contexts"][0]
        return float(r["dense_tok_s"]), float(r["dsa_tok_s"]), int(r["k"])
    except (KeyError, IndexError, TypeError, ValueError):
        die(f"dsa bench --contexts: unexpected output {json.dumps(j)[:200]}")


def theirs_ctx(args, c):
    j = run_json([args.llama_bench, "-m", args.model, "-t", str(args.threads), "-p", "0", "-n", str(args.gen_tokens),
                  "-d", str(c), "-r", "1", "-o", "json"], "llama-bench -d")
    tg = [t for t in j if t.get("n_gen") == args.gen_tokens]
    if not tg:
        die("llama-bench: no tg result in its JSON")
    return float(tg[0]["avg_ts"])


def contexts_main(args):
    ctxs = [int(x) for x in args.contexts.split(",") if x.strip()]
    med = statistics.median
    rows = []
    for c in ctxs:
        dense, dsa, theirs_tg, k = [], [], [], 0
        for r in range(args.rounds):
            a, b, k = ours_ctx(args, c)
            t = theirs_ctx(args, c)
            dense.append(a), dsa.append(b), theirs_tg.append(t)
            if not args.json:
                print(f"context {c} round {r + 1}/{args.rounds}: ours dense {a:7.1f} DSA {b:7.1f} | llama.cpp {t:7.1f}",
                      file=sys.stderr)
        rows.append({"context": c, "k": k, "ours_dense_tok_s": med(dense), "ours_dsa_tok_s": med(dsa),
                     "llamacpp_tok_s": med(theirs_tg), "dense_ratio": med(dense) / med(theirs_tg),
                     "dsa_ratio": med(dsa) / med(theirs_tg), "samples": {"dense": dense, "dsa": dsa,
                                                                         "llamacpp": theirs_tg}})
    res = {"model": os.path.basename(args.model), "threads": args.threads, "rounds": args.rounds,
           "gen_tokens": args.gen_tokens, "machine": {"cpu": cpu_name(), "cores": os.cpu_count()},
           "contexts": rows}
    if args.json:
        print(json.dumps(res))
        return
    print(f"decode after a long context, {args.threads} threads, median of {args.rounds} alternating rounds")
    print(f"{'context':>8s} {'ours dense':>11s} {'ours DSA':>9s} {'llama.cpp':>10s} {'dense/lc':>9s} {'DSA/lc':>7s}")
    for r in rows:
        print(f"{r['context']:8d} {r['ours_dense_tok_s']:11.1f} {r['ours_dsa_tok_s']:9.1f} {r['llamacpp_tok_s']:10.1f} "
              f"{r['dense_ratio']:9.2f} {r['dsa_ratio']:7.2f}")


def find_llama_bench():
    """The binary bench/build-llamacpp.sh makes (building it if needed: takes a while)."""
    p = subprocess.run(["bash", os.path.join(HERE, "build-llamacpp.sh")], stdout=subprocess.PIPE, text=True)
    path = p.stdout.strip().splitlines()[-1] if p.returncode == 0 and p.stdout.strip() else ""
    if not path or not os.access(path, os.X_OK):
        die("could not build llama-bench (bench/build-llamacpp.sh failed); pass --llama-bench PATH")
    return path


def main():
    ap = argparse.ArgumentParser(description="dsachat vs llama.cpp: prefill and decode tokens/s")
    ap.add_argument("--model", "-m", default=DEFAULT_MODEL)
    ap.add_argument("--threads", "-t", type=int, default=2)
    ap.add_argument("--rounds", "-r", type=int, default=3)
    ap.add_argument("--prompt-tokens", type=int, default=512)
    ap.add_argument("--gen-tokens", type=int, default=128)
    ap.add_argument("--dsa", default=os.path.join(ROOT, "build", "dsa"))
    ap.add_argument("--llama-bench", default=None, help="llama-bench binary (default: bench/build-llamacpp.sh's)")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    ap.add_argument("--contexts", default=None, help="decode after these context lengths instead (e.g. 2048,8192)")
    args = ap.parse_args()

    if not os.path.isfile(args.model):
        die(f"model not found: {args.model}")
    if not os.access(args.dsa, os.X_OK):
        die(f"{args.dsa} not found: build the project first (cmake -B build && cmake --build build)")
    if args.rounds < 1:
        die("--rounds must be >= 1")
    args.llama_bench = args.llama_bench or find_llama_bench()
    if args.contexts:
        contexts_main(args)
        return

    ours_pp, ours_tg, their_pp, their_tg = [], [], [], []
    info = {}
    for r in range(args.rounds):
        a, b = ours(args)
        ours_pp.append(a)
        ours_tg.append(b)
        c, d, info = theirs(args)
        their_pp.append(c)
        their_tg.append(d)
        if not args.json:
            print(f"round {r + 1}/{args.rounds}: ours pp {a:8.1f} tg {b:7.1f} | llama.cpp pp {c:8.1f} tg {d:7.1f}",
                  file=sys.stderr)

    med = statistics.median
    res = {
        "model": os.path.basename(args.model),
        "threads": args.threads,
        "rounds": args.rounds,
        "prompt_tokens": args.prompt_tokens,
        "gen_tokens": args.gen_tokens,
        "machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "system": platform.platform()},
        "llamacpp_build": {"binary": args.llama_bench, **info},
        "ours": {"prefill_tok_s": med(ours_pp), "decode_tok_s": med(ours_tg),
                 "prefill_samples": ours_pp, "decode_samples": ours_tg},
        "theirs": {"prefill_tok_s": med(their_pp), "decode_tok_s": med(their_tg),
                           "prefill_samples": their_pp, "decode_samples": their_tg},
        "ratio": {"prefill": med(ours_pp) / med(their_pp), "decode": med(ours_tg) / med(their_tg)},
    }
    if args.json:
        print(json.dumps(res))
    else:
        print(f"{res['model']}, {args.threads} threads, median of {args.rounds} alternating rounds "
              f"({res['machine']['cpu']})")
        print(f"{'':10s} {'dsachat':>10s} {'llama.cpp':>10s} {'ours/theirs':>12s}")
        print(f"{'prefill':10s} {res['ours']['prefill_tok_s']:10.1f} {res['theirs']['prefill_tok_s']:10.1f} "
              f"{res['ratio']['prefill']:12.2f}   tok/s, {args.prompt_tokens}-token prompt")
        print(f"{'decode':10s} {res['ours']['decode_tok_s']:10.1f} {res['theirs']['decode_tok_s']:10.1f} "
              f"{res['ratio']['decode']:12.2f}   tok/s, {args.gen_tokens} tokens")


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


if __name__ == "__main__":
    main()
