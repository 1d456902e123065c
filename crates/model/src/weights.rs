//! Where each weight of a Llama model lives: a GGUF file, or safetensors + `config.json`.
//!
//! Matrices stay in the file's mapping in their stored type (quantized blocks, f16, bf16, f32);
//! only the small norm vectors and RoPE factors are copied out as f32.

use crate::{Error, Result};
use peregrine_formats::names::LlamaTensor;
use peregrine_formats::safetensors_io::{Dtype, SafetensorsFile};
use peregrine_formats::{GgmlType, GgufFile, ModelConfig, RopeScaling, TensorInfo};
use peregrine_tensor::ops::RopeLayout;
use peregrine_tensor::qdot::QuantKind;
use peregrine_tensor::{FloatType, PackedFloatMatrix, PackedMatrix, WeightMatrix, Weights};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The opened model file.
pub enum Source {
    /// A GGUF file (weights, config and tokenizer in one).
    Gguf(GgufFile),
    /// A safetensors checkpoint with its Hugging Face `config.json`.
    Safetensors(SafetensorsFile),
}

impl Source {
    /// Path of the weights file.
    pub fn path(&self) -> &Path {
        match self {
            Source::Gguf(g) => g.path(),
            Source::Safetensors(s) => s.path(),
        }
    }
    /// The GGUF file, when the model came from one.
    pub fn gguf(&self) -> Option<&GgufFile> {
        match self {
            Source::Gguf(g) => Some(g),
            Source::Safetensors(_) => None,
        }
    }
}

/// A matrix resolved at load: type, shape and where its bytes are.
#[derive(Clone)]
pub struct MatrixLoc {
    ty: GgmlType,
    n_rows: usize,
    n_cols: usize,
    at: Located,
    /// The matrix in 16-row tiles, when it was repacked at load.
    packed: Option<Packed>,
    /// Reference numerics: f32 activations, no 8-bit kernels.
    f32_activations: bool,
}

/// A matrix repacked at load into the layout of a `loops` kernel.
#[derive(Clone)]
enum Packed {
    /// Q4_0/Q4_1/Q8_0, computed on 8-bit activations.
    Quant(Arc<PackedMatrix>),
    /// f32/f16/bf16 in their own type, computed on f32 activations.
    Float(Arc<PackedFloatMatrix>),
}

#[derive(Clone, Debug)]
enum Located {
    Gguf(TensorInfo),
    Safetensors(String),
}

impl MatrixLoc {
    /// Output features.
    pub fn n_rows(&self) -> usize {
        self.n_rows
    }
    /// Storage type.
    pub fn ty(&self) -> GgmlType {
        self.ty
    }
    /// The matmul operand: the repacked tiles when there are some, else the file's rows.
    pub fn weights<'s>(&'s self, source: &'s Source) -> Weights<'s> {
        match &self.packed {
            Some(Packed::Quant(p)) => Weights::Packed(p),
            Some(Packed::Float(p)) => Weights::PackedFloat(p),
            None => Weights::Rows(self.matrix(source)),
        }
    }

    /// Repacks a Q4_0/Q4_1/Q8_0 matrix (8-bit activation kernels; not under
    /// `f32_activations`) or an f32/f16/bf16 one (float kernels, same numerics either way) into
    /// 16-row panels and lets the file's copy of its pages go, so resident memory stays about
    /// one model's worth. Other types stay in the file, computed row by row.
    fn pack(&mut self, source: &Source) {
        let quant = match self.ty {
            GgmlType::Q4_0 => Some(QuantKind::Q4_0),
            GgmlType::Q4_1 => Some(QuantKind::Q4_1),
            GgmlType::Q8_0 => Some(QuantKind::Q8_0),
            _ => None,
        };
        let float = match self.ty {
            GgmlType::F32 => Some(FloatType::F32),
            GgmlType::F16 => Some(FloatType::F16),
            GgmlType::BF16 => Some(FloatType::Bf16),
            _ => None,
        };
        let w = self.matrix(source);
        // Any row count: the last 16-row panel may be partial.
        self.packed = match (quant, float) {
            (Some(kind), _) if !self.f32_activations && self.n_cols.is_multiple_of(32) => {
                Some(Packed::Quant(Arc::new(PackedMatrix::pack(
                    kind,
                    self.n_rows,
                    self.n_cols,
                    |r| w.row(r),
                ))))
            }
            (_, Some(ty)) => {
                match PackedFloatMatrix::pack(ty, self.n_rows, self.n_cols, |r| w.row(r)) {
                    Ok(p) => Some(Packed::Float(Arc::new(p))),
                    Err(e) => {
                        tracing::warn!("{e}; computing this matrix row by row");
                        None
                    }
                }
            }
            _ => None,
        };
        if self.packed.is_none() {
            return;
        }
        match (&self.at, source) {
            (Located::Gguf(info), Source::Gguf(g)) => g.release_tensor_pages(info),
            (Located::Safetensors(name), Source::Safetensors(s)) => s.release_tensor_pages(name),
            _ => {}
        }
    }

