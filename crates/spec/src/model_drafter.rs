//! Drafting with a separate draft model that shares the target's vocabulary (`--spec draft`).
//! (LayerSkip self-speculation does not use this: it drafts in the target's own cache, see
//! `LayerSkipDrafter`.)
//!
//! The drafter keeps its own KV cache and the tokens it holds. Each `propose` first rolls the
//! cache back to the longest prefix it shares with the context (drafted tokens that were
//! rejected go) and feeds the rest of the context (accepted tokens and the root) in one
//! forward. Then it drafts level by level: one forward per level over the drafted nodes so far
//! (appended after the committed context with a tree mask, each node seeing its ancestors, and
//! rolled back afterwards), whose logits at the newest level give the next level's tokens.
//! - A static shape takes each node's `rank`-th most likely token; a node whose path
//!   probability under the draft (its score) falls below `min_score` is left out with its
//!   subtree. A chain is the one-node-per-level shape.
//! - A dynamic plan grows the EAGLE-2 tree ([`crate::tree_search`]): the `top_k` best frontier
//!   nodes by cumulative log-probability get their `top_k` most likely children, and the best
//!   `budget` candidates are kept.
//!
//! Drafts are deterministic (sampling verification uses the point-mass rule), or, with
//! `with_sampled_drafts`, a chain sampled from the shaped draft distribution `q`, which the
//! tree records so that verification uses the multi-round rule.

use crate::drafter::{DraftPlan, Drafter};
use crate::tree::{TokenTree, MAX_TREE_NODES};
use crate::tree_search::{FedForward, LevelDrafter};
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
    levels: LevelDrafter,
    masks: Vec<u64>,
    depths: Vec<u32>,
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
            ws: model.new_workspace(PREFILL_CHUNK.min(context.max(1)), MAX_TREE_NODES, context),
            cached: Vec::with_capacity(context),
            positions: Vec::with_capacity(PREFILL_CHUNK),
            min_score: 0.1,
            sampled: None,
            levels: LevelDrafter::default(),
            masks: Vec::with_capacity(MAX_TREE_NODES),
            depths: Vec::with_capacity(MAX_TREE_NODES),
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

    /// A chain of up to `depth` tokens sampled from the draft's shaped distribution, each
    /// recorded as its parent's child distribution `q` (the multi-round rule with one child is
    /// Leviathan/Chen). The drafted tokens stay in the cache until the next `propose` rolls
    /// them back.
    fn draft_sampled_chain(
        &mut self,
        context: &[u32],
        depth: usize,
        tree: &mut TokenTree,
    ) -> Result<()> {
        let Some((mut shaper, mut rng)) = self.sampled.take() else {
            return Ok(());
        };
        let (mut parent, mut score) = (0, 1.0f32);
        let mut result = Ok(());
        for d in 0..depth.min(self.cache.capacity() - self.cache.len()) {
            let mut q = Vec::new();
            shaper.probs(self.ws.logits(0), context, &mut q);
            let Some(token) = crate::verify::sample_from(&q, &mut rng) else {
                break;
            };
            score *= q[token as usize];
            if score < self.min_score {
                break;
            }
            tree.set_child_q(parent, q);
            parent = match tree.push(parent, token, score) {
                Ok(p) => p,
                Err(e) => {
                    result = Err(e);
                    break;
                }
            };
            if d + 1 < depth {
                if let Err(e) = self.feed(&[token]) {
                    result = Err(e);
                    break;
                }
            }
        }
        self.sampled = Some((shaper, rng));
        result
    }

    /// The level-forward view of this drafter's model, cache and workspace (drafted rows are
    /// rolled back after each level).
    fn split(&mut self) -> (&mut LevelDrafter, FedForward<'_>) {
        (
            &mut self.levels,
            FedForward {
                model: self.model,
                layers: 0..self.n_layers,
                cache: &mut self.cache,
                ws: &mut self.ws,
                positions: &mut self.positions,
                masks: &mut self.masks,
                depths: &mut self.depths,
            },
        )
    }
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
        if context.is_empty() {
            return Ok(());
        }
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
        if context.len() + 1 > self.cache.capacity() {
            return Ok(());
        }
        self.feed(&context[common..])?;
        match (plan, self.sampled.is_some()) {
            (_, true) => {
                let depth = match plan {
                    DraftPlan::Shape(shape) => shape.depth(),
                    DraftPlan::Dynamic { budget, depth, .. } => (*depth).min(*budget),
                };
                self.draft_sampled_chain(context, depth.min(MAX_TREE_NODES - 1), tree)?;
            }
            (DraftPlan::Shape(shape), false) => {
                let min_score = self.min_score;
                let (levels, mut f) = self.split();
                levels.draft_shape(&mut f, shape, min_score, tree)?;
            }
            (
                DraftPlan::Dynamic {
                    budget,
                    depth,
                    top_k,
                },
                false,
            ) => {
                let (levels, mut f) = self.split();
                levels.draft_dynamic(&mut f, *budget, *depth, *top_k, tree)?;
            }
        }
        Ok(())
    }
}
