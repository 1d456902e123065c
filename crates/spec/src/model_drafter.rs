//! Drafting with a separate draft model that shares the target's vocabulary (`--spec draft`).
//! (LayerSkip self-speculation does not use this: it drafts in the target's own cache, see
//! `LayerSkipDrafter`.)
//!
//! The drafter keeps its own KV cache and the tokens it holds. Each `propose` first rolls the
//! cache back to the longest prefix it shares with the context (drafted tokens that were
//! rejected go), feeds the rest of the context (accepted tokens and the root) in one forward,
//! then drafts a chain greedily, one forward per token, until the planned depth or until the
//! chain's probability under the draft (the product of the drafted tokens' softmax
//! probabilities, which is each node's score) falls below `min_score`. Drafts are the draft's
//! argmax (deterministic: sampling verification uses the point-mass rule), or, with
//! `with_sampled_drafts`, sampled from the shaped draft distribution `q`, which the tree
//! records so that verification uses the multi-round rule.

use crate::drafter::{DraftPlan, Drafter};
use crate::tree::{TokenTree, MAX_TREE_NODES};
use crate::{Error, Result};
use peregrine_model::generate::PREFILL_CHUNK;
use peregrine_model::{ForwardOptions, KvCache, LogitRows, Model, SeqInput, Workspace};

/// A drafter backed by a draft model.
pub struct ModelDrafter<'m> {
    name: &'static str,
    model: &'m Model,
    n_layers: usize,
    cache: KvCache,
    ws: Workspace,
    /// Tokens in `cache`.
    cached: Vec<u32>,
    positions: Vec<u32>,
    min_score: f32,
    /// When set, drafts are sampled from the draft's distribution shaped like the target's.
    sampled: Option<(crate::verify::TargetShaper, rand::rngs::StdRng)>,
}

impl<'m> ModelDrafter<'m> {
    /// Drafts with all layers of `draft`, which must share `target_vocab`.
    pub fn draft_model(draft: &'m Model, target_vocab: usize, context: usize) -> Result<Self> {
        let v = draft.config().vocab_size;
        if v != target_vocab {
            return Err(Error::VocabMismatch {
                draft: v,
                target: target_vocab,
            });
        }
        Ok(Self::new("draft", draft, draft.config().n_layers, context))
    }

    fn new(name: &'static str, model: &'m Model, n_layers: usize, context: usize) -> Self {
        Self {
            name,
            model,
            n_layers,
            cache: model.new_cache(context),
            ws: model.new_workspace(PREFILL_CHUNK.min(context.max(1)), 1, context),
            cached: Vec::with_capacity(context),
            positions: Vec::with_capacity(PREFILL_CHUNK),
            min_score: 0.1,
            sampled: None,
        }
    }

    /// Stop drafting a chain once its probability under the draft falls below this.
    pub fn with_min_score(mut self, min_score: f32) -> Self {
        self.min_score = min_score;
        self
    }

    /// Samples drafts (instead of taking the draft's argmax) from the draft model's logits
    /// shaped by `params` (temperature > 0), with the multi-round rule at verification.
    pub fn with_sampled_drafts(mut self, params: peregrine_model::SamplingParams) -> Self {
        use rand::SeedableRng;
        let rng = rand::rngs::StdRng::seed_from_u64(params.seed ^ 0x5eed_d4af);
        let vocab = self.model.config().vocab_size;
        self.sampled = Some((crate::verify::TargetShaper::new(params, vocab), rng));
        self
    }

    /// Feeds `tokens` (appending to the cache) and leaves logits of the last in the workspace.
    fn feed(&mut self, tokens: &[u32]) -> Result<()> {
        for chunk in tokens.chunks(PREFILL_CHUNK) {
            let pos = self.cached.len();
            self.positions.clear();
            self.positions
                .extend((0..chunk.len()).map(|i| (pos + i) as u32));
            let opts = ForwardOptions {
                layers: 0..self.n_layers,
                head: true,
                taps: &[],
            };
            let mut seqs = [SeqInput {
                cache: &mut self.cache,
                tokens: chunk,
                positions: &self.positions,
                tree: None,
                logits: LogitRows::Last,
            }];
            self.model.forward(&mut self.ws, &mut seqs, &opts)?;
            self.cached.extend_from_slice(chunk);
        }
        Ok(())
    }
}

/// The argmax of `logits` and its softmax probability.
fn top1(logits: &[f32]) -> (u32, f32) {
    let (mut best, mut max) = (0usize, f32::NEG_INFINITY);
    for (i, &l) in logits.iter().enumerate() {
        if l > max {
            (best, max) = (i, l);
        }
    }
    let z: f64 = logits.iter().map(|&l| ((l - max) as f64).exp()).sum();
    (best as u32, (1.0 / z) as f32)
}

impl Drafter for ModelDrafter<'_> {
    fn name(&self) -> &'static str {
        self.name
    }

    fn propose(
        &mut self,
        context: &[u32],
        plan: &DraftPlan<'_>,
        tree: &mut TokenTree,
    ) -> Result<()> {
        let depth = match plan {
            DraftPlan::Shape(shape) => shape.depth(),
            DraftPlan::Dynamic { budget, depth, .. } => (*depth).min(*budget),
        }
        .min(MAX_TREE_NODES - 1);
        // Roll back to the shared prefix; keep at least one token to feed for fresh logits.
        let common = self
            .cached
            .iter()
            .zip(context)
            .take_while(|(a, b)| a == b)
            .count()
            .min(context.len() - 1);
        self.cache.truncate(common);
        self.cached.truncate(common);
        if self.cache.len() + depth + 1 > self.cache.capacity()
            || context.len() > self.cache.capacity()
        {
            return Ok(());
        }
        self.feed(&context[common..])?;
        let mut parent = 0;
        let mut score = 1.0f32;
        for d in 0..depth {
            let (token, prob) = match &mut self.sampled {
                // Sample the draft token and record q, so verification uses the multi-round
                // rule (one child: Leviathan/Chen).
                Some((shaper, rng)) => {
                    let mut q = Vec::new();
                    shaper.probs(self.ws.logits(0), context, &mut q);
                    let Some(t) = crate::verify::sample_from(&q, rng) else {
                        break;
                    };
                    let prob = q[t as usize];
                    tree.set_child_q(parent, q);
                    (t, prob)
                }
                None => top1(self.ws.logits(0)),
            };
            score *= prob;
            if score < self.min_score {
                break;
            }
            parent = tree.push(parent, token, score)?;
            if d + 1 < depth {
                self.feed(&[token])?;
            }
        }
        Ok(())
    }
}
