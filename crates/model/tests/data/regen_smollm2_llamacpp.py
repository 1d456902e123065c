#!/usr/bin/env python3
"""Regenerate smollm2_llamacpp.json: llama.cpp's tokenization, greedy continuations and
teacher-forced logits for SmolLM2-135M-Instruct Q4_1 on 24 chat prompts from specbench.

    python3 crates/model/tests/data/regen_smollm2_llamacpp.py \
        [--model models/SmolLM2-135M-Instruct.Q4_1.gguf] [--out .../smollm2_llamacpp.json]

Needs: scripts/fetch-model (the GGUF), scripts/build-llama-cpp (run on demand), numpy, jinja2.
See README.md in this directory for the schema.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import llamacpp_oracle as oracle  # noqa: E402

REPO = oracle.REPO
SPECBENCH = REPO.parent / "shared" / "data" / "specbench"
# (file, how many prompts): first turns, taken in file order.
SELECTION = [("mt_bench", 5), ("gsm8k", 5), ("alpaca", 5), ("qa", 5), ("sum", 4)]
SUM_MAX_PROMPT_TOKENS = 600
MAX_NEW = 64
N_THREADS = 2
N_CTX = 1024  # also n_batch = n_ubatch: the teacher-forced pass is one llama_decode call
TOP = 5
DECIMALS = 4


def render_chat(template, user_text):
    # As transformers renders chat templates (apply_chat_template): sandboxed jinja2,
    # trim_blocks + lstrip_blocks, one user turn, add_generation_prompt=True.
    from jinja2.sandbox import ImmutableSandboxedEnvironment
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    return env.from_string(template).render(
        messages=[{"role": "user", "content": user_text}], add_generation_prompt=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=str(REPO / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--out", default=str(HERE / "smollm2_llamacpp.json"))
    ap.add_argument("--threads", type=int, default=N_THREADS,
                    help="llama.cpp threads (the logits do not depend on it: 1 and 2 checked equal)")
    args = ap.parse_args()

    llama_cpp = oracle.load_llama_cpp()
    from llama_cpp import Llama

    llm = Llama(args.model, n_ctx=N_CTX, n_batch=N_CTX, n_ubatch=N_CTX, n_threads=args.threads,
                n_threads_batch=args.threads, logits_all=True, flash_attn=False, verbose=False)
    vocab = llm._model.vocab
    template = llm.metadata["tokenizer.chat_template"]

    def tokenize(text):
        # add_special=True: llama.cpp adds BOS only when the GGUF asks for it
        # (tokenizer.ggml.add_bos_token = false for SmolLM2); parse_special=True.
        return llm.tokenize(text.encode("utf-8"), add_bos=True, special=True)

    def piece(t):
        return llm._model.token_get_text(t)

    prompts = []
    for name, count in SELECTION:
        with open(SPECBENCH / f"{name}.jsonl", encoding="utf-8") as f:
            rows = [json.loads(line) for line in f if line.strip()]
        taken = 0
        for row in rows:
            if taken == count:
                break
            text = render_chat(template, row["turns"][0])
            ids = tokenize(text)
            if name == "sum" and len(ids) > SUM_MAX_PROMPT_TOKENS:
                continue
            prompts.append((f"{name}.jsonl:{row['question_id']}", text, ids))
            taken += 1
        assert taken == count, (name, taken)

    records = []
    self_stats = []
    t0 = time.time()
    for source, text, ids in prompts:
        # Greedy: prefill the prompt in one batch, then one token per llama_decode call.
        llm.reset()
        llm.eval(ids)
        greedy, stop = [], "max_tokens"
        step_logits = []  # logits the greedy choice was made from (incremental decode)
        while len(greedy) < MAX_NEW:
            row = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float32)
            tok = int(row.argmax())
            step_logits.append(row)
            greedy.append(tok)
            if llama_cpp.llama_vocab_is_eog(vocab, tok):
                stop = "eog"
                break
            llm.eval([tok])

        # Teacher-forced: one forward (one ubatch) over prompt + continuation, logits for all rows.
        full = ids + greedy
        llm.reset()
        llm.eval(full)
        logits = np.array(llm.scores[: len(full)], dtype=np.float32)
        argmax, margin, topk = oracle.positions(logits, TOP, DECIMALS)

        # llama.cpp against itself: the same tokens fed one per llama_decode (M = 1 everywhere,
        # as plain decoding runs). Differences here are the oracle's own noise floor.
        llm.reset()
        for t in full:
            llm.eval([t])
        m1 = np.array(llm.scores[: len(full)], dtype=np.float32)
        self_stats.append((logits, m1))

        # Where the one-batch forward's argmax differs from the incremental greedy choice.
        tf_mismatch = [i for i in range(len(greedy)) if argmax[len(ids) - 1 + i] != greedy[i]]
        inc = np.stack(step_logits)
        tf = logits[len(ids) - 1: len(ids) - 1 + len(greedy)]
        records.append({
            "source": source,
            "prompt": text,
            "prompt_ids": ids,
            "greedy_ids": greedy,
            "greedy_text": llm.detokenize(greedy, special=True).decode("utf-8", "replace"),
            "stop": stop,
            "stop_token": piece(greedy[-1]) if stop == "eog" else None,
            "tf_vs_incremental": {
                "argmax_mismatch_steps": tf_mismatch,
                "max_abs_logit_diff": round(float(np.abs(inc - tf).max()), 6),
            },
            "argmax": argmax,
            "top2_margin": margin,
            "top5": topk,
        })
        print(f"{source}: {len(ids)} prompt + {len(greedy)} greedy ({stop}), "
              f"min margin {min(margin):.4f}, tf/inc mismatches {tf_mismatch}", file=sys.stderr)

    n_pos = sum(len(r["argmax"]) for r in records)
    self_consistency = oracle.self_consistency(self_stats, "prompt_ids + greedy_ids of every prompt")
    doc = {
        "oracle": {
            "name": "llama.cpp",
            "commit": oracle.LLAMA_CPP_COMMIT,
            "source": f"vendored in the sdist of PyPI llama-cpp-python=={oracle.LLAMA_CPP_PYTHON}",
            "bindings": f"llama-cpp-python {oracle.LLAMA_CPP_PYTHON} ctypes API (Llama, logits_all=True), "
                        "loaded from the unpacked sdist, LLAMA_CPP_LIB_PATH = the build's bin dir",
            "build": "scripts/build-llama-cpp: cmake " + oracle.BUILD_FLAGS,
            "system_info": oracle.system_info(llama_cpp),
            "n_threads": args.threads,
            "n_ctx": N_CTX, "n_batch": N_CTX, "n_ubatch": N_CTX,
            "flash_attn": False,
            "kv_cache_type": "f16",
            "numerics": "CPU backend: activations are quantized before each quantized matmul "
                        "(Q8_1 blocks of 32 for the Q4_1 layers, Q8_0 for the Q8_0 tied LM head); "
                        "attention KQ/KQV against the f16 KV cache with f16-converted activations; "
                        "norms, RoPE, softmax in f32",
            "greedy": "prefill the prompt in one llama_decode, then one token per llama_decode; "
                      "argmax of the f32 logits (first maximum); stop at an end-of-generation token "
                      "(llama_vocab_is_eog: <|endoftext|>, <|im_end|>) or after max_new tokens",
            "teacher_forced": "one llama_decode (one ubatch) over prompt_ids + greedy_ids, logits for every row",
        },
        "oracle_self_consistency": self_consistency,
        "command": "python3 crates/model/tests/data/regen_smollm2_llamacpp.py",
        "model": {
            "file": Path(args.model).name,
            "sha256": oracle.sha256_file(args.model),
            "bytes": Path(args.model).stat().st_size,
        },
        "chat_template": "GGUF tokenizer.chat_template rendered with jinja2 (sandboxed, trim_blocks, "
                         "lstrip_blocks): messages=[{role: user, content: first turn}], add_generation_prompt=True",
        "tokenization": "llama_tokenize(prompt, add_special=True, parse_special=True); the GGUF sets "
                        "add_bos_token=false, so no BOS is added (the text starts with <|im_start|>, id 1)",
        "max_new": MAX_NEW,
        "top": TOP,
        "decimals": DECIMALS,
        "rows": "position i holds the logits computed after tokens[0..=i] of prompt_ids + greedy_ids "
                "(i.e. the prediction of token i+1); len(argmax) = len(prompt_ids) + len(greedy_ids)",
        "n_prompts": len(records),
        "n_positions": n_pos,
        "prompts": records,
    }
    Path(args.out).write_text(oracle.compact_json(doc), encoding="utf-8")
    size = Path(args.out).stat().st_size
    print(f"wrote {args.out}: {len(records)} prompts, {n_pos} positions, {size} bytes, "
          f"{time.time() - t0:.1f} s", file=sys.stderr)
    assert size < 1_000_000, "golden must stay under 1 MB"


if __name__ == "__main__":
    main()
