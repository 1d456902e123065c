#!/usr/bin/env python3
"""Regenerates llama_cpp_vocabs.json: llama.cpp ids for its own vocab-only test GGUFs.

    python3 crates/tokenizer/tests/data/regen_llama_cpp_vocabs.py [--llama-cpp DIR]

llama.cpp ships `models/ggml-vocab-<name>.gguf` (vocabulary only) for its tokenizer tests; the
sdist of PyPI llama-cpp-python==0.3.36 carries them. For the pre-tokenizers we support besides
SmolLM2's (`gpt-2`, `llama-bpe`, `qwen2`) this runs `llama-tokenize --ids` on every fifth
corpus string, with and without special-token parsing, and with the file's add_bos.
The GGUFs are 1.7-7.8 MB, so they are not committed: the test reads them from the llama.cpp
source tree (`$PEREGRINE_LLAMA_CPP_SRC`, default the scripts/build-llama-cpp cache).
"""
import argparse
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from corpus import corpus  # noqa: E402

DEFAULT_SRC = Path.home() / ".cache/peregrine/src/llama_cpp_python-0.3.36/vendor/llama.cpp"
VOCABS = ["gpt-2", "llama-bpe", "qwen2"]
STRIDE = 5


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--llama-cpp", default=str(DEFAULT_SRC))
    args = ap.parse_args()
    src = Path(args.llama_cpp)
    exe = src / "build/bin/llama-tokenize"
    strings = corpus()[::STRIDE]
    out = {
        "oracle": "llama.cpp llama-tokenize (vocab only) on llama.cpp's models/ggml-vocab-<name>.gguf",
        "version": "llama.cpp 0c1e57098 from PyPI llama-cpp-python==0.3.36",
        "command": "python3 crates/tokenizer/tests/data/regen_llama_cpp_vocabs.py",
        "corpus_stride": STRIDE,
        "vocabs": {},
    }
    for name in VOCABS:
        model = src / f"models/ggml-vocab-{name}.gguf"
        entry = {}
        for flag, key in [([], "ids_special"), (["--no-parse-special"], "ids_plain")]:
            cmd = [str(exe), "-m", str(model), "--stdin", "--no-escape", "--ids", "--log-disable"] + flag
            ids = []
            for s in strings:
                p = subprocess.run(cmd, input=s.encode("utf-8"), capture_output=True, check=True)
                ids.append(json.loads(p.stdout.decode().strip().splitlines()[-1]))
            entry[key] = ids
            entry[key + "_command"] = " ".join(["llama-tokenize", "-m", f"models/ggml-vocab-{name}.gguf"] + cmd[3:])
            print(f"{name} {key}: {len(ids)} strings", file=sys.stderr)
        out["vocabs"][name] = entry
    path = HERE / "llama_cpp_vocabs.json"
    path.write_text(json.dumps(out, ensure_ascii=False, separators=(",", ":")) + "\n", encoding="utf-8")
    print(f"wrote {path} ({path.stat().st_size} B)")


if __name__ == "__main__":
    main()
