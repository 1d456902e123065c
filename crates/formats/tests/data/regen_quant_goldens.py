#!/usr/bin/env python3
"""Regenerates the quantization goldens of peregrine-formats from gguf-py's `gguf.quants`.

Oracle: the `gguf` PyPI package (gguf-py, the Python twin of ggml's reference quant code).
Run from the repository root:

    python3 crates/formats/tests/data/regen_quant_goldens.py

Writes, next to this script:
  quant_dequant_goldens.json   random blocks of every type and their f32 dequantization
  quant_quantize_goldens.json  f32 rows and their Q8_0 / Q4_0 / Q4_1 bytes
  smollm2_dequant_sha256.json  per tensor of models/SmolLM2-135M-Instruct.Q4_1.gguf: sha256 of
                               the little-endian f32 dequantization
"""
import hashlib
import json
import os
import sys
from importlib.metadata import version

import numpy as np
import gguf
from gguf import GGMLQuantizationType as T
from gguf.quants import dequantize, quantize

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "../../../.."))
SEED = 20261127
ORACLE = f"gguf-py {version('gguf')} (gguf.quants), numpy {np.__version__}"
COMMAND = "python3 crates/formats/tests/data/regen_quant_goldens.py"

# type -> (block elements, block bytes, byte offsets of f16 scales)
LAYOUTS = {
    "f32": (T.F32, 1, 4, []),
    "f16": (T.F16, 1, 2, []),
    "bf16": (T.BF16, 1, 2, []),
    "q4_0": (T.Q4_0, 32, 18, [0]),
    "q4_1": (T.Q4_1, 32, 20, [0, 2]),
    "q5_0": (T.Q5_0, 32, 22, [0]),
    "q5_1": (T.Q5_1, 32, 24, [0, 2]),
    "q8_0": (T.Q8_0, 32, 34, [0]),
    "q8_1": (T.Q8_1, 32, 36, [0, 2]),
    "q2_K": (T.Q2_K, 256, 84, [80, 82]),
    "q3_K": (T.Q3_K, 256, 110, [108]),
    "q4_K": (T.Q4_K, 256, 144, [0, 2]),
    "q5_K": (T.Q5_K, 256, 176, [0, 2]),
    "q6_K": (T.Q6_K, 256, 210, [208]),
    "q8_K": (T.Q8_K, 256, 292, []),
}


def random_f16(rng, n):
    """Finite f16 values over a wide range, including subnormals and negatives."""
    mags = rng.uniform(0.5, 1.0, n) * np.exp2(rng.integers(-24, 6, n).astype(np.float64))
    signs = rng.choice([-1.0, 1.0], n)
    return (mags * signs).astype(np.float16)


def random_blocks(rng, name, n_blocks):
    qtype, _, block_bytes, scale_offsets = LAYOUTS[name]
    raw = rng.integers(0, 256, size=(n_blocks, block_bytes), dtype=np.uint8)
    for off in scale_offsets:
        raw[:, off:off + 2] = random_f16(rng, n_blocks).view(np.uint8).reshape(n_blocks, 2)
    if name == "q8_K":
        raw[:, 0:4] = (rng.standard_normal(n_blocks).astype(np.float32) * 0.01).view(np.uint8).reshape(n_blocks, 4)
    if name == "f16":
        raw = random_f16(rng, n_blocks).view(np.uint8).reshape(n_blocks, 2)
    if name == "bf16":
        vals = (rng.standard_normal(n_blocks) * np.exp2(rng.integers(-60, 60, n_blocks))).astype(np.float32)
        raw = (vals.view(np.uint32) >> 16).astype(np.uint16).view(np.uint8).reshape(n_blocks, 2)
    if name == "f32":
        vals = (rng.standard_normal(n_blocks) * np.exp2(rng.integers(-100, 100, n_blocks))).astype(np.float32)
        raw = vals.view(np.uint8).reshape(n_blocks, 4)
    return raw


