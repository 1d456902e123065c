//! Loading an EAGLE draft head from safetensors, in the public checkpoints' tensor names, and
//! checking every shape and the vocabulary maps against the target it drafts for.
//!
//! Linear weights are quantized to Q8_0 at load and repacked into the 16-row tiles of
//! `peregrine_tensor::packed` (the head runs once per tree level, and streaming f32 weights
//! would make it memory-bound); with [`HeadOptions::quantize`] off they stay f32 (the reference
//! numerics the oracle test uses). Norm vectors are copied out as f32.

use crate::{Error, Result};
use peregrine_formats::safetensors_io::{Dtype, SafetensorRef, SafetensorsFile};
use peregrine_formats::{GgmlType, ModelConfig};
use peregrine_tensor::packed::TILE_ROWS;
use peregrine_tensor::qdot::QuantKind;
use peregrine_tensor::{FloatType, PackedFloatMatrix, PackedMatrix, WeightMatrix, Weights};
use std::path::{Path, PathBuf};

/// Which EAGLE generation a head belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EagleKind {
    /// EAGLE-1/2: `fc` over `[embedding, top feature]`, one decoder layer without input norm,
    /// the target's LM head.
    Eagle1,
    /// EAGLE-3: `fc` fuses three feature layers; the layer attends over
    /// `[input_layernorm(embedding), hidden_norm(g)]`; own norm and reduced-vocabulary LM head.
    Eagle3,
}

impl EagleKind {
    /// `EAGLE-1` or `EAGLE-3`.
    pub fn label(self) -> &'static str {
        match self {
            EagleKind::Eagle1 => "EAGLE-1",
            EagleKind::Eagle3 => "EAGLE-3",
        }
    }
}

/// Sizes and settings of a loaded head.
#[derive(Clone, Debug)]
pub struct EagleConfig {
    /// Head generation.
    pub kind: EagleKind,
    /// Target hidden size `H`.
    pub hidden_size: usize,
    /// Query heads.
    pub n_heads: usize,
    /// Key/value heads.
    pub n_kv_heads: usize,
    /// Dimension of one head.
    pub head_dim: usize,
    /// MLP inner width.
    pub ffn_size: usize,
    /// Logits the head produces: the draft vocabulary (EAGLE-3) or the target's (EAGLE-1).
    pub draft_vocab: usize,
    /// The target's vocabulary.
    pub target_vocab: usize,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f32,
    /// RoPE base.
    pub rope_theta: f32,
    /// Target layers whose input residual stream the head reads (`n_layers` = the output of
    /// the last layer, after which EAGLE-1 applies the target's final norm).
    pub feature_layers: Vec<usize>,
}

impl EagleConfig {
    /// Width of one target feature row: `feature_layers.len() * H`.
    pub fn feature_dim(&self) -> usize {
        self.feature_layers.len() * self.hidden_size
    }
}

/// How to load a head.
#[derive(Clone, Copy, Debug)]
pub struct HeadOptions {
    /// The block type linear weights are quantized to: Q8_0 (the default), or Q4_1 (a
    /// quantized draft: ~60% of the bytes each drafting step reads, at some cost in agreement
    /// with the f32 head); `None` keeps f32 (reference numerics).
    pub quantize: Option<QuantKind>,
}

impl Default for HeadOptions {
    fn default() -> Self {
        Self {
            quantize: Some(QuantKind::Q8_0),
        }
    }
}

/// A linear layer's weights, owned: quantized tiles, f32 panels, or (if packing failed) f32
/// rows.
pub(crate) enum Linear {
    Packed(PackedMatrix),
    Float(PackedFloatMatrix),
    F32 {
        bytes: Vec<u8>,
        n_rows: usize,
        n_cols: usize,
    },
}

