#!/usr/bin/env python3
"""Write tests/fixtures/tiny/: small random GGUF models that exercise the engine's code paths the real default model
(SmolLM2-135M, llama, tied, Q4_1) never reaches, and the float64 reference logits tests/test_tiny_models.c checks
the engine against.

Models (each <name>.gguf with <name>.json next to it):

  qwen2-f32f16   arch qwen2: NeoX RoPE pairing, q/k/v biases, rope base 1e6, untied output.weight,
                 grouped-query attention (4 heads, 2 KV heads), n_embd 64 != n_ff 128, F32 and F16 weights.
                 Tokenizer: byte-level BPE with pre-tokenizer "qwen2", ChatML template.
  llama-mixq     arch llama: adjacent-pair RoPE, Llama-3.1-style rope_freqs.weight frequency divisors, tied output
                 (token_embd in Q6_K), weights in Q4_0 Q4_1 Q8_0 Q4_K Q5_K Q6_K BF16 (F16, F32: the other models),
                 a different type for Q, K and V of a layer (three activation types in one fused matmul).
                 n_embd 256 (K-quants need rows of 256).  Tokenizer pre "llama-bpe", Llama-3 chat template.
  llama-mqa      arch llama, F16 (output F32): multi-query attention (1 KV head), partial RoPE
                 (rope.dimension_count 8 of a head dim of 16), untied, no chat template.  Tokenizer pre "gpt2".

Weights are small random normals (norm weights ~1), so logits are O(1).  K-quant tensors are quantised by the
small quantisers below (written from the block layouts; gguf.quants.quantize lacks them) and checked against
gguf.quants.dequantize before anything is written.

Each JSON holds the hyperparameters the engine should report, tokenizer and chat expectations (made with HF
`tokenizers` and `jinja2`, independent of the C code), and for a few fixed token sequences the float64 reference
logits of scripts/ref/forward_ref.py (RefModel, reading the written GGUF back; it applies rope_freqs.weight): all
positions for sequences of 1, 7 and 40 tokens, the last position for one of 300 (longer than the engine's 256-token
prefill batch), as base64 of float32 little-endian, row after row.  Next to them, "noise_max_abs": how far a float64
emulation of the engine's own roundings (8-bit activations per weight type -- blocks of 32 for Q4_0/Q4_1/Q8_0, 256
for K-quants, none for float weights -- and f16 K/V) lands from the exact reference: the scale of error the engine
is expected to show (see the C test's bounds).

Regenerate (deterministic: a fixed seed, byte-identical output on the same machine and numpy):
    python3 scripts/ref/make_tiny_models.py [--out tests/fixtures/tiny]
Needs: numpy, gguf (0.19), tokenizers, jinja2.
"""

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # a fixed summation order for the reference's matmuls
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import base64  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402

import numpy as np  # noqa: E402
import gguf  # noqa: E402
from gguf import GGMLQuantizationType as T  # noqa: E402
from gguf.constants import GGML_QUANT_SIZES  # noqa: E402
from gguf.quants import dequantize, quantize  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from forward_ref import RefModel  # noqa: E402
from gpt2bytes import bytes_to_unicode  # noqa: E402

SEED = 20250611
MAX_BATCH = 256  # the engine's prefill batch: the long sequence must be longer

# ---- K-quant quantisers ---------------------------------------------------------------------------------------
# Written from the block layouts (ggml's k-quants), vectorised over blocks.  Values: Q4_K/Q5_K x = d*sc[j]*q - dmin*m[j]
# for sub-block j of 32; Q6_K x = d*sc[g]*(q-32) for group g of 16.


def _f16(x):
    return np.asarray(x, dtype=np.float32).astype(np.float16)