def oracle_dequantize(name, raw):
    qtype = LAYOUTS[name][0]
    if name == "q8_1":
        # Not in gguf.quants (ggml has no dequantize_row_q8_1): d * q, as for Q8_0.
        d = raw[:, 0:2].copy().view(np.float16).astype(np.float32)
        q = raw[:, 4:].copy().view(np.int8).astype(np.float32)
        return (q * d).reshape(-1), "numpy d*q (gguf.quants has no Q8_1 dequantization)"
    if name == "q8_K":
        # Not in gguf.quants: ggml dequantize_row_q8_K is y = d * q with an f32 d.
        d = raw[:, 0:4].copy().view(np.float32)
        q = raw[:, 4:260].copy().view(np.int8).astype(np.float32)
        return (d * q).reshape(-1), "numpy d*q (gguf.quants has no Q8_K dequantization)"
    return dequantize(raw.reshape(-1), qtype).astype("<f4").reshape(-1), "gguf.quants.dequantize"


def dequant_goldens(rng):
    out = {}
    for name, (_, block_len, _, _) in LAYOUTS.items():
        n_blocks = {1: 256, 32: 16, 256: 6}[block_len]
        raw = random_blocks(rng, name, n_blocks)
        values, how = oracle_dequantize(name, raw)
        assert values.size == n_blocks * block_len and np.all(np.isfinite(values)), name
        out[name] = {
            "oracle": how,
            "n_elements": int(values.size),
            "bytes_hex": raw.tobytes().hex(),
            "f32_le_hex": values.astype("<f4").tobytes().hex(),
        }
    return out


def quantize_inputs(rng):
    rows = []
    rows.append(rng.standard_normal(32 * 8).astype(np.float32))
    rows.append((rng.standard_normal(32 * 4) * 1e-3).astype(np.float32))
    rows.append((rng.uniform(-50, 50, 32 * 4)).astype(np.float32))
    special = np.zeros(32 * 8, dtype=np.float32)
    special[32:64] = 3.25                                           # constant block
    special[64] = -1.0; special[65] = 1.0                           # max-magnitude tie
    special[96:128] = np.arange(32, dtype=np.float32) - 15.5        # halves
    special[128:160] = np.array([127, 0.5, 1.5, 2.5, -0.5, -1.5, -2.5] + [0] * 25, np.float32)
    special[160:192] = np.array([-8, 7, 7.5, -7.5, 0.49999997, -4.5, 3.5] + [1e-30] * 25, np.float32)
    special[192:224] = np.float32(1e-30) * np.arange(32, dtype=np.float32)   # scale underflows f16
    special[224:256] = np.clip(rng.standard_normal(32) * 3e4, -65000, 65000).astype(np.float32)  # near f16 max
    rows.append(special)
    return np.concatenate(rows)


def quantize_goldens(rng):
    x = quantize_inputs(rng)
    out = {"input_f32_le_hex": x.astype("<f4").tobytes().hex(), "n_elements": int(x.size)}
    for name, qtype in [("q8_0", T.Q8_0), ("q4_0", T.Q4_0), ("q4_1", T.Q4_1)]:
        out[name] = quantize(x.reshape(1, -1), qtype).tobytes().hex()
    return out


def smollm2_hashes():
    path = os.path.join(ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")
    reader = gguf.GGUFReader(path)
    out = {}
    for t in reader.tensors:
        values = dequantize(t.data, t.tensor_type).astype("<f4")
        assert values.size == int(np.prod(t.shape)), t.name
        out[t.name] = {"type": t.tensor_type.name, "sha256": hashlib.sha256(values.tobytes()).hexdigest()}
    return out


def write(name, payload):
    payload = {"oracle": ORACLE, "command": COMMAND, "seed": SEED, **payload}
    with open(os.path.join(HERE, name), "w") as f:
        json.dump(payload, f, indent=1, sort_keys=False)
        f.write("\n")
    print(f"wrote {name} ({os.path.getsize(os.path.join(HERE, name))} B)", file=sys.stderr)


def main():
    rng = np.random.default_rng(SEED)
    write("quant_dequant_goldens.json", {"types": dequant_goldens(rng)})
    write("quant_quantize_goldens.json", quantize_goldens(rng))
    write("smollm2_dequant_sha256.json", {"model": "models/SmolLM2-135M-Instruct.Q4_1.gguf", "tensors": smollm2_hashes()})


if __name__ == "__main__":
    main()
