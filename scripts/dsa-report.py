#!/usr/bin/env python3
"""Render the DSA quality/speed report (markdown + PNG plots) from the `dsa` tool's outputs.

usage: scripts/dsa-report.py --eval EVAL.json --bench BENCH.json [--train TRAIN.csv] [--sweep SWEEP.json]
                             --out docs/dsa-report.md [--plots-dir docs/img] [--date YYYY-MM-DD] [--machine TEXT]

Inputs: EVAL.json from `dsa eval --json`, BENCH.json from `dsa bench --contexts ... --json`, TRAIN.csv the indexer
trainer's loss log, SWEEP.json a list of indexer-shape sweep entries.  Writes the markdown file and dsa-recall.png,
dsa-ppl.png, dsa-train.png (with --train), dsa-speed.png into the plots directory (default: next to the markdown).
Plots need gnuplot.  Errors are reported on one line and exit with status 1.
"""

import argparse
import csv
import datetime
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile

PROG = "dsa-report"
BAR_K = 512  # the k the bars are evaluated at
BAR_PPL_PCT = 2.0  # DSA perplexity within +2% of dense
BAR_RECALL = 0.9  # mean indexer recall
BAR_ORACLE_GAP = 0.05  # oracle recall - indexer recall
BAR_SPEEDUP = 1.7  # decode at 8K vs dense
BAR_SPEED_CTX = 8192


class ReportError(Exception):
    pass


def fail(msg):
    sys.stderr.write("%s: error: %s\n" % (PROG, " ".join(str(msg).split())))
    sys.exit(1)


# ---------------------------------------------------------------------------------------------------------- inputs


def load_json(path, what):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except OSError as e:
        raise ReportError("%s %s: %s" % (what, path, e.strerror or e))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ReportError("%s %s: not valid JSON (%s)" % (what, path, e))


def is_num(x):
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def need(obj, key, kind, where):
    """obj[key] checked to be of kind ('num', 'int', 'list', 'dict', 'str')."""
    if not isinstance(obj, dict) or key not in obj:
        raise ReportError("%s: missing \"%s\"" % (where, key))
    v = obj[key]
    ok = {
        "num": is_num(v),
        "int": is_num(v) and float(v) == int(v),
        "list": isinstance(v, list),
        "dict": isinstance(v, dict),
        "str": isinstance(v, str),
    }[kind]
    if not ok:
        raise ReportError("%s: \"%s\" is not a %s" % (where, key, {"num": "number", "int": "integer", "list": "list",
                                                                  "dict": "object", "str": "string"}[kind]))
    return int(v) if kind == "int" else v


def check_rows(doc, key, fields, where, allow_empty=False):
    rows = need(doc, key, "list", where)
    if not rows and not allow_empty:
        raise ReportError("%s: \"%s\" is empty" % (where, key))
    for i, r in enumerate(rows):
        w = "%s: %s[%d]" % (where, key, i)
        if not isinstance(r, dict):
            raise ReportError("%s is not an object" % w)
        for f, kind in fields:
            need(r, f, kind, w)
    return rows


def validate_eval(ev, path):
    w = "eval %s" % path
    if not isinstance(ev, dict):
        raise ReportError("%s: top level is not an object" % w)
    need(ev, "trained_context", "int", w)
    check_rows(ev, "ppl", [("context", "int"), ("k", "int"), ("dense", "num"), ("dsa", "num"),
                           ("dsa_vs_dense_pct", "num")], w)
    rec = check_rows(ev, "recall", [("context", "int"), ("k", "int"), ("indexer", "num"), ("oracle", "num"),
                                    ("window", "num"), ("random", "num")], w)
    for i, r in enumerate(rec):
        for key in ("indexer_per_layer", "oracle_per_layer"):
            if key in r and not (isinstance(r[key], list) and all(is_num(x) for x in r[key])):
                raise ReportError("%s: recall[%d].%s is not a list of numbers" % (w, i, key))
    if "passkey" in ev:
        check_rows(ev, "passkey", [("context", "int"), ("k", "int"), ("trials", "int"), ("dense", "int"),
                                   ("dsa", "int")], w, allow_empty=True)
    else:
        ev["passkey"] = []
    if "dense_ppl" in ev:
        check_rows(ev, "dense_ppl", [("context", "int"), ("ppl", "num")], w, allow_empty=True)
    for i, r in enumerate(ev["ppl"]):
        for key in ("oracle", "window", "random"):
            if key in r and not is_num(r[key]):
                raise ReportError("%s: ppl[%d].%s is not a number" % (w, i, key))


def validate_bench(b, path):
    w = "bench %s" % path
    if not isinstance(b, dict):
        raise ReportError("%s: top level is not an object" % w)
    check_rows(b, "contexts", [("context", "int"), ("k", "int"), ("dense_tok_s", "num"), ("dsa_tok_s", "num"),
                               ("speedup", "num")], w)
    for i, r in enumerate(b["contexts"]):
        if "indexer_share" in r and not is_num(r["indexer_share"]):
            raise ReportError("%s: contexts[%d].indexer_share is not a number" % (w, i))


