#!/usr/bin/env python3
"""Summarise a tests/gpu/run.sh output folder as markdown (stdout) and summary.json, against issue 7's bars."""
import json
import os
import sys

out = sys.argv[1] if len(sys.argv) > 1 else "/tmp/dsachat-gpu"


def load(name):
    try:
        with open(os.path.join(out, name)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


agree, kern, b1, b16 = load("agreement.json"), load("kernels.json"), load("bench_b1.json"), load("bench_b16.json")
dev = ""
try:
    with open(os.path.join(out, "device.txt")) as f:
        dev = f.read().strip().splitlines()[-1]
except OSError:
    pass
rows, bars = [], []


def bar(name, value, ok):
    bars.append({"bar": name, "value": value, "pass": bool(ok)})


print("# CUDA backend on the GPU machine\n")
print(f"Device: {dev}\n")
if agree:
    tf, dec = agree.get("teacher_forced", {}), agree.get("decode", {})
    print("## Agreement with the CPU backend (2-layer slice of the default model, real weights)\n")
    print(f"- kernel checks failed: {agree.get('kernel_checks_failed')}")
    if tf:
        print(f"- teacher-forced {tf['positions']} positions: logits rel err {tf['rel_err']:.2e} (per position: mean "
              f"{tf['rel_err_mean']:.2e}, worst {tf['rel_err_worst']:.2e}); top-1 equal {tf['top1_equal']}/{tf['positions']}")
        bar("logits rel err <= 1e-2 (all positions)", tf["rel_err"], tf["rel_err"] <= 1e-2)
        bar("top-1 equal >= 99%", tf["top1_equal"] / tf["positions"], tf["top1_equal"] >= 0.99 * tf["positions"])
    if dec:
        print(f"- decode {dec['steps']} steps: greedy equal {dec['greedy_equal']}/{dec['steps']}; "
              f"top-k overlap with the CPU indexer {dec['topk_overlap']:.4f}")
        bar("top-k overlap >= 99%", dec["topk_overlap"], dec["topk_overlap"] >= 0.99)
    if "prefill_blas_rel_err" in agree:
        print(f"- batched prefill (cuBLAS) last logits rel err {agree['prefill_blas_rel_err']:.2e}")
    print()
if kern:
    hbm = kern["hbm_copy_GBps"]
    print("## Kernels\n")
    print(f"- HBM copy: {hbm:.0f} GB/s (read + write)")
    s = kern["index_scores_8k_b16"]
    print(f"- index scores, 8K keys × 16 sequences: {s['ms']*1000:.1f} µs, {s['GBps']:.0f} GB/s = "
          f"{100*s['hbm_fraction']:.0f}% of HBM")
    bar("indexer scores >= 40% of HBM (8K x 16)", s["hbm_fraction"], s["hbm_fraction"] >= 0.40)
    print(f"- top-k 512 of 8K × 16: {kern['topk_512_of_8k_b16']['ms']*1000:.1f} µs")
    for g in kern["gemv_49152x576"]:
        print(f"- GEMV 49152×576 f16, {g['rows_in']} row(s): {g['ms']*1000:.1f} µs, {g['GBps']:.0f} GB/s = "
              f"{100*g['hbm_fraction']:.0f}% of HBM")
    a = kern["attention_8k_b16"]
    print(f"- attention 8K × 16 rows: dense {a['dense_ms']*1000:.1f} µs, 512 selected {a['sparse_512_ms']*1000:.1f} µs "
          f"({a['speedup']:.1f}×)")
    print()


def ctx(b, c):
    if not b:
        return None
    for r in b["contexts"]:
        if r["context"] == c:
            return r
    return None


for name, b in (("batch 1", b1), ("batch 16", b16)):
    if not b:
        continue
    print(f"## Decode and prefill, {name} (random weights, default shape)\n")
    print("| context | k | decode dense tok/s | decode DSA tok/s | DSA/dense | prefill dense tok/s | prefill DSA tok/s |")
    print("|---|---|---|---|---|---|---|")
    for r in b["contexts"]:
        print(f"| {r['context']} | {r['k']} | {r['dense_tok_s']:.0f} | {r['dsa_tok_s']:.0f} | {r['speedup']:.2f} | "
              f"{r.get('dense_prefill_tok_s', 0):.0f} | {r['dsa_prefill_tok_s']:.0f} |")
    print()
r1, r8 = ctx(b1, 128), ctx(b1, 8192)
if r1:
    best = max(r1["dense_tok_s"], r1["dsa_tok_s"])
    bar("batch-1 decode >= 2000 tok/s (context 128)", best, best >= 2000)
if r8:
    bar("DSA decode at 8K >= 1.5x dense", r8["speedup"], r8["speedup"] >= 1.5)
r16 = ctx(b16, 128)
if r1 and r16:
    ratio = r16["dense_tok_s"] / r1["dense_tok_s"]
    bar("batch-16 aggregate >= 8x batch-1 (context 128, dense)", ratio, ratio >= 8)
print("## Bars\n")
print("| bar | value | pass |")
print("|---|---|---|")
for x in bars:
    v = x["value"]
    print(f"| {x['bar']} | {v:.4g} | {'yes' if x['pass'] else 'NO'} |")
with open(os.path.join(out, "summary.json"), "w") as f:
    json.dump({"device": dev, "agreement": agree, "kernels": kern, "bench_b1": b1, "bench_b16": b16, "bars": bars}, f,
              indent=2)
