//! The EAGLE-3 draft head on the tape, with the public EAGLE-3 parameter names (the ones the
//! inference loader in `peregrine-spec` reads), and its training-time-test loss ([`ttt`]).
//!
//! Shapes, for target hidden size `H`, `nh` heads and `nkv` KV heads of `hd = H / nh`,
//! intermediate `I` and draft vocabulary `Vd`:
//!
//! | name | shape |
//! |---|---|
//! | `fc.weight` | `[H, 3H]` |
//! | `midlayer.input_layernorm.weight`, `midlayer.hidden_norm.weight` | `[H]` |
//! | `midlayer.self_attn.q_proj.weight` | `[nh·hd, 2H]` |
//! | `midlayer.self_attn.k_proj.weight`, `…v_proj.weight` | `[nkv·hd, 2H]` |
//! | `midlayer.self_attn.o_proj.weight` | `[H, nh·hd]` |
//! | `midlayer.post_attention_layernorm.weight` | `[H]` |
//! | `midlayer.mlp.gate_proj.weight`, `…up_proj.weight` | `[I, H]` |
//! | `midlayer.mlp.down_proj.weight` | `[H, I]` |
//! | `norm.weight` | `[H]` |
//! | `lm_head.weight` | `[Vd, H]` |
//!
//! One head row with input feature `g` and (frozen) token embedding `e`:
//! `u = [input_layernorm(e), hidden_norm(g)]`; `q, k, v` = projections of `u`, RoPE (HF halves)
//! on `q` and `k`; masked GQA attention; `h = g + o_proj(attn)`;
//! `o = h + down(silu(gate(x)) ∘ up(x))` with `x = post_attention_layernorm(h)`;
//! logits `= lm_head(norm(o))`. `o` is the row's output feature.

pub mod ttt;

use crate::checkpoint;
use crate::error::{Error, Result};
use crate::ops::KeyLists;
use crate::params::{ParamId, ParamStore};
use crate::tape::{Tape, Var};
use crate::tensor::{Shape, Tensor};
use rand::Rng;
use std::collections::BTreeMap;
use std::path::Path;

pub use ttt::{TttConfig, TttGraph, TttSequence, TttStats};

/// Parameter names, in the order [`Eagle3Head::init`] inserts them.
pub const PARAM_NAMES: [&str; 13] = [
    "fc.weight",
    "midlayer.input_layernorm.weight",
    "midlayer.hidden_norm.weight",
    "midlayer.self_attn.q_proj.weight",
    "midlayer.self_attn.k_proj.weight",
    "midlayer.self_attn.v_proj.weight",
    "midlayer.self_attn.o_proj.weight",
    "midlayer.post_attention_layernorm.weight",
    "midlayer.mlp.gate_proj.weight",
    "midlayer.mlp.up_proj.weight",
    "midlayer.mlp.down_proj.weight",
    "norm.weight",
    "lm_head.weight",
];

/// Shapes of the EAGLE-3 head.
#[derive(Clone, Debug, PartialEq)]
pub struct Eagle3Config {
    /// Target hidden size `H`.
    pub hidden: usize,
    /// Attention heads `nh` (`H % nh == 0`; head dim `H / nh`, even).
    pub n_heads: usize,
    /// KV heads `nkv` (`nh % nkv == 0`).
    pub n_kv_heads: usize,
    /// MLP intermediate size `I`.
    pub intermediate: usize,
    /// Draft vocabulary `Vd`.
    pub draft_vocab: usize,
    /// RMSNorm epsilon (the target's).
    pub rms_norm_eps: f32,
    /// RoPE base (the target's).
    pub rope_theta: f32,
}

impl Eagle3Config {
    /// Head dimension `H / nh`.
    pub fn head_dim(&self) -> usize {
        self.hidden / self.n_heads.max(1)
    }

    /// Checks divisibility and positivity.
    pub fn validate(&self) -> Result<()> {
        let c = self;
        let ok = c.hidden > 0
            && c.n_heads > 0
            && c.n_kv_heads > 0
            && c.intermediate > 0
            && c.draft_vocab > 0
            && c.hidden % c.n_heads == 0
            && c.n_heads % c.n_kv_heads == 0
            && c.head_dim() % 2 == 0
            && c.rms_norm_eps.is_finite()
            && c.rms_norm_eps > 0.0
            && c.rope_theta.is_finite()
            && c.rope_theta > 0.0;
        if ok {
            Ok(())
        } else {
            Err(Error::Invalid {
                what: "EAGLE-3 config",
                reason: format!(
                    "{c:?}: want positive sizes, hidden % heads == 0, heads % KV heads == 0, an even head dim, positive eps and theta"
                ),
            })
        }
    }

