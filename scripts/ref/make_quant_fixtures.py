#!/usr/bin/env python3
"""Write tests/fixtures/quant/<type>.bin: a synthetic tensor of each weight type and the float32 values that the
`gguf` package's numpy dequantiser (gguf.quants.dequantize, PyPI gguf) gives for it.  tests/test_quant.c checks
that our plain-C to_float reproduces them bit for bit.

Each tensor is random bytes, except the f16 scale fields (d, m, dmin), which are set to finite values of a
realistic size so that no block decodes to nan/inf.  The seed is fixed: running the script again rewrites the
same bytes.

File layout (little-endian):
    char magic[4] = "DSQF"; uint32 version = 1, type (ggml id), rows, cols, nbytes
    uint8 raw[nbytes]          the tensor as stored in a GGUF file, row after row
    float32 values[rows*cols]  gguf.quants.dequantize(raw)

Usage: scripts/ref/make_quant_fixtures.py [OUTDIR]   (default: tests/fixtures/quant next to this script)
"""
import os
import struct
import sys

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf.constants import GGML_QUANT_SIZES
from gguf.quants import dequantize

ROWS, COLS = 4, 512
SEED = 20240917

# type -> byte offsets, inside each block, of the f16 fields that act as scales (d) or offsets (m, dmin)
SCALE_FIELDS = {
    T.Q4_0: [0], T.Q4_1: [0], T.Q5_0: [0], T.Q5_1: [0], T.Q8_0: [0],
    T.Q4_K: [0], T.Q5_K: [0], T.Q6_K: [208],
}
OFFSET_FIELDS = {T.Q4_1: [2], T.Q5_1: [2], T.Q4_K: [2], T.Q5_K: [2]}
# Types added later go at the end, so that the random stream (and so the files) of the earlier ones stay the same.
ORDER = [T.F32, T.F16, T.BF16, T.Q4_0, T.Q4_1, T.Q8_0, T.Q4_K, T.Q5_K, T.Q6_K, T.Q5_0, T.Q5_1]


def random_f16(rng, n, lo_exp, hi_exp, signed):
    """n finite float16 values m * 2^e, m in [1, 2), e in [lo_exp, hi_exp], as raw uint16."""
    v = rng.uniform(1.0, 2.0, n) * np.exp2(rng.integers(lo_exp, hi_exp + 1, n))
    if signed:
        v *= rng.choice([-1.0, 1.0], n)
    return v.astype(np.float16).view(np.uint16)


def make(qtype, rng):
    blck, tsize = GGML_QUANT_SIZES[qtype]
    nblocks = ROWS * COLS // blck
    if qtype == T.F32:
        return rng.standard_normal(ROWS * COLS).astype(np.float32).view(np.uint8).reshape(ROWS, -1)
    if qtype in (T.F16, T.BF16):
        h = rng.integers(0, 1 << 16, ROWS * COLS, dtype=np.uint32).astype(np.uint16)
        exp_mask = 0x7C00 if qtype == T.F16 else 0x7F80
        bad = (h & exp_mask) == exp_mask  # inf/nan: replace by a finite value with the same sign/mantissa
        h[bad] &= ~np.uint16(exp_mask & (exp_mask >> 1))
        return h.view(np.uint8).reshape(ROWS, -1)
    raw = rng.integers(0, 256, (nblocks, tsize), dtype=np.uint32).astype(np.uint8)
    for off in SCALE_FIELDS[qtype]:
        raw[:, off:off + 2] = random_f16(rng, nblocks, -10, -4, signed=False).view(np.uint8).reshape(-1, 2)
    for off in OFFSET_FIELDS.get(qtype, []):
        raw[:, off:off + 2] = random_f16(rng, nblocks, -8, -3, signed=qtype in (T.Q4_1, T.Q5_1)).view(np.uint8).reshape(-1, 2)
    return raw.reshape(ROWS, -1)


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.normpath(os.path.join(here, "../../tests/fixtures/quant"))
    os.makedirs(out, exist_ok=True)
    rng = np.random.default_rng(SEED)
    for qtype in ORDER:
        raw = make(qtype, rng)
        vals = np.asarray(dequantize(raw, qtype), dtype=np.float32).reshape(ROWS, COLS)
        assert np.isfinite(vals).all(), qtype.name
        path = os.path.join(out, qtype.name.lower() + ".bin")
        with open(path, "wb") as f:
            f.write(b"DSQF" + struct.pack("<5I", 1, int(qtype), ROWS, COLS, raw.nbytes))
            f.write(raw.tobytes())
            f.write(vals.astype("<f4").tobytes())
        print(f"{path}: {qtype.name} {ROWS}x{COLS}, {raw.nbytes} bytes")


if __name__ == "__main__":
    main()
