//! The one table of tensor and metadata-key names.
//!
//! Only this crate knows GGUF and Hugging Face names (as llama.cpp's `llama-arch.h` is the one
//! table there, "in sync with gguf.py"). Other crates ask for `LlamaTensor::AttnQ.gguf_name(Some(3))`
//! rather than format strings of their own.

/// The tensors of a Llama-family model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LlamaTensor {
    /// Token embeddings, `[hidden, vocab]` in GGUF order.
    TokenEmbd,
    /// Final RMS norm weight.
    OutputNorm,
    /// LM head; absent when embeddings are tied (the head is then `TokenEmbd`).
    Output,
    /// Llama 3 RoPE frequency factors (`rope_freqs.weight`); GGUF's encoding of llama3 rope scaling.
    RopeFreqs,
    /// Per layer: attention RMS norm weight.
    AttnNorm,
    /// Per layer: query projection.
    AttnQ,
    /// Per layer: key projection.
    AttnK,
    /// Per layer: value projection.
    AttnV,
    /// Per layer: attention output projection.
    AttnOutput,
    /// Per layer: FFN RMS norm weight.
    FfnNorm,
    /// Per layer: FFN gate projection (SwiGLU).
    FfnGate,
    /// Per layer: FFN up projection.
    FfnUp,
    /// Per layer: FFN down projection.
    FfnDown,
}

impl LlamaTensor {
    /// Every tensor kind: first the global ones, then the per-layer ones.
    pub const ALL: [LlamaTensor; 13] = [
        LlamaTensor::TokenEmbd,
        LlamaTensor::OutputNorm,
        LlamaTensor::Output,
        LlamaTensor::RopeFreqs,
        LlamaTensor::AttnNorm,
        LlamaTensor::AttnQ,
        LlamaTensor::AttnK,
        LlamaTensor::AttnV,
        LlamaTensor::AttnOutput,
        LlamaTensor::FfnNorm,
        LlamaTensor::FfnGate,
        LlamaTensor::FfnUp,
        LlamaTensor::FfnDown,
    ];

    /// The per-layer tensor kinds, in the order llama.cpp lists them.
    pub const PER_LAYER: [LlamaTensor; 9] = [
        LlamaTensor::AttnNorm,
        LlamaTensor::AttnQ,
        LlamaTensor::AttnK,
        LlamaTensor::AttnV,
        LlamaTensor::AttnOutput,
        LlamaTensor::FfnNorm,
        LlamaTensor::FfnGate,
        LlamaTensor::FfnUp,
        LlamaTensor::FfnDown,
    ];

    /// Whether the tensor exists once per layer.
    pub fn is_per_layer(self) -> bool {
        !matches!(
            self,
            LlamaTensor::TokenEmbd
                | LlamaTensor::OutputNorm
                | LlamaTensor::Output
                | LlamaTensor::RopeFreqs
        )
    }

    /// Whether a model may lack the tensor (`Output` when tied, `RopeFreqs` without llama3 scaling).
    pub fn is_optional(self) -> bool {
        matches!(self, LlamaTensor::Output | LlamaTensor::RopeFreqs)
    }

