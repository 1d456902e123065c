#!/usr/bin/env python3
"""Regenerate smollm2_f32_llamacpp.json: a float32-activation reference for SmolLM2-135M Q4_1.

llama.cpp quantizes activations to 8 bits before each Q4_1/Q8_0 matmul, and that rounding
amplifies any tiny difference in order of operations: llama.cpp against itself (one batch vs one
token per call) moves top-1 logits by ~0.1-1 and flips ~3% of argmaxes (see
smollm2_llamacpp.json, oracle_self_consistency). This golden removes that rounding: the same
weights, dequantized exactly by gguf-py (gguf.quants.dequantize) into an F32 GGUF, run by
llama.cpp with an f32 KV cache, over the same tokens (prompt_ids + greedy_ids of
smollm2_llamacpp.json, teacher-forced). An engine that keeps activations in f32 should match it
to ~1e-4.

    python3 crates/model/tests/data/regen_smollm2_f32_llamacpp.py

Writes the F32 GGUF (540 MB) to ${PEREGRINE_CACHE:-.cache}/smollm2-f32/ and reuses it.
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import llamacpp_oracle as oracle  # noqa: E402

REPO = oracle.REPO
N_THREADS = 2
N_CTX = 1024
N_M1_PROMPTS = 3  # prompts re-run one token per llama_decode (self-consistency)
TOP = 5
DECIMALS = 4


def dequantize_to_f32(src, dst):
    import gguf
    r = gguf.GGUFReader(src)
    tmp = Path(str(dst) + ".part")
    w = gguf.GGUFWriter(tmp, r.fields["general.architecture"].contents())
    for field in r.fields.values():
        if field.name == gguf.Keys.General.ARCHITECTURE or field.name.startswith("GGUF."):
            continue
        vt = field.types[0]
        st = field.types[-1] if vt == gguf.GGUFValueType.ARRAY else None
        value = int(gguf.LlamaFileType.ALL_F32) if field.name == gguf.Keys.General.FILE_TYPE else field.contents()
        w.add_key_value(field.name, value, vt, sub_type=st)
    for t in r.tensors:
        a = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
        w.add_tensor(t.name, a.reshape([int(x) for x in reversed(t.shape)]), raw_dtype=gguf.GGMLQuantizationType.F32)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    os.replace(tmp, dst)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=str(REPO / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--golden", default=str(HERE / "smollm2_llamacpp.json"))
    ap.add_argument("--out", default=str(HERE / "smollm2_f32_llamacpp.json"))
    ap.add_argument("--threads", type=int, default=N_THREADS,
                    help="llama.cpp threads (the logits do not depend on it: 1 and 2 checked equal)")
    args = ap.parse_args()

    golden = json.loads(Path(args.golden).read_text(encoding="utf-8"))
    src_sha = oracle.sha256_file(args.model)
    assert src_sha == golden["model"]["sha256"], "model file differs from the one smollm2_llamacpp.json used"
    cache = Path(os.environ.get("PEREGRINE_CACHE", str(REPO / ".cache"))) / "smollm2-f32"
    cache.mkdir(parents=True, exist_ok=True)
    f32_path = cache / f"SmolLM2-135M-Instruct.Q4_1-dequant-f32-{src_sha[:12]}.gguf"
    if not f32_path.exists():
        dequantize_to_f32(args.model, f32_path)

    llama_cpp = oracle.load_llama_cpp()
    from llama_cpp import Llama
    F32 = 0  # GGML_TYPE_F32
    llm = Llama(str(f32_path), n_ctx=N_CTX, n_batch=N_CTX, n_ubatch=N_CTX, n_threads=args.threads,
                n_threads_batch=args.threads, logits_all=True, flash_attn=False, type_k=F32, type_v=F32,
                verbose=False)

    t0 = time.time()
    records, pairs, vs_q8 = [], [], []
    for p in golden["prompts"]:
        full = p["prompt_ids"] + p["greedy_ids"]
        llm.reset()
        llm.eval(full)
        logits = np.array(llm.scores[: len(full)], dtype=np.float32)
        if len(pairs) < N_M1_PROMPTS:
            llm.reset()
            for t in full:
                llm.eval([t])
            pairs.append((logits, np.array(llm.scores[: len(full)], dtype=np.float32)))
        argmax, margin, topk = oracle.positions(logits, TOP, DECIMALS)
        q8_argmax = np.array(p["argmax"])
        # The Q8 golden's top-1 logit vs this reference's logit of the same token.
        q8_top1 = np.array([row[0][1] for row in p["top5"]])
        vs_q8.append((np.array(argmax) == q8_argmax,
                      np.abs(logits[np.arange(len(full)), q8_argmax] - q8_top1)))
        records.append({"source": p["source"], "argmax": argmax, "top2_margin": margin, "top5": topk})
        print(f"{p['source']}: argmax agreement with the Q8 golden {vs_q8[-1][0].mean():.4f}", file=sys.stderr)

    agree = np.concatenate([a for a, _ in vs_q8])
    diff = np.concatenate([d for _, d in vs_q8])
    doc = {
        "oracle": {
            "name": "llama.cpp",
            "commit": oracle.LLAMA_CPP_COMMIT,
            "source": f"vendored in the sdist of PyPI llama-cpp-python=={oracle.LLAMA_CPP_PYTHON}",
            "bindings": f"llama-cpp-python {oracle.LLAMA_CPP_PYTHON} ctypes API (Llama, logits_all=True)",
            "build": "scripts/build-llama-cpp: cmake " + oracle.BUILD_FLAGS,
            "system_info": oracle.system_info(llama_cpp),
            "n_threads": args.threads,
            "n_ctx": N_CTX, "n_batch": N_CTX, "n_ubatch": N_CTX,
            "flash_attn": False,
            "kv_cache_type": "f32",
            "numerics": "every weight dequantized exactly to f32 (gguf-py gguf.quants.dequantize of the "
                        "Q4_1/Q8_0 blocks), so matmuls run f32 x f32 with no activation rounding; "
                        "f32 KV cache; norms, RoPE, softmax in f32",
            "teacher_forced": "one llama_decode (one ubatch) over prompt_ids + greedy_ids of smollm2_llamacpp.json",
        },
        "oracle_self_consistency": oracle.self_consistency(
            pairs, f"prompt_ids + greedy_ids of the first {N_M1_PROMPTS} prompts"),
        "vs_q8_golden": {
            "what": "this reference against smollm2_llamacpp.json (llama.cpp with 8-bit activations) "
                    "on the same positions: what an f32-activation engine should expect there",
            "argmax_agreement": round(float(agree.mean()), 5),
            "positions": int(len(agree)),
            "top1_abs_logit_diff": {q: round(float(np.quantile(diff, v)), 4) for q, v in
                                    (("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("max", 1.0))},
        },
        "command": "python3 crates/model/tests/data/regen_smollm2_f32_llamacpp.py",
        "model": {
            "file": Path(args.model).name,
            "sha256": src_sha,
            "dequantized_f32_sha256": oracle.sha256_file(f32_path),
        },
        "tokens": "prompt_ids + greedy_ids of the prompt with the same source in smollm2_llamacpp.json",
        "top": TOP,
        "decimals": DECIMALS,
        "rows": "position i holds the logits computed after tokens[0..=i]",
        "prompts": records,
    }
    Path(args.out).write_text(oracle.compact_json(doc), encoding="utf-8")
    size = Path(args.out).stat().st_size
    print(f"wrote {args.out}: {size} bytes, {time.time() - t0:.1f} s; vs Q8 golden: "
          f"{doc['vs_q8_golden']}", file=sys.stderr)
    assert size < 1_000_000


if __name__ == "__main__":
    main()
