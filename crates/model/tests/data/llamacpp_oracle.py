"""Shared helpers for the regen_*_llamacpp.py scripts: find (or build) llama.cpp with
scripts/build-llama-cpp, load the llama-cpp-python 0.3.36 ctypes bindings from the unpacked
sdist (no pip build), and turn logits into the golden's per-position records.

The oracle is llama.cpp commit 0c1e57098 as vendored in PyPI llama-cpp-python==0.3.36,
built by scripts/build-llama-cpp (Release, GGML_NATIVE=ON, BUILD_SHARED_LIBS=ON).
"""

import hashlib
import os
import subprocess
import sys
import types
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[4]
LLAMA_CPP_COMMIT = "0c1e57098"
LLAMA_CPP_PYTHON = "0.3.36"
BUILD_FLAGS = ("-DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DLLAMA_CURL=OFF "
               "-DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_BUILD_TESTS=OFF -DBUILD_SHARED_LIBS=ON")


def _build_script(*args):
    out = subprocess.run([str(REPO / "scripts" / "build-llama-cpp"), *args],
                         check=True, stdout=subprocess.PIPE, text=True).stdout
    return out.strip().splitlines()[-1]


def load_llama_cpp():
    """Import llama_cpp from the sdist next to the build, bound to the build's libllama.so."""
    bin_dir = _build_script()
    py_dir = _build_script("--pydir")
    os.environ["LLAMA_CPP_LIB_PATH"] = bin_dir
    sys.path.insert(0, py_dir)
    try:
        import diskcache  # noqa: F401  (llama_cpp.llama_cache imports it; unused here)
    except ImportError:
        stub = types.ModuleType("diskcache")
        stub.Cache = object
        sys.modules["diskcache"] = stub
    import llama_cpp
    assert llama_cpp.__version__ == LLAMA_CPP_PYTHON, llama_cpp.__version__
    return llama_cpp


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def system_info(llama_cpp):
    return llama_cpp.llama_print_system_info().decode().strip()


def positions(logits, top=5, decimals=4):
    """Per-row argmax, top-2 margin and top-`top` [id, logit] pairs of a (n, vocab) f32 array.

    Ties in the top list are ordered by token id (stable sort on -logit), which is also what
    argmax picks (the first maximum)."""
    logits = np.asarray(logits, dtype=np.float32)
    order = np.argsort(-logits, axis=1, kind="stable")[:, :top]
    vals = np.take_along_axis(logits, order, axis=1)
    argmax = logits.argmax(axis=1)
    assert (argmax == order[:, 0]).all()
    margin = (vals[:, 0].astype(np.float64) - vals[:, 1]).round(decimals)
    topk = [[[int(t), round(float(v), decimals)] for t, v in zip(row_t, row_v)]
            for row_t, row_v in zip(order, vals)]
    return [int(a) for a in argmax], [float(m) for m in margin], topk


def compact_json(obj):
    """JSON with one line per list of scalars/pairs, so diffs of the golden stay readable."""
    import json

    def enc(o, indent):
        pad = " " * indent
        if isinstance(o, dict):
            items = [f'{pad}  {json.dumps(k)}: {enc(v, indent + 2).lstrip()}' for k, v in o.items()]
            return pad + "{\n" + ",\n".join(items) + "\n" + pad + "}"
        if isinstance(o, list) and o and isinstance(o[0], (dict,)):
            return pad + "[\n" + ",\n".join(enc(v, indent + 2) for v in o) + "\n" + pad + "]"
        if isinstance(o, list) and o and isinstance(o[0], list) and o[0] and isinstance(o[0][0], list):
            # list of per-position top-k lists: one position per line
            rows = [pad + "  " + json.dumps(r, separators=(",", ":")) for r in o]
            return pad + "[\n" + ",\n".join(rows) + "\n" + pad + "]"
        return pad + json.dumps(o, ensure_ascii=False, separators=(",", ":"))

    return enc(obj, 0) + "\n"


def self_consistency(pairs, what):
    """Compare llama.cpp's one-batch forward (a) with one-token-per-decode (b) over the same
    tokens: argmax agreement, |logit difference| of a's top-1 token, and the top-2 margins
    (in a) at positions where the argmax flips. This is the oracle's own noise floor: an
    engine that is not bit-identical to llama.cpp cannot be expected to agree better."""
    diffs, flips, n = [], [], 0
    for a, b in pairs:
        top = a.argmax(axis=1)
        rows = np.arange(len(a))
        diffs.append(np.abs(a[rows, top] - b[rows, top]))
        srt = np.sort(a, axis=1)
        margin = srt[:, -1] - srt[:, -2]
        flip = top != b.argmax(axis=1)
        flips.extend(float(m) for m in margin[flip])
        n += len(a)
    d = np.concatenate(diffs)
    return {
        "compare": "one llama_decode over all tokens (M = n) vs one token per llama_decode (M = 1), "
                   f"same tokens ({what}), same context settings",
        "positions": int(n),
        "argmax_agreement": round(1 - len(flips) / n, 5),
        "argmax_flips": len(flips),
        "flip_top2_margin_max": round(max(flips), 4) if flips else None,
        "flip_top2_margin_median": round(float(np.median(flips)), 4) if flips else None,
        "top1_abs_logit_diff": {q: round(float(np.quantile(d, p)), 6) for q, p in
                                (("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("max", 1.0))},
        "exactly_equal_rows": int((d == 0).sum()),
    }