    /// The matrix in the file's layout (for row lookups such as embeddings).
    pub fn matrix<'s>(&'s self, source: &'s Source) -> WeightMatrix<'s> {
        let bytes = match (&self.at, source) {
            (Located::Gguf(info), Source::Gguf(g)) => g.tensor_data(info),
            (Located::Safetensors(name), Source::Safetensors(s)) => {
                s.tensor(name).expect("tensor was found at load").data
            }
            _ => unreachable!("a MatrixLoc is used with the source it was resolved from"),
        };
        let w = WeightMatrix::new(self.ty, bytes, self.n_rows, self.n_cols)
            .expect("shape was validated at load");
        if self.f32_activations {
            w.with_f32_activations()
        } else {
            w
        }
    }
}

/// One transformer block's weights.
pub struct LayerWeights {
    /// RMSNorm before attention.
    pub attn_norm: Vec<f32>,
    /// Projections.
    pub wq: MatrixLoc,
    /// Key projection.
    pub wk: MatrixLoc,
    /// Value projection.
    pub wv: MatrixLoc,
    /// Attention output projection.
    pub wo: MatrixLoc,
    /// RMSNorm before the FFN.
    pub ffn_norm: Vec<f32>,
    /// SwiGLU gate.
    pub w_gate: MatrixLoc,
    /// SwiGLU up.
    pub w_up: MatrixLoc,
    /// SwiGLU down.
    pub w_down: MatrixLoc,
}

/// Every weight of the model, resolved and shape-checked.
pub struct LlamaWeights {
    /// Token embedding table (`vocab` rows of `hidden`).
    pub token_embd: MatrixLoc,
    /// Final norm.
    pub output_norm: Vec<f32>,
    /// LM head (the embedding table when tied).
    pub output: MatrixLoc,
    /// Per-frequency RoPE divisors (Llama 3 scaling), if any.
    pub rope_freq_factors: Option<Vec<f32>>,
    /// How Q/K dimensions pair up for RoPE in this file.
    pub rope_layout: RopeLayout,
    /// Blocks.
    pub layers: Vec<LayerWeights>,
}

/// Opens a model: a `.gguf` file, or a `.safetensors` file (with `config.json` beside it) or a
/// directory holding `model.safetensors` and `config.json`.
pub fn open(path: &Path) -> Result<(Source, ModelConfig)> {
    let is_gguf = path.extension().is_some_and(|e| e == "gguf");
    if is_gguf {
        let file = GgufFile::open(path)?;
        let config = file.model_config()?;
        return Ok((Source::Gguf(file), config));
    }
    let (weights, config_path) = if path.is_dir() {
        (path.join("model.safetensors"), path.join("config.json"))
    } else {
        (path.to_path_buf(), path.with_file_name("config.json"))
    };
    if weights.extension().is_none_or(|e| e != "safetensors") {
        // Not a known extension: let the GGUF parser say what is wrong with it.
        let file = GgufFile::open(path)?;
        let config = file.model_config()?;
        return Ok((Source::Gguf(file), config));
    }
    let text =
        std::fs::read_to_string(&config_path).map_err(|cause| peregrine_formats::Error::Io {
            path: config_path.clone(),
            cause,
        })?;
    let config = ModelConfig::from_hf_config_json_at(&text, &config_path)?;
    Ok((
        Source::Safetensors(SafetensorsFile::open(&weights)?),
        config,
    ))
}

