#!/usr/bin/env python3
"""Writes gguf_py_small.gguf: a tiny llama-shaped GGUF made by gguf-py's GGUFWriter (an
writer independent of ours), so tests/gguf_roundtrip.rs checks that our reader agrees with
gguf-py's GGUFReader on a file we did not write. Also used to seed the fuzzer.

    python3 crates/formats/tests/data/regen_gguf_fixture.py
"""
import json
import os
from importlib.metadata import version

import numpy as np
import gguf

HERE = os.path.dirname(os.path.abspath(__file__))
T = gguf.GGMLQuantizationType


def main():
    path = os.path.join(HERE, "gguf_py_small.gguf")
    w = gguf.GGUFWriter(path, "llama")
    w.add_custom_alignment(64)
    w.add_block_count(1)
    w.add_context_length(64)
    w.add_embedding_length(32)
    w.add_feed_forward_length(64)
    w.add_head_count(4)
    w.add_head_count_kv(2)
    w.add_rope_freq_base(500000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_tokenizer_model("gpt2")
    w.add_token_list(["a", "b", "<s>", "é"])
    w.add_token_types([1, 1, 3, 1])
    w.add_token_merges(["a b"])
    w.add_array("test.nested", [[1, 2], [3]])
    w.add_bool("test.flag", True)
    w.add_float64("test.f64", 0.5)
    w.add_int64("test.i64", -3)
    rng = np.random.default_rng(1)
    w.add_tensor("token_embd.weight", rng.standard_normal((4, 32)).astype(np.float32))
    w.add_tensor("output_norm.weight", np.ones(32, np.float16))
    q = gguf.quants.quantize(rng.standard_normal((2, 32)).astype(np.float32), T.Q8_0)
    w.add_tensor("blk.0.attn_q.weight", q, raw_dtype=T.Q8_0)
    q = gguf.quants.quantize(rng.standard_normal((1, 32)).astype(np.float32), T.Q4_1)
    w.add_tensor("blk.0.attn_k.weight", q, raw_dtype=T.Q4_1)
    k = rng.integers(0, 256, (1, 144), dtype=np.uint8)
    k[:, :4] = np.array([0.01, 0.02], np.float16).view(np.uint8).reshape(1, 4)
    w.add_tensor("blk.0.ffn_up.weight", k, raw_dtype=T.Q4_K)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    # What gguf-py's reader sees, for the test to compare against.
    r = gguf.GGUFReader(path)
    expected = {
        "oracle": f"gguf-py {version('gguf')} GGUFWriter/GGUFReader",
        "command": "python3 crates/formats/tests/data/regen_gguf_fixture.py",
        "tensors": [
            {
                "name": t.name,
                "type": int(t.tensor_type),
                "dims": [int(d) for d in t.shape],
                "offset": int(t.data_offset),
                "n_bytes": int(t.n_bytes),
                "f32": [float(v) for v in gguf.quants.dequantize(t.data, t.tensor_type).reshape(-1)],
            }
            for t in r.tensors
        ],
        "keys": [k for k in r.fields if not k.startswith("GGUF.")],
    }
    with open(os.path.join(HERE, "gguf_py_small.json"), "w") as f:
        json.dump(expected, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
