#!/usr/bin/env python3
"""Independent float64 reference forward pass for GGUF "llama" and "qwen2" models.

This is the yardstick tests/test_forward.c is measured against (through tests/fixtures/forward.json, made by
make_forward_fixtures.py).  It shares no code with the C engine: weights are read with the `gguf` package's
GGUFReader and dequantised with gguf.quants.dequantize, then everything runs in float64 numpy, so the only error
left in its logits is the weights' own quantisation (which the engine sees too) and float64 rounding.

The graph (what llama.cpp computes for these architectures, without its activation quantisation):

    x = token_embd[ids]
    per layer:
        h = rmsnorm(x) * attn_norm
        q, k, v = h Wq^T (+bq), h Wk^T (+bk), h Wv^T (+bv)          biases: qwen2 only
        RoPE on q and k
            llama: adjacent pairs (x[2i], x[2i+1]) -- the GGUF converter permuted the Q/K rows so that
                   llama.cpp's "normal" rope reproduces the Hugging Face rotate-half model
            qwen2: NeoX pairs (x[i], x[i + d/2]) -- rows left unpermuted
            angle of pair i at position p: p * base^(-2i/rope_dim)  (divided by rope_freqs[i] when the file
            has a rope_freqs.weight tensor, as Llama 3.x files do)
        causal softmax attention, scale 1/sqrt(head_dim); query head h reads KV head h // (n_head / n_head_kv)
        x = x + attn Wo^T
        h = rmsnorm(x) * ffn_norm
        x = x + (silu(h Wgate^T) * (h Wup^T)) Wdown^T
    logits = (rmsnorm(x) * output_norm) Wout^T,  Wout = output.weight, or token_embd.weight when absent (tied)

rmsnorm(x) = x / sqrt(mean(x^2) + eps).

Usage as a tool:
    forward_ref.py [--model FILE] --ids 1,2,3 [--top 10]     the reference's best next tokens
    forward_ref.py [--model FILE] --noise tests/fixtures/forward.json
        the noise study behind tests/test_forward.c's tolerances: for every fixture prompt, how the float64
        reference and an emulation of llama.cpp's 8-bit activations (emulate_q8) compare with the llama.cpp
        results stored in the fixture (teacher-forced argmax, greedy continuation, and the llama.cpp top1 - top2
        gap wherever they disagree).  A few minutes.
Usage as a module:
    RefModel(path).forward(ids) -> float64 logits of the last position (or of `rows`)
    RefModel(path).greedy(ids, n) -> n greedy tokens (KV-cached) and the top1 - top2 gap at each step
"""

import argparse
import os
import sys

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize

DEFAULT_MODEL = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"),
                             "dsachat", "models", "SmolLM2-135M-Instruct.Q4_1.gguf")


def _field(reader, key, default=None):
    """Value of a GGUF metadata key (scalar or string), or default when absent."""
    f = reader.fields.get(key)
    if f is None:
        return default
    return f.contents()


def _q8_blocks(x):
    """Round x to 8-bit blocks of 32 along the last axis: d = max|x|/127 (kept as f16), q = round-half-away(x/d)."""
    shape = x.shape
    b = x.reshape(-1, 32)
    d = np.abs(b).max(axis=1, keepdims=True) / 127.0
    q = np.divide(b, d, out=np.zeros_like(b), where=d > 0)
    q = np.sign(q) * np.floor(np.abs(q) + 0.5)
    return (q * _f16(d)).reshape(shape)


def _f16(x):
    return x.astype(np.float16).astype(np.float64)


