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
    /// Rows per prefill forward (the prompt is fed in chunks of this, as generation does).
    pub prefill_chunk: usize,
    /// Tokens generated in the decode measurement.
    pub decode_tokens: usize,
    /// Prefill throughput (the prompt in chunks of `prefill_chunk`).
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
    /// Speculative decoding counters; absent for plain decoding (`--spec none`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spec: Option<SpecReport>,
}

/// The `spec` object of `peregrine generate --spec ... --json`.
#[derive(Serialize, Clone, Debug)]
pub struct SpecReport {
    /// Drafter: `ngram`, `draft`, `layerskip` or `none`.
    pub method: String,
    /// Tokens emitted per target forward after the prompt, bonus token included.
    pub tau: f64,
    /// Target forwards after the prompt.
    pub steps: usize,
    /// `accepted_per_depth[d]`: steps that accepted a drafted token at depth `d + 1`.
    pub accepted_per_depth: Vec<u64>,
    /// Drafted tokens verified, over all steps.
    pub n_drafted: usize,
    /// Time spent drafting.
    pub draft_ms: f64,
    /// Time spent verifying (target forwards over the trees, acceptance).
    pub verify_ms: f64,
    /// Time the drafter spent taking in the target's features and catching up on them (EAGLE
    /// heads; mostly inside `verify_ms`).
    pub features_ms: f64,
}

impl SpecReport {
    /// The report of one speculative generation.
    pub fn new(s: &peregrine_spec::SpecStats) -> Self {
        Self {
            method: s.method.clone(),
            tau: s.tau(),
            steps: s.steps,
            accepted_per_depth: s.accepted_per_depth.clone(),
            n_drafted: s.n_drafted,
            draft_ms: s.draft_s * 1e3,
            verify_ms: s.verify_s * 1e3,
            features_ms: s.features_s * 1e3,
        }
    }
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
            spec: None,
        }
    }
}

/// `peregrine bench spec --json`: speculative against plain decoding on one prompt set.
#[derive(Serialize)]
pub struct SpecBenchReport {
    /// Prompt file.
    pub prompts: String,
    /// Prompts run.
    pub n_prompts: usize,
    /// Prompts skipped because they do not fit the context.
    pub n_skipped: usize,
    /// New tokens per prompt (at most).
    pub max_tokens: usize,
    /// Sampling temperature.
    pub temperature: f32,
    /// Threads.
    pub threads: usize,
    /// The `--tree` flag.
    pub tree: String,
    /// Plain decoding throughput (all prompts' generated tokens over their decode time).
    pub plain_decode_tok_s: f64,
    /// Speculative decoding throughput, measured the same way.
    pub spec_decode_tok_s: f64,
    /// `spec_decode_tok_s / plain_decode_tok_s`.
    pub speedup: f64,
    /// Prompts whose greedy speculative output differs from plain (must be 0).
    pub n_mismatches: usize,
    /// Their indices.
    pub mismatched_prompts: Vec<usize>,
    /// Speculation counters summed over the prompts.
    pub spec: SpecReport,
}

/// `peregrine bench spec --json` with `--sweep-trees` or `--sweep-specs`: plain decoding and
/// every (drafter, tree) configuration on the same prompts, in the same run.
#[derive(Serialize)]
pub struct SpecSweepReport {
    /// Prompt file.
    pub prompts: String,
    /// Prompts run.
    pub n_prompts: usize,
    /// Prompts skipped because they do not fit the context.
    pub n_skipped: usize,
    /// New tokens per prompt (at most).
    pub max_tokens: usize,
    /// Sampling temperature.
    pub temperature: f32,
    /// Threads.
    pub threads: usize,
    /// Plain decoding throughput (all prompts' generated tokens over their decode time).
    pub plain_decode_tok_s: f64,
    /// The PNG written (`--png`), if any.
    pub png: Option<String>,
    /// One entry per configuration, drafters outer, trees inner, in flag order.
    pub runs: Vec<SpecSweepRun>,
}

/// One configuration of a [`SpecSweepReport`].
#[derive(Serialize)]
pub struct SpecSweepRun {
    /// Drafter (`--spec` value).
    pub method: String,
    /// Tree spec, as given.
    pub tree: String,
    /// Nodes the tree drafts at most per step; `null` for `auto` (chosen each step).
    pub tree_nodes: Option<usize>,
    /// Drafted nodes verified per target forward, on average (`spec.n_drafted / spec.steps`).
    pub drafted_per_step: f64,
    /// Speculative decoding throughput.
    pub spec_decode_tok_s: f64,
    /// `spec_decode_tok_s / plain_decode_tok_s` (the report's plain figure).
    pub speedup: f64,
    /// Prompts whose greedy output differs from plain (must be 0).
    pub n_mismatches: usize,
    /// Their indices.
    pub mismatched_prompts: Vec<usize>,
    /// Speculation counters summed over the prompts.
    pub spec: SpecReport,
}
