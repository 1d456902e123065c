#!/usr/bin/env python3
"""Oracle for the EAGLE head forward (crates/spec/src/eagle/forward.rs), in float64 numpy.

Builds two small random heads for a tiny synthetic target (hidden 128, 4 query / 2 KV heads of
32, vocabulary 512, 8 layers), writes them as safetensors by hand (8-byte little-endian header
length, JSON header, raw little-endian data; bf16 matrices, f32/f16 norms), and computes the
head's outputs and logits for a fixed sequence of calls:

  1. 5 target-fed rows at positions 0..4 (causal), logits of the last row;
  2. 2 drafted rows at position 5, children of the last committed row;
  3. 3 drafted rows at position 6: two under drafted row A, one under drafted row B
     (each sees the committed rows, its drafted ancestors and itself);
  4. drafts dropped, then 2 more target-fed rows at positions 5, 6 (causal), logits of both.

EAGLE-3: g = fc(f) for target rows (f = 3 feature layers), g = parent output for drafts;
u = [input_layernorm(e), hidden_norm(g)]; attention; h = g + o_proj(attn);
o = h + down(silu(gate(n)) * up(n)), n = post_attention_layernorm(h); logits = lm_head(norm(o))
over the draft vocabulary. EAGLE-1: g = fc([e, f]) + bias (f = the target's normed top feature,
or the parent's o), attention input g (no input norm), logits = target LM head applied to o.

Usage: python3 eagle_ref.py   (writes beside itself: eagle3_tiny.safetensors,
eagle1_tiny.safetensors, eagle_tiny_target_lm_head.safetensors, eagle_ref.json)
"""
import json
import os
import struct

import numpy as np

H, NH, NKV, HD, I, V, VD, LAYERS = 128, 4, 2, 32, 192, 512, 96, 8
EPS, THETA = 1e-5, 10000.0
FEATURE_LAYERS = [2, 4, 5]
HERE = os.path.dirname(os.path.abspath(__file__))


def bf16_round(x):
    """float64 -> nearest-even bf16 values (as float64) and their bytes."""
    b = np.asarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    r = ((b + 0x7FFF + ((b >> 16) & 1)) >> 16).astype(np.uint16)
    vals = (r.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    return vals, r.tobytes()


def write_safetensors(path, tensors, metadata):
    """tensors: list of (name, dtype string, shape, bytes)."""
    header, offset, blobs = {}, 0, []
    for name, dtype, shape, data in tensors:
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
        blobs.append(data)
    if metadata:
        header["__metadata__"] = metadata
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


class Store:
    """Random tensors, rounded to their stored dtype; keeps the float64 values for the oracle."""

    def __init__(self, rng):
        self.rng, self.tensors, self.values = rng, [], {}

    def matrix(self, name, rows, cols, scale=1.0):
        vals, data = bf16_round(self.rng.standard_normal((rows, cols)) * scale / np.sqrt(cols))
        self.tensors.append((name, "BF16", (rows, cols), data))
        self.values[name] = vals
        return vals

    def norm(self, name, dtype="F32"):
        x = 1.0 + 0.2 * self.rng.standard_normal(H)
        if dtype == "F16":
            x = x.astype(np.float16)
        else:
            x = x.astype(np.float32)
        self.tensors.append((name, dtype, (H,), x.tobytes()))
        self.values[name] = x.astype(np.float64)
        return self.values[name]

    def vector(self, name, n, scale):
        x = (self.rng.standard_normal(n) * scale).astype(np.float32)
        self.tensors.append((name, "F32", (n,), x.tobytes()))
        self.values[name] = x.astype(np.float64)
        return self.values[name]


def rms_norm(x, w):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + EPS) * w


def rope(x, pos):
    # x: [n_heads, HD]; rotate halves (i, i + HD/2) by pos * THETA^(-2i/HD).
    half = HD // 2
    inv = THETA ** (-2.0 * np.arange(half) / HD)
    ang = pos * inv
    c, s = np.cos(ang), np.sin(ang)
    a, b = x[:, :half], x[:, half:]
    return np.concatenate([a * c - b * s, a * s + b * c], axis=1)


