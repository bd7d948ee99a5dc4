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


kern = load("kernels.json")
# the shipped kernels, and the opt-in ones (run.sh's NEW_ENV) when that run is there
variants = [("", "shipped kernels")]


def ran(v):  # any step of variant v left a file
    return any(os.path.exists(os.path.join(out, f)) for f in
               (f"test_cuda{v}.log", f"agreement{v}.json", f"bench{v}_b1.json", f"bench{v}_b16.json"))


if ran("_new"):
    variants.append(("_new", "opt-in kernels (DSA_CUDA_GEMV=mma DSA_CUDA_FLASH=1 DSA_CUDA_PERSIST=1 DSA_CUDA_SELECT=new)"))
# the opt-in kernels with the decode GEMV phases on the GGUF's quantised blocks (the f16-or-quantised measurement:
# against "_new", the weights alone differ)
if ran("_quant"):
    variants.append(("_quant", "opt-in kernels, quantised weights in decode (DSA_CUDA_QUANT=1)"))
dev = ""
try:
    with open(os.path.join(out, "device.txt")) as f:
        dev = (f.read().strip().splitlines() or [""])[-1]
except OSError:
    pass
rows, bars = [], []


def bar(name, value, ok):
    bars.append({"bar": name, "value": value, "pass": bool(ok)})


print("# CUDA backend on the GPU machine\n")
print(f"Device: {dev}\n")
for v, label in variants:
    agree = load(f"agreement{v}.json")
    sfx = f" [{label}]" if v else ""
    # test_cuda writes its report only when it finishes: a missing one is a crash or a time-out
    failed = agree.get("checks_failed", agree.get("kernel_checks_failed")) if agree else None
    bar("test_cuda finished with no failed check" + sfx, -1 if failed is None else failed, failed == 0)
    if not agree:
        started = os.path.exists(os.path.join(out, f"test_cuda{v}.log"))
        print(f"**test_cuda{sfx}: " + ("no report: it crashed or timed out (see its log)**\n" if started else
                                       "not run: the time budget ran out before it**\n"))
        continue
    tf, dec = agree.get("teacher_forced", {}), agree.get("decode", {})
    print(f"## Agreement with the CPU backend, {label} (2-layer slice of the default model, real weights)\n")
    print(f"- kernel checks failed: {agree.get('kernel_checks_failed')}")
    if tf:
        print(f"- teacher-forced {tf['positions']} positions: logits rel err {tf['rel_err']:.2e} (per position: mean "
              f"{tf['rel_err_mean']:.2e}, worst {tf['rel_err_worst']:.2e}); top-1 equal {tf['top1_equal']}/{tf['positions']}")
        bar("logits rel err <= 1e-2 (all positions)" + sfx, tf["rel_err"], tf["rel_err"] <= 1e-2)
        bar("top-1 equal >= 99%" + sfx, tf["top1_equal"] / tf["positions"], tf["top1_equal"] >= 0.99 * tf["positions"])
    if dec:
        print(f"- decode {dec['steps']} steps: greedy equal {dec['greedy_equal']}/{dec['steps']}; "
              f"top-k overlap with the CPU indexer {dec['topk_overlap']:.4f}")
        bar("top-k overlap >= 99%" + sfx, dec["topk_overlap"], dec["topk_overlap"] >= 0.99)
    for key, what in (("prefill_blas_rel_err", "batched prefill (cuBLAS), sparse"),
                      ("prefill_dense_rel_err", "batched prefill, dense attention"),
                      ("decode_dense_worst_rel_err", "dense decode, worst step"),
                      ("decode_batch_worst_rel_err", "batched decode (12 sequences), worst row")):
        if key in agree:
            print(f"- {what}: last logits rel err {agree[key]:.2e}")
    print()