impl LlamaWeights {
    /// Resolves and checks every tensor the config implies. With `f32_activations`, matmuls
    /// keep activations in f32 (the reference numerics) instead of the 8-bit kernels.
    pub fn load(source: &Source, cfg: &ModelConfig, f32_activations: bool) -> Result<Self> {
        let path = source.path().to_path_buf();
        if cfg.architecture != "llama" {
            return Err(Error::UnsupportedArchitecture {
                path,
                architecture: cfg.architecture.clone(),
            });
        }
        let h = cfg.hidden_size;
        let q_dim = cfg.n_heads * cfg.head_dim;
        let kv_dim = cfg.n_kv_heads * cfg.head_dim;
        let r = Resolver {
            source,
            path: &path,
            f32_activations,
        };
        let mut layers = Vec::with_capacity(cfg.n_layers);
        for l in 0..cfg.n_layers {
            let at = Some(l);
            layers.push(LayerWeights {
                attn_norm: r.vector(LlamaTensor::AttnNorm, at, h)?,
                wq: r.matrix(LlamaTensor::AttnQ, at, q_dim, h)?,
                wk: r.matrix(LlamaTensor::AttnK, at, kv_dim, h)?,
                wv: r.matrix(LlamaTensor::AttnV, at, kv_dim, h)?,
                wo: r.matrix(LlamaTensor::AttnOutput, at, h, q_dim)?,
                ffn_norm: r.vector(LlamaTensor::FfnNorm, at, h)?,
                w_gate: r.matrix(LlamaTensor::FfnGate, at, cfg.ffn_size, h)?,
                w_up: r.matrix(LlamaTensor::FfnUp, at, cfg.ffn_size, h)?,
                w_down: r.matrix(LlamaTensor::FfnDown, at, h, cfg.ffn_size)?,
            });
        }
        let token_embd = r.matrix(LlamaTensor::TokenEmbd, None, cfg.vocab_size, h)?;
        let mut output = if r.exists(LlamaTensor::Output) {
            r.matrix(LlamaTensor::Output, None, cfg.vocab_size, h)?
        } else {
            token_embd.clone()
        };
        // Repack every matmul weight; the embedding table stays in the file for row lookups.
        // The largest matrix (the LM head) goes first: the peak while packing is what is already
        // packed plus the file pages of the matrix being packed.
        output.pack(source);
        for lw in &mut layers {
            for m in [
                &mut lw.wq,
                &mut lw.wk,
                &mut lw.wv,
                &mut lw.wo,
                &mut lw.w_gate,
                &mut lw.w_up,
                &mut lw.w_down,
            ] {
                m.pack(source);
            }
        }
        let rope_freq_factors = match source {
            Source::Gguf(_) if r.exists(LlamaTensor::RopeFreqs) => {
                Some(r.vector(LlamaTensor::RopeFreqs, None, cfg.head_dim / 2)?)
            }
            Source::Safetensors(_) => match cfg.rope_scaling {
                Some(RopeScaling::Llama3 {
                    factor,
                    low_freq_factor,
                    high_freq_factor,
                    original_context_length,
                }) => Some(llama3_freq_factors(
                    cfg,
                    factor,
                    low_freq_factor,
                    high_freq_factor,
                    original_context_length,
                )),
                _ => None,
            },
            _ => None,
        };
        let rope_layout = match source {
            Source::Gguf(_) => RopeLayout::Adjacent,
            Source::Safetensors(_) => RopeLayout::Halves,
        };
        Ok(Self {
            token_embd,
            output_norm: r.vector(LlamaTensor::OutputNorm, None, h)?,
            output,
            rope_freq_factors,
            rope_layout,
            layers,
        })
    }
}

/// The divisors Llama 3.1 applies to RoPE frequencies, as `convert_hf_to_gguf.py` computes them
/// for the `rope_freqs` tensor.
fn llama3_freq_factors(
    cfg: &ModelConfig,
    factor: f32,
    low: f32,
    high: f32,
    original_ctx: usize,
) -> Vec<f32> {
    let low_wavelen = original_ctx as f32 / low;
    let high_wavelen = original_ctx as f32 / high;
    (0..cfg.head_dim / 2)
        .map(|i| {
            let freq = 1.0 / cfg.rope_base.powf(2.0 * i as f32 / cfg.head_dim as f32);
            let wavelen = 2.0 * std::f32::consts::PI / freq;
            if wavelen < high_wavelen {
                1.0
            } else if wavelen > low_wavelen {
                factor
            } else {
                let smooth = (original_ctx as f32 / wavelen - low) / (high - low);
                1.0 / ((1.0 - smooth) / factor + smooth)
            }
        })
        .collect()
}

