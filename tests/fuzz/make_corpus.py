#!/usr/bin/env python3
"""Write the seed corpus for fuzz_gguf: small but complete GGUF files made with the `gguf` package's writer
(every metadata type, string and nested arrays, tensors of each supported type), so the fuzzer starts from files
that get all the way through the parser.  Regenerate: python3 tests/fuzz/make_corpus.py"""
import os
import numpy as np
import gguf

out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus", "gguf")
os.makedirs(out, exist_ok=True)
rng = np.random.default_rng(7)


def write(name, fill, arch="llama"):
    path = os.path.join(out, name)
    w = gguf.GGUFWriter(path, arch)
    fill(w)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def kvs(w):
    w.add_uint8("t.u8", 7)
    w.add_int8("t.i8", -7)
    w.add_uint16("t.u16", 700)
    w.add_int16("t.i16", -700)
    w.add_uint32("t.u32", 70000)
    w.add_int32("t.i32", -70000)
    w.add_float32("t.f32", 0.5)
    w.add_uint64("t.u64", 1 << 40)
    w.add_int64("t.i64", -(1 << 40))
    w.add_float64("t.f64", 0.25)
    w.add_bool("t.bool", True)
    w.add_string("t.str", "héllo")
    w.add_array("t.strs", ["a", "bb", ""])
    w.add_array("t.ints", [1, 2, 3])
    w.add_array("t.nest", [[1, 2], [3]])


def tensors(w):
    w.add_tensor("f32", rng.standard_normal((2, 32)).astype(np.float32))
    w.add_tensor("f16", rng.standard_normal((2, 32)).astype(np.float16))
    for qt in (gguf.GGMLQuantizationType.Q8_0, gguf.GGMLQuantizationType.Q4_0, gguf.GGMLQuantizationType.Q4_1,
               gguf.GGMLQuantizationType.BF16):
        x = rng.standard_normal((2, 64)).astype(np.float32)
        q = gguf.quants.quantize(x, qt)
        w.add_tensor(qt.name.lower(), q, raw_shape=q.shape, raw_dtype=qt)
    for qt in (gguf.GGMLQuantizationType.Q4_K, gguf.GGMLQuantizationType.Q5_K, gguf.GGMLQuantizationType.Q6_K):
        bs, ts = gguf.GGML_QUANT_SIZES[qt]
        raw = rng.integers(0, 256, size=(1, ts), dtype=np.uint8)
        w.add_tensor(qt.name.lower(), raw, raw_shape=raw.shape, raw_dtype=qt)


write("kv_only.gguf", kvs)
write("tensors.gguf", tensors)
write("both.gguf", lambda w: (kvs(w), tensors(w)))
write("empty.gguf", lambda w: None)
