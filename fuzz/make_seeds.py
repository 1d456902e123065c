#!/usr/bin/env python3
"""Writes the seed corpora. fuzz/corpus/gguf_parse: the small gguf-py-written fixture of
crates/formats/tests/data (regen_gguf_fixture.py), and header slices of the default model.
fuzz/corpus/safetensors_parse: three hand-made safetensors files (f32/f16/bf16 with
__metadata__, an empty and an i64 tensor, no tensors). Writer-made GGUF seeds (ours) come from `cargo test -p peregrine-formats --test gguf_roundtrip write_fuzz_seeds -- --ignored`.

    python3 fuzz/make_seeds.py
"""
import json
import os
import struct
import shutil

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "corpus", "gguf_parse")
MODEL = os.path.join(HERE, "..", "models", "SmolLM2-135M-Instruct.Q4_1.gguf")


def safetensors(tensors, meta=None):
    header, data = {}, b""
    for name, dtype, shape, raw in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    if meta:
        header["__metadata__"] = meta
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + data


def safetensors_seeds():
    out = os.path.join(HERE, "corpus", "safetensors_parse")
    os.makedirs(out, exist_ok=True)
    seeds = {
        "seed-f32-f16-bf16": safetensors(
            [("a", "F32", [2, 2], struct.pack("<4f", 1, 2, 3, 4)), ("b", "F16", [3], b"\x00\x3c" * 3),
             ("c", "BF16", [1], b"\x80\x3f")], {"format": "pt"}),
        "seed-i64-empty": safetensors([("x", "I64", [0, 3], b""), ("y", "I64", [1], struct.pack("<q", -5))]),
        "seed-empty": safetensors([]),
    }
    for name, data in seeds.items():
        with open(os.path.join(out, name + ".safetensors"), "wb") as f:
            f.write(data)


def main():
    safetensors_seeds()
    os.makedirs(OUT, exist_ok=True)
    fixture = os.path.join(HERE, "..", "crates", "formats", "tests", "data", "gguf_py_small.gguf")
    shutil.copy(fixture, os.path.join(OUT, "seed-gguf-py-small.gguf"))
    if os.path.exists(MODEL):
        with open(MODEL, "rb") as f:
            head = f.read(8192)
        for n in (24, 512, 2048, 8192):
            with open(os.path.join(OUT, f"seed-smollm2-head-{n}.bin"), "wb") as f:
                f.write(head[:n])


if __name__ == "__main__":
    main()