if kern:
    hbm = kern["hbm_copy_GBps"]
    print("## Kernels\n")
    print(f"- HBM copy: {hbm:.0f} GB/s (read + write)")
    if kern.get("gemm_f16_TFLOPs"):
        print(f"- matrix products (cuBLAS, 8192³, f16 in, f32 out): {kern['gemm_f16_TFLOPs']:.0f} TFLOP/s")
    for sfx, what in (("", "shipped"), ("_new", "new")):
        s1, sb = kern.get("index_scores_8k_b16" + sfx), kern.get("index_scores_8k_b16_b2b" + sfx)
        if s1:
            print(f"- index scores ({what}), 8K keys × 16 sequences: one call {s1['ms']*1000:.1f} µs = "
                  f"{100*s1['hbm_fraction']:.0f}% of HBM" + (f"; back to back {sb['ms']*1000:.1f} µs = "
                                                             f"{100*sb['hbm_fraction']:.0f}%" if sb else ""))
            best = max(s1["hbm_fraction"], sb["hbm_fraction"] if sb else 0)
            bar(f"indexer scores >= 40% of HBM (8K x 16, {what}; the better of one call and back to back)", best,
                best >= 0.40)
        t1, tb = kern.get("topk_512_of_8k_b16" + sfx), kern.get("topk_512_of_8k_b16_b2b" + sfx)
        if t1:
            print(f"- top-k 512 of 8K × 16 ({what}): one call {t1['ms']*1000:.1f} µs" +
                  (f"; back to back {tb['ms']*1000:.1f} µs" if tb else "") +
                  (f"; floor {t1['byte_floor_ms']*1000:.2f} µs (bytes)" if "byte_floor_ms" in t1 else ""))
    for key, what in (("gemv_49152x576", "f32"), ("gemv_49152x576_mma", "tensor cores")):
        for g in kern.get(key, []):
            print(f"- GEMV 49152×576 f16 ({what}), {g['rows_in']} row(s): {g['ms']*1000:.1f} µs, {g['GBps']:.0f} GB/s = "
                  f"{100*g['hbm_fraction']:.0f}% of HBM")
    mq = kern.get("decode_matmuls_f16_vs_quant")
    if mq:
        print(f"\n### A decode step's matrix products: f16 ({mq['f16_MB']:.0f} MB) against the GGUF's blocks "
              f"(Q4_1 layers, Q8_0 logits: {mq['quant_MB']:.0f} MB)\n")
        print("| rows | f16 µs | f16 on tensor cores µs | quantised µs | quantised / f16 speed-up | f16 GB/s | quantised GB/s "
              "| f16 floor µs | quantised floor µs |")
        print("|---|---|---|---|---|---|---|---|---|")
        for r in mq["runs"]:
            if "quant_ms" not in r:
                print(f"| {r['rows_in']} | failed: {r.get('f16_error') or 'ok'} | - | failed: {r.get('quant_error') or 'ok'} "
                      "| - | - | - | - | - |")
                continue
            mma = f"{r['f16_mma_ms']*1000:.0f}" if "f16_mma_ms" in r else "-"
            print(f"| {r['rows_in']} | {r['f16_ms']*1000:.0f} | {mma} | {r['quant_ms']*1000:.0f} | "
                  f"{r['quant_speedup']:.2f} | {r['f16_GBps']:.0f} | {r['quant_GBps']:.0f} | "
                  f"{r['f16_floor_ms']*1000:.0f} | {r['quant_floor_ms']*1000:.0f} |")
        print()
    pa = kern.get("prefill_attention_8k_256rows")
    if pa:
        parts = []
        for key, what in (("per_row", "per-row kernel"), ("tiled", "tiled kernel")):
            if f"{key}_ms" in pa:
                parts.append(f"{what} {pa[key + '_ms']*1000:.0f} µs ({pa[key + '_TFLOPs']:.1f} TFLOP/s)")
            elif f"{key}_error" in pa:
                parts.append(f"{what}: {pa[key + '_error']}")
        print(f"- dense prefill attention, the last 256 rows of 8K: " + "; ".join(parts) +
              f"; floors {pa['flop_floor_ms']*1000:.1f} µs (FLOPs), {pa['byte_floor_ms']*1000:.1f} µs (K/V bytes)")
    a = kern["attention_8k_b16"]
    print(f"- attention 8K × 16 rows: dense {a['dense_ms']*1000:.1f} µs, 512 selected {a['sparse_512_ms']*1000:.1f} µs "
          f"({a['speedup']:.1f}×)" + (f"; floor {a['byte_floor_ms']*1000:.1f} µs (K/V bytes)" if "byte_floor_ms" in a
                                      else ""))
    print()


def ctx(b, c):
    if not b:
        return None
    for r in b["contexts"]:
        if r["context"] == c:
            return r
    return None


bench = {}
for v, label in variants:
    b1, b16 = load(f"bench{v}_b1.json"), load(f"bench{v}_b16.json")
    bench[v] = (b1, b16)
    sfx = f" [{label}]" if v else ""
    for name, b in (("batch 1", b1), ("batch 16", b16)):
        if not b:
            continue
        print(f"## Decode and prefill, {name}, {label} (random weights, default shape)\n")
        print("| context | k | decode dense tok/s | decode DSA tok/s | DSA/dense | prefill dense tok/s | prefill DSA tok/s |")
        print("|---|---|---|---|---|---|---|")
        for r in b["contexts"]:
            print(f"| {r['context']} | {r['k']} | {r['dense_tok_s']:.0f} | {r['dsa_tok_s']:.0f} | {r['speedup']:.2f} | "
                  f"{r.get('dense_prefill_tok_s', 0):.0f} | {r['dsa_prefill_tok_s']:.0f} |")
        print()
    r1, r8, r8b = ctx(b1, 128), ctx(b1, 8192), ctx(b16, 8192)
    if r1:
        best = max(r1["dense_tok_s"], r1["dsa_tok_s"])
        bar("batch-1 decode >= 2000 tok/s (context 128)" + sfx, best, best >= 2000)
    if r8:
        bar("DSA decode at 8K >= 1.5x dense (batch 1)" + sfx, r8["speedup"], r8["speedup"] >= 1.5)
    if r8b:
        bar("DSA decode at 8K >= 1.5x dense (batch 16)" + sfx, r8b["speedup"], r8b["speedup"] >= 1.5)
    r16 = ctx(b16, 128)
    if r1 and r16:
        ratio = r16["dense_tok_s"] / r1["dense_tok_s"]
        bar("batch-16 aggregate >= 8x batch-1 (context 128, dense)" + sfx, ratio, ratio >= 8)
try:  # DSA_CUDA_PROFILE's lines of a short opt-in run: which path the decode steps took
    with open(os.path.join(out, "profile_new.log")) as f:
        prof = [ln.strip() for ln in f if ln.startswith(("cuda profile", "dsa: CUDA"))]
    if prof:
        print("## Device time per call, opt-in kernels (batch 1, contexts 128 and 8192)\n")
        for ln in prof:
            print(f"- {ln}")
        print()
except OSError:
    pass
print("## Bars\n")
print("| bar | value | pass |")
print("|---|---|---|")
for x in bars:
    v = x["value"]
    print(f"| {x['bar']} | {v:.4g} | {'yes' if x['pass'] else 'NO'} |")
with open(os.path.join(out, "summary.json"), "w") as f:
    json.dump({"device": dev, "kernels": kern, "bars": bars,
               "variants": {label: {"agreement": load(f"agreement{v}.json"), "bench_b1": bench.get(v, (None, None))[0],
                                    "bench_b16": bench.get(v, (None, None))[1]} for v, label in variants}}, f, indent=2)
