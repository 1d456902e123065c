//! `peregrine bench`: prefill and decode speed, the cost of verifying k tokens, peak memory.
//!
//! A benchmark command rather than a timed test (as llama.cpp ships llama-bench):
//! `scripts/bench-vs-llama-cpp` runs it beside `llama-bench` on the same file and threads.

use crate::cmd::common::{default_model_path, default_threads, peak_rss_mb, progress_bar};
use crate::json::BenchReport;
use anyhow::{Context, Result};
use peregrine_model::{ForwardOptions, LogitRows, Model, SeqInput, Workspace};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

/// Arguments of `peregrine bench`.
#[derive(clap::Args)]
pub struct Args {
    /// Model file (default: the SmolLM2 GGUF that scripts/demo fetches).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Worker threads (default: physical cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Prompt tokens for the prefill measurement.
    #[arg(long, default_value_t = 512)]
    prefill_tokens: usize,
    /// Rows per prefill forward, as generation chunks a prompt (the workspace holds one chunk).
    #[arg(long, default_value_t = peregrine_model::generate::PREFILL_CHUNK)]
    prefill_chunk: usize,
    /// Tokens for the decode measurement.
    #[arg(long, default_value_t = 128)]
    decode_tokens: usize,
    /// Repetitions of each measurement (the median is reported).
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// A specific benchmark instead of the engine measurement above.
    #[command(subcommand)]
    sub: Option<BenchCmd>,
}

/// Benchmarks under `peregrine bench`.
#[derive(clap::Subcommand)]
pub enum BenchCmd {
    /// Speculative decoding against plain decoding on a prompt set (tau, tok/s, speed-up,
    /// greedy equality).
    Spec(crate::cmd::bench_spec::Args),
}

const COST_CURVE_K: [usize; 7] = [1, 2, 4, 8, 16, 32, 64];

/// Runs the benchmark.
pub fn run(args: Args) -> Result<()> {
    if let Some(BenchCmd::Spec(spec_args)) = args.sub {
        return crate::cmd::bench_spec::run(spec_args);
    }
    let path = args.model.unwrap_or_else(default_model_path);
    let threads = args.threads.unwrap_or_else(default_threads);
    let model =
        Model::load(&path, threads).with_context(|| format!("loading {}", path.display()))?;
    let cfg = model.config().clone();
    let n_prefill = args.prefill_tokens.max(1);
    let ctx = n_prefill + args.decode_tokens + 64 + 8;
    let chunk = args.prefill_chunk.clamp(1, n_prefill);
    let mut ws = model.new_workspace(chunk.max(64), 64, ctx);
    let tokens: Vec<u32> = (0..ctx as u64)
        .map(|i| ((i * 7919 + 13) % cfg.vocab_size as u64) as u32)
        .collect();
    let full = ForwardOptions {
        layers: 0..cfg.n_layers,
        head: true,
        taps: &[],
    };
    let repeats = args.repeats.max(1);
    let bar = progress_bar((repeats * (2 + COST_CURVE_K.len())) as u64, "bench");

    let run_chunk = |ws: &mut Workspace,
                     cache: &mut peregrine_model::KvCache,
                     toks: &[u32],
                     start: u32,
                     logits| {
        let positions: Vec<u32> = (start..start + toks.len() as u32).collect();
        let mut seqs = [SeqInput {
            cache,
            tokens: toks,
            positions: &positions,
            tree: None,
            logits,
        }];
        model.forward(ws, &mut seqs, &full)
    };

    // Prefill: n_prefill tokens in forwards of `chunk`, logits for the last token.
    let mut prefill_s = Vec::new();
    for _ in 0..repeats {
        let mut cache = model.new_cache(ctx);
        let t = Instant::now();
        for start in (0..n_prefill).step_by(chunk) {
            let end = (start + chunk).min(n_prefill);
            let logits = if end == n_prefill {
                LogitRows::Last
            } else {
                LogitRows::None
            };
            run_chunk(
                &mut ws,
                &mut cache,
                &tokens[start..end],
                start as u32,
                logits,
            )?;
        }
        prefill_s.push(t.elapsed().as_secs_f64());
        bar.inc(1);
    }

    // Decode: one token per forward after a short prompt, greedy.
    let mut decode_s = Vec::new();
    for _ in 0..repeats {
        let mut cache = model.new_cache(ctx);
        run_chunk(&mut ws, &mut cache, &tokens[..8], 0, LogitRows::Last)?;
        let mut next = [argmax(ws.logits(0))];
        let t = Instant::now();
        for i in 0..args.decode_tokens {
            run_chunk(&mut ws, &mut cache, &next, 8 + i as u32, LogitRows::Last)?;
            next = [argmax(ws.logits(0))];
        }
        decode_s.push(t.elapsed().as_secs_f64());
        bar.inc(1);
    }

    // Cost of one forward over k new tokens (all with logits, as verification needs), after a
    // 128-token context, relative to k = 1.
    let prefix = 128.min(n_prefill);
    let mut cache = model.new_cache(ctx);
    run_chunk(&mut ws, &mut cache, &tokens[..prefix], 0, LogitRows::None)?;
    let mut per_k = BTreeMap::new();
    for &k in &COST_CURVE_K {
        let mut times = Vec::new();
        for _ in 0..repeats {
            // Several calls per sample: a single k = 1 forward is only a few milliseconds.
            let reps = 8;
            let t = Instant::now();
            for _ in 0..reps {
                run_chunk(
                    &mut ws,
                    &mut cache,
                    &tokens[prefix..prefix + k],
                    prefix as u32,
                    LogitRows::All,
                )?;
                cache.truncate(prefix);
            }
            times.push(t.elapsed().as_secs_f64() / reps as f64);
            bar.inc(1);
        }
        per_k.insert(k, median(&mut times));
    }
    bar.finish_and_clear();

    let base = per_k[&1];
    let report = BenchReport {
        model: path.display().to_string(),
        threads,
        prefill_tokens: n_prefill,
        prefill_chunk: chunk,
        decode_tokens: args.decode_tokens,
        prefill_tok_s: n_prefill as f64 / median(&mut prefill_s),
        decode_tok_s: args.decode_tokens as f64 / median(&mut decode_s),
        cost_curve: per_k
            .iter()
            .map(|(k, s)| (k.to_string(), s / base))
            .collect(),
        forward_ms: per_k
            .iter()
            .map(|(k, s)| (k.to_string(), s * 1e3))
            .collect(),
        peak_rss_mb: peak_rss_mb(),
        file_mb: std::fs::metadata(&path)
            .map(|m| m.len() as f64 / 1e6)
            .unwrap_or(0.0),
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("model        {}", report.model);
        println!("threads      {}", report.threads);
        println!(
            "prefill      {:.1} tok/s ({} tokens)",
            report.prefill_tok_s, n_prefill
        );
        println!(
            "decode       {:.1} tok/s ({} tokens)",
            report.decode_tok_s, args.decode_tokens
        );
        println!(
            "peak RSS     {:.1} MB (file {:.1} MB)",
            report.peak_rss_mb, report.file_mb
        );
        println!("cost of one forward over k tokens, relative to k = 1:");
        for (k, c) in &report.cost_curve {
            println!("  k = {k:>2}  {c:.2}x  ({:.2} ms)", report.forward_ms[k]);
        }
    }
    Ok(())
}

fn argmax(x: &[f32]) -> u32 {
    peregrine_tensor::ops::argmax(x).unwrap_or(0) as u32
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}
