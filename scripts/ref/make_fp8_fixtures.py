#!/usr/bin/env python3
"""Write tests/fixtures/fp8_e4m3.json: FP8 e4m3 decodings and encodings from an independent implementation,
PyPI's `ml_dtypes` (float8_e4m3fn), for tests/test_dsa_ops.c to compare dsa_fp8_to_f32 / dsa_f32_to_fp8 with.

  "decode": [[code, value], ...]   every code except the NaN codes 0x7F and 0xFF (our decoder gives ±480 there,
                                   which is fine: we never produce them).  Values are exact in float64.
  "encode": [[bits, code, x], ...] bits: the float32 input as a uint32 (x only for reading, "inf"/"-inf" as strings), code: the e4m3 byte
                                   of ml_dtypes' round-to-nearest-even cast float32 -> float8_e4m3fn.
            ml_dtypes turns overflow (|x| > 464, inf) into NaN; our encoder saturates, so for those inputs the
            expected code is ±448 (0x7E / 0xFE) instead and the "saturated" list holds their bits.
Inputs: zero and -0, every representable value, every exact midpoint (ties, subnormal ones included, and 464
between 448 and the NaN code) with its float32 neighbours, values near and above 448 (inf too), tiny values,
then log-uniform random floats of both signs up to ~2000 samples.  The seed is fixed.

Usage: scripts/ref/make_fp8_fixtures.py [OUT]   (default: tests/fixtures/fp8_e4m3.json next to this script)
       needs: pip install ml_dtypes numpy
"""
import json
import os
import sys

import ml_dtypes
import numpy as np

SEED = 20250101
TOTAL = 2000
E4M3 = ml_dtypes.float8_e4m3fn


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(here, "..", "..", "tests", "fixtures", "fp8_e4m3.json")

    codes = np.arange(256, dtype=np.uint8)
    vals = codes.view(E4M3).astype(np.float64)
    decode = [[int(c), float(v)] for c, v in zip(codes, vals) if c not in (0x7F, 0xFF)]

    pos = sorted(float(v) for c, v in zip(codes, vals) if c < 0x7F)  # 0 .. 448, all finite non-negative values
    xs = [0.0, -0.0]
    for v in pos:
        xs += [v, -v]
    mids = [(a + b) / 2 for a, b in zip(pos, pos[1:])] + [464.0]  # 464: tie between 448 and (NaN) 480
    for m in mids:
        f = np.float32(m)
        assert float(f) == m
        for y in (f, np.nextafter(f, np.float32(np.inf)), np.nextafter(f, np.float32(0))):
            xs += [float(y), -float(y)]
    for v in (447.0, 447.9, 448.5, 449.0, 455.0, 463.99, 464.01, 470.0, 479.0, 480.0, 481.0, 500.0, 1000.0, 65504.0,
              1e10, 3.0e38, float("inf"), 2.0**-10, 2.0**-11, 2.0**-12, 2.0**-20, 1e-30, 1e-45, 2.0**-6, 2.0**-7):
        xs += [v, -v]
    rng = np.random.default_rng(SEED)
    while len(xs) < TOTAL:
        e = rng.uniform(-13, 10)
        xs.append(float(np.float32((2.0**e) * (1 if rng.random() < 0.5 else -1))))

    x32 = np.array(xs, dtype=np.float32)
    enc = x32.astype(E4M3).view(np.uint8)
    encode, saturated = [], []
    for x, c in zip(x32, enc):
        c = int(c)
        if c in (0x7F, 0xFF):  # ml_dtypes' NaN for overflow: we saturate to ±448 instead
            assert abs(float(x)) > 448
            c = 0xFE if np.signbit(x) else 0x7E
            saturated.append(int(x.view(np.uint32)))
        encode.append([int(x.view(np.uint32)), c, float(x) if np.isfinite(x) else repr(float(x))])

    doc = {
        "source": "ml_dtypes %s float8_e4m3fn (numpy %s)" % (ml_dtypes.__version__, np.__version__),
        "note": "encode: round to nearest even; where ml_dtypes gives NaN (overflow) the code is ±448 (0x7E/0xFE), "
                "the inputs listed in 'saturated'. decode skips the NaN codes 0x7F/0xFF.",
        "decode": decode,
        "encode": encode,
        "saturated": saturated,
    }
    with open(out, "w") as f:
        json.dump(doc, f, separators=(",", ":"), allow_nan=False)
        f.write("\n")
    print("wrote %s: %d decodings, %d encodings (%d saturated)" % (out, len(decode), len(encode), len(saturated)))


if __name__ == "__main__":
    main()