    fn gguf_stem(self) -> &'static str {
        match self {
            LlamaTensor::TokenEmbd => "token_embd",
            LlamaTensor::OutputNorm => "output_norm",
            LlamaTensor::Output => "output",
            LlamaTensor::RopeFreqs => "rope_freqs",
            LlamaTensor::AttnNorm => "attn_norm",
            LlamaTensor::AttnQ => "attn_q",
            LlamaTensor::AttnK => "attn_k",
            LlamaTensor::AttnV => "attn_v",
            LlamaTensor::AttnOutput => "attn_output",
            LlamaTensor::FfnNorm => "ffn_norm",
            LlamaTensor::FfnGate => "ffn_gate",
            LlamaTensor::FfnUp => "ffn_up",
            LlamaTensor::FfnDown => "ffn_down",
        }
    }

    /// The GGUF name: `"token_embd.weight"`, `"blk.3.attn_q.weight"`.
    ///
    /// # Panics
    /// If `layer` is `Some` for a global tensor or `None` for a per-layer one (a caller bug).
    pub fn gguf_name(self, layer: Option<usize>) -> String {
        match (self.is_per_layer(), layer) {
            (true, Some(layer_idx)) => format!("blk.{layer_idx}.{}.weight", self.gguf_stem()),
            (false, None) => format!("{}.weight", self.gguf_stem()),
            _ => panic!(
                "{self:?} is {}a per-layer tensor but layer = {layer:?}",
                if self.is_per_layer() { "" } else { "not " }
            ),
        }
    }

    /// The Hugging Face (transformers `LlamaForCausalLM`) name:
    /// `"model.embed_tokens.weight"`, `"model.layers.3.self_attn.q_proj.weight"`.
    /// `RopeFreqs` has no HF tensor (HF keeps llama3 scaling in `config.json`); its name here is
    /// the one GGUF uses.
    ///
    /// # Panics
    /// As [`gguf_name`](Self::gguf_name).
    pub fn hf_name(self, layer: Option<usize>) -> String {
        let per_layer =
            |layer_idx: usize, stem: &str| format!("model.layers.{layer_idx}.{stem}.weight");
        match (self, layer) {
            (LlamaTensor::TokenEmbd, None) => "model.embed_tokens.weight".to_string(),
            (LlamaTensor::OutputNorm, None) => "model.norm.weight".to_string(),
            (LlamaTensor::Output, None) => "lm_head.weight".to_string(),
            (LlamaTensor::RopeFreqs, None) => "rope_freqs.weight".to_string(),
            (LlamaTensor::AttnNorm, Some(l)) => per_layer(l, "input_layernorm"),
            (LlamaTensor::AttnQ, Some(l)) => per_layer(l, "self_attn.q_proj"),
            (LlamaTensor::AttnK, Some(l)) => per_layer(l, "self_attn.k_proj"),
            (LlamaTensor::AttnV, Some(l)) => per_layer(l, "self_attn.v_proj"),
            (LlamaTensor::AttnOutput, Some(l)) => per_layer(l, "self_attn.o_proj"),
            (LlamaTensor::FfnNorm, Some(l)) => per_layer(l, "post_attention_layernorm"),
            (LlamaTensor::FfnGate, Some(l)) => per_layer(l, "mlp.gate_proj"),
            (LlamaTensor::FfnUp, Some(l)) => per_layer(l, "mlp.up_proj"),
            (LlamaTensor::FfnDown, Some(l)) => per_layer(l, "mlp.down_proj"),
            _ => panic!(
                "{self:?} is {}a per-layer tensor but layer = {layer:?}",
                if self.is_per_layer() { "" } else { "not " }
            ),
        }
    }

    /// Parses a GGUF tensor name back into its kind and layer.
    pub fn from_gguf_name(name: &str) -> Option<(LlamaTensor, Option<usize>)> {
        let stem = name.strip_suffix(".weight")?;
        if let Some(rest) = stem.strip_prefix("blk.") {
            let (layer, stem) = rest.split_once('.')?;
            let layer_idx: usize = layer.parse().ok()?;
            let kind = Self::PER_LAYER
                .into_iter()
                .find(|t| t.gguf_stem() == stem)?;
            return Some((kind, Some(layer_idx)));
        }
        let kind = Self::ALL
            .into_iter()
            .find(|t| !t.is_per_layer() && t.gguf_stem() == stem)?;
        Some((kind, None))
    }
}

/// GGUF metadata keys. `{arch}` keys are built with [`arch_key`](keys::arch_key).
pub mod keys {
    /// `general.architecture` (`"llama"`).
    pub const GENERAL_ARCHITECTURE: &str = "general.architecture";
    /// `general.name`.
    pub const GENERAL_NAME: &str = "general.name";
    /// `general.alignment` (data alignment, default 32).
    pub const GENERAL_ALIGNMENT: &str = "general.alignment";
    /// `general.file_type` (llama.cpp's `LLAMA_FTYPE`).
    pub const GENERAL_FILE_TYPE: &str = "general.file_type";
    /// `general.quantization_version`.
    pub const GENERAL_QUANTIZATION_VERSION: &str = "general.quantization_version";

    /// `{arch}.context_length`
    pub const CONTEXT_LENGTH: &str = "context_length";
    /// `{arch}.embedding_length`
    pub const EMBEDDING_LENGTH: &str = "embedding_length";
    /// `{arch}.block_count`
    pub const BLOCK_COUNT: &str = "block_count";
    /// `{arch}.feed_forward_length`
    pub const FEED_FORWARD_LENGTH: &str = "feed_forward_length";
    /// `{arch}.vocab_size`
    pub const VOCAB_SIZE: &str = "vocab_size";
    /// `{arch}.attention.head_count`
    pub const HEAD_COUNT: &str = "attention.head_count";
    /// `{arch}.attention.head_count_kv`
    pub const HEAD_COUNT_KV: &str = "attention.head_count_kv";
    /// `{arch}.attention.key_length` (head dim)
    pub const KEY_LENGTH: &str = "attention.key_length";
    /// `{arch}.attention.value_length`
    pub const VALUE_LENGTH: &str = "attention.value_length";
    /// `{arch}.attention.layer_norm_rms_epsilon`
    pub const LAYER_NORM_RMS_EPSILON: &str = "attention.layer_norm_rms_epsilon";
    /// `{arch}.rope.freq_base`
    pub const ROPE_FREQ_BASE: &str = "rope.freq_base";
    /// `{arch}.rope.dimension_count`
    pub const ROPE_DIMENSION_COUNT: &str = "rope.dimension_count";
    /// `{arch}.rope.scaling.type` (`"none"`, `"linear"`, `"yarn"`, ...)
    pub const ROPE_SCALING_TYPE: &str = "rope.scaling.type";
    /// `{arch}.rope.scaling.factor`
    pub const ROPE_SCALING_FACTOR: &str = "rope.scaling.factor";
    /// `{arch}.rope.scale_linear` (older files)
    pub const ROPE_SCALE_LINEAR: &str = "rope.scale_linear";
    /// `{arch}.rope.scaling.original_context_length`
    pub const ROPE_SCALING_ORIGINAL_CONTEXT_LENGTH: &str = "rope.scaling.original_context_length";