def load_train(path):
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rd = csv.reader(f)
            try:
                head = next(rd)
            except StopIteration:
                raise ReportError("train %s: empty file" % path)
            head = [h.strip() for h in head]
            for col in ("tokens", "train_kl", "heldout_kl"):
                if col not in head:
                    raise ReportError("train %s: header lacks column \"%s\"" % (path, col))
            it, ik, ih = head.index("tokens"), head.index("train_kl"), head.index("heldout_kl")
            ie = head.index("elapsed_s") if "elapsed_s" in head else None
            train, held, last_elapsed = [], [], None
            for ln, row in enumerate(rd, start=2):
                if not row or all(not c.strip() for c in row):
                    continue
                if len(row) < len(head):
                    raise ReportError("train %s line %d: %d fields, header has %d" % (path, ln, len(row), len(head)))
                try:
                    tok = float(row[it])
                    if row[ik].strip():
                        train.append((tok, float(row[ik])))
                    if row[ih].strip():
                        held.append((tok, float(row[ih])))
                    if ie is not None and row[ie].strip():
                        last_elapsed = float(row[ie])
                except ValueError:
                    raise ReportError("train %s line %d: non-numeric field" % (path, ln))
    except OSError as e:
        raise ReportError("train %s: %s" % (path, e.strerror or e))
    except UnicodeDecodeError as e:
        raise ReportError("train %s: not text (%s)" % (path, e))
    if not train and not held:
        raise ReportError("train %s: no data rows" % path)
    return {"train": train, "held": held, "elapsed": last_elapsed}


# ---------------------------------------------------------------------------------------------------------- helpers


def closest(values, target):
    """The value closest to target (ties: the smaller)."""
    return min(values, key=lambda v: (abs(v - target), v)) if values else None


def find(rows, **kv):
    for r in rows:
        if all(r.get(k) == v for k, v in kv.items()):
            return r
    return None


def f3(x):
    return "" if x is None else "%.3f" % x


def fpct(x):
    return "" if x is None else "%+.2f%%" % x


def fnum(x, nd=1):
    return "" if x is None else "%.*f" % (nd, x)


def status(ok):
    return "n/a" if ok is None else ("**PASS**" if ok else "**MISS**")


def md_table(head, rows, align=None):
    align = align or ["l"] + ["r"] * (len(head) - 1)
    out = ["| " + " | ".join(head) + " |",
           "|" + "|".join(":---" if a == "l" else ("---:" if a == "r" else ":---:") for a in align) + "|"]
    for r in rows:
        out.append("| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ") for c in r) + " |")
    return "\n".join(out)


def kfmt(k, wanted):
    return "k %d" % k if k == wanted else "k %d (closest to %d)" % (k, wanted)


# ---------------------------------------------------------------------------------------------------------- bars


def quality_checks(ev, ctx, kwant):
    """Bar-style quality checks at one context and the k closest to kwant. Returns (k, rows, notes)."""
    ks = sorted({r["k"] for r in ev["recall"] if r["context"] == ctx} | {r["k"] for r in ev["ppl"] if r["context"] == ctx})
    k = closest(ks, kwant)
    rows = []
    notes = []
    if k is None:
        return None, [["all quality bars", "no rows at context %d" % ctx, "", "n/a"]], notes
    kl = kfmt(k, kwant)
    p = find(ev["ppl"], context=ctx, k=k)
    r = find(ev["recall"], context=ctx, k=k)
    # perplexity
    if p:
        rows.append(["DSA perplexity vs dense (ctx %d, %s)" % (ctx, kl), "%s (%.3f vs %.3f)" % (fpct(p["dsa_vs_dense_pct"]),
                     p["dsa"], p["dense"]), "<= +%.0f%%" % BAR_PPL_PCT, status(p["dsa_vs_dense_pct"] <= BAR_PPL_PCT)])
    else:
        rows.append(["DSA perplexity vs dense (ctx %d, %s)" % (ctx, kl), "no ppl row", "<= +%.0f%%" % BAR_PPL_PCT, "n/a"])
    # recall
    if r:
        rows.append(["Mean indexer recall (ctx %d, %s)" % (ctx, kl), f3(r["indexer"]), ">= %.2f" % BAR_RECALL,
                     status(r["indexer"] >= BAR_RECALL)])
    else:
        rows.append(["Mean indexer recall (ctx %d, %s)" % (ctx, kl), "no recall row", ">= %.2f" % BAR_RECALL, "n/a"])
    # above window+sink: recall and perplexity
    wok_r = None if not r else r["indexer"] > r["window"]
    wp = p if (p and "window" in p) else None
    if wp is None:  # window perplexity is only measured at the baseline k: compare DSA and window there
        cands = [x for x in ev["ppl"] if x["context"] == ctx and "window" in x]
        wp = min(cands, key=lambda x: (abs(x["k"] - k), x["k"])) if cands else None
        if wp:
            notes.append("window+sink perplexity at context %d is only measured at k %d; the comparison uses the "
                         "DSA perplexity at that k." % (ctx, wp["k"]))
    wok_p = None if not wp else wp["dsa"] < wp["window"]
    meas = []
    if r:
        meas.append("recall %.3f vs %.3f" % (r["indexer"], r["window"]))
    if wp:
        meas.append("ppl %.3f vs %.3f%s" % (wp["dsa"], wp["window"], "" if wp["k"] == k else " (k %d)" % wp["k"]))
    both = None if (wok_r is None and wok_p is None) else all(x for x in (wok_r, wok_p) if x is not None)
    if both is not None and (wok_r is None or wok_p is None):
        meas.append("partial data")
    rows.append(["Above window+sink baseline (ctx %d, %s)" % (ctx, kl), "; ".join(meas) or "no data",
                 "recall > window, ppl < window", status(both)])
    # oracle gap
    if r:
        gap = r["oracle"] - r["indexer"]
        rows.append(["Indexer vs oracle top-k recall (ctx %d, %s)" % (ctx, kl),
                     "oracle %.3f, indexer %.3f, gap %.3f" % (r["oracle"], r["indexer"], gap),
                     "gap <= %.2f" % BAR_ORACLE_GAP, status(gap <= BAR_ORACLE_GAP)])
    else:
        rows.append(["Indexer vs oracle top-k recall (ctx %d, %s)" % (ctx, kl), "no recall row",
                     "gap <= %.2f" % BAR_ORACLE_GAP, "n/a"])
    return k, rows, notes