def _pack_kscales(sc, mn):
    """8 six-bit scales and 8 six-bit mins (nb, 8) -> the 12-byte packing of Q4_K/Q5_K."""
    out = np.zeros((sc.shape[0], 12), np.uint8)
    for j in range(4):
        out[:, j] = (sc[:, j] & 63) | ((sc[:, j + 4] >> 4) << 6)
        out[:, j + 4] = (mn[:, j] & 63) | ((mn[:, j + 4] >> 4) << 6)
        out[:, j + 8] = (sc[:, j + 4] & 15) | ((mn[:, j + 4] & 15) << 4)
    return out


def _q45k(x, bits):
    nq = (1 << bits) - 1
    b = x.reshape(-1, 8, 32).astype(np.float64)
    lo = np.minimum(b.min(axis=2), 0.0)
    hi = b.max(axis=2)
    scale = (hi - lo) / nq
    mins = -lo
    d = _f16(scale.max(axis=1) / 63).astype(np.float64)
    dmin = _f16(mins.max(axis=1) / 63).astype(np.float64)
    sc = np.clip(np.rint(np.divide(scale, d[:, None], out=np.zeros_like(scale), where=d[:, None] > 0)), 0, 63)
    mn = np.clip(np.rint(np.divide(mins, dmin[:, None], out=np.zeros_like(mins), where=dmin[:, None] > 0)), 0, 63)
    step = d[:, None] * sc
    off = dmin[:, None] * mn
    q = np.divide(b + off[:, :, None], step[:, :, None], out=np.zeros_like(b), where=step[:, :, None] > 0)
    q = np.clip(np.rint(q), 0, nq).astype(np.uint8)                           # (nb, 8, 32)
    sc, mn = sc.astype(np.uint8), mn.astype(np.uint8)
    nb = b.shape[0]
    head = np.concatenate([_f16(d).view(np.uint8).reshape(nb, 2), _f16(dmin).view(np.uint8).reshape(nb, 2),
                           _pack_kscales(sc, mn)], axis=1)
    low = q & 15
    qs = (low[:, 0::2, :] | (low[:, 1::2, :] << 4)).reshape(nb, 128)          # sub-blocks 2c (low) / 2c+1 (high)
    if bits == 4:
        raw = np.concatenate([head, qs], axis=1)
    else:
        hb = (q >> 4) & 1                                                     # bit j of qh[l]: sub-block j
        qh = np.zeros((nb, 32), np.uint8)
        for j in range(8):
            qh |= hb[:, j, :] << j
        raw = np.concatenate([head, qh, qs], axis=1)
    value = (d[:, None, None] * sc[:, :, None]) * q - (dmin[:, None, None] * mn[:, :, None])
    return raw, value.reshape(x.shape)


def _q6k(x):
    b = x.reshape(-1, 16, 16).astype(np.float64)                              # (nb, group, 16)
    nb = b.shape[0]
    idx = np.abs(b).argmax(axis=2)
    amax = np.take_along_axis(b, idx[:, :, None], axis=2)[:, :, 0]            # signed value of largest |x|
    scale = -amax / 32                                                        # so that amax maps to q = -32
    d = _f16(np.abs(scale).max(axis=1) / 127).astype(np.float64)
    sc = np.clip(np.rint(np.divide(scale, d[:, None], out=np.zeros_like(scale), where=d[:, None] > 0)), -127, 127)
    step = d[:, None] * sc
    q = np.divide(b, step[:, :, None], out=np.zeros_like(b), where=step[:, :, None] != 0)
    q = (np.clip(np.rint(q), -32, 31) + 32).astype(np.uint8).reshape(nb, 2, 4, 32)  # (half, quarter, l)
    ql = np.zeros((nb, 2, 64), np.uint8)
    ql[:, :, :32] = (q[:, :, 0] & 15) | ((q[:, :, 2] & 15) << 4)
    ql[:, :, 32:] = (q[:, :, 1] & 15) | ((q[:, :, 3] & 15) << 4)
    qh = (q[:, :, 0] >> 4) | ((q[:, :, 1] >> 4) << 2) | ((q[:, :, 2] >> 4) << 4) | ((q[:, :, 3] >> 4) << 6)
    raw = np.concatenate([ql.reshape(nb, 128), qh.reshape(nb, 64), sc.astype(np.int8).view(np.uint8),
                          _f16(d).view(np.uint8).reshape(nb, 2)], axis=1)
    value = (d[:, None, None] * sc[:, :, None]) * (q.reshape(nb, 16, 16).astype(np.float64) - 32)
    return raw, value.reshape(x.shape)


