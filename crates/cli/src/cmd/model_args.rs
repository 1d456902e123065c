//! Arguments shared by the verbs that run a model (`generate`, `chat`), and loading with
//! progress, timing and memory reported on stderr.

use crate::cmd::common::{default_model_path, default_threads, peak_rss_mb};
use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use peregrine_model::{LoadOptions, Model, SamplingParams};
use peregrine_tokenizer::Tokenizer;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Which model and how to run it.
#[derive(clap::Args, Clone)]
pub struct ModelArgs {
    /// Model file (default: the SmolLM2 GGUF that scripts/demo fetches).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Worker threads (default: physical cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Context size in tokens (prompt + generation); default: the model's, at most 4096.
    #[arg(long)]
    pub ctx: Option<usize>,
    /// Hide the loading spinner.
    #[arg(long)]
    pub quiet: bool,
}

/// How to pick tokens.
#[derive(clap::Args, Clone)]
pub struct SamplingArgs {
    /// Maximum new tokens.
    #[arg(long, default_value_t = 256)]
    pub max_tokens: usize,
    /// Temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    /// Keep only the k most likely tokens (0 = off).
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    /// Nucleus sampling threshold (1 = off).
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    /// Drop tokens below this fraction of the top token's probability (0 = off).
    #[arg(long, default_value_t = 0.0)]
    pub min_p: f32,
    /// Repetition penalty over the last 64 tokens (1 = off).
    #[arg(long, default_value_t = 1.0)]
    pub repeat_penalty: f32,
    /// Frequency penalty.
    #[arg(long, default_value_t = 0.0)]
    pub frequency_penalty: f32,
    /// Presence penalty.
    #[arg(long, default_value_t = 0.0)]
    pub presence_penalty: f32,
    /// Random seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Stop when this text appears (repeatable).
    #[arg(long)]
    pub stop: Vec<String>,
}

impl SamplingArgs {
    /// The sampler parameters these flags describe.
    pub fn sampling(&self) -> SamplingParams {
        SamplingParams {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            repetition_penalty: self.repeat_penalty,
            frequency_penalty: self.frequency_penalty,
            presence_penalty: self.presence_penalty,
            penalty_last_n: 64,
            seed: self.seed,
        }
    }
}

/// A loaded model with its tokenizer.
pub struct Loaded {
    /// The network.
    pub model: Model,
    /// Its tokenizer (from the same GGUF file).
    pub tokenizer: Tokenizer,
    /// Context size to use.
    pub ctx: usize,
}

/// Loads the model and tokenizer, with a spinner, and reports time and memory on stderr.
pub fn load(args: &ModelArgs) -> Result<Loaded> {
    let path = args.model.clone().unwrap_or_else(default_model_path);
    let threads = args.threads.unwrap_or_else(default_threads).max(1);
    let spinner = if args.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new_spinner()
    };
    spinner
        .set_style(ProgressStyle::with_template("{spinner} {msg}").expect("the template is valid"));
    spinner.set_message(format!("loading {}", path.display()));
    spinner.enable_steady_tick(Duration::from_millis(100));
    let start = Instant::now();
    let model = Model::load_with(
        &path,
        &LoadOptions {
            n_threads: threads,
            f32_activations: false,
        },
    )
    .with_context(|| format!("loading {}", path.display()))?;
    let gguf = model.source().gguf().with_context(|| {
        format!(
            "{}: generation needs the tokenizer of a GGUF file; safetensors models have none here",
            path.display()
        )
    })?;
    let tokenizer = Tokenizer::from_gguf(gguf)
        .with_context(|| format!("{}: reading the tokenizer", path.display()))?;
    if tokenizer.vocab_size() > model.config().vocab_size {
        anyhow::bail!(
            "{}: the tokenizer has {} tokens but the model only {} embeddings",
            path.display(),
            tokenizer.vocab_size(),
            model.config().vocab_size
        );
    }
    spinner.finish_and_clear();
    let ctx = args
        .ctx
        .unwrap_or(model.config().context_length.min(4096))
        .max(2);
    if !args.quiet {
        eprintln!(
            "loaded {} in {} ms: {} layers, hidden {}, {} threads, context {ctx}, peak RSS {:.0} MB",
            path.display(),
            start.elapsed().as_millis(),
            model.config().n_layers,
            model.config().hidden_size,
            threads,
            peak_rss_mb()
        );
    }
    Ok(Loaded {
        model,
        tokenizer,
        ctx,
    })
}