def passkey_check(rows, ctx=None):
    sel = [r for r in rows if ctx is None or r["context"] == ctx]
    if not sel:
        return ["no passkey rows" if ctx is None else "no passkey row at context %d" % ctx, None]
    ok = all(r["dsa"] == r["dense"] for r in sel)
    meas = "; ".join("ctx %d k %d: DSA %d/%d, dense %d/%d" % (r["context"], r["k"], r["dsa"], r["trials"], r["dense"],
                                                               r["trials"]) for r in sel)
    return [meas, ok]


def speed_check(bench):
    rows = bench["contexts"]
    r = find(rows, context=BAR_SPEED_CTX)
    if r is None:
        return ["Decode speedup at %d" % BAR_SPEED_CTX, "no bench row at context %d" % BAR_SPEED_CTX,
                ">= %.1fx" % BAR_SPEEDUP, "n/a"]
    return ["Decode speedup at %d (k %d)" % (BAR_SPEED_CTX, r["k"]),
            "%.2fx (%.1f vs %.1f tok/s)" % (r["speedup"], r["dsa_tok_s"], r["dense_tok_s"]),
            ">= %.1fx" % BAR_SPEEDUP, status(r["speedup"] >= BAR_SPEEDUP)]


# ---------------------------------------------------------------------------------------------------------- plots


class Plotter:
    def __init__(self, plots_dir):
        self.dir = plots_dir
        self.tmp = tempfile.mkdtemp(prefix="dsa-report.")
        self.gp = shutil.which("gnuplot")
        if not self.gp:
            raise ReportError("gnuplot not found in PATH (install gnuplot-nox)")

    def data(self, name, rows):
        path = os.path.join(self.tmp, name)
        with open(path, "w") as f:
            for r in rows:
                if r is None:
                    f.write("\n")  # blank line: a new data set/segment
                else:
                    f.write(" ".join(repr(float(x)) if is_num(x) else str(x) for x in r) + "\n")
        return path

    def plot(self, png, script):
        out = os.path.join(self.dir, png)
        head = ("set terminal png size 900,540\nset output '%s'\nset grid\nset key top left\n"
                "set datafile missing 'nan'\n" % out.replace("'", "''"))
        try:
            p = subprocess.run([self.gp], input=head + script + "\nunset output\n", text=True, capture_output=True,
                               timeout=120)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise ReportError("gnuplot failed for %s: %s" % (png, e))
        if p.returncode != 0 or not os.path.isfile(out) or os.path.getsize(out) == 0:
            raise ReportError("gnuplot failed for %s: %s" % (png, (p.stderr.strip().splitlines() or ["no output"])[-1]))
        return out

    def close(self):
        shutil.rmtree(self.tmp, ignore_errors=True)


def q(path):
    return "'%s'" % path.replace("'", "''")


def log2x(values, label):
    """gnuplot lines for a log2 x axis with a tic at each value (padded so the end tics are drawn)."""
    lo, hi = min(values), max(values)
    return ("set logscale x 2\nset xrange [%g:%g]\nset xtics (%s)\nset xlabel '%s'\n"
            % (lo / 1.15, hi * 1.15, ", ".join("'%d' %d" % (v, v) for v in sorted(set(values))), label))


