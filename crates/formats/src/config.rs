//! Typed model hyper-parameters, from GGUF metadata or a Hugging Face `config.json`.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::gguf::GgufFile;
use crate::names::keys::{self, arch_key};
use crate::names::LlamaTensor;

/// RoPE frequency scaling.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RopeScaling {
    /// Positions divided by `factor` (`rope_scaling = {"type": "linear"}`).
    Linear {
        /// The divisor.
        factor: f32,
    },
    /// Llama 3.1 frequency-dependent scaling (`rope_type = "llama3"`). In GGUF files llama.cpp
    /// stores the resulting per-frequency factors as the `rope_freqs.weight` tensor
    /// ([`LlamaTensor::RopeFreqs`]) instead of these parameters.
    Llama3 {
        /// Scale applied to low frequencies.
        factor: f32,
        /// Wavelength threshold (as `original_context_length / low_freq_factor`).
        low_freq_factor: f32,
        /// Wavelength threshold (as `original_context_length / high_freq_factor`).
        high_freq_factor: f32,
        /// Context length the model was pre-trained with.
        original_context_length: usize,
    },
}

/// Hyper-parameters of a Llama-family model.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    /// `general.architecture` / HF `model_type` (`"llama"`).
    pub architecture: String,
    /// Transformer blocks.
    pub n_layers: usize,
    /// Query heads.
    pub n_heads: usize,
    /// Key/value heads (GQA); divides `n_heads`.
    pub n_kv_heads: usize,
    /// Dimension of one head.
    pub head_dim: usize,
    /// Residual stream width.
    pub hidden_size: usize,
    /// FFN inner width.
    pub ffn_size: usize,
    /// RoPE base (theta).
    pub rope_base: f32,
    /// RoPE scaling, when the file states it as parameters. A GGUF llama3 model instead has a
    /// `rope_freqs.weight` tensor.
    pub rope_scaling: Option<RopeScaling>,
    /// RMS norm epsilon.
    pub rms_norm_eps: f32,
    /// Vocabulary size (rows of the embedding).
    pub vocab_size: usize,
    /// Maximum context the model was trained for.
    pub context_length: usize,
    /// Whether the LM head is the token embedding (GGUF: no `output.weight`).
    pub tied_embeddings: bool,
}

impl ModelConfig {
    /// Reads the config from a GGUF file's `{arch}.*` keys.
    pub fn from_gguf(gguf: &GgufFile) -> Result<ModelConfig> {
        let path = gguf.path();
        let missing = |key: String| Error::MissingKey {
            path: path.to_path_buf(),
            key,
        };
        let architecture = gguf
            .get_str(keys::GENERAL_ARCHITECTURE)?
            .ok_or_else(|| missing(keys::GENERAL_ARCHITECTURE.to_string()))?
            .to_string();
        let key = |suffix: &str| arch_key(&architecture, suffix);
        let required = |suffix: &str| -> Result<usize> {
            let k = key(suffix);
            let value = gguf.get_u64(&k)?.ok_or_else(|| missing(k.clone()))?;
            to_usize(path, &k, value)
        };
        let optional = |suffix: &str| -> Result<Option<usize>> {
            let k = key(suffix);
            gguf.get_u64(&k)?.map(|v| to_usize(path, &k, v)).transpose()
        };

        let n_layers = required(keys::BLOCK_COUNT)?;
        let hidden_size = required(keys::EMBEDDING_LENGTH)?;
        let ffn_size = required(keys::FEED_FORWARD_LENGTH)?;
        let n_heads = required(keys::HEAD_COUNT)?;
        let n_kv_heads = optional(keys::HEAD_COUNT_KV)?.unwrap_or(n_heads);
        let context_length = required(keys::CONTEXT_LENGTH)?;
        check_positive(path, &key(keys::HEAD_COUNT), n_heads)?;
        let head_dim = optional(keys::KEY_LENGTH)?.unwrap_or(hidden_size / n_heads);
        let rope_base = gguf
            .get_f32(&key(keys::ROPE_FREQ_BASE))?
            .unwrap_or(10_000.0);
        let rms_norm_eps = gguf
            .get_f32(&key(keys::LAYER_NORM_RMS_EPSILON))?
            .unwrap_or(1e-5);
        let vocab_size = match optional(keys::VOCAB_SIZE)? {
            Some(v) => v,
            None => match gguf.get(keys::TOKENIZER_TOKENS).and_then(|v| v.array_len()) {
                Some(n_tokens) => n_tokens,
                None => {
                    let embd = gguf.require_tensor(&LlamaTensor::TokenEmbd.gguf_name(None))?;
                    to_usize(
                        path,
                        "token_embd.weight dims[1]",
                        embd.dims.get(1).copied().unwrap_or(1),
                    )?
                }
            },
        };

        let scaling_type = gguf.get_str(&key(keys::ROPE_SCALING_TYPE))?;
        let factor = match gguf.get_f32(&key(keys::ROPE_SCALING_FACTOR))? {
            Some(f) => Some(f),
            None => gguf.get_f32(&key(keys::ROPE_SCALE_LINEAR))?,
        };
        let rope_scaling = match (scaling_type, factor) {
            (None | Some("none"), None) => None,
            (None | Some("linear"), Some(1.0)) => None,
            (None | Some("linear"), Some(factor)) => Some(RopeScaling::Linear { factor }),
            (Some("none"), Some(_)) => None,
            (Some("linear"), None) => return Err(missing(key(keys::ROPE_SCALING_FACTOR))),
            (Some(other), _) => {
                return Err(Error::InvalidConfig {
                    path: path.to_path_buf(),
                    key: key(keys::ROPE_SCALING_TYPE),
                    value: format!("{other:?}"),
                    reason: "only \"none\" and \"linear\" rope scaling are supported (llama3 comes as rope_freqs.weight)",
                })
            }
        };

        let config = ModelConfig {
            tied_embeddings: gguf.tensor(&LlamaTensor::Output.gguf_name(None)).is_none(),
            architecture: architecture.clone(),
            n_layers,
            n_heads,
            n_kv_heads,
            head_dim,
            hidden_size,
            ffn_size,
            rope_base,
            rope_scaling,
            rms_norm_eps,
            vocab_size,
            context_length,
        };
        config.validate(path, |field| match field {
            "n_layers" => key(keys::BLOCK_COUNT),
            "n_heads" => key(keys::HEAD_COUNT),
            "n_kv_heads" => key(keys::HEAD_COUNT_KV),
            "head_dim" => key(keys::KEY_LENGTH),
            "hidden_size" => key(keys::EMBEDDING_LENGTH),
            "ffn_size" => key(keys::FEED_FORWARD_LENGTH),
            "vocab_size" => key(keys::VOCAB_SIZE),
            "rope_base" => key(keys::ROPE_FREQ_BASE),
            "rms_norm_eps" => key(keys::LAYER_NORM_RMS_EPSILON),
            other => other.to_string(),
        })?;
        Ok(config)
    }