def quantise(w, qtype):
    """(raw bytes (rows, row_bytes) or a float array, dequantised float64 values) of w (rows, cols)."""
    if qtype == T.F32:
        a = w.astype(np.float32)
        return a, a.astype(np.float64)
    if qtype == T.F16:
        a = w.astype(np.float16)
        return a, a.astype(np.float64)
    if qtype in (T.Q4_K, T.Q5_K, T.Q6_K):
        raw, value = _q6k(w) if qtype == T.Q6_K else _q45k(w, 4 if qtype == T.Q4_K else 5)
        raw = raw.reshape(w.shape[0], -1)
        # the packing must be what the gguf package (and llama.cpp) read back -- exactly
        back = dequantize(raw, qtype).astype(np.float64)
        if not np.array_equal(back, value.astype(np.float32).astype(np.float64)):
            raise AssertionError(f"{qtype.name} packing disagrees with gguf.quants.dequantize")
    else:
        raw = quantize(w.astype(np.float32), qtype)
        value = dequantize(raw, qtype).astype(np.float64)
    err = np.abs(value - w).max() / (np.abs(w).max() + 1e-30)
    if err > 0.2:  # a quantiser gone wrong, not quantisation noise
        raise AssertionError(f"{qtype.name}: relative error {err:.3f}")
    return raw, value


# ---- tokenizer ----------------------------------------------------------------------------------------------

RE_QWEN2 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|"
            r"\s+(?!\S)|\s+")
RE_LLAMA3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
             r"\s*[\r\n]+|\s+(?!\S)|\s+")
RE_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"

# Merges in the byte-level spelling (Ġ = space, Ċ = newline).  "20 2" makes "202": Qwen2's pre-tokenizer splits
# digits one by one, so it can never apply; Llama-3's groups three, so "2024" -> "202" "4".
MERGES = ["Ġ t", "h e", "Ġt he", "a t", "Ġ c", "Ġc at", "Ġ s", "Ġs at", "o n", "Ġ on", "i n", "Ġ m",
          "Ġm at", "2 0", "20 2", "Ċ Ċ", "e r", "Ġ h", "Ġh i", "h i", "u s", "us er", "a n", "a s", "as s",
          "ass i", "assi s", "assis t", "assist an", "assistan t"]
# A token no merge can build: Llama-3's tokenizer takes a pre-token that is itself a token whole (ignore_merges).
EXTRA_TOKENS = ["Ġworld"]

TOKENIZE_TEXTS = [
    "the cat sat on the mat",
    "In 2024, the cat said: hi!\n\nHello world",
    " world worlds",
    "caf\u00e9 \u00fcber \u65e5\u672c 12345",
]


def make_vocab(controls):
    b2u = bytes_to_unicode()
    tokens = [b2u[b] for b in range(256)]
    for m in MERGES:
        a, b = m.split(" ")
        if a not in tokens or b not in tokens:
            raise AssertionError(f"merge {m!r}: parts must be tokens")
        if a + b not in tokens:
            tokens.append(a + b)
    tokens += [t for t in EXTRA_TOKENS if t not in tokens]
    types = [1] * len(tokens)
    for c in controls:
        tokens.append(c)
        types.append(3)
    return tokens, types