def logy_range(values):
    """gnuplot lines for a log y axis over values, with readable tics when the range is under a few decades."""
    v = [x for x in values if is_num(x) and x > 0]
    if not v:
        return ""
    lo, hi = min(v) / 1.1, max(v) * 1.1
    s = "set yrange [%g:%g]\n" % (lo, hi)
    for mant in ([1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 7, 8, 9], [1, 2, 3, 5, 7], [1, 2, 5], [1]):
        tics = [m * 10 ** e for e in range(int(math.floor(math.log10(lo))), int(math.ceil(math.log10(hi))) + 1)
                for m in mant if lo <= m * 10 ** e <= hi]
        if 3 <= len(tics) <= 10:
            return s + "set ytics (%s)\n" % ", ".join("'%g' %g" % (t, t) for t in tics)
    tics = [float("%.3g" % (lo * (hi / lo) ** (i / 4))) for i in range(5)]
    return s + "set ytics (%s)\n" % ", ".join("'%g' %g" % (t, t) for t in tics)


def plot_recall(pl, ev, cmax, kbar):
    ks = sorted(r["k"] for r in ev["recall"] if r["context"] == cmax)
    d1 = pl.data("recall_k.dat", [[r["k"], r["indexer"], r["oracle"], r["window"], r["random"]]
                                  for r in sorted((x for x in ev["recall"] if x["context"] == cmax), key=lambda x: x["k"])])
    r = find(ev["recall"], context=cmax, k=kbar)
    il, ol = (r or {}).get("indexer_per_layer"), (r or {}).get("oracle_per_layer")
    s = ("set multiplot layout 1,2 title 'Top-k recall at context %d'\n" % cmax) if il else \
        "set title 'Top-k recall at context %d, mean over layers'\n" % cmax
    s += (log2x(ks, "k") + "set ylabel 'recall'\nset yrange [0:1.05]\nset key right center\n"
          + ("set title 'mean over layers vs k'\n" if il else ""))
    s += ("plot %s u 1:2 w lp lw 2 pt 7 title 'indexer', '' u 1:3 w lp lw 2 pt 5 title 'oracle', "
          "'' u 1:4 w lp pt 9 title 'window+sink', '' u 1:5 w lp pt 13 title 'random', %g w l dt 2 lc 'gray' "
          "title 'bar %.2f'\n" % (q(d1), BAR_RECALL, BAR_RECALL))
    s += "unset logscale x\nset xtics autofreq\nset autoscale x\n"
    if il:
        n = max(len(il), len(ol or []))
        d2 = pl.data("recall_layer.dat", [[i, il[i] if i < len(il) else "nan",
                                           ol[i] if ol and i < len(ol) else "nan"] for i in range(n)])
        lo = min([x for x in il + (ol or [])] + [BAR_RECALL])
        s += ("set title 'per layer, k %d'\nset xlabel 'layer'\nset xrange [-0.5:%g]\nset yrange [%g:1.02]\n"
              "set style fill solid 0.6\nset boxwidth 0.4\nset key below horizontal\n"
              "plot %s u ($1-0.2):2 w boxes title 'indexer', %s"
              "%g w l dt 2 lc 'gray' title 'bar %.2f'\n"
              % (kbar, n - 0.5, max(0.0, math.floor((lo - 0.05) * 20) / 20), q(d2),
                 "'' u ($1+0.2):3 w boxes title 'oracle', " if ol else "", BAR_RECALL, BAR_RECALL))
        s += "unset multiplot\n"
    return pl.plot("dsa-recall.png", s)


def plot_ppl(pl, ev, kbar):
    ppl = ev["ppl"]
    ctxs = sorted({r["context"] for r in ppl})
    ks = sorted({r["k"] for r in ppl})
    # left: perplexity vs context (dense, DSA at kbar, baselines at their k)
    left = []
    for c in ctxs:
        r = find(ppl, context=c, k=kbar)
        b = next((x for x in ppl if x["context"] == c and "window" in x), None)
        left.append([c, r["dense"] if r else "nan", r["dsa"] if r else "nan",
                     b.get("oracle", "nan") if b else "nan", b.get("window", "nan") if b else "nan",
                     b.get("random", "nan") if b else "nan"])
    d1 = pl.data("ppl_ctx.dat", left)
    bk = sorted({x["k"] for x in ppl if "window" in x})
    bks = ("k %d" % bk[0]) if len(bk) == 1 else "baseline k" if bk else "none measured"
    s = "set multiplot layout 1,2 title 'Perplexity'\n"
    s += (log2x(ctxs, "context") + "set ylabel 'perplexity'\nset logscale y\n" + logy_range([x for row in left for x in row[1:]]) +
          "set key top right\nset title 'dense, DSA (k %d) and baselines (%s)'\n" % (kbar, bks))
    s += ("plot %s u 1:2 w lp lw 2 pt 7 title 'dense', '' u 1:3 w lp lw 2 pt 5 title 'DSA', "
          "'' u 1:4 w lp pt 6 title 'oracle', '' u 1:5 w lp pt 9 title 'window+sink', '' u 1:6 w lp pt 13 "
          "title 'random'\n" % q(d1))
    # right: DSA vs dense % per k
    blocks, titles = [], []
    for k in ks:
        rows = [[r["context"], r["dsa_vs_dense_pct"]] for r in sorted(ppl, key=lambda x: x["context"]) if r["k"] == k]
        if rows:
            blocks.append(pl.data("pct_k%d.dat" % k, rows))
            titles.append("k %d" % k)
    s += ("unset logscale y\nset autoscale y\nset ytics autofreq\nset ylabel 'DSA vs dense, %'\nset title 'DSA perplexity increase over dense'\n"
          "set key top left\n")
    s += "plot " + ", ".join("%s u 1:2 w lp lw 2 title '%s'" % (q(b), t) for b, t in zip(blocks, titles))
    s += ", %g w l dt 2 lc 'gray' title 'bar +%g%%'\n" % (BAR_PPL_PCT, BAR_PPL_PCT)
    s += "unset multiplot\n"
    return pl.plot("dsa-ppl.png", s)