    /// The shape of each parameter of [`PARAM_NAMES`], in that order.
    pub fn param_shapes(&self) -> [Vec<usize>; 13] {
        let (h, i, vd) = (self.hidden, self.intermediate, self.draft_vocab);
        let (q, kv) = (
            self.n_heads * self.head_dim(),
            self.n_kv_heads * self.head_dim(),
        );
        [
            vec![h, 3 * h],
            vec![h],
            vec![h],
            vec![q, 2 * h],
            vec![kv, 2 * h],
            vec![kv, 2 * h],
            vec![h, q],
            vec![h],
            vec![i, h],
            vec![i, h],
            vec![h, i],
            vec![h],
            vec![vd, h],
        ]
    }
}

/// Parameter ids of the head, by role.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Ids {
    pub fc: ParamId,
    pub input_norm: ParamId,
    pub hidden_norm: ParamId,
    pub q: ParamId,
    pub k: ParamId,
    pub v: ParamId,
    pub o: ParamId,
    pub post_norm: ParamId,
    pub gate: ParamId,
    pub up: ParamId,
    pub down: ParamId,
    pub norm: ParamId,
    pub lm_head: ParamId,
}

/// The EAGLE-3 head: configuration plus its parameters in a [`ParamStore`].
#[derive(Debug)]
pub struct Eagle3Head {
    config: Eagle3Config,
    store: ParamStore,
    ids: Ids,
}

/// Tape variables of the head's parameters (one node each per tape).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Vars {
    pub input_norm: Var,
    pub hidden_norm: Var,
    pub q: Var,
    pub k: Var,
    pub v: Var,
    pub o: Var,
    pub post_norm: Var,
    pub gate: Var,
    pub up: Var,
    pub down: Var,
    pub norm: Var,
    pub lm_head: Var,
}

/// Output of one head step over a block of rows.
#[derive(Clone, Copy, Debug)]
pub struct StepOut {
    /// Output features `o` `[T, H]` (the next step's input `g`).
    pub features: Var,
    /// Post-RoPE keys of these rows `[T, nkv·hd]` (for later steps' attention).
    pub k: Var,
    /// Values of these rows `[T, nkv·hd]`.
    pub v: Var,
    /// Draft logits `[T, Vd]`.
    pub logits: Var,
}

impl Eagle3Head {
    /// A new head. Linear weights are drawn from `U(−1/√fan_in, 1/√fan_in)` (torch's
    /// `nn.Linear` default), norm weights are 1; `lm_head_init` (`Vd·H`, row-major, e.g. the
    /// target's embedding rows of the draft vocabulary) and `norm_init` (`H`, e.g. the target's
    /// final norm) replace the random `lm_head.weight` and the unit `norm.weight` when given.
    pub fn init(
        config: Eagle3Config,
        rng: &mut dyn rand::RngCore,
        lm_head_init: Option<&[f32]>,
        norm_init: Option<&[f32]>,
    ) -> Result<Eagle3Head> {
        config.validate()?;
        let mut store = ParamStore::new();
        for (name, shape) in PARAM_NAMES.iter().zip(config.param_shapes()) {
            let shape = Shape::from_dims(&shape)?;
            let n = shape.numel();
            let data = if shape.is_vector() {
                vec![1.0; n]
            } else {
                let bound = 1.0 / (shape.cols() as f32).sqrt();
                (0..n).map(|_| rng.random_range(-bound..bound)).collect()
            };
            store.insert(name, Tensor::new(shape, data)?, true)?;
        }
        let mut head = Eagle3Head::from_store(config, store)?;
        for (init, id, what) in [
            (lm_head_init, head.ids.lm_head, "lm_head.weight"),
            (norm_init, head.ids.norm, "norm.weight"),
        ] {
            if let Some(data) = init {
                head.store
                    .set_value(id, data)
                    .map_err(|_| Error::BufferLen {
                        what: format!("initial {what}"),
                        want: head.store.value(id).data().len(),
                        got: data.len(),
                    })?;
            }
        }
        Ok(head)
    }

    /// A head over an existing store, which must hold every name of [`PARAM_NAMES`] with the
    /// configuration's shapes (other entries are allowed and ignored).
    pub fn from_store(config: Eagle3Config, store: ParamStore) -> Result<Eagle3Head> {
        config.validate()?;
        let mut ids = Vec::with_capacity(13);
        for (name, shape) in PARAM_NAMES.iter().zip(config.param_shapes()) {
            let id = store.id(name)?;
            if store.value(id).shape().dims() != shape.as_slice() {
                return Err(Error::Param {
                    name: name.to_string(),
                    reason: format!(
                        "shape {}, the config wants {shape:?}",
                        store.value(id).shape()
                    ),
                });
            }
            ids.push(id);
        }
        let ids = Ids {
            fc: ids[0],
            input_norm: ids[1],
            hidden_norm: ids[2],
            q: ids[3],
            k: ids[4],
            v: ids[5],
            o: ids[6],
            post_norm: ids[7],
            gate: ids[8],
            up: ids[9],
            down: ids[10],
            norm: ids[11],
            lm_head: ids[12],
        };
        Ok(Eagle3Head { config, store, ids })
    }