impl Linear {
    fn new(values: &[f32], n_rows: usize, n_cols: usize, block: Option<QuantKind>) -> Self {
        debug_assert_eq!(values.len(), n_rows * n_cols);
        let tiles = n_rows.is_multiple_of(TILE_ROWS) && n_cols.is_multiple_of(64);
        if let Some(kind) = block.filter(|_| tiles) {
            let (ty, block_bytes) = match kind {
                QuantKind::Q8_0 => (GgmlType::Q8_0, 34),
                QuantKind::Q4_1 => (GgmlType::Q4_1, 20),
                QuantKind::Q4_0 => (GgmlType::Q4_0, 18),
            };
            let row_bytes = n_cols / 32 * block_bytes;
            let mut q = vec![0u8; n_rows * row_bytes];
            for (src, dst) in values
                .chunks_exact(n_cols)
                .zip(q.chunks_exact_mut(row_bytes))
            {
                peregrine_formats::quant::quantize_row(ty, src, dst)
                    .expect("whole blocks: n_cols is a multiple of 64");
            }
            return Linear::Packed(PackedMatrix::pack(kind, n_rows, n_cols, |r| {
                &q[r * row_bytes..(r + 1) * row_bytes]
            }));
        }
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let row_bytes = n_cols * 4;
        match PackedFloatMatrix::pack(FloatType::F32, n_rows, n_cols, |r| {
            &bytes[r * row_bytes..(r + 1) * row_bytes]
        }) {
            Ok(p) => Linear::Float(p),
            // Unreachable with rows cut from the shape; the row-at-a-time path still computes.
            Err(_) => Linear::F32 {
                bytes,
                n_rows,
                n_cols,
            },
        }
    }

    pub(crate) fn weights(&self) -> Weights<'_> {
        match self {
            Linear::Packed(p) => Weights::Packed(p),
            Linear::Float(p) => Weights::PackedFloat(p),
            Linear::F32 {
                bytes,
                n_rows,
                n_cols,
            } => Weights::Rows(
                WeightMatrix::new(GgmlType::F32, bytes, *n_rows, *n_cols)
                    .expect("the byte length was set from the shape"),
            ),
        }
    }
}

/// A loaded EAGLE head: weights, sizes, and the draft-to-target vocabulary map.
pub struct EagleHead {
    pub(crate) cfg: EagleConfig,
    pub(crate) path: PathBuf,
    pub(crate) fc: Linear,
    pub(crate) fc_bias: Option<Vec<f32>>,
    /// EAGLE-3: norms of the embedding and of `g` before attention.
    pub(crate) input_norm: Option<Vec<f32>>,
    pub(crate) hidden_norm: Option<Vec<f32>>,
    pub(crate) wq: Linear,
    pub(crate) wk: Linear,
    pub(crate) wv: Linear,
    pub(crate) wo: Linear,
    pub(crate) post_norm: Vec<f32>,
    pub(crate) w_gate: Linear,
    pub(crate) w_up: Linear,
    pub(crate) w_down: Linear,
    /// EAGLE-3: final norm and LM head over the draft vocabulary.
    pub(crate) norm: Option<Vec<f32>>,
    pub(crate) lm_head: Option<Linear>,
    /// Draft id -> target id (EAGLE-3; identity when absent).
    pub(crate) d2t: Option<Vec<u32>>,
}

/// The default feature layers of EAGLE-3 for a target of `n_layers`: 2, L/2, L-3.
pub fn default_eagle3_layers(n_layers: usize) -> Vec<usize> {
    vec![2.min(n_layers), n_layers / 2, n_layers.saturating_sub(3)]
}

impl EagleHead {
    /// Loads and checks a head for a target with config `target` (see the module docs).
    pub fn load(path: &Path, target: &ModelConfig, opts: HeadOptions) -> Result<Self> {
        let file = SafetensorsFile::open(path)?;
        Self::from_safetensors(&file, target, opts)
    }

    /// As [`EagleHead::load`], from an opened file.
    pub fn from_safetensors(
        file: &SafetensorsFile,
        target: &ModelConfig,
        opts: HeadOptions,
    ) -> Result<Self> {
        let has = |name: &str| file.tensor(name).is_ok();
        let kind = if has("midlayer.self_attn.q_proj.weight") {
            EagleKind::Eagle3
        } else if has("layers.0.self_attn.q_proj.weight") {
            EagleKind::Eagle1
        } else {
            return Err(Error::NotEagleHead {
                path: file.path().to_path_buf(),
            });
        };
        let l = Loader {
            file,
            path: file.path(),
            kind,
        };
        let h = target.hidden_size;
        let (nh, nkv, hd) = (target.n_heads, target.n_kv_heads, target.head_dim);
        let (q_dim, kv_dim) = (nh * hd, nkv * hd);
        let v = target.vocab_size;
        let meta = |key: &'static str| file.user_metadata().and_then(|m| m.get(key)).cloned();
        let parse_f32 = |key: &'static str, default: f32| -> Result<f32> {
            match meta(key) {
                None => Ok(default),
                Some(s) => s
                    .trim()
                    .parse::<f32>()
                    .ok()
                    .filter(|x| x.is_finite() && *x > 0.0)
                    .ok_or_else(|| Error::HeadMetadata {
                        path: l.path.to_path_buf(),
                        key,
                        value: s.clone(),
                        msg: "expected a positive number".into(),
                    }),
            }
        };
        let rms_norm_eps = parse_f32("rms_norm_eps", target.rms_norm_eps)?;
        let rope_theta = parse_f32("rope_theta", target.rope_base)?;