def plot_train(pl, tr):
    top = max([t for t, _ in tr["train"] + tr["held"]] + [1])
    div, unit = (1e9, " (billions)") if top >= 5e9 else (1e6, " (millions)") if top >= 5e6 else \
        (1e3, " (thousands)") if top >= 5e3 else (1, "")
    s = ("set logscale y\nset xlabel 'training tokens%s'\nset ylabel 'KL(attention || indexer)'\nset key top right\n"
         "set xrange [0:*]\nset title 'Lightning-indexer warm-up: KL divergence'\n" % unit)
    parts = []
    if tr["train"]:
        parts.append("%s u 1:2 w l lw 1.5 title 'train' "
                     % q(pl.data("train.dat", [[t / div, v] for t, v in tr["train"] if v > 0])))
    if tr["held"]:
        parts.append("%s u 1:2 w lp pt 7 ps 1.2 lw 2 title 'held-out' "
                     % q(pl.data("held.dat", [[t / div, v] for t, v in tr["held"] if v > 0])))
    if not parts:
        raise ReportError("train %s: no positive KL values to plot" % pl.train_path)
    s += "plot " + ", ".join(parts) + "\n"
    return pl.plot("dsa-train.png", s)


def plot_speed(pl, bench):
    rows = sorted(bench["contexts"], key=lambda r: r["context"])
    d = pl.data("speed.dat", [[r["context"], r["dense_tok_s"], r["dsa_tok_s"], r["speedup"]] for r in rows])
    ctxs = [r["context"] for r in rows]
    s = "set multiplot layout 1,2 title 'Decode speed (%s gen tokens, %s threads)'\n" % (
        bench.get("gen_tokens", "?"), bench.get("threads", "?"))
    s += (log2x(ctxs, "context") + "set ylabel 'tokens/s'\nset yrange [0:*]\n"
          "set key top right\nset title 'decode throughput'\n")
    s += "plot %s u 1:2 w lp lw 2 pt 7 title 'dense', '' u 1:3 w lp lw 2 pt 5 title 'DSA'\n" % q(d)
    s += ("set ylabel 'DSA / dense'\nset title 'speedup'\nset key top left\n"
          "plot %s u 1:4 w lp lw 2 pt 7 title 'speedup', %g w l dt 2 lc 'gray' title 'bar %gx', 1 w l lc 'black' "
          "notitle\n" % (q(d), BAR_SPEEDUP, BAR_SPEEDUP))
    s += "unset multiplot\n"
    return pl.plot("dsa-speed.png", s)


# ---------------------------------------------------------------------------------------------------------- sweep


def sweep_recall(rec, cmax):
    """Pick one recall row from a sweep entry's recall (a row or a list of rows)."""
    if isinstance(rec, dict):
        return rec
    if isinstance(rec, list):
        rows = [r for r in rec if isinstance(r, dict)]
        if not rows:
            return None
        ctxs = [r["context"] for r in rows if is_num(r.get("context"))]
        c = cmax if cmax in ctxs else (max(ctxs) if ctxs else None)
        cand = [r for r in rows if r.get("context") == c] or rows
        ks = [r["k"] for r in cand if is_num(r.get("k"))]
        k = closest(ks, BAR_K)
        return next((r for r in cand if r.get("k") == k), cand[0])
    return None


def sweep_cell(v):
    if v is None:
        return ""
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        if v != 0 and (abs(v) >= 1e6 or abs(v) < 1e-3):
            return "%.3g" % v
        return ("%.3f" % v) if abs(v) < 10 else ("%.1f" % v)
    if isinstance(v, (list, dict)):
        s = json.dumps(v, separators=(",", ":"))
        return s if len(s) <= 40 else s[:37] + "..."
    return str(v)


