#!/usr/bin/env python3
"""Regenerates the tokenizer goldens in this folder from their oracles.

    python3 crates/tokenizer/tests/data/regen_tokenize.py [--llama-cpp-bin DIR] [--model GGUF]

Writes
  corpus.json               the strings (see corpus.py)
  smollm2_llama_cpp.json    SmolLM2-135M-Instruct ids from llama.cpp `llama-tokenize`, with and
                            without special-token parsing (the model does not add BOS)
  llama3_tiktoken.json      Llama 3 ids from tiktoken.Encoding with the Llama 3 pattern and
                            special tokens (llama_models/llama3/tokenizer.py), `encode_ordinary`
                            and `encode(allowed_special="all")`
"""
import argparse
import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from corpus import corpus  # noqa: E402

REPO = HERE.parents[3]
DEFAULT_BIN = Path.home() / ".cache/peregrine/src/llama_cpp_python-0.3.36/vendor/llama.cpp/build/bin"


def write(name, obj):
    path = HERE / name
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False, separators=(",", ":"))
        f.write("\n")
    print(f"wrote {path} ({path.stat().st_size} B)")


def llama_cpp(strings, bin_dir, model):
    exe = Path(bin_dir) / "llama-tokenize"
    version = subprocess.run([str(exe), "--version"], capture_output=True, text=True)
    version = (version.stdout + version.stderr).strip().splitlines()
    results = {}
    for flag, key in [([], "ids_special"), (["--no-parse-special"], "ids_plain")]:
        cmd = [str(exe), "-m", str(model), "--stdin", "--no-escape", "--ids", "--log-disable"] + flag
        ids = []
        for i, s in enumerate(strings):
            p = subprocess.run(cmd, input=s.encode("utf-8"), capture_output=True, check=True)
            ids.append(json.loads(p.stdout.decode().strip().splitlines()[-1]))
            if i % 500 == 0:
                print(f"  llama.cpp {key}: {i}/{len(strings)}", file=sys.stderr)
        results[key] = ids
        results[key + "_command"] = " ".join(cmd[:1] + ["-m", "models/" + Path(model).name] + cmd[3:])
    return version, results


def tiktoken_llama3(strings):
    import llama_models
    import tiktoken
    from llama_models.llama3.tokenizer import Tokenizer

    path = Path(os.path.dirname(llama_models.__file__)) / "llama3/tokenizer.model"
    tok = Tokenizer(str(path))
    enc = tok.model  # the tiktoken.Encoding
    return {
        "oracle": "tiktoken.Encoding (Llama 3 pat_str and 256 special tokens from llama_models/llama3/tokenizer.py)",
        "version": f"tiktoken {tiktoken.__version__}, llama-models {importlib.metadata.version('llama_models')}",
        "command": "python3 crates/tokenizer/tests/data/regen_tokenize.py",
        "ids_plain_call": "enc.encode_ordinary(s)",
        "ids_special_call": "enc.encode(s, allowed_special='all')",
        "ids_plain": [enc.encode_ordinary(s) for s in strings],
        "ids_special": [enc.encode(s, allowed_special="all") for s in strings],
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--llama-cpp-bin", default=str(DEFAULT_BIN))
    ap.add_argument("--model", default=str(REPO / "models/SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--skip-llama-cpp", action="store_true")
    args = ap.parse_args()
    strings = corpus()
    write("corpus.json", {"generator": "corpus.py", "strings": strings})
    write("llama3_tiktoken.json", tiktoken_llama3(strings))
    if not args.skip_llama_cpp:
        version, res = llama_cpp(strings, args.llama_cpp_bin, args.model)
        write("smollm2_llama_cpp.json", {
            "oracle": "llama.cpp llama-tokenize (vocab only), SmolLM2-135M-Instruct.Q4_1.gguf (sha256 b179c952...db53)",
            "version": "llama.cpp 0c1e57098 from PyPI llama-cpp-python==0.3.36; " + " ".join(version),
            "command": "python3 crates/tokenizer/tests/data/regen_tokenize.py",
            **res,
        })


if __name__ == "__main__":
    main()