        let (prefix, attn_in) = match kind {
            EagleKind::Eagle3 => ("midlayer", 2 * h),
            EagleKind::Eagle1 => ("layers.0", h),
        };
        let why_attn = format!(
            "target: {nh} heads x {hd}, {nkv} KV heads, hidden {h}; attention input {attn_in}"
        );
        let wq = l.matrix(
            &format!("{prefix}.self_attn.q_proj.weight"),
            q_dim,
            attn_in,
            &why_attn,
        )?;
        let wk = l.matrix(
            &format!("{prefix}.self_attn.k_proj.weight"),
            kv_dim,
            attn_in,
            &why_attn,
        )?;
        let wv = l.matrix(
            &format!("{prefix}.self_attn.v_proj.weight"),
            kv_dim,
            attn_in,
            &why_attn,
        )?;
        let wo = l.matrix(
            &format!("{prefix}.self_attn.o_proj.weight"),
            h,
            q_dim,
            &why_attn,
        )?;
        let gate_name = format!("{prefix}.mlp.gate_proj.weight");
        let ffn_size = match l.get(&gate_name)?.shape {
            [i, _] if *i > 0 => *i,
            other => {
                return Err(l.shape_err(&gate_name, other, &[0, h], "gate_proj is [I, hidden]"))
            }
        };
        let why_mlp = format!("hidden {h}, MLP width {ffn_size} from gate_proj");
        let w_gate = l.matrix(&gate_name, ffn_size, h, &why_mlp)?;
        let w_up = l.matrix(
            &format!("{prefix}.mlp.up_proj.weight"),
            ffn_size,
            h,
            &why_mlp,
        )?;
        let w_down = l.matrix(
            &format!("{prefix}.mlp.down_proj.weight"),
            h,
            ffn_size,
            &why_mlp,
        )?;
        let why_h = format!("target hidden {h}");
        let post_norm = l.vector(
            &format!("{prefix}.post_attention_layernorm.weight"),
            h,
            &why_h,
        )?;

        let q = opts.quantize;
        let lin = |(vals, r, c): (Vec<f32>, usize, usize)| Linear::new(&vals, r, c, q);
        match kind {
            EagleKind::Eagle3 => {
                let layers = match meta("feature_layers") {
                    None => default_eagle3_layers(target.n_layers),
                    Some(s) => {
                        parse_layers(&s, target.n_layers).map_err(|msg| Error::HeadMetadata {
                            path: l.path.to_path_buf(),
                            key: "feature_layers",
                            value: s.clone(),
                            msg,
                        })?
                    }
                };
                let n_feat = layers.len();
                let fc = l.matrix(
                    "fc.weight",
                    h,
                    n_feat * h,
                    &format!("target hidden {h}, {n_feat} feature layers {layers:?}"),
                )?;
                let lm = l.get("lm_head.weight")?;
                let vd = match lm.shape {
                    [vd, _] if *vd > 0 && *vd <= v => *vd,
                    other => {
                        return Err(l.shape_err(
                            "lm_head.weight",
                            other,
                            &[v, h],
                            &format!("[draft vocabulary <= target vocabulary {v}, hidden {h}]"),
                        ))
                    }
                };
                let lm_head = l.matrix(
                    "lm_head.weight",
                    vd,
                    h,
                    &format!("draft vocabulary {vd}, hidden {h}"),
                )?;
                let d2t = l.vocab_maps(vd, v)?;
                let cfg = EagleConfig {
                    kind,
                    hidden_size: h,
                    n_heads: nh,
                    n_kv_heads: nkv,
                    head_dim: hd,
                    ffn_size,
                    draft_vocab: vd,
                    target_vocab: v,
                    rms_norm_eps,
                    rope_theta,
                    feature_layers: layers,
                };
                Ok(Self {
                    path: l.path.to_path_buf(),
                    fc: lin(fc),
                    fc_bias: l.optional_vector("fc.bias", h, &why_h)?,
                    input_norm: Some(l.vector("midlayer.input_layernorm.weight", h, &why_h)?),
                    hidden_norm: Some(l.vector("midlayer.hidden_norm.weight", h, &why_h)?),
                    wq: lin(wq),
                    wk: lin(wk),
                    wv: lin(wv),
                    wo: lin(wo),
                    post_norm,
                    w_gate: lin(w_gate),
                    w_up: lin(w_up),
                    w_down: lin(w_down),
                    norm: Some(l.vector("norm.weight", h, &why_h)?),
                    lm_head: Some(lin(lm_head)),
                    d2t,
                    cfg,
                })
            }
            EagleKind::Eagle1 => {
                let fc = l.matrix(
                    "fc.weight",
                    h,
                    2 * h,
                    &format!("target hidden {h}: fc maps [embedding, feature] to hidden"),
                )?;
                let cfg = EagleConfig {
                    kind,
                    hidden_size: h,
                    n_heads: nh,
                    n_kv_heads: nkv,
                    head_dim: hd,
                    ffn_size,
                    draft_vocab: v,
                    target_vocab: v,
                    rms_norm_eps,
                    rope_theta,
                    feature_layers: vec![target.n_layers],
                };
                Ok(Self {
                    path: l.path.to_path_buf(),
                    fc: lin(fc),
                    fc_bias: l.optional_vector("fc.bias", h, &why_h)?,
                    input_norm: None,
                    hidden_norm: None,
                    wq: lin(wq),
                    wk: lin(wk),
                    wv: lin(wv),
                    wo: lin(wo),
                    post_norm,
                    w_gate: lin(w_gate),
                    w_up: lin(w_up),
                    w_down: lin(w_down),
                    norm: None,
                    lm_head: None,
                    d2t: None,
                    cfg,
                })
            }
        }
    }

    /// Sizes and settings.
    pub fn config(&self) -> &EagleConfig {
        &self.cfg
    }

    /// The file the head came from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The target token id of draft-vocabulary id `draft_id`.
    pub fn target_id(&self, draft_id: usize) -> u32 {
        match &self.d2t {
            Some(map) => map[draft_id],
            None => draft_id as u32,
        }
    }
}