struct Resolver<'a> {
    source: &'a Source,
    path: &'a PathBuf,
    f32_activations: bool,
}

impl Resolver<'_> {
    fn name(&self, kind: LlamaTensor, layer: Option<usize>) -> String {
        match self.source {
            Source::Gguf(_) => kind.gguf_name(layer),
            Source::Safetensors(_) => kind.hf_name(layer),
        }
    }

    fn exists(&self, kind: LlamaTensor) -> bool {
        let name = self.name(kind, None);
        match self.source {
            Source::Gguf(g) => g.tensor(&name).is_some(),
            Source::Safetensors(s) => s.tensor(&name).is_ok(),
        }
    }

    fn missing(&self, name: &str) -> Error {
        Error::MissingTensor {
            path: self.path.clone(),
            name: name.to_string(),
        }
    }

    fn mismatch(&self, name: &str, got: Vec<u64>, expected: Vec<u64>) -> Error {
        Error::ShapeMismatch {
            path: self.path.clone(),
            name: name.to_string(),
            got,
            expected,
        }
    }

    /// A matrix of `n_rows` outputs by `n_cols` inputs (GGUF dims `[n_cols, n_rows]`).
    fn matrix(
        &self,
        kind: LlamaTensor,
        layer: Option<usize>,
        n_rows: usize,
        n_cols: usize,
    ) -> Result<MatrixLoc> {
        let name = self.name(kind, layer);
        let expected = vec![n_cols as u64, n_rows as u64];
        let (ty, at) = match self.source {
            Source::Gguf(g) => {
                let info = g.tensor(&name).ok_or_else(|| self.missing(&name))?;
                if info.dims != expected {
                    return Err(self.mismatch(&name, info.dims.clone(), expected));
                }
                (info.ggml_type, Located::Gguf(info.clone()))
            }
            Source::Safetensors(s) => {
                let t = s.tensor(&name).map_err(|_| self.missing(&name))?;
                let got: Vec<u64> = t.shape.iter().rev().map(|&d| d as u64).collect();
                if got != expected {
                    return Err(self.mismatch(&name, got, expected));
                }
                let ty = match t.dtype {
                    Dtype::F32 => GgmlType::F32,
                    Dtype::F16 => GgmlType::F16,
                    Dtype::BF16 => GgmlType::BF16,
                    other => {
                        return Err(Error::Format(peregrine_formats::Error::UnsupportedDtype {
                            path: self.path.clone(),
                            name,
                            dtype: format!("{other:?}"),
                            expected: "F32, F16 or BF16",
                        }))
                    }
                };
                (ty, Located::Safetensors(name.clone()))
            }
        };
        let loc = MatrixLoc {
            ty,
            n_rows,
            n_cols,
            at,
            packed: None,
            f32_activations: self.f32_activations,
        };
        // Validate the byte length once, here, so `MatrixLoc::matrix` cannot fail later.
        loc.clone().into_checked(self.source)?;
        Ok(loc)
    }

    /// A vector of `len` values, copied out as f32.
    fn vector(&self, kind: LlamaTensor, layer: Option<usize>, len: usize) -> Result<Vec<f32>> {
        let name = self.name(kind, layer);
        let values = match self.source {
            Source::Gguf(g) => {
                let info = g.tensor(&name).ok_or_else(|| self.missing(&name))?;
                if info.n_elements() != len as u64 {
                    return Err(self.mismatch(&name, info.dims.clone(), vec![len as u64]));
                }
                g.tensor_to_f32(info)?
            }
            Source::Safetensors(s) => {
                let t = s.tensor(&name).map_err(|_| self.missing(&name))?;
                if t.n_elements() != len {
                    return Err(self.mismatch(
                        &name,
                        t.shape.iter().map(|&d| d as u64).collect(),
                        vec![len as u64],
                    ));
                }
                t.to_f32(self.path)?
            }
        };
        Ok(values)
    }
}

impl MatrixLoc {
    fn into_checked(self, source: &Source) -> Result<()> {
        let bytes = match (&self.at, source) {
            (Located::Gguf(info), Source::Gguf(g)) => g.tensor_data(info),
            (Located::Safetensors(name), Source::Safetensors(s)) => s.tensor(name)?.data,
            _ => unreachable!("resolved from this source"),
        };
        WeightMatrix::new(self.ty, bytes, self.n_rows, self.n_cols)?;
        Ok(())
    }
}
