//! Speculative-decoding flags shared by `generate` and `bench spec`, and the drafter they build.

use crate::cmd::model_args::Loaded;
use anyhow::{Context, Result};
use peregrine_model::{LoadOptions, Model, SamplingParams};
use peregrine_spec::{
    Drafter, EagleDrafter, EagleHead, HeadOptions, LayerSkipDrafter, ModelDrafter, NgramDrafter,
    NoDrafter, TreeSpec,
};
use std::path::{Path, PathBuf};

/// The EAGLE-3 head shipped for the default model, relative to the repository root.
const SHIPPED_EAGLE_HEAD: &str = "assets/eagle/SmolLM2-135M-Instruct.eagle3.safetensors";
/// The model file the shipped head was trained for.
const SHIPPED_EAGLE_MODEL: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

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
    /// An EAGLE draft head (`--eagle`; EAGLE-3 or EAGLE-1) drafting from the target's hidden
    /// states, EAGLE-2 dynamic trees.
    Eagle,
}

/// Block type of a quantized EAGLE head.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeadBlock {
    /// 8-bit blocks (34 bytes per 32 weights).
    #[value(name = "q8_0")]
    Q8_0,
    /// 4-bit blocks with a minimum (20 bytes per 32 weights).
    #[value(name = "q4_1")]
    Q4_1,
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
    /// EAGLE head (safetensors, EAGLE-3 or EAGLE-1 tensor names) for `--spec eagle`; default
    /// for SmolLM2-135M-Instruct: the shipped assets/eagle/SmolLM2-135M-Instruct.eagle3.safetensors.
    #[arg(long)]
    pub eagle: Option<PathBuf>,
    /// Block type the EAGLE head's weights are quantized to at load: q4_1 (a quantized draft:
    /// ~60% of q8_0's bytes per drafting step; faster overall on SmolLM2, see PERFORMANCE.md)
    /// or q8_0 (closer to the trained weights).
    #[arg(long, value_enum, default_value_t = HeadBlock::Q4_1)]
    pub eagle_weights: HeadBlock,
}

/// Checked speculative settings, with the draft model loaded if one is needed.
pub struct Prepared {
    /// The method.
    pub method: SpecMethod,
    /// The tree to draft.
    pub tree: TreeSpec,
    draft_model: Option<Model>,
    exit_layer: usize,
    eagle_head: Option<EagleHead>,
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
        let eagle_head = match self.spec {
            SpecMethod::Eagle => {
                let path = self.eagle_path(loaded.model.source().path())?;
                let block = match self.eagle_weights {
                    HeadBlock::Q8_0 => peregrine_tensor::qdot::QuantKind::Q8_0,
                    HeadBlock::Q4_1 => peregrine_tensor::qdot::QuantKind::Q4_1,
                };
                let opts = HeadOptions {
                    quantize: Some(block),
                };
                let head = EagleHead::load(&path, loaded.model.config(), opts)
                    .with_context(|| format!("loading EAGLE head {}", path.display()))?;
                Some(head)
            }
            _ => None,
        };
        Ok(Some(Prepared {
            method: self.spec,
            tree,
            draft_model,
            exit_layer,
            eagle_head,
        }))
    }

    /// `--eagle`, or the shipped head when the model is the default SmolLM2.
    fn eagle_path(&self, model_path: &Path) -> Result<PathBuf> {
        if let Some(p) = &self.eagle {
            return Ok(p.clone());
        }
        if model_path.file_name().and_then(|n| n.to_str()) != Some(SHIPPED_EAGLE_MODEL) {
            anyhow::bail!(
                "--spec eagle needs --eagle PATH: a head is shipped only for {SHIPPED_EAGLE_MODEL}, not {}",
                model_path.display()
            );
        }
        let rel = PathBuf::from(SHIPPED_EAGLE_HEAD);
        let found = if rel.exists() {
            Some(rel.clone())
        } else {
            // Running from elsewhere inside a checkout: look above the binary.
            std::env::current_exe().ok().and_then(|exe| {
                exe.ancestors()
                    .find(|a| a.join(&rel).exists())
                    .map(|a| a.join(&rel))
            })
        };
        found.with_context(|| {
            format!(
                "the shipped EAGLE head {SHIPPED_EAGLE_HEAD} is missing (not in this checkout yet); pass --eagle PATH to use another head"
            )
        })
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
            eagle_head: None,
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
            SpecMethod::Eagle => {
                let head = self
                    .eagle_head
                    .as_ref()
                    .expect("prepare loads the EAGLE head");
                let d = EagleDrafter::new(&loaded.model, head, loaded.ctx)?;
                if sampling.temperature > 0.0 {
                    Box::new(d.with_sampled_drafts(sampling.clone()))
                } else {
                    Box::new(d)
                }
            }
        })
    }
}