/// Parses `"2,15,27"`; every layer must be at most `n_layers` (the last layer's output).
fn parse_layers(s: &str, n_layers: usize) -> std::result::Result<Vec<usize>, String> {
    let layers: Vec<usize> = s
        .trim()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .split(',')
        .map(|p| p.trim().parse::<usize>())
        .collect::<std::result::Result<_, _>>()
        .map_err(|_| "expected layer numbers separated by commas, e.g. \"2,15,27\"".to_string())?;
    if layers.is_empty() {
        return Err("no layers".into());
    }
    if let Some(&bad) = layers.iter().find(|&&x| x > n_layers) {
        return Err(format!(
            "layer {bad} is beyond the target's {n_layers} layers"
        ));
    }
    Ok(layers)
}

struct Loader<'a> {
    file: &'a SafetensorsFile,
    path: &'a Path,
    kind: EagleKind,
}

impl<'a> Loader<'a> {
    /// The tensor `name` (looked up under the file's own copy of the name, which the returned
    /// reference borrows).
    fn get(&self, name: &str) -> Result<SafetensorRef<'a>> {
        let names = self.file.names();
        match names.iter().find(|n| **n == name) {
            Some(&own) => Ok(self.file.tensor(own)?),
            None => Err(Error::HeadTensorMissing {
                path: self.path.to_path_buf(),
                format: self.kind.label(),
                name: name.to_string(),
            }),
        }
    }

    fn shape_err(&self, name: &str, got: &[usize], expected: &[usize], why: &str) -> Error {
        Error::HeadShape {
            path: self.path.to_path_buf(),
            name: name.to_string(),
            got: got.into(),
            expected: expected.into(),
            why: why.to_string(),
        }
    }

    fn floats(&self, t: &SafetensorRef<'_>) -> Result<Vec<f32>> {
        match t.dtype {
            Dtype::F32 | Dtype::F16 | Dtype::BF16 => Ok(t.to_f32(self.path)?),
            other => Err(Error::HeadDtype {
                path: self.path.to_path_buf(),
                name: t.name.to_string(),
                dtype: format!("{other:?}"),
                expected: "F32, F16 or BF16",
            }),
        }
    }

    /// A `[n_rows, n_cols]` matrix as f32 values.
    fn matrix(
        &self,
        name: &str,
        n_rows: usize,
        n_cols: usize,
        why: &str,
    ) -> Result<(Vec<f32>, usize, usize)> {
        let t = self.get(name)?;
        if t.shape != [n_rows, n_cols] {
            return Err(self.shape_err(name, t.shape, &[n_rows, n_cols], why));
        }
        Ok((self.floats(&t)?, n_rows, n_cols))
    }

    fn vector(&self, name: &str, len: usize, why: &str) -> Result<Vec<f32>> {
        let t = self.get(name)?;
        if t.shape != [len] {
            return Err(self.shape_err(name, t.shape, &[len], why));
        }
        self.floats(&t)
    }

    fn optional_vector(&self, name: &str, len: usize, why: &str) -> Result<Option<Vec<f32>>> {
        if self.file.tensor(name).is_err() {
            return Ok(None);
        }
        self.vector(name, len, why).map(Some)
    }

    /// Reads and cross-checks `d2t` (int64 `[vd]`: target = draft + d2t[draft]) and `t2d`
    /// (bool `[v]`). Both may be absent only when the draft vocabulary is the target's.
    fn vocab_maps(&self, vd: usize, v: usize) -> Result<Option<Vec<u32>>> {
        let bad = |name: &'static str, msg: String| Error::HeadVocabMap {
            path: self.path.to_path_buf(),
            name,
            msg,
        };
        let d2t = self.file.tensor("d2t").ok();
        let t2d = self.file.tensor("t2d").ok();
        let (d2t, t2d) = match (d2t, t2d) {
            (None, None) if vd == v => return Ok(None),
            (None, _) => {
                return Err(bad(
                    "d2t",
                    format!("missing: the draft vocabulary ({vd}) differs from the target's ({v}), so the head needs d2t (int64 [{vd}]) and t2d (bool [{v}])"),
                ))
            }
            (Some(_), None) => {
                return Err(bad("t2d", format!("missing: expected bool [{v}] beside d2t")))
            }
            (Some(d), Some(t)) => (d, t),
        };
        if d2t.shape != [vd] {
            return Err(self.shape_err(
                "d2t",
                d2t.shape,
                &[vd],
                "one offset per draft-vocabulary id (rows of lm_head)",
            ));
        }
        let offsets: Vec<i64> = match d2t.dtype {
            Dtype::I64 => d2t
                .data
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")))
                .collect(),
            Dtype::I32 => d2t
                .data
                .chunks_exact(4)
                .map(|c| i64::from(i32::from_le_bytes(c.try_into().expect("4 bytes"))))
                .collect(),
            other => {
                return Err(Error::HeadDtype {
                    path: self.path.to_path_buf(),
                    name: "d2t".into(),
                    dtype: format!("{other:?}"),
                    expected: "I64 or I32",
                })
            }
        };
        if t2d.shape != [v] {
            return Err(self.shape_err(
                "t2d",
                t2d.shape,
                &[v],
                &format!("one flag per target token (vocabulary {v})"),
            ));
        }
        if !matches!(t2d.dtype, Dtype::BOOL | Dtype::U8 | Dtype::I8) {
            return Err(Error::HeadDtype {
                path: self.path.to_path_buf(),
                name: "t2d".into(),
                dtype: format!("{:?}", t2d.dtype),
                expected: "BOOL or U8",
            });
        }
        let in_draft: Vec<bool> = t2d.data.iter().map(|&b| b != 0).collect();
        let n_true = in_draft.iter().filter(|&&b| b).count();
        if n_true != vd {
            return Err(bad(
                "t2d",
                format!("marks {n_true} target tokens, but the draft vocabulary has {vd}"),
            ));
        }
        let mut seen = vec![false; v];
        let mut map = Vec::with_capacity(vd);
        for (draft, &off) in offsets.iter().enumerate() {
            let target = draft as i64 + off;
            if target < 0 || target >= v as i64 {
                return Err(bad(
                    "d2t",
                    format!("draft id {draft} maps to target id {target}, outside the target vocabulary 0..{v}"),
                ));
            }
            let t = target as usize;
            if seen[t] {
                return Err(bad(
                    "d2t",
                    format!("target id {t} is the image of two draft ids"),
                ));
            }
            if !in_draft[t] {
                return Err(bad(
                    "d2t",
                    format!("draft id {draft} maps to target id {t}, which t2d marks as outside the draft vocabulary"),
                ));
            }
            seen[t] = true;
            map.push(t as u32);
        }
        Ok(Some(map))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_lists_parse_and_are_checked() {
        assert_eq!(parse_layers("2,15,27", 30).unwrap(), [2, 15, 27]);
        assert_eq!(parse_layers("[2, 15, 27]", 30).unwrap(), [2, 15, 27]);
        assert!(parse_layers("2,31", 30).unwrap_err().contains("beyond"));
        assert!(parse_layers("a", 30).is_err());
        assert_eq!(default_eagle3_layers(30), [2, 15, 27]);
    }
}
