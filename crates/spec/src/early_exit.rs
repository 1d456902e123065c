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
use crate::tree::{TokenTree, MAX_TREE_NODES};
use crate::tree_search::{fed_masks, LevelDrafter, LevelForward, NONE};
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

/// Layers `0..exit_layer` of the target over drafted nodes after the root's row.
struct ExitLevels<'a> {
    model: &'a Model,
    exit_layer: usize,
    cache: &'a mut KvCache,
    ws: &'a mut Workspace,
    masks: &'a mut Vec<u64>,
    depths: &'a mut Vec<u32>,
    positions: &'a mut Vec<u32>,
}

impl ExitLevels<'_> {
    /// Layers `0..exit_layer` over `fed` with their tree masks; with `want`, the head's logits
    /// of those rows and the rows rolled back, without it the rows kept.
    fn run(&mut self, fed: &[(u32, usize)], want: Option<&[usize]>) -> Result<bool> {
        let base = self.cache.len();
        let n = fed.len();
        if n == 0 || n > MAX_TREE_NODES || base + n > self.cache.capacity() {
            return Ok(false);
        }
        fed_masks(fed, self.masks, self.depths);
        self.positions.clear();
        self.positions
            .extend(self.depths.iter().map(|&d| base as u32 + d));
        let mut tokens = [0u32; MAX_TREE_NODES];
        for (t, &(token, _)) in tokens.iter_mut().zip(fed) {
            *t = token;
        }
        let opts = ForwardOptions {
            layers: 0..self.exit_layer,
            head: want.is_some(),
            taps: &[],
        };
        let mut seqs = [SeqInput {
            cache: self.cache,
            tokens: &tokens[..n],
            positions: self.positions,
            tree: Some(self.masks),
            logits: want.map_or(LogitRows::None, LogitRows::Rows),
        }];
        let r = self.model.forward(self.ws, &mut seqs, &opts);
        if want.is_some() {
            self.cache.truncate(base);
        }
        r?;
        Ok(true)
    }
}

impl LevelForward for ExitLevels<'_> {
    fn forward_level(&mut self, fed: &[(u32, usize)], want: &[usize]) -> Result<bool> {
        self.run(fed, Some(want))
    }

    fn logits(&self, i: usize) -> &[f32] {
        self.ws.logits(i)
    }
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
        let mut f = ExitLevels {
            model,
            exit_layer,
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
        self.fed.clear();
        for t in 1..tree.len() {
            let p = tree.parents()[t];
            self.fed
                .push((tree.tokens()[t], if p == 0 { NONE } else { p - 1 }));
        }
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