class RefModel:
    """Float64 reference model; weights are dequantised once, on first use, and kept (about 1.1 GB for SmolLM2)."""

    def __init__(self, path=DEFAULT_MODEL, emulate_q8=False):
        self.path = path
        # Diagnostic only (never used for fixtures' reference logits): round every matmul input to 8-bit blocks of 32
        # and the KV cache / attention operands to f16, as llama.cpp does, to show how much of the distance between
        # llama.cpp and this reference is activation quantisation noise.
        self.emulate_q8 = emulate_q8
        self.reader = GGUFReader(path)
        r = self.reader
        self.arch = _field(r, "general.architecture")
        if self.arch not in ("llama", "qwen2"):
            raise ValueError(f"{path}: architecture {self.arch!r} is not llama or qwen2")
        a = self.arch
        self.n_layer = int(_field(r, f"{a}.block_count"))
        self.n_embd = int(_field(r, f"{a}.embedding_length"))
        self.n_ff = int(_field(r, f"{a}.feed_forward_length"))
        self.n_head = int(_field(r, f"{a}.attention.head_count"))
        self.n_head_kv = int(_field(r, f"{a}.attention.head_count_kv", self.n_head))
        self.head_dim = int(_field(r, f"{a}.attention.key_length", self.n_embd // self.n_head))
        self.rope_dim = int(_field(r, f"{a}.rope.dimension_count", self.head_dim))
        self.rope_base = float(_field(r, f"{a}.rope.freq_base", 10000.0))
        self.eps = float(_field(r, f"{a}.attention.layer_norm_rms_epsilon", 1e-5))
        # llama.cpp: LLAMA_ROPE_TYPE_NORM for llama, LLAMA_ROPE_TYPE_NEOX for qwen2.
        self.rope_neox = self.arch == "qwen2"
        self._tensors = {t.name: t for t in r.tensors}
        self._cache = {}
        self.tied_output = "output.weight" not in self._tensors
        self.n_vocab = int(self._tensors["token_embd.weight"].shape[1])  # GGML order: [n_embd, n_vocab]
        # eps is stored as f32 in the file; llama.cpp uses that f32 value, and so do we (exactly representable).

    # ---- weights -----------------------------------------------------------------------------------------------
    def has(self, name):
        return name in self._tensors

    def w(self, name):
        """Tensor as float64, numpy shape (rows, cols) = (GGML ne1, ne0): a matrix maps cols -> rows."""
        if name not in self._cache:
            t = self._tensors[name]
            a = dequantize(t.data, t.tensor_type)
            ne = [int(n) for n in t.shape]  # GGML order, fastest dimension first
            self._cache[name] = np.asarray(a, dtype=np.float64).reshape(list(reversed(ne)))
        return self._cache[name]

    # ---- building blocks ---------------------------------------------------------------------------------------
    def rmsnorm(self, x, weight):
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + self.eps) * weight

    def rope(self, x, pos):
        """Rotate x (T, heads, head_dim) in place-free fashion; pos (T,) integer positions."""
        d = self.rope_dim
        half = d // 2
        i = np.arange(half, dtype=np.float64)
        inv_freq = self.rope_base ** (-2.0 * i / d)
        if self.has("rope_freqs.weight"):
            inv_freq = inv_freq / self.w("rope_freqs.weight").reshape(-1)[:half]
        ang = pos.astype(np.float64)[:, None] * inv_freq[None, :]  # (T, half)
        cos = np.cos(ang)[:, None, :]
        sin = np.sin(ang)[:, None, :]
        out = x.copy()
        if self.rope_neox:
            a, b = x[..., :half], x[..., half:d]
        else:
            a, b = x[..., 0:d:2], x[..., 1:d:2]
        ra = a * cos - b * sin
        rb = a * sin + b * cos
        if self.rope_neox:
            out[..., :half], out[..., half:d] = ra, rb
        else:
            out[..., 0:d:2], out[..., 1:d:2] = ra, rb
        return out

    def linear(self, x, name, bias=None):
        if self.emulate_q8:
            x = _q8_blocks(x)
        y = x @ self.w(name).T
        if bias is not None and self.has(bias):
            y = y + self.w(bias).reshape(-1)
        return y

    def attention(self, x, L, pos, cache=None):
        T = x.shape[0]
        H, Hkv, hd = self.n_head, self.n_head_kv, self.head_dim
        p = f"blk.{L}."
        h = self.rmsnorm(x, self.w(p + "attn_norm.weight").reshape(-1))
        q = self.linear(h, p + "attn_q.weight", p + "attn_q.bias").reshape(T, H, hd)
        k = self.linear(h, p + "attn_k.weight", p + "attn_k.bias").reshape(T, Hkv, hd)
        v = self.linear(h, p + "attn_v.weight", p + "attn_v.bias").reshape(T, Hkv, hd)
        q = self.rope(q, pos)
        k = self.rope(k, pos)
        if self.emulate_q8:                          # llama.cpp: f16 KV cache, Q rounded to f16 for K.Q
            q, k, v = _f16(q), _f16(k), _f16(v)
        if cache is not None:                        # earlier positions of this sequence
            if L in cache:
                k = np.concatenate([cache[L][0], k])
                v = np.concatenate([cache[L][1], v])
            cache[L] = (k, v)
        S = k.shape[0]                               # keys: positions 0..S-1; queries: S-T..S-1
        group = H // Hkv
        kv_of_head = np.arange(H) // group           # GQA: query head h reads KV head h // group
        qh = q.transpose(1, 0, 2)                    # (H, T, hd)
        kh = k.transpose(1, 0, 2)[kv_of_head]        # (H, S, hd)
        vh = v.transpose(1, 0, 2)[kv_of_head]
        s = np.matmul(qh, kh.transpose(0, 2, 1)) / np.sqrt(hd)  # (H, T, S)
        s = s + np.triu(np.full((T, S), -np.inf), k=S - T + 1)[None]  # causal: query at t sees keys <= t
        s = s - s.max(axis=-1, keepdims=True)
        e = np.exp(s)
        prob = e / e.sum(axis=-1, keepdims=True)
        if self.emulate_q8:
            prob = _f16(prob)
        o = np.matmul(prob, vh).transpose(1, 0, 2).reshape(T, H * hd)
        return self.linear(o, p + "attn_output.weight", p + "attn_output.bias")

    def ffn(self, x, L):
        p = f"blk.{L}."
        h = self.rmsnorm(x, self.w(p + "ffn_norm.weight").reshape(-1))
        g = self.linear(h, p + "ffn_gate.weight")
        u = self.linear(h, p + "ffn_up.weight")
        silu = g / (1.0 + np.exp(-g))
        return self.linear(silu * u, p + "ffn_down.weight")

    # ---- whole model -------------------------------------------------------------------------------------------
    def hidden(self, ids, cache=None):
        """Final-normed hidden states (T, n_embd) for the token ids.  Without a cache they sit at positions 0..T-1;
        with one (a dict, initially empty, that this fills with each layer's K and V) they follow the positions the
        cache already holds, so a sequence can be extended one token at a time."""
        ids = np.asarray(ids, dtype=np.int64)
        if ids.min() < 0 or ids.max() >= self.n_vocab:
            raise ValueError("token id out of range")
        start = cache[0][0].shape[0] if cache else 0
        pos = np.arange(start, start + len(ids))
        x = self.w("token_embd.weight")[ids].copy()
        for L in range(self.n_layer):
            x = x + self.attention(x, L, pos, cache)
            x = x + self.ffn(x, L)
        return self.rmsnorm(x, self.w("output_norm.weight").reshape(-1))

    def output_weight(self):
        return self.w("token_embd.weight" if self.tied_output else "output.weight")

    def forward(self, ids, rows=None):
        """Logits (float64).  rows=None: the last position, shape (n_vocab,); else logits of those rows (R, n_vocab)."""
        h = self.hidden(ids)
        W = self.output_weight()
        if rows is None:
            return h[-1] @ W.T
        return h[np.asarray(rows)] @ W.T

    def greedy(self, ids, n, cache=None):
        """Greedy continuation: n argmax tokens, each fed back (KV-cached), never stopped early.
        Returns (tokens, top1 - top2 logit gap at each step)."""
        cache = {} if cache is None else cache
        W = self.output_weight()
        logits = self.hidden(ids, cache)[-1] @ W.T
        toks, gaps = [], []
        for step in range(n):
            t = int(np.argmax(logits))
            part = np.partition(logits, -2)
            toks.append(t)
            gaps.append(float(part[-1] - part[-2]))
            if step + 1 < n:
                logits = self.hidden([t], cache)[-1] @ W.T
        return toks, gaps

    def argmax_all(self, ids, chunk=256):
        """Argmax of the logits at every position (teacher forcing), computed in chunks to bound memory."""
        h = self.hidden(ids)
        W = self.output_weight()
        return np.concatenate([np.argmax(h[i:i + chunk] @ W.T, axis=-1) for i in range(0, len(h), chunk)])


def noise_study(model_path, fixture_path):
    """Print, per fixture prompt, the reference's and the 8-bit emulation's agreement with llama.cpp."""
    import base64
    import json
    with open(fixture_path, encoding="utf-8") as f:
        fx = json.load(f)
    models = {"float64": RefModel(model_path), "emulate_q8": RefModel(model_path, emulate_q8=True)}
    totals = {k: [0, 0, 0.0, 0, 0.0] for k in models}  # positions, agreeing, worst gap, greedy equal, worst gap
    for pr in fx["prompts"]:
        ids, tf = pr["ids"], np.array(pr["llamacpp_tf_top1"])
        gaps, ggaps, lg = np.array(pr["llamacpp_tf_margin"]), pr["llamacpp_greedy_margin"], pr["llamacpp_greedy"]
        ref_last = np.frombuffer(base64.b64decode(pr["ref_last_logits_b64"]), "<f4").astype(np.float64)
        for name, m in models.items():
            W = m.output_weight()
            cache = {}
            h = m.hidden(ids, cache)
            am = np.concatenate([np.argmax(h[i:i + 256] @ W.T, axis=-1) for i in range(0, len(h), 256)])
            dis = am != tf
            last_d = float(np.abs(h[-1] @ W.T - ref_last).max())
            # Greedy, continuing from the cache the teacher-forced pass filled.
            logits, toks = h[-1] @ W.T, []
            for step in range(len(lg)):
                toks.append(int(np.argmax(logits)))
                if step + 1 < len(lg):
                    logits = m.hidden([toks[-1]], cache)[-1] @ W.T
            div = next((i for i in range(len(lg)) if toks[i] != lg[i]), -1)
            t = totals[name]
            t[0] += len(ids)
            t[1] += int((~dis).sum())
            t[2] = max(t[2], float(gaps[dis].max()) if dis.any() else 0.0)
            t[3] += div < 0
            t[4] = max(t[4], ggaps[div] if div >= 0 else 0.0)
            print(f"{pr['name']:16s} {name:10s} last max|d| vs float64 {last_d:.4f}  tf agree {(~dis).mean():.4f} "
                  f"(largest llama.cpp gap at a disagreement {float(gaps[dis].max()) if dis.any() else 0:.3f})  "
                  f"greedy " + ("equal" if div < 0 else f"differs at {div} (llama.cpp gap {ggaps[div]:.4f})"),
                  flush=True)
    for name, t in totals.items():
        print(f"{name}: tf agreement {t[1]}/{t[0]} = {t[1] / t[0]:.4f}, largest gap at a disagreement {t[2]:.3f}; "
              f"greedy equal {t[3]}/{len(fx['prompts'])}, largest gap at a divergence {t[4]:.4f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=DEFAULT_MODEL)
    what = ap.add_mutually_exclusive_group(required=True)
    what.add_argument("--ids", help="comma-separated token ids: print the best next tokens")
    what.add_argument("--noise", metavar="FIXTURE", help="run the noise study on tests/fixtures/forward.json")
    ap.add_argument("--top", type=int, default=10)
    args = ap.parse_args()
    if args.noise:
        return noise_study(args.model, args.noise)
    m = RefModel(args.model)
    ids = [int(s) for s in args.ids.split(",") if s.strip()]
    logits = m.forward(ids)
    order = np.argsort(-logits, kind="stable")[: args.top]
    for i in order:
        print(f"{int(i):6d} {logits[i]: .6f}")


if __name__ == "__main__":
    sys.exit(main())