class Head:
    """The head forward in float64 with a KV cache of committed and drafted rows."""

    def __init__(self, w, kind, prefix, lm_head):
        self.w, self.kind, self.p, self.lm_head = w, kind, prefix, lm_head
        self.k, self.v = [], []  # per slot: [NKV, HD]
        self.n_committed = 0
        self.parents = []  # per drafted row: slot of drafted parent or None

    def drop_drafts(self):
        del self.k[self.n_committed:]
        del self.v[self.n_committed:]
        self.parents = []

    def forward(self, inputs, embeds, positions, drafted_parents=None, logits_rows=()):
        w, p = self.w, self.p
        m = len(positions)
        out, logits = [], []
        g = np.zeros((m, H))
        for r in range(m):
            if self.kind == 3:
                g[r] = w["fc.weight"] @ inputs[r] if drafted_parents is None else inputs[r]
            else:
                g[r] = w["fc.weight"] @ np.concatenate([embeds[r], inputs[r]]) + w["fc.bias"]
        if self.kind == 3:
            u = np.concatenate([rms_norm(embeds, w["midlayer.input_layernorm.weight"]),
                                rms_norm(g, w["midlayer.hidden_norm.weight"])], axis=1)
        else:
            u = g
        first = len(self.k)
        qs = []
        for r in range(m):
            q = rope((w[p + ".self_attn.q_proj.weight"] @ u[r]).reshape(NH, HD), positions[r])
            k = rope((w[p + ".self_attn.k_proj.weight"] @ u[r]).reshape(NKV, HD), positions[r])
            v = (w[p + ".self_attn.v_proj.weight"] @ u[r]).reshape(NKV, HD)
            qs.append(q)
            self.k.append(k)
            self.v.append(v)
        if drafted_parents is None:
            self.n_committed += m
        else:
            self.parents.extend(drafted_parents)
        for r in range(m):
            slot = first + r
            if slot < self.n_committed:
                keys = list(range(slot + 1))
            else:
                chain, s = [], slot
                while s is not None:
                    chain.append(s)
                    s = self.parents[s - self.n_committed]
                keys = list(range(self.n_committed)) + chain[::-1]
            attn = np.zeros((NH, HD))
            for hh in range(NH):
                kv = hh // (NH // NKV)
                sc = np.array([qs[r][hh] @ self.k[j][kv] for j in keys]) / np.sqrt(HD)
                pr = np.exp(sc - sc.max())
                pr /= pr.sum()
                attn[hh] = sum(pr[i] * self.v[j][kv] for i, j in enumerate(keys))
            h = g[r] + w[p + ".self_attn.o_proj.weight"] @ attn.reshape(-1)
            n = rms_norm(h, w[p + ".post_attention_layernorm.weight"])
            gate = w[p + ".mlp.gate_proj.weight"] @ n
            up = w[p + ".mlp.up_proj.weight"] @ n
            o = h + w[p + ".mlp.down_proj.weight"] @ (gate / (1.0 + np.exp(-gate)) * up)
            out.append(o)
            if r in logits_rows:
                if self.kind == 3:
                    logits.append(w["lm_head.weight"] @ rms_norm(o, w["norm.weight"]))
                else:
                    logits.append(self.lm_head @ o)
        return np.array(out), np.array(logits), first


def f32(x):
    return np.asarray(x, dtype=np.float32).astype(np.float64)


def run_sequence(head, rng, feat_dim, name):
    """The four calls of the module docs; returns the inputs and the reference results."""
    calls = []

    def record(kind, inputs, embeds, positions, parents, logits_rows, parent_of=None):
        out, logits, first = head.forward(inputs, embeds, positions, parents, logits_rows)
        calls.append({
            "kind": kind,
            "inputs": None if parent_of is not None else inputs.astype(np.float32).tolist(),
            # Drafted rows: g is output row `row` of call `call` ([call, row] per row).
            "parent_rows": parent_of,
            "embeds": embeds.astype(np.float32).tolist(),
            "positions": positions,
            "parents": parents,
            "logits_rows": list(logits_rows),
            "first_slot": first,
            "out": out.tolist(),
            "logits": logits.tolist(),
        })
        return out

    feats = f32(rng.standard_normal((5, feat_dim)) * 2.0)
    emb = f32(rng.standard_normal((5, H)))
    out = record("target", feats, emb, [0, 1, 2, 3, 4], None, (4,))
    last = out[4]
    # Level 1: two drafts under the last committed row (slots 5, 6).
    emb = f32(rng.standard_normal((2, H)))
    lvl1 = record("drafted", np.array([last, last]), emb, [5, 5], [None, None], (0, 1),
                  parent_of=[[0, 4], [0, 4]])
    # Level 2: two under slot 5, one under slot 6.
    emb = f32(rng.standard_normal((3, H)))
    record("drafted", np.array([lvl1[0], lvl1[0], lvl1[1]]), emb, [6, 6, 6], [5, 5, 6], (0, 1, 2),
           parent_of=[[1, 0], [1, 0], [1, 1]])
    head.drop_drafts()
    calls.append({"kind": "drop_drafts"})
    feats = f32(rng.standard_normal((2, feat_dim)) * 2.0)
    emb = f32(rng.standard_normal((2, H)))
    record("target", feats, emb, [5, 6], None, (0, 1))
    return calls