def sweep_table(sweep, cmax):
    if isinstance(sweep, dict):
        for key in ("runs", "sweep", "entries", "results"):
            if isinstance(sweep.get(key), list):
                sweep = sweep[key]
                break
        else:
            sweep = [sweep]
    if not isinstance(sweep, list) or not sweep:
        raise ReportError("sweep: expected a non-empty list of entries")
    cols, flat = [], []
    for i, e in enumerate(sweep):
        if not isinstance(e, dict):
            raise ReportError("sweep: entry %d is not an object" % i)
        row = {}
        for key, v in e.items():
            if key == "recall" or (isinstance(v, (dict, list)) and key.startswith("recall")):
                r = sweep_recall(v, cmax)
                if r is None:
                    row[key] = v
                    continue
                for sk, sv in r.items():
                    if sk.endswith("_per_layer") or isinstance(sv, (list, dict)):
                        continue
                    row["%s.%s" % (key, sk)] = sv
            elif isinstance(v, dict):
                for sk, sv in v.items():
                    if not isinstance(sv, (list, dict)):
                        row["%s.%s" % (key, sk)] = sv
            else:
                row[key] = v
        for key in row:
            if key not in cols:
                cols.append(key)
        flat.append(row)
    return md_table(cols, [[sweep_cell(r.get(c)) for c in cols] for r in flat],
                    ["r" if all(is_num(r.get(c)) or r.get(c) is None for r in flat) else "l" for c in cols])


# ---------------------------------------------------------------------------------------------------------- report


