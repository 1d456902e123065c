#!/usr/bin/env python3
"""Writes the seed corpus of fuzz/corpus/gguf_parse: the small gguf-py-written fixture of
crates/formats/tests/data (regen_gguf_fixture.py), and header slices of the default model.
Writer-made seeds (ours) come from `cargo test -p peregrine-formats --test gguf_roundtrip write_fuzz_seeds -- --ignored`.

    python3 fuzz/make_seeds.py
"""
import os
import shutil

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "corpus", "gguf_parse")
MODEL = os.path.join(HERE, "..", "models", "SmolLM2-135M-Instruct.Q4_1.gguf")


def main():
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