def main():
    rng = np.random.default_rng(20240611)
    meta = {"rms_norm_eps": "1e-5", "rope_theta": "10000", "feature_layers": ",".join(map(str, FEATURE_LAYERS))}

    # EAGLE-3.
    s = Store(rng)
    s.matrix("fc.weight", H, 3 * H)
    s.norm("midlayer.input_layernorm.weight")
    s.norm("midlayer.hidden_norm.weight", "F16")
    s.matrix("midlayer.self_attn.q_proj.weight", NH * HD, 2 * H)
    s.matrix("midlayer.self_attn.k_proj.weight", NKV * HD, 2 * H)
    s.matrix("midlayer.self_attn.v_proj.weight", NKV * HD, 2 * H)
    s.matrix("midlayer.self_attn.o_proj.weight", H, NH * HD)
    s.norm("midlayer.post_attention_layernorm.weight")
    s.matrix("midlayer.mlp.gate_proj.weight", I, H)
    s.matrix("midlayer.mlp.up_proj.weight", I, H)
    s.matrix("midlayer.mlp.down_proj.weight", H, I)
    s.norm("norm.weight")
    s.matrix("lm_head.weight", VD, H, scale=4.0)
    targets = np.sort(rng.choice(V, VD, replace=False))
    d2t = (targets - np.arange(VD)).astype(np.int64)
    t2d = np.zeros(V, dtype=np.uint8)
    t2d[targets] = 1
    s.tensors.append(("d2t", "I64", (VD,), d2t.tobytes()))
    s.tensors.append(("t2d", "BOOL", (V,), t2d.tobytes()))
    write_safetensors(os.path.join(HERE, "eagle3_tiny.safetensors"), s.tensors, meta)
    calls3 = run_sequence(Head(s.values, 3, "midlayer", None), rng, 3 * H, "eagle3")

    # EAGLE-1, with a random target LM head in its own file.
    lm_vals, lm_bytes = bf16_round(rng.standard_normal((V, H)) * 4.0 / np.sqrt(H))
    write_safetensors(os.path.join(HERE, "eagle_tiny_target_lm_head.safetensors"),
                      [("lm_head.weight", "BF16", (V, H), lm_bytes)], None)
    s = Store(rng)
    s.matrix("fc.weight", H, 2 * H)
    s.vector("fc.bias", H, 0.1)
    s.norm("layers.0.input_layernorm.weight")  # present in checkpoints, unused
    s.matrix("layers.0.self_attn.q_proj.weight", NH * HD, H)
    s.matrix("layers.0.self_attn.k_proj.weight", NKV * HD, H)
    s.matrix("layers.0.self_attn.v_proj.weight", NKV * HD, H)
    s.matrix("layers.0.self_attn.o_proj.weight", H, NH * HD)
    s.norm("layers.0.post_attention_layernorm.weight", "F16")
    s.matrix("layers.0.mlp.gate_proj.weight", I, H)
    s.matrix("layers.0.mlp.up_proj.weight", I, H)
    s.matrix("layers.0.mlp.down_proj.weight", H, I)
    write_safetensors(os.path.join(HERE, "eagle1_tiny.safetensors"), s.tensors, {"rms_norm_eps": "1e-5", "rope_theta": "10000"})
    calls1 = run_sequence(Head(s.values, 1, "layers.0", lm_vals), rng, H, "eagle1")

    golden = {
        "oracle": "numpy %s, float64, crates/spec/tests/data/eagle_ref.py" % np.__version__,
        "command": "python3 crates/spec/tests/data/eagle_ref.py",
        "target": {"hidden": H, "n_heads": NH, "n_kv_heads": NKV, "head_dim": HD, "ffn": I,
                   "vocab": V, "draft_vocab": VD, "n_layers": LAYERS, "rms_norm_eps": EPS,
                   "rope_theta": THETA, "feature_layers": FEATURE_LAYERS},
        "eagle3": calls3,
        "eagle1": calls1,
    }
    with open(os.path.join(HERE, "eagle_ref.json"), "w") as f:
        json.dump(golden, f, separators=(",", ":"))


if __name__ == "__main__":
    main()
