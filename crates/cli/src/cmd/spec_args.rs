//! Speculative-decoding flags shared by `generate` and `bench spec`, and the drafter they build.

use crate::cmd::model_args::Loaded;
use anyhow::{Context, Result};
use peregrine_model::{LoadOptions, Model, SamplingParams};
use peregrine_spec::{Drafter, LayerSkipDrafter, ModelDrafter, NgramDrafter, NoDrafter, TreeSpec};
use std::path::PathBuf;

/// LayerSkip chains stop below this cumulative draft probability.
const LAYERSKIP_MIN_SCORE: f32 = 0.3;

/// Which drafter proposes tokens.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpecMethod {
    /// Plain decoding.
    None,
    /// Prompt lookup: continue the text the way it continued before.
    Ngram,
    /// A smaller model with the same vocabulary (`--draft-model`).
    Draft,
    /// The target's first `--exit-layer` layers and its LM head (early-exit self-speculation).
    Layerskip,
}

/// Speculative-decoding flags.
#[derive(clap::Args, Clone, Debug)]
pub struct SpecArgs {
    /// Speculative decoding method.
    #[arg(long, value_enum, default_value_t = SpecMethod::None)]
    pub spec: SpecMethod,
    /// Token tree: chain:N, eagle-default, dynamic:BUDGET,DEPTH,TOPK, auto (adaptive), or a
    /// tree file (one rank path a line, e.g. `0,1`).
    #[arg(long, default_value = "auto")]
    pub tree: String,
    /// Draft model file for `--spec draft` (must share the target's vocabulary).
    #[arg(long)]
    pub draft_model: Option<PathBuf>,
    /// Exit layer for `--spec layerskip` (1..layers-1; default: a quarter of the layers).
    #[arg(long)]
    pub exit_layer: Option<usize>,
}

/// Checked speculative settings, with the draft model loaded if one is needed.
pub struct Prepared {
    /// The method.
    pub method: SpecMethod,
    /// The tree to draft.
    pub tree: TreeSpec,
    draft_model: Option<Model>,
    exit_layer: usize,
}

impl SpecArgs {
    /// Validates the flags (tree, exit layer, draft model) before any generation;
    /// `None` means plain decoding.
    pub fn prepare(&self, loaded: &Loaded) -> Result<Option<Prepared>> {
        let n_layers = loaded.model.config().n_layers;
        if self.spec != SpecMethod::Draft && self.draft_model.is_some() {
            anyhow::bail!("--draft-model needs --spec draft");
        }
        if self.spec != SpecMethod::Layerskip && self.exit_layer.is_some() {
            anyhow::bail!("--exit-layer needs --spec layerskip");
        }
        if self.spec == SpecMethod::None {
            return Ok(None);
        }
        let tree = TreeSpec::parse(&self.tree)?;
        let exit_layer = self.exit_layer.unwrap_or((n_layers / 4).max(1));
        if self.spec == SpecMethod::Layerskip && (exit_layer == 0 || exit_layer >= n_layers) {
            return Err(peregrine_spec::Error::ExitLayer {
                exit_layer,
                n_layers,
            }
            .into());
        }
        let draft_model = match self.spec {
            SpecMethod::Draft => {
                let path = self
                    .draft_model
                    .as_ref()
                    .context("--spec draft needs --draft-model PATH")?;
                let opts = LoadOptions {
                    n_threads: loaded.model.n_threads(),
                    f32_activations: false,
                };
                let m = Model::load_with(path, &opts)
                    .with_context(|| format!("loading draft model {}", path.display()))?;
                let (draft, target) = (m.config().vocab_size, loaded.model.config().vocab_size);
                if draft != target {
                    return Err(peregrine_spec::Error::VocabMismatch { draft, target })
                        .with_context(|| format!("draft model {}", path.display()));
                }
                Some(m)
            }
            _ => None,
        };
        Ok(Some(Prepared {
            method: self.spec,
            tree,
            draft_model,
            exit_layer,
        }))
    }
}

impl Prepared {
    /// No drafter: the speculative engine doing plain steps (an A/A baseline for `bench spec`).
    pub fn none(tree: &str) -> Result<Self> {
        Ok(Self {
            method: SpecMethod::None,
            tree: TreeSpec::parse(tree)?,
            draft_model: None,
            exit_layer: 1,
        })
    }

    /// A fresh drafter for one generation. With `sampling.temperature > 0` a draft model
    /// samples its drafts (verified by the multi-round rule).
    pub fn drafter<'a>(
        &'a self,
        loaded: &'a Loaded,
        sampling: &SamplingParams,
    ) -> Result<Box<dyn Drafter + 'a>> {
        let vocab = loaded.model.config().vocab_size;
        Ok(match self.method {
            SpecMethod::None => Box::new(NoDrafter),
            SpecMethod::Ngram => Box::new(NgramDrafter::default()),
            SpecMethod::Draft => {
                let m = self
                    .draft_model
                    .as_ref()
                    .expect("prepare loads the draft model");
                let d = ModelDrafter::draft_model(m, vocab, loaded.ctx)?;
                if sampling.temperature > 0.0 {
                    Box::new(d.with_sampled_drafts(sampling.clone()))
                } else {
                    Box::new(d)
                }
            }
            SpecMethod::Layerskip => Box::new(LayerSkipDrafter::new(
                self.exit_layer,
                loaded.model.config().n_layers,
                LAYERSKIP_MIN_SCORE,
            )?),
        })
    }
}