    /// Parses a Hugging Face `config.json` of a Llama-family model (`LlamaForCausalLM`,
    /// SmolLM2, Llama 3.x): `hidden_size`, `intermediate_size`, `num_hidden_layers`,
    /// `num_attention_heads`, `num_key_value_heads`, `head_dim`, `rope_theta`, `rope_scaling`,
    /// `rms_norm_eps`, `vocab_size`, `max_position_embeddings`, `tie_word_embeddings`.
    pub fn from_hf_config_json(text: &str) -> Result<ModelConfig> {
        Self::from_hf_config_json_at(text, Path::new("config.json"))
    }

    /// As [`from_hf_config_json`](Self::from_hf_config_json), naming `path` in errors.
    pub fn from_hf_config_json_at(text: &str, path: &Path) -> Result<ModelConfig> {
        let hf: HfConfig = serde_json::from_str(text).map_err(|cause| Error::Json {
            path: path.to_path_buf(),
            cause,
        })?;
        let missing = |key: &str| Error::MissingKey {
            path: path.to_path_buf(),
            key: key.to_string(),
        };
        let n_heads = hf
            .num_attention_heads
            .ok_or_else(|| missing("num_attention_heads"))?;
        let hidden_size = hf.hidden_size.ok_or_else(|| missing("hidden_size"))?;
        check_positive(path, "num_attention_heads", n_heads)?;
        let rope_scaling = hf
            .rope_scaling
            .map(|s| s.resolve(path))
            .transpose()?
            .flatten();
        let config = ModelConfig {
            architecture: hf.model_type.unwrap_or_else(|| "llama".to_string()),
            n_layers: hf
                .num_hidden_layers
                .ok_or_else(|| missing("num_hidden_layers"))?,
            n_heads,
            n_kv_heads: hf.num_key_value_heads.unwrap_or(n_heads),
            head_dim: hf.head_dim.unwrap_or(hidden_size / n_heads),
            hidden_size,
            ffn_size: hf
                .intermediate_size
                .ok_or_else(|| missing("intermediate_size"))?,
            rope_base: hf.rope_theta.unwrap_or(10_000.0) as f32,
            rope_scaling,
            rms_norm_eps: hf.rms_norm_eps.unwrap_or(1e-6) as f32,
            vocab_size: hf.vocab_size.ok_or_else(|| missing("vocab_size"))?,
            context_length: hf
                .max_position_embeddings
                .ok_or_else(|| missing("max_position_embeddings"))?,
            tied_embeddings: hf.tie_word_embeddings.unwrap_or(false),
        };
        config.validate(path, |field| {
            match field {
                "n_layers" => "num_hidden_layers",
                "n_heads" => "num_attention_heads",
                "n_kv_heads" => "num_key_value_heads",
                "ffn_size" => "intermediate_size",
                "rope_base" => "rope_theta",
                "context_length" => "max_position_embeddings",
                other => other,
            }
            .to_string()
        })?;
        Ok(config)
    }