def hf_tokenizer(tokens, types, pattern, ignore_merges):
    """An independent byte-level BPE tokenizer (HF tokenizers) with the same vocabulary, for the expected ids."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers
    vocab = {t: i for i, t in enumerate(tokens) if types[i] == 1}
    merges = [tuple(m.split(" ")) for m in MERGES]
    tk = Tokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=ignore_merges))
    tk.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(pattern), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tk.decoder = decoders.ByteLevel()
    tk.add_special_tokens([AddedToken(t, special=True, normalized=False) for i, t in enumerate(tokens)
                           if types[i] == 3])
    for i, t in enumerate(tokens):  # the added tokens must keep their ids
        if tk.token_to_id(t) != i:
            raise AssertionError(f"HF tokenizer id of {t!r}: {tk.token_to_id(t)} != {i}")
    return tk


CHATML = ("{%- for message in messages %}{%- if loop.first and message['role'] != 'system' %}"
          "{{- '<|im_start|>system\\nYou are a tiny test model.<|im_end|>\\n' }}{%- endif %}"
          "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
          "{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}")
LLAMA3 = ("{{- bos_token }}{%- for message in messages %}"
          "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim"
          " + '<|eot_id|>' }}{%- endfor %}"
          "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}")
CHAT_MESSAGES = [{"role": "user", "content": "hi the cat"},
                 {"role": "assistant", "content": " on the mat "},
                 {"role": "user", "content": "2024?"}]


def render_chat(template):
    import jinja2
    # bos_token "": the engine leaves the template's BOS out (the tokenizer's add_bos decides), see engine/chat.c
    return jinja2.Environment().from_string(template).render(messages=CHAT_MESSAGES, add_generation_prompt=True,
                                                             bos_token="")


# ---- models -------------------------------------------------------------------------------------------------

SPECS = {
    "qwen2-f32f16": dict(
        arch="qwen2", n_layer=2, n_embd=64, n_ff=128, n_head=4, n_head_kv=2, rope_base=1e6, eps=1e-6,
        tied=False, biases=True, rope_freqs=False, rope_dim=None, pre="qwen2", pattern=RE_QWEN2,
        ignore_merges=False, controls=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        bos="<|endoftext|>", eos="<|im_end|>", add_bos=False, template=CHATML, chat="chatml",
        types={"token_embd": T.F16, "output": T.F16, "attn_q": T.F16, "attn_k": T.F32, "attn_v": T.F16,
               "attn_output": T.F32, "ffn_gate": T.F16, "ffn_up": T.F16, "ffn_down": T.F16}),
    "llama-mixq": dict(
        arch="llama", n_layer=2, n_embd=256, n_ff=256, n_head=8, n_head_kv=2, rope_base=5e5, eps=1e-5,
        tied=True, biases=False, rope_freqs=True, rope_dim=None, pre="llama-bpe", pattern=RE_LLAMA3,
        ignore_merges=True,
        controls=["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
        bos="<|begin_of_text|>", eos="<|eot_id|>", add_bos=True, template=LLAMA3, chat="llama3",
        # layer 0: Q, K, V in three types whose activations differ (Q8_K, F32, Q8_1)
        types=[{"token_embd": T.Q6_K, "attn_q": T.Q4_K, "attn_k": T.BF16, "attn_v": T.Q8_0,
                "attn_output": T.Q4_0, "ffn_gate": T.Q5_K, "ffn_up": T.Q4_1, "ffn_down": T.Q6_K},
               {"attn_q": T.Q8_0, "attn_k": T.Q5_K, "attn_v": T.Q4_K, "attn_output": T.Q6_K,
                "ffn_gate": T.Q4_0, "ffn_up": T.Q4_K, "ffn_down": T.Q8_0}]),
    "llama-mqa": dict(
        arch="llama", n_layer=2, n_embd=64, n_ff=96, n_head=4, n_head_kv=1, rope_base=1e4, eps=1e-5,
        tied=False, biases=False, rope_freqs=False, rope_dim=8, pre="gpt2", pattern=RE_GPT2,
        ignore_merges=False, controls=["<|endoftext|>"], bos="<|endoftext|>", eos="<|endoftext|>",
        add_bos=False, template=None, chat=None,
        types={"token_embd": T.F16, "output": T.F32, "attn_q": T.F16, "attn_k": T.F16, "attn_v": T.F16,
               "attn_output": T.F16, "ffn_gate": T.F16, "ffn_up": T.F16, "ffn_down": T.F16}),
}


def tensor_type(spec, layer, kind):
    types = spec["types"]
    if isinstance(types, list):
        if layer is None:
            return types[0][kind]
        return types[layer][kind]
    return types[kind]


def llama31_rope_factors(base, dim, factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0, orig_ctx=32):
    """Llama-3.1's rope_freqs divisors (the same schedule, with a tiny original context so that positions of a short
    test sequence see the difference): 1 for short wavelengths, `factor` for long ones, a smooth ramp between."""
    inv = base ** (-np.arange(0, dim, 2, dtype=np.float64) / dim)
    wavelen = 2 * np.pi / inv
    low_wl, high_wl = orig_ctx / low_freq_factor, orig_ctx / high_freq_factor
    out = np.empty_like(inv)
    for i, wl in enumerate(wavelen):
        if wl < high_wl:
            out[i] = 1.0
        elif wl > low_wl:
            out[i] = factor
        else:
            smooth = (orig_ctx / wl - low_freq_factor) / (high_freq_factor - low_freq_factor)
            out[i] = 1.0 / ((1 - smooth) / factor + smooth)
    return out.astype(np.float32)


def write_model(name, spec, outdir, rng):
    arch = spec["arch"]
    E, F, H, Hkv, L = spec["n_embd"], spec["n_ff"], spec["n_head"], spec["n_head_kv"], spec["n_layer"]
    hd = E // H
    KV = Hkv * hd
    tokens, types = make_vocab(spec["controls"])
    V = len(tokens)
    path = os.path.join(outdir, name + ".gguf")
    w = gguf.GGUFWriter(path, arch)
    w.add_name(f"dsachat tiny test model {name}")
    w.add_block_count(L)
    w.add_context_length(512)
    w.add_embedding_length(E)
    w.add_feed_forward_length(F)
    w.add_head_count(H)
    w.add_head_count_kv(Hkv)
    w.add_rope_freq_base(spec["rope_base"])
    w.add_layer_norm_rms_eps(spec["eps"])
    w.add_rope_dimension_count(spec["rope_dim"] or hd)
    w.add_vocab_size(V)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(spec["pre"])
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(MERGES)
    w.add_bos_token_id(tokens.index(spec["bos"]))
    w.add_eos_token_id(tokens.index(spec["eos"]))
    w.add_add_bos_token(spec["add_bos"])
    if spec["template"]:
        w.add_chat_template(spec["template"])

    def mat(tname, rows, cols, std, qtype):
        raw, _ = quantise(rng.standard_normal((rows, cols)) * std, qtype)
        if raw.dtype == np.uint8:  # quantised (and bf16): raw bytes, shape from the byte shape
            w.add_tensor(tname, raw, raw_dtype=qtype)
        else:
            w.add_tensor(tname, raw)

    def vec(tname, v):
        w.add_tensor(tname, np.asarray(v, dtype=np.float32))

    # std: logits = Wout . (unit-RMS vector) have std ~ std_out * sqrt(E) ~ 1.2; q.k / sqrt(hd) ~ O(1) so that
    # attention is far from uniform and RoPE shows
    s_attn = 1.1 / np.sqrt(E)
    mat("token_embd.weight", V, E, 1.2 / np.sqrt(E), tensor_type(spec, None, "token_embd"))
    if not spec["tied"]:
        mat("output.weight", V, E, 1.2 / np.sqrt(E), tensor_type(spec, None, "output"))
    vec("output_norm.weight", 1.0 + 0.1 * rng.standard_normal(E))
    if spec["rope_freqs"]:
        vec("rope_freqs.weight", llama31_rope_factors(spec["rope_base"], spec["rope_dim"] or hd))
    for li in range(L):
        p = f"blk.{li}."
        vec(p + "attn_norm.weight", 1.0 + 0.1 * rng.standard_normal(E))
        vec(p + "ffn_norm.weight", 1.0 + 0.1 * rng.standard_normal(E))
        mat(p + "attn_q.weight", E, E, s_attn, tensor_type(spec, li, "attn_q"))
        mat(p + "attn_k.weight", KV, E, s_attn, tensor_type(spec, li, "attn_k"))
        mat(p + "attn_v.weight", KV, E, 1.0 / np.sqrt(E), tensor_type(spec, li, "attn_v"))
        mat(p + "attn_output.weight", E, E, 0.7 / np.sqrt(E), tensor_type(spec, li, "attn_output"))
        if spec["biases"]:
            vec(p + "attn_q.bias", 0.3 * rng.standard_normal(E))
            vec(p + "attn_k.bias", 0.5 * rng.standard_normal(KV))
            vec(p + "attn_v.bias", 0.2 * rng.standard_normal(KV))
        mat(p + "ffn_gate.weight", F, E, 1.0 / np.sqrt(E), tensor_type(spec, li, "ffn_gate"))
        mat(p + "ffn_up.weight", F, E, 1.0 / np.sqrt(E), tensor_type(spec, li, "ffn_up"))
        mat(p + "ffn_down.weight", E, F, 0.7 / np.sqrt(F), tensor_type(spec, li, "ffn_down"))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path, tokens, types


# ---- the engine's roundings, emulated (for the noise scale only) ----------------------------------------------

LEGACY = {T.Q4_0, T.Q4_1, T.Q8_0}
KQUANT = {T.Q4_K, T.Q5_K, T.Q6_K}


def _q8_act(x, block):
    """Symmetric 8-bit blocks as the engine's from_float: d = max|x|/127 (float), q = round-half-even(x/d)."""
    shape = x.shape
    b = x.reshape(-1, block)
    d = (np.abs(b).max(axis=1, keepdims=True) / 127.0).astype(np.float32).astype(np.float64)
    q = np.rint(np.divide(b, d, out=np.zeros_like(b), where=d > 0))
    return (q * d).reshape(shape)