    /// `tokenizer.ggml.model` (`"gpt2"`, `"llama"`)
    pub const TOKENIZER_MODEL: &str = "tokenizer.ggml.model";
    /// `tokenizer.ggml.pre` (`"smollm"`, `"llama-bpe"`, ...)
    pub const TOKENIZER_PRE: &str = "tokenizer.ggml.pre";
    /// `tokenizer.ggml.tokens` (array of strings)
    pub const TOKENIZER_TOKENS: &str = "tokenizer.ggml.tokens";
    /// `tokenizer.ggml.token_type` (array of i32)
    pub const TOKENIZER_TOKEN_TYPE: &str = "tokenizer.ggml.token_type";
    /// `tokenizer.ggml.merges` (array of strings)
    pub const TOKENIZER_MERGES: &str = "tokenizer.ggml.merges";
    /// `tokenizer.ggml.scores` (array of f32)
    pub const TOKENIZER_SCORES: &str = "tokenizer.ggml.scores";
    /// `tokenizer.ggml.bos_token_id`
    pub const TOKENIZER_BOS_ID: &str = "tokenizer.ggml.bos_token_id";
    /// `tokenizer.ggml.eos_token_id`
    pub const TOKENIZER_EOS_ID: &str = "tokenizer.ggml.eos_token_id";
    /// `tokenizer.ggml.unknown_token_id`
    pub const TOKENIZER_UNKNOWN_ID: &str = "tokenizer.ggml.unknown_token_id";
    /// `tokenizer.ggml.padding_token_id`
    pub const TOKENIZER_PADDING_ID: &str = "tokenizer.ggml.padding_token_id";
    /// `tokenizer.ggml.add_bos_token`
    pub const TOKENIZER_ADD_BOS: &str = "tokenizer.ggml.add_bos_token";
    /// `tokenizer.ggml.add_eos_token`
    pub const TOKENIZER_ADD_EOS: &str = "tokenizer.ggml.add_eos_token";
    /// `tokenizer.ggml.add_space_prefix`
    pub const TOKENIZER_ADD_SPACE_PREFIX: &str = "tokenizer.ggml.add_space_prefix";
    /// `tokenizer.chat_template`
    pub const TOKENIZER_CHAT_TEMPLATE: &str = "tokenizer.chat_template";

    /// `"{arch}.{suffix}"`, e.g. `arch_key("llama", BLOCK_COUNT)` = `"llama.block_count"`.
    pub fn arch_key(arch: &str, suffix: &str) -> String {
        format!("{arch}.{suffix}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_llama_cpp_and_transformers() {
        assert_eq!(LlamaTensor::AttnQ.gguf_name(Some(3)), "blk.3.attn_q.weight");
        assert_eq!(
            LlamaTensor::AttnQ.hf_name(Some(3)),
            "model.layers.3.self_attn.q_proj.weight"
        );
        assert_eq!(LlamaTensor::TokenEmbd.gguf_name(None), "token_embd.weight");
        assert_eq!(LlamaTensor::Output.hf_name(None), "lm_head.weight");
        assert_eq!(
            LlamaTensor::FfnNorm.hf_name(Some(0)),
            "model.layers.0.post_attention_layernorm.weight"
        );
    }

    #[test]
    fn gguf_names_parse_back() {
        for kind in LlamaTensor::ALL {
            let layer = kind.is_per_layer().then_some(17);
            assert_eq!(
                LlamaTensor::from_gguf_name(&kind.gguf_name(layer)),
                Some((kind, layer))
            );
        }
        assert_eq!(LlamaTensor::from_gguf_name("blk.x.attn_q.weight"), None);
        assert_eq!(LlamaTensor::from_gguf_name("blk.1.token_embd.weight"), None);
    }
}