    /// Checks consistency; `key_of` maps a field name to the key it came from.
    fn validate(&self, path: &Path, key_of: impl Fn(&str) -> String) -> Result<()> {
        let invalid = |field: &str, value: String, reason: &'static str| Error::InvalidConfig {
            path: path.to_path_buf(),
            key: key_of(field),
            value,
            reason,
        };
        for (field, value) in [
            ("n_layers", self.n_layers),
            ("n_heads", self.n_heads),
            ("n_kv_heads", self.n_kv_heads),
            ("head_dim", self.head_dim),
            ("hidden_size", self.hidden_size),
            ("ffn_size", self.ffn_size),
            ("vocab_size", self.vocab_size),
        ] {
            if value == 0 {
                return Err(invalid(field, "0".to_string(), "must be positive"));
            }
        }
        if self.n_heads % self.n_kv_heads != 0 {
            return Err(invalid(
                "n_kv_heads",
                self.n_kv_heads.to_string(),
                "must divide the number of query heads",
            ));
        }
        if self.head_dim % 2 != 0 {
            return Err(invalid(
                "head_dim",
                self.head_dim.to_string(),
                "must be even (RoPE rotates pairs)",
            ));
        }
        if !(self.rope_base.is_finite() && self.rope_base > 0.0) {
            return Err(invalid(
                "rope_base",
                self.rope_base.to_string(),
                "must be finite and positive",
            ));
        }
        if !(self.rms_norm_eps.is_finite() && self.rms_norm_eps >= 0.0) {
            return Err(invalid(
                "rms_norm_eps",
                self.rms_norm_eps.to_string(),
                "must be finite and non-negative",
            ));
        }
        Ok(())
    }

    /// Query heads per KV head.
    pub fn gqa_group_size(&self) -> usize {
        self.n_heads / self.n_kv_heads
    }
}

fn to_usize(path: &Path, key: &str, value: u64) -> Result<usize> {
    usize::try_from(value).map_err(|_| Error::InvalidConfig {
        path: path.to_path_buf(),
        key: key.to_string(),
        value: value.to_string(),
        reason: "does not fit in usize",
    })
}

fn check_positive(path: &Path, key: &str, value: usize) -> Result<()> {
    if value == 0 {
        return Err(Error::InvalidConfig {
            path: path.to_path_buf(),
            key: key.to_string(),
            value: "0".to_string(),
            reason: "must be positive",
        });
    }
    Ok(())
}

/// The fields of a HF `config.json` that we read; others are ignored.
#[derive(serde::Deserialize)]
struct HfConfig {
    model_type: Option<String>,
    hidden_size: Option<usize>,
    intermediate_size: Option<usize>,
    num_hidden_layers: Option<usize>,
    num_attention_heads: Option<usize>,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    rope_theta: Option<f64>,
    rope_scaling: Option<HfRopeScaling>,
    rms_norm_eps: Option<f64>,
    vocab_size: Option<usize>,
    max_position_embeddings: Option<usize>,
    tie_word_embeddings: Option<bool>,
}

/// `rope_scaling`: transformers accepts both `rope_type` and the older `type`.
#[derive(serde::Deserialize)]
struct HfRopeScaling {
    rope_type: Option<String>,
    #[serde(rename = "type")]
    legacy_type: Option<String>,
    factor: Option<f64>,
    low_freq_factor: Option<f64>,
    high_freq_factor: Option<f64>,
    original_max_position_embeddings: Option<usize>,
}

impl HfRopeScaling {
    fn resolve(self, path: &Path) -> Result<Option<RopeScaling>> {
        let missing = |key: &str| Error::MissingKey {
            path: PathBuf::from(path),
            key: format!("rope_scaling.{key}"),
        };
        let kind = self
            .rope_type
            .or(self.legacy_type)
            .unwrap_or_else(|| "default".to_string());
        let factor = || {
            self.factor
                .map(|f| f as f32)
                .ok_or_else(|| missing("factor"))
        };
        match kind.as_str() {
            "default" | "none" => Ok(None),
            "linear" => Ok(Some(RopeScaling::Linear { factor: factor()? })),
            "llama3" => Ok(Some(RopeScaling::Llama3 {
                factor: factor()?,
                low_freq_factor: self
                    .low_freq_factor
                    .ok_or_else(|| missing("low_freq_factor"))?
                    as f32,
                high_freq_factor: self
                    .high_freq_factor
                    .ok_or_else(|| missing("high_freq_factor"))?
                    as f32,
                original_context_length: self
                    .original_max_position_embeddings
                    .ok_or_else(|| missing("original_max_position_embeddings"))?,
            })),
            other => Err(Error::InvalidConfig {
                path: path.to_path_buf(),
                key: "rope_scaling.rope_type".to_string(),
                value: format!("{other:?}"),
                reason: "supported: \"default\", \"linear\", \"llama3\"",
            }),
        }
    }
}