class EngineNoise(RefModel):
    """RefModel with the engine's roundings: 8-bit activations for quantised weights, f16 K and V.  (K is rounded
    before RoPE here, after it in the engine: the same size of error, not the same bits.)"""

    def linear(self, x, name, bias=None):
        t = self._tensors[name].tensor_type
        if t in LEGACY:
            x = _q8_act(x, 32)
        elif t in KQUANT:
            x = _q8_act(x, 256)
        y = x @ self.w(name).T
        if bias is not None and self.has(bias):
            y = y + self.w(bias).reshape(-1)
        if name.endswith("attn_k.weight") or name.endswith("attn_v.weight"):
            y = y.astype(np.float16).astype(np.float64)
        return y


def b64f32(a):
    """Row-major float32 little-endian, base64: compact, and float32 keeps ~7 digits, far below any bound."""
    return base64.b64encode(np.asarray(a, dtype="<f4").tobytes()).decode("ascii")


def dump(fx):
    """JSON with one line per key (and per sequence): readable, without one line per number."""
    def c(v):
        return json.dumps(v, ensure_ascii=False, separators=(", ", ": "))
    lines = []
    for k, v in fx.items():
        if k == "sequences":
            lines.append(f' "{k}": [\n' + ",\n".join("  " + c(s) for s in v) + "\n ]")
        else:
            lines.append(f" {c(k)}: {c(v)}")
    return "{\n" + ",\n".join(lines) + "\n}\n"


