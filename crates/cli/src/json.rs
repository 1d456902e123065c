//! The JSON documents the CLI prints with `--json` (one object per command on stdout).

use serde::Serialize;
use std::collections::BTreeMap;

/// `peregrine bench --json`.
#[derive(Serialize)]
pub struct BenchReport {
    /// Model file.
    pub model: String,
    /// Threads used.
    pub threads: usize,
    /// Prompt length of the prefill measurement.
    pub prefill_tokens: usize,
    /// Tokens generated in the decode measurement.
    pub decode_tokens: usize,
    /// Prefill throughput (one forward over the prompt).
    pub prefill_tok_s: f64,
    /// Decode throughput (one token per forward, greedy).
    pub decode_tok_s: f64,
    /// Time of one forward over k tokens (all with logits) relative to k = 1, keyed by k.
    pub cost_curve: BTreeMap<String, f64>,
    /// The same forwards in milliseconds.
    pub forward_ms: BTreeMap<String, f64>,
    /// Peak resident memory of the process.
    pub peak_rss_mb: f64,
    /// Size of the model file.
    pub file_mb: f64,
}

/// `peregrine generate --json`.
#[derive(Serialize)]
pub struct GenerateReport {
    /// Generated text (without a stop string or stop token).
    pub text: String,
    /// Generated token ids.
    pub tokens: Vec<u32>,
    /// Prompt tokens.
    pub n_prompt: usize,
    /// Generated tokens.
    pub n_generated: usize,
    /// Prompt throughput.
    pub prefill_tok_s: f64,
    /// Generation throughput.
    pub decode_tok_s: f64,
    /// `max_tokens`, `stop_token`, `stop_string` or `context_full`.
    pub stop_reason: &'static str,
}

impl GenerateReport {
    /// The report of one generation.
    pub fn new(g: &peregrine_model::Generation) -> Self {
        use peregrine_model::StopReason;
        let rate = |n: usize, s: f64| if s > 0.0 { n as f64 / s } else { 0.0 };
        Self {
            text: g.text.clone(),
            tokens: g.tokens.clone(),
            n_prompt: g.n_prompt,
            n_generated: g.tokens.len(),
            prefill_tok_s: rate(g.n_prompt_computed, g.prefill_s),
            decode_tok_s: rate(g.tokens.len(), g.decode_s),
            stop_reason: match g.stop_reason {
                StopReason::MaxTokens => "max_tokens",
                StopReason::StopToken(_) => "stop_token",
                StopReason::StopString(_) => "stop_string",
                StopReason::ContextFull => "context_full",
            },
        }
    }
}