    /// The configuration.
    pub fn config(&self) -> &Eagle3Config {
        &self.config
    }

    /// The parameters.
    pub fn store(&self) -> &ParamStore {
        &self.store
    }

    /// The parameters, mutable (optimizer steps, loading, freezing).
    pub fn store_mut(&mut self) -> &mut ParamStore {
        &mut self.store
    }

    /// Writes the parameters as bf16 safetensors under [`PARAM_NAMES`] with `metadata`.
    pub fn save_bf16(&self, path: &Path, metadata: &BTreeMap<String, String>) -> Result<()> {
        checkpoint::export_bf16(path, &self.store, metadata)
    }

    /// Loads the parameters by name from a safetensors file (f32, bf16 or f16; other tensors,
    /// such as the `d2t`/`t2d` vocabulary maps, are ignored); returns its metadata.
    pub fn load(&mut self, path: &Path) -> Result<BTreeMap<String, String>> {
        checkpoint::load_params(path, &mut self.store)
    }

    pub(crate) fn vars(&self, tape: &mut Tape<'_>) -> Vars {
        let i = self.ids;
        Vars {
            input_norm: tape.param(i.input_norm),
            hidden_norm: tape.param(i.hidden_norm),
            q: tape.param(i.q),
            k: tape.param(i.k),
            v: tape.param(i.v),
            o: tape.param(i.o),
            post_norm: tape.param(i.post_norm),
            gate: tape.param(i.gate),
            up: tape.param(i.up),
            down: tape.param(i.down),
            norm: tape.param(i.norm),
            lm_head: tape.param(i.lm_head),
        }
    }

    /// `g = fc(f)` for target features `f[T, 3H]` (TTT step 0's input).
    pub fn fc(&self, tape: &mut Tape<'_>, features: Var) -> Result<Var> {
        let w = tape.param(self.ids.fc);
        tape.linear(features, w, None)
    }

    /// One head step for a block of rows: inputs `g[T, H]`, embeddings `e[T, H]`, RoPE
    /// positions, the keys/values of earlier steps (`past_k`, `past_v`, each `[·, nkv·hd]`,
    /// prepended to this block's own in that order), and the allowed keys per row over
    /// `past ∪ this block`.
    #[allow(clippy::too_many_arguments)]
    pub fn step(
        &self,
        tape: &mut Tape<'_>,
        g: Var,
        e: Var,
        positions: &[usize],
        past_k: &[Var],
        past_v: &[Var],
        keys: KeyLists,
    ) -> Result<StepOut> {
        let c = &self.config;
        let p = self.vars(tape);
        let hd = c.head_dim();
        let en = tape.rms_norm(e, p.input_norm, c.rms_norm_eps)?;
        let gn = tape.rms_norm(g, p.hidden_norm, c.rms_norm_eps)?;
        let u = tape.concat_cols(&[en, gn])?;
        let q = tape.linear(u, p.q, None)?;
        let k = tape.linear(u, p.k, None)?;
        let v = tape.linear(u, p.v, None)?;
        let q = tape.rope(q, positions, hd, c.rope_theta)?;
        let k = tape.rope(k, positions, hd, c.rope_theta)?;
        let (k_all, v_all) = if past_k.is_empty() {
            (k, v)
        } else {
            let ks: Vec<Var> = past_k.iter().copied().chain([k]).collect();
            let vs: Vec<Var> = past_v.iter().copied().chain([v]).collect();
            (tape.concat_rows(&ks)?, tape.concat_rows(&vs)?)
        };
        let attn = tape.attention_keys(q, k_all, v_all, keys, c.n_heads, c.n_kv_heads)?;
        let a = tape.linear(attn, p.o, None)?;
        let h = tape.add(g, a)?;
        let x = tape.rms_norm(h, p.post_norm, c.rms_norm_eps)?;
        let gate = tape.linear(x, p.gate, None)?;
        let gate = tape.silu(gate)?;
        let up = tape.linear(x, p.up, None)?;
        let m = tape.mul(gate, up)?;
        let d = tape.linear(m, p.down, None)?;
        let o = tape.add(h, d)?;
        let on = tape.rms_norm(o, p.norm, c.rms_norm_eps)?;
        let logits = tape.linear(on, p.lm_head, None)?;
        Ok(StepOut {
            features: o,
            k,
            v,
            logits,
        })
    }
}
