//! `peregrine bench spec`: speculative decoding against plain decoding of the same engine, in
//! the same run, prompt by prompt (alternating, so load changes hit both alike), over a
//! specbench-style JSONL file (first turns, rendered with the chat template).
//!
//! At temperature 0 every prompt's speculative output is compared with the plain output; any
//! difference is reported and, with `--check`, makes the command fail (exit 1). Running it over
//! every set with `--check` is the full greedy-losslessness sweep of DESIGN.md §6.

use crate::cmd::common::progress_bar;
use crate::cmd::model_args::{load, ModelArgs};
use crate::cmd::spec_args::SpecArgs;
use crate::json::{SpecBenchReport, SpecReport};
use anyhow::{Context, Result};
use peregrine_model::{GenerateParams, SamplingParams, Session};
use peregrine_spec::{SpecSession, SpecStats};
use peregrine_tokenizer::{ChatMessage, ChatTemplate, EncodeOptions};
use std::path::PathBuf;

/// Arguments of `peregrine bench spec`.
#[derive(clap::Args, Clone)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    spec: SpecArgs,
    /// Prompt file: one JSON object a line with `turns` (the first is used).
    #[arg(long)]
    prompts: PathBuf,
    /// Use only the first N prompts (0 = all).
    #[arg(long, default_value_t = 0)]
    n_prompts: usize,
    /// New tokens per prompt.
    #[arg(long, default_value_t = 128)]
    max_tokens: usize,
    /// Sampling temperature (0 = greedy, where outputs are compared).
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// Fail (exit 1) if any greedy speculative output differs from plain decoding.
    #[arg(long)]
    check: bool,
    /// Print one JSON object instead of a summary.
    #[arg(long)]
    json: bool,
}

/// Runs the benchmark.
pub fn run(args: Args) -> Result<()> {
    let loaded = load(&args.model)?;
    // `--spec none` runs the speculative engine without a drafter: an A/A check of the noise.
    let spec = match args.spec.prepare(&loaded)? {
        Some(spec) => spec,
        None => crate::cmd::spec_args::Prepared::none(&args.spec.tree)?,
    };
    let text = std::fs::read_to_string(&args.prompts)
        .with_context(|| format!("reading {}", args.prompts.display()))?;
    let template =
        ChatTemplate::for_tokenizer(&loaded.tokenizer).context("reading the chat template")?;
    let mut prompts = Vec::new();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let v: serde_json::Value = serde_json::from_str(line)
            .with_context(|| format!("{}:{}: not JSON", args.prompts.display(), i + 1))?;
        let turn = v["turns"][0]
            .as_str()
            .with_context(|| format!("{}:{}: no turns[0] string", args.prompts.display(), i + 1))?;
        let rendered = template.render(&[ChatMessage::new("user", turn)], true)?;
        let opts = EncodeOptions {
            parse_special: true,
            ..EncodeOptions::default_for(&loaded.tokenizer)
        };
        prompts.push(loaded.tokenizer.encode(&rendered, opts)?);
        if args.n_prompts > 0 && prompts.len() >= args.n_prompts {
            break;
        }
    }
    let params = GenerateParams {
        max_tokens: args.max_tokens,
        sampling: SamplingParams {
            temperature: args.temperature,
            ..SamplingParams::default()
        },
        stop_strings: Vec::new(),
    };
    let mut plain = Session::new(&loaded.model, loaded.ctx);
    let mut spec_session = SpecSession::new(&loaded.model, loaded.ctx);
    let bar = if args.model.quiet {
        indicatif::ProgressBar::hidden()
    } else {
        progress_bar(prompts.len() as u64, "bench spec")
    };
    let (mut plain_tokens, mut plain_s, mut spec_tokens, mut spec_s) =
        (0usize, 0.0f64, 0usize, 0.0f64);
    let mut total = SpecStats::default();
    let mut mismatches = Vec::new();
    let mut n_skipped = 0;
    for (i, prompt) in prompts.iter().enumerate() {
        if prompt.len() + 1 >= loaded.ctx {
            n_skipped += 1;
            bar.inc(1);
            continue;
        }
        let p = plain.generate(
            &loaded.model,
            &loaded.tokenizer,
            prompt,
            &params,
            &mut |_| {},
        )?;
        let mut drafter = spec.drafter(&loaded, &params.sampling)?;
        let s = spec_session.generate(
            &loaded.model,
            &loaded.tokenizer,
            drafter.as_mut(),
            &spec.tree,
            prompt,
            &params,
            &mut |_| {},
        )?;
        plain_tokens += p.tokens.len();
        plain_s += p.decode_s;
        spec_tokens += s.generation.tokens.len();
        spec_s += s.generation.decode_s;
        total.method = s.stats.method.clone();
        total.steps += s.stats.steps;
        total.n_step_tokens += s.stats.n_step_tokens;
        total.n_drafted += s.stats.n_drafted;
        total.draft_s += s.stats.draft_s;
        total.verify_s += s.stats.verify_s;
        if total.accepted_per_depth.len() < s.stats.accepted_per_depth.len() {
            total
                .accepted_per_depth
                .resize(s.stats.accepted_per_depth.len(), 0);
        }
        for (t, a) in total
            .accepted_per_depth
            .iter_mut()
            .zip(&s.stats.accepted_per_depth)
        {
            *t += a;
        }
        if args.temperature <= 0.0 && p.tokens != s.generation.tokens {
            mismatches.push(i);
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    let rate = |n: usize, s: f64| if s > 0.0 { n as f64 / s } else { 0.0 };
    let report = SpecBenchReport {
        prompts: args.prompts.display().to_string(),
        n_prompts: prompts.len() - n_skipped,
        n_skipped,
        max_tokens: args.max_tokens,
        temperature: args.temperature,
        threads: loaded.model.n_threads(),
        tree: args.spec.tree.clone(),
        plain_decode_tok_s: rate(plain_tokens, plain_s),
        spec_decode_tok_s: rate(spec_tokens, spec_s),
        speedup: if spec_s > 0.0 && plain_s > 0.0 {
            rate(spec_tokens, spec_s) / rate(plain_tokens, plain_s)
        } else {
            0.0
        },
        n_mismatches: mismatches.len(),
        mismatched_prompts: mismatches.clone(),
        spec: SpecReport::new(&total),
    };
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "{}: {} prompts, {} tokens each, temperature {}, {} threads, tree {}",
            report.prompts,
            report.n_prompts,
            report.max_tokens,
            report.temperature,
            report.threads,
            report.tree
        );
        println!("plain     {:.1} tok/s", report.plain_decode_tok_s);
        println!(
            "{:<9} {:.1} tok/s  speed-up {:.2}x  tau {:.2}  accepted per depth {:?}",
            report.spec.method,
            report.spec_decode_tok_s,
            report.speedup,
            report.spec.tau,
            report.spec.accepted_per_depth
        );
        if args.temperature <= 0.0 {
            println!(
                "greedy outputs differing from plain: {} {:?}",
                report.n_mismatches, report.mismatched_prompts
            );
        }
    }
    if args.check && !mismatches.is_empty() {
        anyhow::bail!(
            "{} prompt(s) gave speculative output different from plain greedy: {mismatches:?}",
            mismatches.len()
        );
    }
    Ok(())
}
