#!/usr/bin/env python3
"""Regenerate llama3_random_f32_llamacpp.json: a float32-activation reference for the random-weight
Llama 3 / 3.1 / 3.2 files of scripts/gen-llama3-random.

llama.cpp rounds activations before every matmul (to f16 for F16 weights, Q8_0 for Q8_0, Q8_K for
Q4_K), and random weights amplify that rounding: llama3_random_llamacpp.json is only matched to
~96-97% of argmaxes by an engine that is not bit-identical to llama.cpp. This golden removes the
rounding, as regen_smollm2_f32_llamacpp.py does for SmolLM2: each file's weights dequantized
exactly by gguf-py (gguf.quants.dequantize) into an F32 GGUF (every metadata key and tensor name
kept, general.file_type = ALL_F32), run by llama.cpp with an f32 KV cache, over the same 1024
`ids` as llama3_random_llamacpp.json (one teacher-forced llama_decode). An engine that keeps
activations in f32 should match it to ~1e-4.

    python3 crates/model/tests/data/regen_llama3_random_f32_llamacpp.py

Runs scripts/gen-llama3-random (default seed) unless --models is given, checks each file's
sha256 against llama3_random_llamacpp.json, and writes the F32 GGUFs (74-151 MB each) to
${PEREGRINE_CACHE:-.cache}/llama3-random-f32/, reusing them when present.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import llamacpp_oracle as oracle  # noqa: E402
from regen_smollm2_f32_llamacpp import dequantize_to_f32  # noqa: E402

REPO = oracle.REPO
SEED = 20240723          # scripts/gen-llama3-random's default seed (as regen_llama3_random.py)
N_M1 = 256               # positions re-run one token per llama_decode (self-consistency)
N_THREADS = 2
TOP = 5
DECIMALS = 4


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default=None,
                    help="directory with the generated files (default: run scripts/gen-llama3-random)")
    ap.add_argument("--golden", default=str(HERE / "llama3_random_llamacpp.json"))
    ap.add_argument("--out", default=str(HERE / "llama3_random_f32_llamacpp.json"))
    ap.add_argument("--threads", type=int, default=N_THREADS,
                    help="llama.cpp threads (the logits do not depend on it: 1 and 2 checked equal)")
    args = ap.parse_args()

    golden = json.loads(Path(args.golden).read_text(encoding="utf-8"))
    if args.models is None:
        out = subprocess.run([str(REPO / "scripts" / "gen-llama3-random"), "--seed", str(SEED)],
                             check=True, stdout=subprocess.PIPE, text=True).stdout
        by_name = {Path(line.split("\t")[0]).name: Path(line.split("\t")[0])
                   for line in out.splitlines() if line.strip()}
    else:
        by_name = {p.name: p for p in Path(args.models).glob("*.gguf")}

    ids = golden["ids"]
    n = len(ids)
    probe_pos, probe_ids = golden["probe_positions"], golden["probe_ids"]
    cache = Path(os.environ.get("PEREGRINE_CACHE", str(REPO / ".cache"))) / "llama3-random-f32"
    cache.mkdir(parents=True, exist_ok=True)

    llama_cpp = oracle.load_llama_cpp()
    from llama_cpp import Llama
    F32 = 0  # GGML_TYPE_F32

    variants = []
    t0 = time.time()
    for g in golden["variants"]:
        src = by_name[g["file"]]
        src_sha = oracle.sha256_file(src)
        assert src_sha == g["sha256"], f"{src} differs from the file llama3_random_llamacpp.json used"
        f32_path = cache / f"{src.stem}-dequant-f32-{src_sha[:12]}.gguf"
        if not f32_path.exists():
            dequantize_to_f32(src, f32_path)

        llm = Llama(str(f32_path), n_ctx=n, n_batch=n, n_ubatch=n, n_threads=args.threads,
                    n_threads_batch=args.threads, logits_all=True, flash_attn=False,
                    type_k=F32, type_v=F32, verbose=False)
        assert int(llm.metadata["general.file_type"]) == 0, llm.metadata["general.file_type"]
        llm.reset()
        llm.eval(ids)
        logits = np.array(llm.scores[:n], dtype=np.float32)
        llm.reset()
        for t in ids[:N_M1]:
            llm.eval([t])
        m1 = np.array(llm.scores[:N_M1], dtype=np.float32)
        del llm
        argmax, margin, topk = oracle.positions(logits, TOP, DECIMALS)

        # The quantized golden's argmax / top-1 logit vs this reference's logit of the same token.
        q_argmax = np.array(g["argmax"])
        q_top1 = np.array([row[0][1] for row in g["top5"]])
        agree = np.array(argmax) == q_argmax
        diff = np.abs(logits[np.arange(n), q_argmax] - q_top1)
        variants.append({
            "name": g["name"],
            "file": g["file"],
            "sha256": src_sha,
            "dequantized_f32_sha256": oracle.sha256_file(f32_path),
            "oracle_self_consistency": oracle.self_consistency(
                [(logits[:N_M1], m1)], f"the first {N_M1} ids"),
            "vs_quantized_golden": {
                "what": "this reference against the same variant in llama3_random_llamacpp.json "
                        "(llama.cpp on the original file, rounded activations), same positions",
                "argmax_agreement": round(float(agree.mean()), 5),
                "positions": n,
                "top1_abs_logit_diff": {q: round(float(np.quantile(diff, v)), 4) for q, v in
                                        (("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("max", 1.0))},
            },
            "argmax": argmax,
            "top2_margin": margin,
            "top5": topk,
            "probe_logits": [[round(float(v), DECIMALS) for v in row]
                             for row in logits[probe_pos][:, probe_ids]],
            "logit_stats": {"mean": round(float(logits.mean()), 4), "std": round(float(logits.std()), 4)},
        })
        sc = variants[-1]["oracle_self_consistency"]
        print(f"{g['file']}: M=n vs M=1 flips {sc['argmax_flips']}, top-1 diff max "
              f"{sc['top1_abs_logit_diff']['max']}; vs quantized golden {variants[-1]['vs_quantized_golden']}; "
              f"{time.time() - t0:.1f} s", file=sys.stderr)

    doc = {
        "oracle": {
            "name": "llama.cpp",
            "commit": oracle.LLAMA_CPP_COMMIT,
            "source": f"vendored in the sdist of PyPI llama-cpp-python=={oracle.LLAMA_CPP_PYTHON}",
            "bindings": f"llama-cpp-python {oracle.LLAMA_CPP_PYTHON} ctypes API (Llama, logits_all=True)",
            "build": "scripts/build-llama-cpp: cmake " + oracle.BUILD_FLAGS,
            "system_info": oracle.system_info(llama_cpp),
            "n_threads": args.threads,
            "n_ctx": n, "n_batch": n, "n_ubatch": n,
            "flash_attn": False,
            "kv_cache_type": "f32",
            "numerics": "every tensor of the original file dequantized exactly to f32 (gguf-py "
                        "gguf.quants.dequantize of the F16/Q8_0/Q4_K data; f32 norms and rope_freqs "
                        "unchanged; all metadata kept, general.file_type = ALL_F32), so matmuls run "
                        "f32 x f32 with no activation rounding; f32 KV cache; norms, RoPE, softmax in f32",
            "forward": "one llama_decode (one ubatch) over ids at positions 0..n-1, logits for every row",
        },
        "command": "python3 crates/model/tests/data/regen_llama3_random_f32_llamacpp.py",
        "generator": golden["generator"],
        "ids": ids,
        "ids_source": "ids of llama3_random_llamacpp.json",
        "probe_positions": probe_pos,
        "probe_ids": probe_ids,
        "top": TOP,
        "decimals": DECIMALS,
        "rows": "argmax[i], top2_margin[i], top5[i]: the logits after ids[0..=i], for every i < len(ids); "
                "probe_logits[j][k]: the logit of probe_ids[k] after ids[0..=probe_positions[j]]; "
                "`file`/`sha256`: the original (quantized) file whose f32 dequantization was run",
        "variants": variants,
    }
    Path(args.out).write_text(oracle.compact_json(doc), encoding="utf-8")
    size = Path(args.out).stat().st_size
    print(f"wrote {args.out}: {len(variants)} variants, {size} bytes, {time.time() - t0:.1f} s",
          file=sys.stderr)
    assert size < 1_000_000


if __name__ == "__main__":
    main()
