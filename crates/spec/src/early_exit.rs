//! LayerSkip drafting in the target's own KV cache: the first `E` layers, the final norm and the
//! LM head draft a tree, and verification resumes at layer `E` over it (see
//! [`crate::Drafter::shared_exit_layer`]).
//!
//! The root goes through layers `0..E` first; its row stays. Each further level is one forward
//! of layers `0..E` over the drafted nodes so far, with a tree mask, rolled back afterwards; its
//! logits at the newest level give the next level ([`LevelDrafter`]: static shapes, EAGLE-2
//! dynamic trees). A last forward of layers `0..E` over every drafted node, without the head,
//! leaves their rows of layers `0..E` in the cache and their hidden states entering layer `E`,
//! so verification never recomputes those layers. (A chain re-fed level by level costs forwards
//! of 1, 2, .. d rows instead of d of one row; on this engine a forward of a few rows costs
//! about one of a single row.)

use crate::drafter::DraftPlan;
use crate::tree::TokenTree;
use crate::tree_search::{fed_from_tree, FedForward, LevelDrafter};
use crate::Result;
use peregrine_model::{ForwardOptions, KvCache, LogitRows, Model, SeqInput, Workspace};

/// Buffers of LayerSkip drafting, reused across steps.
#[derive(Debug, Default)]
pub(crate) struct EarlyExitDrafts {
    levels: LevelDrafter,
    fed: Vec<(u32, usize)>,
    masks: Vec<u64>,
    depths: Vec<u32>,
    positions: Vec<u32>,
}

impl EarlyExitDrafts {
    /// Drafts `plan` under `tree`'s root (the root's position is the cache length) with the
    /// target's layers `0..exit_layer`; static shapes stop a path below `min_score`. Leaves in
    /// `cache` the layers-`0..E` rows of every tree node in tree order, root first, and in
    /// `hidden` their hidden states entering layer `E`. Returns the number of such rows (the
    /// tree's length).
    #[allow(clippy::too_many_arguments)]
    pub fn draft(
        &mut self,
        model: &Model,
        cache: &mut KvCache,
        ws: &mut Workspace,
        exit_layer: usize,
        plan: &DraftPlan<'_>,
        min_score: f32,
        tree: &mut TokenTree,
        hidden: &mut Vec<f32>,
    ) -> Result<usize> {
        hidden.clear();
        let base = cache.len();
        if base + 1 > cache.capacity() {
            return Ok(0);
        }
        let root = [tree.tokens()[0]];
        let position = [base as u32];
        let opts = ForwardOptions {
            layers: 0..exit_layer,
            head: true,
            taps: &[],
        };
        let mut seqs = [SeqInput {
            cache,
            tokens: &root,
            positions: &position,
            tree: None,
            logits: LogitRows::Last,
        }];
        model.forward(ws, &mut seqs, &opts)?;
        hidden.extend_from_slice(ws.hidden());
        let mut f = FedForward {
            model,
            layers: 0..exit_layer,
            cache,
            ws,
            masks: &mut self.masks,
            depths: &mut self.depths,
            positions: &mut self.positions,
        };
        match plan {
            DraftPlan::Shape(shape) => self.levels.draft_shape(&mut f, shape, min_score, tree)?,
            DraftPlan::Dynamic {
                budget,
                depth,
                top_k,
            } => self
                .levels
                .draft_dynamic(&mut f, *budget, *depth, *top_k, tree)?,
        }
        // Keep every drafted node's rows of layers 0..E and its hidden state entering E.
        fed_from_tree(tree, &mut self.fed);
        if !self.fed.is_empty() {
            if f.run(&self.fed, None)? {
                hidden.extend_from_slice(f.ws.hidden());
            } else {
                tree.truncate(1);
            }
        }
        Ok(tree.len())
    }
}
