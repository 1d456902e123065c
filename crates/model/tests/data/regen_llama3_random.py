#!/usr/bin/env python3
"""Regenerate llama3_random_llamacpp.json: llama.cpp's logits on the random-weight Llama 3 /
3.1 / 3.2 GGUF files written by scripts/gen-llama3-random, over a fixed 1024-token sequence.

    python3 crates/model/tests/data/regen_llama3_random.py

Runs scripts/gen-llama3-random (default seed, into ${PEREGRINE_CACHE:-.cache}/llama3-random)
and scripts/build-llama-cpp first. Needs gguf, numpy, llama-models, tiktoken.
See README.md in this directory for the schema.
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import llamacpp_oracle as oracle  # noqa: E402

REPO = oracle.REPO
SEED = 20240723          # the generator's default seed, and the text's
N_TOKENS = 1024          # long enough that llama3 rope scaling changes the low-frequency angles
DENSE = 64               # probe logits at every position below this ...
STRIDE = 32              # ... then every STRIDE-th, and the last
N_M1 = 256               # positions re-run one token per llama_decode (self-consistency)
N_THREADS = 2
TOP = 5
DECIMALS = 4
N_PROBE = 16

WORDS = ("the of and to in is was for on that with as by at from his her it an were are which "
         "this be or has had not but first one their its new after who they have two she been "
         "other when there all during into school time may years more most only over city some "
         "world would where later up such used many can state about national out known university "
         "united then made don't I'LL we've they're it's can't naïve café résumé façade über "
         "Straße 東京 北京市 ĉu Ελλάδα Москва العربية हिन्दी 😀 🚀 ∑ √ ≤ © ½").split()
PUNCT = [".", ",", ";", ":", "!", "?", "...", " -", " (", ")", "\"", "'", " —", "\n", "\n\n",
         "   ", "\t", " 3.14159", " 2024", " 1,000,000", " 42", " 007", " 123456789", " $5.99",
         " 50%", " x+y=z", " <b>", " http://example.com/a?b=c", " foo_bar", " camelCaseWord"]


def make_text(rng):
    parts = []
    for _ in range(900):
        r = rng.random()
        if r < 0.72:
            w = WORDS[rng.integers(len(WORDS))]
            if rng.random() < 0.1:
                w = w.capitalize()
            if rng.random() < 0.03:
                w = w.upper()
            parts.append(" " + w)
        else:
            parts.append(PUNCT[rng.integers(len(PUNCT))])
    return "".join(parts).lstrip()


def build_sequence(tok):
    """A chat-shaped prefix (special tokens, as the Llama 3 template writes it) followed by
    seeded random text, cut at N_TOKENS tiktoken tokens (the cut must re-encode to itself)."""
    rng = np.random.default_rng(SEED)
    body = make_text(rng)
    text = ("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are a test."
            "<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n" + body)
    ids = tok.model.encode(text, allowed_special="all")
    assert len(ids) > N_TOKENS + 8, len(ids)
    cut = tok.model.decode(ids[:N_TOKENS])
    if tok.model.encode(cut, allowed_special="all") != ids[:N_TOKENS]:
        raise SystemExit("the text does not cut cleanly at N_TOKENS tokens; change SEED")
    return cut, ids[:N_TOKENS]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default=None,
                    help="directory with the generated files (default: run scripts/gen-llama3-random)")
    ap.add_argument("--out", default=str(HERE / "llama3_random_llamacpp.json"))
    ap.add_argument("--threads", type=int, default=N_THREADS,
                    help="llama.cpp threads (the logits do not depend on it: 1 and 2 checked equal)")
    args = ap.parse_args()

    if args.models is None:
        out = subprocess.run([str(REPO / "scripts" / "gen-llama3-random"), "--seed", str(SEED)],
                             check=True, stdout=subprocess.PIPE, text=True).stdout
        files = [Path(line.split("\t")[0]) for line in out.splitlines() if line.strip()]
    else:
        files = sorted(Path(args.models).glob("*.gguf"))

    from llama_models.llama3.tokenizer import Tokenizer
    tok = Tokenizer.get_instance()
    text, ids = build_sequence(tok)

    llama_cpp = oracle.load_llama_cpp()
    from llama_cpp import Llama

    probe_pos = sorted(set(range(DENSE)) | set(range(DENSE, N_TOKENS, STRIDE)) | {N_TOKENS - 1})
    probe_rng = np.random.default_rng([SEED, 1])
    probe_ids = [128000, 128001, 128006, 128007, 128009, 13, 198, 271] + \
        sorted(int(x) for x in probe_rng.choice(128000, N_PROBE - 8, replace=False))

    variants = []
    t0 = time.time()
    for path in files:
        llm = Llama(str(path), n_ctx=N_TOKENS, n_batch=N_TOKENS, n_ubatch=N_TOKENS,
                    n_threads=args.threads, n_threads_batch=args.threads, logits_all=True,
                    flash_attn=False, verbose=False)
        # llama.cpp's own tokenization of the text (BOS is in the text: add_special=False).
        lc_ids = llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)
        llm.reset()
        llm.eval(ids)
        logits = np.array(llm.scores[:N_TOKENS], dtype=np.float32)
        llm.reset()
        for t in ids[:N_M1]:
            llm.eval([t])
        m1 = np.array(llm.scores[:N_M1], dtype=np.float32)
        argmax, margin, topk = oracle.positions(logits, TOP, DECIMALS)
        meta = llm.metadata
        variants.append({
            "name": path.stem,
            "file": path.name,
            "sha256": oracle.sha256_file(path),
            "bytes": path.stat().st_size,
            "general.name": meta.get("general.name"),
            "general.file_type": int(meta.get("general.file_type")),
            "llamacpp_tokenize_equals_ids": lc_ids == ids,
            "oracle_self_consistency": oracle.self_consistency(
                [(logits[:N_M1], m1)], f"the first {N_M1} ids"),
            "argmax": argmax,
            "top2_margin": margin,
            "top5": topk,
            "probe_logits": [[round(float(v), DECIMALS) for v in row]
                             for row in logits[probe_pos][:, probe_ids]],
            "logit_stats": {"mean": round(float(logits.mean()), 4), "std": round(float(logits.std()), 4)},
        })
        print(f"{path.name}: tokenize {'ok' if lc_ids == ids else 'DIFFERS'}, min margin "
              f"{min(margin):.4f}, self-consistency {variants[-1]['oracle_self_consistency']['argmax_agreement']}",
              file=sys.stderr)
        del llm

    doc = {
        "oracle": {
            "name": "llama.cpp",
            "commit": oracle.LLAMA_CPP_COMMIT,
            "source": f"vendored in the sdist of PyPI llama-cpp-python=={oracle.LLAMA_CPP_PYTHON}",
            "bindings": f"llama-cpp-python {oracle.LLAMA_CPP_PYTHON} ctypes API (Llama, logits_all=True)",
            "build": "scripts/build-llama-cpp: cmake " + oracle.BUILD_FLAGS,
            "system_info": oracle.system_info(llama_cpp),
            "n_threads": args.threads,
            "n_ctx": N_TOKENS, "n_batch": N_TOKENS, "n_ubatch": N_TOKENS,
            "flash_attn": False,
            "kv_cache_type": "f16",
            "numerics": "CPU backend: activations converted to f16 for f16 matmuls, quantized to Q8_0 "
                        "for Q8_0 and to Q8_K for Q4_K matmuls (Q4_K and Q8_0 weights may be repacked "
                        "for its AVX-512 GEMM); f16 KV cache; norms, RoPE, softmax in f32",
            "forward": "one llama_decode (one ubatch) over ids at positions 0..n-1, logits for every row",
        },
        "command": "python3 crates/model/tests/data/regen_llama3_random.py",
        "generator": f"scripts/gen-llama3-random --seed {SEED} (gguf, numpy, llama-models versions: see README.md)",
        "text": text,
        "ids": ids,
        "ids_source": "tiktoken with llama_models.llama3.tokenizer.Tokenizer (llama-models 0.2.0), "
                      "encode(text, allowed_special='all')",
        "probe_positions": probe_pos,
        "probe_ids": probe_ids,
        "top": TOP,
        "decimals": DECIMALS,
        "rows": "argmax[i], top2_margin[i], top5[i]: the logits after ids[0..=i], for every i < len(ids); "
                "probe_logits[j][k]: the logit of probe_ids[k] after ids[0..=probe_positions[j]]",
        "variants": variants,
    }
    Path(args.out).write_text(oracle.compact_json(doc), encoding="utf-8")
    size = Path(args.out).stat().st_size
    print(f"wrote {args.out}: {len(variants)} variants, {size} bytes, {time.time() - t0:.1f} s",
          file=sys.stderr)
    assert size < 1_000_000


if __name__ == "__main__":
    main()