def gap(row):
    s = np.sort(row)
    return float(s[-1] - s[-2])


def make_fixture(name, spec, outdir, rng):
    path, tokens, types = write_model(name, spec, outdir, rng)
    ref, emu = RefModel(path), EngineNoise(path)
    V = len(tokens)
    hd = spec["n_embd"] // spec["n_head"]
    tk = hf_tokenizer(tokens, types, spec["pattern"], spec["ignore_merges"])
    fx = {
        "generator": "scripts/ref/make_tiny_models.py",
        "model": name + ".gguf",
        "hparams": {
            "arch": spec["arch"], "n_layer": spec["n_layer"], "n_embd": spec["n_embd"], "n_ff": spec["n_ff"],
            "n_head": spec["n_head"], "n_head_kv": spec["n_head_kv"], "head_dim": hd,
            "rope_dim": spec["rope_dim"] or hd, "n_vocab": V, "rope_base": spec["rope_base"],
            "norm_eps": spec["eps"], "rope_neox": int(spec["arch"] == "qwen2"), "tied_output": int(spec["tied"]),
            "n_ctx_train": 512,
        },
        "weight_types": sorted({T(t.tensor_type).name for t in ref.reader.tensors}),
        "has_rope_freqs": int(spec["rope_freqs"]),
        "has_biases": int(spec["biases"]),
        "tokenizer": {
            "pre": spec["pre"], "bos": tokens.index(spec["bos"]), "eos": tokens.index(spec["eos"]),
            "add_bos": int(spec["add_bos"]),
            "eog": sorted({tokens.index(spec["eos"])} |
                          {i for i, t in enumerate(tokens) if types[i] == 3 and t in
                           ("<|im_end|>", "<|eot_id|>", "<|endoftext|>", "<|end_of_text|>", "<|eom_id|>")}),
            "cases": [{"text": s, "ids": tk.encode(s, add_special_tokens=False).ids} for s in TOKENIZE_TEXTS],
        },
    }
    if spec["chat"]:
        text = render_chat(spec["template"])
        chat_ids = tk.encode(text, add_special_tokens=False).ids
        fx["chat"] = {"kind": spec["chat"], "messages": CHAT_MESSAGES, "add_generation_prompt": 1,
                      "text": text, "ids": chat_ids}
    else:
        fx["chat"] = {"kind": None}
    seqs = [("one", [int(rng.integers(0, V))], True),
            ("seven", [int(v) for v in rng.integers(0, V, 7)], True),
            ("forty", [int(v) for v in rng.integers(0, V, 40)], True),
            ("long", [int(v) for v in rng.integers(0, V, MAX_BATCH + 44)], False)]
    fx["sequences"] = []
    for sname, ids, all_rows in seqs:
        h = ref.hidden(ids)
        W = ref.output_weight()
        rows = h if all_rows else h[-1:]
        logits = rows @ W.T
        he = emu.hidden(ids)
        le = (he if all_rows else he[-1:]) @ emu.output_weight().T
        fx["sequences"].append({
            "name": sname, "ids": ids, "all_logits": int(all_rows), "n_rows": int(logits.shape[0]),
            "logits_b64": b64f32(logits),
            "noise_max_abs": round(float(np.abs(le - logits).max()), 6),
            "min_gap": round(min(gap(r) for r in logits), 6),
            "logit_std": round(float(logits.std()), 4),
        })
    with open(os.path.join(outdir, name + ".json"), "w", encoding="utf-8") as f:
        f.write(dump(fx))
    return path


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=os.path.join(here, "..", "..", "tests", "fixtures", "tiny"))
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    for i, (name, spec) in enumerate(SPECS.items()):
        rng = np.random.default_rng([SEED, i])
        path = make_fixture(name, spec, args.out, rng)
        js = os.path.join(args.out, name + ".json")
        with open(js, encoding="utf-8") as f:
            fx = json.load(f)
        print(f"{name}: {os.path.getsize(path)} + {os.path.getsize(js)} bytes; " +
              ", ".join(f"{s['name']}[{len(s['ids'])}] noise {s['noise_max_abs']:.4g} std {s['logit_std']}"
                        f" min gap {s['min_gap']:.3g}" for s in fx["sequences"]))


if __name__ == "__main__":
    sys.exit(main())