def build(args):
    ev = load_json(args.eval, "eval")
    validate_eval(ev, args.eval)
    bench = load_json(args.bench, "bench")
    validate_bench(bench, args.bench)
    tr = load_train(args.train) if args.train else None
    sweep = load_json(args.sweep, "sweep") if args.sweep else None
    cmax = max(r["context"] for r in ev["ppl"] + ev["recall"])
    sweep_md = sweep_table(sweep, cmax) if sweep is not None else None  # validated before anything is written

    if not shutil.which("gnuplot"):
        raise ReportError("gnuplot not found in PATH (install gnuplot-nox)")
    out_dir = os.path.dirname(os.path.abspath(args.out))
    plots_dir = os.path.abspath(args.plots_dir) if args.plots_dir else out_dir
    for d in (out_dir, plots_dir):
        try:
            os.makedirs(d, exist_ok=True)
        except OSError as e:
            raise ReportError("cannot create directory %s: %s" % (d, e.strerror or e))

    trained = ev["trained_context"]
    date = args.date or datetime.date.today().isoformat()
    idx = ev.get("indexer") if isinstance(ev.get("indexer"), dict) else {}
    machine = args.machine
    if not machine:
        cpu = ev.get("cpu") or bench.get("cpu") or "unknown CPU"
        machine = "%s, %s threads (eval), %s threads (bench)" % (cpu, ev.get("threads", "?"), bench.get("threads", "?"))

    def rel(png):
        return os.path.relpath(png, out_dir).replace(os.sep, "/")

    L = []
    L.append("# DSA report: quality and speed")
    L.append("")
    L.append("<!-- narrative -->")
    L.append("")
    L.append("- Date: %s" % date)
    L.append("- Machine: %s" % machine)
    L.append("- Model: `%s`" % ev.get("model", "?"))
    if idx:
        L.append("- Indexer: %s heads x %s dims (RoPE on %s), top-k %s%s" % (
            idx.get("heads", "?"), idx.get("dim", "?"), idx.get("rope_dims", "?"), idx.get("top_k", "?"),
            ("; %s" % idx["provenance"]) if idx.get("provenance") else ""))
    L.append("- Trained context: %d; evaluated contexts: %s" % (
        trained, ", ".join(str(c) for c in sorted({r["context"] for r in ev["ppl"] + ev["recall"]}))))
    if ev.get("texts"):
        L.append("- Eval texts: %s" % ", ".join("`%s`" % t for t in ev["texts"]))
    if is_num(ev.get("seconds")):
        L.append("- Eval time: %.0f s" % ev["seconds"])
    L.append("")

    # ---- bars
    kb, qrows, notes = quality_checks(ev, cmax, BAR_K)
    brows = list(qrows)
    pk_meas, pk_ok = passkey_check(ev["passkey"])
    brows.append(["Passkey accuracy equal to dense", pk_meas, "DSA = dense at every context", status(pk_ok)])
    brows.append(speed_check(bench))
    L.append("## Bars")
    L.append("")
    L.append("Quality bars at the largest evaluated context (%d) and k %s." % (cmax, kb if kb is not None else BAR_K))
    L.append("")
    L.append(md_table(["Bar", "Measured", "Target", "Result"], brows, ["l", "l", "l", "c"]))
    L.append("")
    for n in notes:
        L.append("Note: " + n)
        L.append("")
    npass = sum(1 for r in brows if r[3] == "**PASS**")
    L.append("%d of %d bars pass." % (npass, len(brows)))
    L.append("")

    # ---- trained-context rule
    if trained < cmax:
        ctxs = sorted({r["context"] for r in ev["ppl"] + ev["recall"]})
        L.append("### At the trained context (no bar)")
        L.append("")
        if trained in ctxs:
            kt, trows, tnotes = quality_checks(ev, trained, trained // 16)
            pm, pok = passkey_check(ev["passkey"], trained)
            trows.append(["Passkey accuracy equal to dense", pm, "DSA = dense", status(pok)])
            L.append("The model's trained context is %d < %d: the quality checks at context %d, "
                     "k %s (target k = %d/16 = %d)." % (trained, cmax, trained, kt, trained, trained // 16))
            L.append("")
            L.append(md_table(["Check", "Measured", "Target", "Result"], trows, ["l", "l", "l", "c"]))
            L.append("")
            for n in tnotes:
                L.append("Note: " + n)
                L.append("")
        else:
            L.append("The model's trained context is %d < %d, but the eval has no rows at context %d "
                     "(evaluated: %s)." % (trained, cmax, trained, ", ".join(map(str, ctxs))))
            L.append("")

    pl = Plotter(plots_dir)
    pl.train_path = args.train
    try:
        # ---- perplexity
        L.append("## Perplexity")
        L.append("")
        L.append("Perplexity over positions t >= k of each context window (dense and DSA scored on the same "
                 "positions); oracle, window+sink and random use the same k as DSA and are measured at one k only.")
        L.append("")
        prow = []
        for r in sorted(ev["ppl"], key=lambda x: (x["context"], x["k"])):
            prow.append([r["context"], r["k"], r.get("positions", ""), f3(r["dense"]), f3(r["dsa"]),
                         fpct(r["dsa_vs_dense_pct"]), f3(r.get("oracle")), f3(r.get("window")), f3(r.get("random"))])
        L.append(md_table(["Context", "k", "Positions", "Dense", "DSA", "DSA vs dense", "Oracle", "Window+sink",
                           "Random"], prow, ["r"] * 9))
        L.append("")
        if ev.get("dense_ppl"):
            dp = sorted(ev["dense_ppl"], key=lambda x: x["context"])
            L.append("Dense perplexity over all positions: " +
                     ", ".join("%d: %.3f" % (r["context"], r["ppl"]) for r in dp) + ".")
            L.append("")
        kp = closest(sorted({r["k"] for r in ev["ppl"]}), BAR_K)
        L.append("![Perplexity](%s)" % rel(plot_ppl(pl, ev, kp)))
        L.append("")

        # ---- recall
        L.append("## Recall")
        L.append("")
        L.append("Attention-mass recall: the share of the dense attention probability (mean over heads) that each selector's k positions cover, measured on the dense run's own states at every 4th position t >= k, then averaged over the rows and the layers. Random is the expectation k/(t+1).")
        L.append("")
        rrow = []
        for r in sorted(ev["recall"], key=lambda x: (x["context"], x["k"])):
            rrow.append([r["context"], r["k"], r.get("rows", ""), f3(r["indexer"]), f3(r["oracle"]),
                         f3(r["window"]), f3(r["random"]), f3(r["oracle"] - r["indexer"])])
        L.append(md_table(["Context", "k", "Rows", "Indexer", "Oracle", "Window+sink", "Random", "Oracle - indexer"],
                          rrow, ["r"] * 8))
        L.append("")
        kr = closest(sorted(r["k"] for r in ev["recall"] if r["context"] == cmax), BAR_K)
        rr = find(ev["recall"], context=cmax, k=kr)
        L.append("### Per layer at context %d, k %d" % (cmax, kr))
        L.append("")
        il, ol = rr.get("indexer_per_layer"), rr.get("oracle_per_layer")
        if il:
            n = len(il)
            chunk = 10
            for s0 in range(0, n, chunk):
                layers = list(range(s0, min(n, s0 + chunk)))
                L.append(md_table(["Layer"] + [str(i) for i in layers],
                                  [["Indexer"] + [f3(il[i]) for i in layers],
                                   ["Oracle"] + [f3(ol[i]) if ol and i < len(ol) else "" for i in layers]]))
                L.append("")
            worst = sorted(range(n), key=lambda i: il[i])[:3]
            L.append("Lowest indexer recall: " + ", ".join("layer %d (%.3f)" % (i, il[i]) for i in worst) + ".")
            L.append("")
        else:
            L.append("No per-layer recall in the eval JSON.")
            L.append("")
        L.append("![Recall](%s)" % rel(plot_recall(pl, ev, cmax, kr)))
        L.append("")

        # ---- passkey
        L.append("## Passkey retrieval")
        L.append("")
        if ev["passkey"]:
            krow = []
            for r in sorted(ev["passkey"], key=lambda x: x["context"]):
                det = r.get("detail") if isinstance(r.get("detail"), list) else []
                miss = ["%.2f" % d["depth"] for d in det if isinstance(d, dict) and not d.get("dsa_ok", True)
                        and is_num(d.get("depth"))]
                dmiss = ["%.2f" % d["depth"] for d in det if isinstance(d, dict) and not d.get("dense_ok", True)
                         and is_num(d.get("depth"))]
                krow.append([r["context"], r["k"], r["trials"], "%d/%d" % (r["dense"], r["trials"]),
                             "%d/%d" % (r["dsa"], r["trials"]), "yes" if r["dsa"] == r["dense"] else "**no**",
                             ", ".join(dmiss) or "-", ", ".join(miss) or "-"])
            L.append(md_table(["Context", "k", "Trials", "Dense", "DSA", "Equal", "Dense missed (depth)",
                               "DSA missed (depth)"], krow, ["r"] * 6 + ["l", "l"]))
        else:
            L.append("No passkey trials in the eval JSON.")
        L.append("")

        # ---- speed
        L.append("## Decode speed")
        L.append("")
        facts = ["Greedy decode of %s after a prompt of the given context, best of repetitions"
                 % ("%s tokens" % bench["gen_tokens"] if bench.get("gen_tokens") is not None else "the generated tokens")]
        if bench.get("threads") is not None:
            facts.append("%s threads" % bench["threads"])
        if bench.get("cpu"):
            facts.append(str(bench["cpu"]))
        L.append("; ".join(facts) + ".")
        L.append("")
        srow = []
        for r in sorted(bench["contexts"], key=lambda x: x["context"]):
            sh = r.get("indexer_share")
            srow.append([r["context"], r["k"], fnum(r["dense_tok_s"]), fnum(r["dsa_tok_s"]), "%.2fx" % r["speedup"],
                         "" if sh is None else "%.0f%%" % (100 * sh)])
        L.append(md_table(["Context", "k", "Dense tok/s", "DSA tok/s", "Speedup", "Indexer share of DSA decode"],
                          srow, ["r"] * 6))
        L.append("")
        L.append("![Decode speed](%s)" % rel(plot_speed(pl, bench)))
        L.append("")

        # ---- training
        L.append("## Indexer training")
        L.append("")
        if tr:
            ntok = max([t for t, _ in tr["train"] + tr["held"]])
            facts = ["%s tokens" % ("{:,}".format(int(ntok)))]
            if tr["elapsed"] is not None:
                facts.append("%.1f min" % (tr["elapsed"] / 60))
            if tr["train"]:
                facts.append("final train KL %.4f" % tr["train"][-1][1])
            if tr["held"]:
                facts.append("final held-out KL %.4f (%d held-out evaluations)" % (tr["held"][-1][1], len(tr["held"])))
            L.append("Log `%s`: %s." % (os.path.basename(args.train), ", ".join(facts)))
            L.append("")
            L.append("![Training curve](%s)" % rel(plot_train(pl, tr)))
        else:
            L.append("No training log given.")
        L.append("")
    finally:
        pl.close()

    # ---- sweep
    if sweep_md is not None:
        L.append("## Indexer shape sweep")
        L.append("")
        L.append("Recall columns: the entry's recall row at context %d and the k closest to %d where it gives "
                 "several." % (cmax, BAR_K))
        L.append("")
        L.append(sweep_md)
        L.append("")

    L.append("---")
    L.append("")
    L.append("Generated by `scripts/dsa-report.py` from `%s`, `%s`%s%s." % (
        os.path.basename(args.eval), os.path.basename(args.bench),
        (", `%s`" % os.path.basename(args.train)) if args.train else "",
        (", `%s`" % os.path.basename(args.sweep)) if args.sweep else ""))
    text = "\n".join(L) + "\n"
    try:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(text)
    except OSError as e:
        raise ReportError("cannot write %s: %s" % (args.out, e.strerror or e))
    return npass, len(brows)


class Parser(argparse.ArgumentParser):
    def error(self, message):
        fail("%s (see --help)" % message)


def main():
    ap = Parser(prog="scripts/dsa-report.py", description="Render the DSA quality/speed report (markdown + PNG plots).")
    ap.add_argument("--eval", required=True, metavar="EVAL.json", help="output of `dsa eval --json`")
    ap.add_argument("--bench", required=True, metavar="BENCH.json", help="output of `dsa bench --contexts ... --json`")
    ap.add_argument("--train", metavar="TRAIN.csv", help="indexer training log (CSV)")
    ap.add_argument("--sweep", metavar="SWEEP.json", help="indexer shape sweep (JSON list)")
    ap.add_argument("--out", required=True, metavar="REPORT.md", help="markdown file to write")
    ap.add_argument("--plots-dir", metavar="DIR", help="where the PNGs go (default: the markdown's directory)")
    ap.add_argument("--date", metavar="YYYY-MM-DD", help="report date (default: today)")
    ap.add_argument("--machine", metavar="TEXT", help="machine description (default: CPU and threads from the JSON)")
    args = ap.parse_args()
    if args.date and not re.fullmatch(r"\d{4}-\d{2}-\d{2}", args.date):
        fail("--date must be YYYY-MM-DD, got %r" % args.date)
    try:
        npass, nbars = build(args)
    except ReportError as e:
        fail(e)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, ZeroDivisionError) as e:
        fail("malformed input (%s: %s)" % (type(e).__name__, e))
    print("wrote %s (%d/%d bars pass)" % (args.out, npass, nbars))


if __name__ == "__main__":
    main()
