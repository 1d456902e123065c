#!/usr/bin/env python3
"""Encode throughput: peregrine-tokenizer vs HF `tokenizers` (Python) vs tiktoken, same text, one run.

    python3 crates/tokenizer/benches/compare.py [--text FILE] [--repeats N]

The text defaults to every prompt turn of data/specbench/*.jsonl joined by blank
lines. Each encoder gets the whole text as one string, single-threaded, best of N runs, no special
tokens parsed. Rows:
  SmolLM2  peregrine (GGUF, smollm pre-tokenizer, HF tokenizers BPE inside)
  SmolLM2  HF tokenizers (Python), built from the same GGUF vocab/merges with SmolLM2's
           tokenizer.json pipeline (Digits(individual_digits) + ByteLevel)
  Llama 3  peregrine (tiktoken file, own rank BPE)
  Llama 3  tiktoken (Python), Llama 3 pat_str
Ids are compared between the two encoders of each model.
"""
import argparse
import glob
import json
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAYON_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parents[3]
SMOLLM2 = REPO / "models/SmolLM2-135M-Instruct.Q4_1.gguf"


def specbench_text():
    parts = []
    for f in sorted(glob.glob(str(Path(__file__).resolve().parents[3] / "data/specbench" / "*.jsonl"))):
        for line in open(f, encoding="utf-8"):
            parts.extend(json.loads(line)["turns"])
    return "\n\n".join(parts)


def best_of(fn, repeats):
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def ours(model, text_path, repeats):
    exe = REPO / "target/release/examples/encode_speed"
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "peregrine-tokenizer", "--example", "encode_speed"],
                   cwd=REPO, check=True)
    ids_path = Path("/tmp/peregrine-encode-ids.json")
    p = subprocess.run([str(exe), str(model), str(text_path), str(repeats), str(ids_path)],
                       capture_output=True, text=True, check=True)
    out = json.loads(p.stdout)
    out["ids"] = json.loads(ids_path.read_text())
    return out


def hf_smollm2(text, repeats):
    import gguf
    import tokenizers
    from tokenizers import Tokenizer, models, pre_tokenizers, decoders

    r = gguf.GGUFReader(str(SMOLLM2))
    toks = r.fields["tokenizer.ggml.tokens"]
    vocab = {bytes(toks.parts[i]).decode(): n for n, i in enumerate(toks.data)}
    m = r.fields["tokenizer.ggml.merges"]
    merges = [tuple(bytes(m.parts[i]).decode().split(" ", 1)) for i in m.data]
    tok = Tokenizer(models.BPE(vocab, merges))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    secs, enc = best_of(lambda: tok.encode(text, add_special_tokens=False), repeats)
    parts = text.split("\n\n")
    secs_parts, _ = best_of(lambda: [tok.encode(p, add_special_tokens=False) for p in parts], repeats)
    return secs, secs_parts, enc.ids, tokenizers.__version__


def tiktoken_llama3(text, repeats):
    import tiktoken
    from llama_models.llama3.tokenizer import Tokenizer

    import llama_models
    enc = Tokenizer(os.path.join(os.path.dirname(llama_models.__file__), "llama3/tokenizer.model")).model
    secs, ids = best_of(lambda: enc.encode_ordinary(text), repeats)
    parts = text.split("\n\n")
    secs_parts, _ = best_of(lambda: [enc.encode_ordinary(p) for p in parts], repeats)
    return secs, secs_parts, ids, tiktoken.__version__


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--text")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    if args.text:
        text_path = Path(args.text)
        text = text_path.read_text(encoding="utf-8")
    else:
        text = specbench_text()
        text_path = Path("/tmp/peregrine-specbench.txt")
        text_path.write_text(text, encoding="utf-8")
    n_bytes = len(text.encode("utf-8"))
    import llama_models
    llama3_model = Path(os.path.dirname(llama_models.__file__)) / "llama3/tokenizer.model"

    rows = []
    o = ours(SMOLLM2, text_path, args.repeats)
    rows.append(("SmolLM2", "peregrine-tokenizer", o["mb_s"], o["n_tokens"]))
    secs, secs_parts, hf_ids, hf_ver = hf_smollm2(text, args.repeats)
    rows.append(("SmolLM2", f"HF tokenizers {hf_ver} (Python)", n_bytes / secs / 1e6, len(hf_ids)))
    rows.append(("SmolLM2", "  same, one call per prompt", n_bytes / secs_parts / 1e6, None))
    o3 = ours(llama3_model, text_path, args.repeats)
    rows.append(("Llama 3", "peregrine-tokenizer", o3["mb_s"], o3["n_tokens"]))
    secs, secs_parts, tt_ids, tt_ver = tiktoken_llama3(text, args.repeats)
    rows.append(("Llama 3", f"tiktoken {tt_ver} (Python)", n_bytes / secs / 1e6, len(tt_ids)))
    rows.append(("Llama 3", "  same, one call per prompt", n_bytes / secs_parts / 1e6, None))

    print(f"text: {text_path} ({n_bytes} bytes), best of {args.repeats}, one thread")
    print(f"{'model':<8} {'encoder':<34} {'MB/s':>8} {'tokens':>8}")
    for model, name, mbs, n in rows:
        print(f"{model:<8} {name:<34} {mbs:>8.1f} {'' if n is None else n:>8}")
    print(f"ids identical: SmolLM2 peregrine == HF tokenizers: {o['ids'] == hf_ids}; "
          f"Llama 3 peregrine == tiktoken: {o3['ids'] == tt_ids}")
    print(f"ratio: SmolLM2 {rows[0][2] / rows[1][2]:.1f}x HF tokenizers; Llama 3 {rows[3][2] / rows[4][2]:.1f}x tiktoken")


if __name__ == "__main__":
    sys.exit(main())
