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
