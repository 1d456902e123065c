//! [`EagleDrafter`]: EAGLE-2 dynamic trees (or static shapes) drafted by an EAGLE head, with the
//! head's KV cache kept in step with the target's context.
//!
//! Head row `t` reads the target's feature `f_t` and the embedding of token `x_{t+1}`, and its
//! output predicts the feature at `t + 1`, whose logits give `x_{t+2}`. The engine hands the
//! drafter the target's features for every context position (prefill, then each verification's
//! root and accepted path); rows whose next token is known are *caught up* into the head's cache
//! in batched forwards, lazily: at the next `propose`, or once a whole batch is pending, so
//! steps that do not draft cost the head nothing. When drafting with root `x_n`, the rows up to `n - 1` are committed and
//! the last one's logits give the root's children. A drafted node of depth `d` becomes a head row
//! at position `n + d - 1` that takes its parent's output as `g` and its own token's embedding;
//! drafted rows are rolled back before the next step.
//!
//! Dynamic plan (EAGLE-2): at each depth, expand the `top_k` frontier nodes of highest
//! cumulative log-probability in one head forward (each gets its `top_k` most likely children),
//! up to `depth` levels; then keep the `budget` best candidates, which form a subtree because a
//! child never scores above its parent, and emit them best first. Expansion stops early once
//! no frontier node can enter the best `budget`. Drafts are deterministic (top-k), so sampling
//! verification uses the point-mass rule; or, with [`EagleDrafter::with_sampled_drafts`], a
//! chain of tokens sampled from the head's distribution shaped like the target's, verified by
//! the multi-round rule.

use super::forward::{HeadCache, HeadInput, HeadLogits, HeadRows, HeadWorkspace, MAX_DRAFT_ROWS};
use super::head::{EagleHead, EagleKind};
use crate::drafter::{DraftPlan, Drafter};
use crate::tree::{TokenTree, MAX_TREE_NODES};
use crate::tree_search::{top_logprobs, BestFirst, Cand, NONE};
use crate::verify::TargetShaper;
use crate::{Error, Result};
use peregrine_model::{Model, Workspace};
use peregrine_tensor::ops;
use rand::rngs::StdRng;
use rand::SeedableRng;

/// Rows per head forward (catch-up chunks and tree levels).
const HEAD_ROWS: usize = 64;
/// What drafting sampled chains needs: the target's shaping (temperature, top-k, top-p,
/// min-p, penalties), a random source, and buffers.
struct SampledDrafts {
    shaper: TargetShaper,
    rng: StdRng,
    /// The root row's logits over the draft vocabulary (the head's workspace is overwritten
    /// by drafted rows).
    root_logits: Vec<f32>,
    /// Draft logits scattered into the target vocabulary (`-inf` outside the draft vocabulary).
    target_logits: Vec<f32>,
}

/// Drafts token trees with an EAGLE head; see the module docs.
pub struct EagleDrafter<'a> {
    model: &'a Model,
    head: &'a EagleHead,
    cache: HeadCache,
    ws: HeadWorkspace,
    /// The context as last seen (prompt, then every propose/accept).
    tokens: Vec<u32>,
    /// Target features of positions `cache.n_committed()..` not yet in the head's cache.
    pending: Vec<f32>,
    n_pending: usize,
    /// Output `o` of the last committed row, and whether `root_top` holds its top tokens.
    last_out: Vec<f32>,
    root_valid: bool,
    root_top: Vec<(u32, f32)>,
    // Reused buffers.
    embeds: Vec<f32>,
    positions: Vec<u32>,
    parents: Vec<Option<usize>>,
    parent_out: Vec<f32>,
    /// Outputs of drafted rows, by slot - committed.
    draft_out: Vec<f32>,
    /// Candidates of the dynamic plan (and of shape plans, in `search.cands`).
    search: BestFirst,
    /// Head cache slot of each candidate's row once expanded, else `NONE`.
    slots: Vec<usize>,
    frontier: Vec<usize>,
    tree_idx: Vec<usize>,
    top: Vec<(u32, f32)>,
    /// Set for sampling (temperature > 0): drafts are sampled chains.
    sampled: Option<SampledDrafts>,
    /// Between `reuse_prefix` and the first `propose`/`accept`: features come from a prefill,
    /// whose rows are caught up at once (the work belongs to the prompt, and comes in batches).
    prefilling: bool,
    // Shape plans.
    shape_depth: Vec<usize>,
    shape_need: Vec<usize>,
    shape_cand: Vec<usize>,
}

impl<'a> EagleDrafter<'a> {
    /// A drafter for `model` with `head` (loaded for this model's config), for contexts of up
    /// to `context` tokens.
    pub fn new(model: &'a Model, head: &'a EagleHead, context: usize) -> Result<Self> {
        let c = head.config();
        let mc = model.config();
        if c.hidden_size != mc.hidden_size || c.target_vocab != mc.vocab_size {
            return Err(Error::HeadTargetMismatch {
                head_hidden: c.hidden_size,
                head_vocab: c.target_vocab,
                model_hidden: mc.hidden_size,
                model_vocab: mc.vocab_size,
            });
        }
        if let Some(&bad) = c.feature_layers.iter().find(|&&l| l > mc.n_layers) {
            return Err(Error::InvalidRequest(format!(
                "the EAGLE head reads layer {bad} of a {}-layer model",
                mc.n_layers
            )));
        }
        let h = c.hidden_size;
        let cache = HeadCache::new(head, context);
        let ws = HeadWorkspace::new(head, HEAD_ROWS, &cache, model.n_threads());
        Ok(Self {
            model,
            head,
            cache,
            ws,
            tokens: Vec::with_capacity(context),
            pending: Vec::new(),
            n_pending: 0,
            last_out: vec![0.0; h],
            root_valid: false,
            root_top: Vec::with_capacity(MAX_TREE_NODES),
            embeds: vec![0.0; HEAD_ROWS * h],
            positions: Vec::with_capacity(HEAD_ROWS),
            parents: Vec::with_capacity(HEAD_ROWS),
            parent_out: vec![0.0; HEAD_ROWS * h],
            draft_out: vec![0.0; MAX_DRAFT_ROWS * h],
            search: BestFirst::default(),
            slots: Vec::with_capacity(MAX_DRAFT_ROWS * 4),
            frontier: Vec::with_capacity(MAX_DRAFT_ROWS),
            tree_idx: Vec::with_capacity(MAX_DRAFT_ROWS * 4),
            top: Vec::with_capacity(MAX_TREE_NODES),
            sampled: None,
            prefilling: false,
            shape_depth: Vec::with_capacity(MAX_TREE_NODES),
            shape_need: Vec::with_capacity(MAX_TREE_NODES),
            shape_cand: Vec::with_capacity(MAX_TREE_NODES),
        })
    }

    /// Samples drafts instead of taking the top ones: each drafted token is drawn from the
    /// head's distribution shaped like the target's by `params` (temperature, top-k, top-p,
    /// min-p), and that distribution is recorded on the tree (`set_child_q`), so sampling
    /// verification uses the multi-round rule and accepts a draft with probability
    /// `min(1, p/q)` instead of `p` (the point-mass rule of deterministic drafts). Trees are
    /// then chains, as deep as the plan's depth.
    pub fn with_sampled_drafts(mut self, params: peregrine_model::SamplingParams) -> Self {
        let vocab = self.model.config().vocab_size;
        let rng = StdRng::seed_from_u64(params.seed ^ 0x9E37_79B9_7F4A_7C15);
        self.sampled = Some(SampledDrafts {
            shaper: TargetShaper::new(params, vocab),
            rng,
            root_logits: Vec::new(),
            target_logits: vec![f32::NEG_INFINITY; vocab],
        });
        self
    }

    /// The head.
    pub fn head(&self) -> &EagleHead {
        self.head
    }

    /// Context positions whose features the drafter holds (committed head rows + pending).
    fn covered(&self) -> usize {
        self.cache.n_committed() + self.n_pending
    }

    /// Rolls the state back to the first `n` positions.
    fn truncate(&mut self, n: usize) {
        let committed = self.cache.n_committed();
        if n < committed {
            self.cache.truncate(n);
            self.n_pending = 0;
            self.root_valid = false;
        } else {
            self.n_pending = self.n_pending.min(n - committed);
        }
    }

    /// Turns pending features whose next token is known into committed head rows, in batched
    /// forwards. With `want_root`, the last row's logits (when it is the row before the root)
    /// give `root_top`, `k_root` candidates.
    /// With `leave_last`, the last known row stays pending (for a `propose` to compute with
    /// its logits).
    fn commit_pending(&mut self, want_root: bool, k_root: usize, leave_last: bool) -> Result<()> {
        self.cache.drop_drafts();
        let h = self.head.config().hidden_size;
        let fdim = self.head.config().feature_dim();
        // Row t needs token t + 1.
        let n_known = self
            .tokens
            .len()
            .saturating_sub(1)
            .saturating_sub(self.cache.n_committed())
            .min(self.n_pending)
            .saturating_sub(usize::from(leave_last));
        let mut done = 0;
        while done < n_known {
            let n = (n_known - done).min(HEAD_ROWS);
            let first = self.cache.n_committed();
            let is_last = done + n == n_known;
            let root_row = is_last && want_root && first + n + 1 == self.tokens.len();
            self.positions.clear();
            for r in 0..n {
                let t = first + r;
                self.positions.push(t as u32);
                self.model
                    .embed_row(self.tokens[t + 1], &mut self.embeds[r * h..(r + 1) * h])?;
            }
            let rows = HeadRows {
                input: HeadInput::Target {
                    features: &self.pending[done * fdim..(done + n) * fdim],
                },
                embeds: &self.embeds[..n * h],
                positions: &self.positions,
                logits: if root_row {
                    HeadLogits::Last
                } else {
                    HeadLogits::None
                },
            };
            self.head.forward(
                self.model.pool(),
                self.lm_head(),
                &mut self.ws,
                &mut self.cache,
                &rows,
            )?;
            self.last_out.copy_from_slice(self.ws.out(n - 1));
            self.root_valid = false;
            if root_row {
                let head = self.head;
                top_logprobs(
                    self.ws.logits(0),
                    k_root,
                    |i| head.target_id(i),
                    &mut self.root_top,
                );
                if let Some(s) = &mut self.sampled {
                    s.root_logits.clear();
                    s.root_logits.extend_from_slice(self.ws.logits(0));
                }
                self.root_valid = true;
            }
            done += n;
        }
        if done > 0 {
            self.pending
                .copy_within(done * fdim..self.n_pending * fdim, 0);
            self.n_pending -= done;
        }
        Ok(())
    }

    /// Takes `context` (root last) as the sequence, dropping drafted rows and any state past
    /// the root's position.
    fn set_context(&mut self, context: &[u32]) {
        self.cache.drop_drafts();
        self.tokens.clear();
        self.tokens.extend_from_slice(context);
        let n = context.len().saturating_sub(1);
        if self.covered() > n {
            self.truncate(n);
        }
    }

    fn lm_head(&self) -> Option<peregrine_tensor::Weights<'a>> {
        match self.head.config().kind {
            EagleKind::Eagle1 => Some(self.model.lm_head()),
            EagleKind::Eagle3 => None,
        }
    }

    /// Forwards the drafted rows described by `self.{embeds, positions, parents, parent_out}`
    /// (`n` rows) with logits; returns the first slot.
    fn forward_drafts(&mut self, n: usize) -> Result<usize> {
        let h = self.head.config().hidden_size;
        let rows = HeadRows {
            input: HeadInput::Drafted {
                parent_out: &self.parent_out[..n * h],
                parents: &self.parents,
            },
            embeds: &self.embeds[..n * h],
            positions: &self.positions,
            logits: HeadLogits::All,
        };
        let first = self.head.forward(
            self.model.pool(),
            self.lm_head(),
            &mut self.ws,
            &mut self.cache,
            &rows,
        )?;
        let committed = self.cache.n_committed();
        for r in 0..n {
            let at = (first + r - committed) * h;
            self.draft_out[at..at + h].copy_from_slice(self.ws.out(r));
        }
        Ok(first)
    }

    /// Sets row `r` of the next drafted forward: `token` at `pos`, under the drafted row at
    /// `parent_slot` (or the last committed row).
    fn set_draft_row(
        &mut self,
        r: usize,
        token: u32,
        pos: usize,
        parent_slot: usize,
    ) -> Result<()> {
        let h = self.head.config().hidden_size;
        self.model
            .embed_row(token, &mut self.embeds[r * h..(r + 1) * h])?;
        self.positions.push(pos as u32);
        let dst = &mut self.parent_out[r * h..(r + 1) * h];
        if parent_slot == NONE {
            dst.copy_from_slice(&self.last_out);
            self.parents.push(None);
        } else {
            let at = (parent_slot - self.cache.n_committed()) * h;
            dst.copy_from_slice(&self.draft_out[at..at + h]);
            self.parents.push(Some(parent_slot));
        }
        Ok(())
    }

    fn draft_dynamic(
        &mut self,
        n: usize,
        budget: usize,
        depth: usize,
        top_k: usize,
        tree: &mut TokenTree,
    ) -> Result<()> {
        let budget = budget.min(MAX_TREE_NODES - 1);
        let children = top_k.min(budget).max(1);
        let expand = top_k.min(budget).clamp(1, HEAD_ROWS);
        let max_depth = depth.min(MAX_TREE_NODES - 1);
        let n_root = children.min(self.root_top.len());
        self.search.start(&self.root_top[..n_root]);
        self.slots.clear();
        self.slots.resize(n_root, NONE);
        let head = self.head;
        for d in 1..max_depth {
            self.frontier.clear();
            self.frontier
                .extend_from_slice(self.search.frontier(budget, expand));
            if self.frontier.is_empty()
                || self.cache.len() - self.cache.n_committed() + self.frontier.len()
                    > MAX_DRAFT_ROWS
            {
                break;
            }
            self.positions.clear();
            self.parents.clear();
            let n_rows = self.frontier.len();
            for r in 0..n_rows {
                let c = self.search.cands[self.frontier[r]];
                let parent_slot = if c.parent == NONE {
                    NONE
                } else {
                    self.slots[c.parent]
                };
                self.set_draft_row(r, c.token, n + d - 1, parent_slot)?;
            }
            let first = self.forward_drafts(n_rows)?;
            let n_old = self.search.cands.len();
            for r in 0..n_rows {
                let i = self.frontier[r];
                self.slots[i] = first + r;
                top_logprobs(
                    self.ws.logits(r),
                    children,
                    |t| head.target_id(t),
                    &mut self.top,
                );
                self.search.add_children(i, &self.top);
            }
            self.slots.resize(self.search.cands.len(), NONE);
            self.search.next_level(n_old);
        }
        self.search.emit(budget, tree)
    }

    /// A chain of up to `depth` tokens, each sampled from the head's distribution shaped like
    /// the target's and recorded as its parent's child distribution.
    fn draft_sampled_chain(&mut self, n: usize, depth: usize, tree: &mut TokenTree) -> Result<()> {
        let Some(mut s) = self.sampled.take() else {
            return Ok(());
        };
        let r = self.sampled_chain(&mut s, n, depth, tree);
        self.sampled = Some(s);
        r
    }

    fn sampled_chain(
        &mut self,
        s: &mut SampledDrafts,
        n: usize,
        depth: usize,
        tree: &mut TokenTree,
    ) -> Result<()> {
        let (mut node, mut slot, mut score) = (0, NONE, 1.0f32);
        for d in 0..depth.min(MAX_TREE_NODES - 1) {
            // The root's logits were saved at catch-up; deeper ones are the last forward's.
            let logits = if d == 0 {
                &s.root_logits[..]
            } else {
                self.ws.logits(0)
            };
            s.target_logits.fill(f32::NEG_INFINITY);
            for (i, &l) in logits.iter().enumerate() {
                s.target_logits[self.head.target_id(i) as usize] = l;
            }
            let mut q = Vec::new();
            s.shaper.probs(&s.target_logits, &self.tokens, &mut q);
            let Some(token) = crate::verify::sample_from(&q, &mut s.rng) else {
                break;
            };
            score *= q[token as usize];
            tree.set_child_q(node, q);
            node = tree.push(node, token, score)?;
            let room = self.cache.len() - self.cache.n_committed() < MAX_DRAFT_ROWS;
            if d + 1 == depth || !room {
                break;
            }
            self.positions.clear();
            self.parents.clear();
            self.set_draft_row(0, token, n + d, slot)?;
            slot = self.forward_drafts(1)?;
        }
        Ok(())
    }

    fn draft_shape(
        &mut self,
        n: usize,
        shape: &crate::tree::TreeShape,
        tree: &mut TokenTree,
    ) -> Result<()> {
        let (parents, ranks) = (shape.parents(), shape.ranks());
        let len = shape.len();
        self.shape_depth.clear();
        self.shape_need.clear();
        self.shape_depth.resize(len, 0);
        self.shape_need.resize(len, 0);
        for i in 1..len {
            self.shape_depth[i] = self.shape_depth[parents[i]] + 1;
            let p = parents[i];
            self.shape_need[p] = self.shape_need[p].max(ranks[i] + 1);
        }
        // Candidate of each shape node (NONE: no candidate at that rank).
        self.search.cands.clear();
        self.slots.clear();
        self.shape_cand.clear();
        self.shape_cand.resize(len, NONE);
        for i in 1..len {
            if parents[i] == 0 {
                if let Some(&(token, logp)) = self.root_top.get(ranks[i]) {
                    self.shape_cand[i] = self.search.cands.len();
                    self.search.cands.push(Cand {
                        parent: NONE,
                        token,
                        logp,
                    });
                    self.slots.push(NONE);
                }
            }
        }
        let max_depth = self.shape_depth.iter().copied().max().unwrap_or(0);
        for d in 1..max_depth {
            // Expand the nodes at depth d that have children in the shape.
            self.frontier.clear();
            for i in 1..len {
                if self.shape_depth[i] == d && self.shape_need[i] > 0 && self.shape_cand[i] != NONE
                {
                    self.frontier.push(i);
                }
            }
            for chunk_start in (0..self.frontier.len()).step_by(HEAD_ROWS) {
                let chunk_end = (chunk_start + HEAD_ROWS).min(self.frontier.len());
                let n_rows = chunk_end - chunk_start;
                if self.cache.len() - self.cache.n_committed() + n_rows > MAX_DRAFT_ROWS {
                    break;
                }
                self.positions.clear();
                self.parents.clear();
                for r in 0..n_rows {
                    let c = self.search.cands[self.shape_cand[self.frontier[chunk_start + r]]];
                    let parent_slot = if c.parent == NONE {
                        NONE
                    } else {
                        self.slots[c.parent]
                    };
                    self.set_draft_row(r, c.token, n + d - 1, parent_slot)?;
                }
                let first = self.forward_drafts(n_rows)?;
                for r in 0..n_rows {
                    let node = self.frontier[chunk_start + r];
                    let ci = self.shape_cand[node];
                    self.slots[ci] = first + r;
                    let head = self.head;
                    top_logprobs(
                        self.ws.logits(r),
                        self.shape_need[node],
                        |t| head.target_id(t),
                        &mut self.top,
                    );
                    let base = self.search.cands[ci].logp;
                    for child in 1..len {
                        if parents[child] == node {
                            if let Some(&(token, lp)) = self.top.get(ranks[child]) {
                                self.shape_cand[child] = self.search.cands.len();
                                self.search.cands.push(Cand {
                                    parent: ci,
                                    token,
                                    logp: base + lp,
                                });
                                self.slots.push(NONE);
                            }
                        }
                    }
                }
            }
        }
        // Shape order is topological; a node whose parent is missing is left out.
        self.tree_idx.clear();
        self.tree_idx.resize(len, NONE);
        self.tree_idx[0] = 0;
        for (i, &parent) in parents.iter().enumerate().skip(1) {
            let p = self.tree_idx[parent];
            let ci = self.shape_cand[i];
            if p == NONE || ci == NONE {
                continue;
            }
            let c = self.search.cands[ci];
            self.tree_idx[i] = tree.push(p, c.token, c.logp.exp())?;
        }
        Ok(())
    }
}

impl Drafter for EagleDrafter<'_> {
    fn name(&self) -> &'static str {
        "eagle"
    }

    fn propose(
        &mut self,
        context: &[u32],
        plan: &DraftPlan<'_>,
        tree: &mut TokenTree,
    ) -> Result<()> {
        let Some(n) = context.len().checked_sub(1) else {
            return Ok(());
        };
        self.prefilling = false;
        self.set_context(context);
        let k_root = match plan {
            DraftPlan::Dynamic { budget, top_k, .. } => (*top_k).min(*budget).max(1),
            DraftPlan::Shape(shape) => (1..shape.len())
                .filter(|&i| shape.parents()[i] == 0)
                .map(|i| shape.ranks()[i] + 1)
                .max()
                .unwrap_or(0),
        }
        .min(MAX_TREE_NODES);
        self.commit_pending(true, k_root, false)?;
        // Without features up to the root's position, or with the root row's logits lost,
        // there is nothing to draft from.
        if self.cache.n_committed() != n || !self.root_valid || k_root == 0 {
            return Ok(());
        }
        if self.sampled.is_some() {
            let depth = match plan {
                DraftPlan::Dynamic { budget, depth, .. } => (*depth).min(*budget),
                DraftPlan::Shape(shape) => shape.depth(),
            };
            return self.draft_sampled_chain(n, depth, tree);
        }
        match plan {
            DraftPlan::Dynamic {
                budget,
                depth,
                top_k,
            } => self.draft_dynamic(n, *budget, *depth, *top_k, tree),
            DraftPlan::Shape(shape) => self.draft_shape(n, shape, tree),
        }
    }

    fn accept(&mut self, context: &[u32], _n_accepted: usize) {
        self.prefilling = false;
        self.tokens.clear();
        self.tokens.extend_from_slice(context);
    }

    fn feature_layers(&self) -> &[usize] {
        &self.head.config().feature_layers
    }

    fn reuse_prefix(&mut self, prompt: &[u32]) -> usize {
        let common = self
            .tokens
            .iter()
            .zip(prompt)
            .take_while(|(a, b)| a == b)
            .count();
        // Head row t used token t + 1; feature t depends on tokens 0..=t.
        let committed = self.cache.n_committed();
        let rows_ok = committed.min(common.saturating_sub(1));
        if rows_ok < committed {
            self.truncate(rows_ok);
        } else {
            self.truncate(common.min(self.covered()).max(committed));
        }
        self.tokens.clear();
        self.tokens.extend_from_slice(prompt);
        self.prefilling = true;
        self.covered()
    }

    fn observe_features(&mut self, ws: &Workspace, rows: &[usize], pos: usize) -> Result<()> {
        let covered = self.covered();
        if pos > covered {
            return Err(Error::InvalidRequest(format!(
                "EAGLE drafter: features for position {pos}, but positions from {covered} are missing"
            )));
        }
        self.truncate(pos);
        let c = self.head.config();
        let (h, fdim) = (c.hidden_size, c.feature_dim());
        if pos + rows.len() > self.cache.context_capacity() {
            return Err(Error::InvalidRequest(format!(
                "EAGLE drafter: position {} beyond its context of {}",
                pos + rows.len(),
                self.cache.context_capacity()
            )));
        }
        let need = (self.n_pending + rows.len()) * fdim;
        if self.pending.len() < need {
            self.pending.resize(need, 0.0);
        }
        for &r in rows {
            let dst = &mut self.pending[self.n_pending * fdim..(self.n_pending + 1) * fdim];
            match c.kind {
                EagleKind::Eagle3 => {
                    for (i, part) in dst.chunks_exact_mut(h).enumerate() {
                        part.copy_from_slice(&ws.tap(i)[r * h..(r + 1) * h]);
                    }
                }
                EagleKind::Eagle1 => ops::rms_norm(
                    &ws.tap(0)[r * h..(r + 1) * h],
                    self.model.output_norm(),
                    self.model.config().rms_norm_eps,
                    dst,
                ),
            }
            self.n_pending += 1;
        }
        // After a verification, catch up lazily, in whole batches: on steps where the
        // controller declines to draft, the head's forward over one row would cost ~5% of a
        // target step, while the rows left pending are caught up together (cheaper per row)
        // at the next `propose`. A prefill's rows are caught up at once.
        if self.prefilling || self.n_pending >= HEAD_ROWS {
            self.commit_pending(false, 0, false)?;
        }
        Ok(())
    }

    fn catch_up(&mut self, context: &[u32]) -> Result<()> {
        self.prefilling = false;
        self.set_context(context);
        self.commit_pending(false, 0, true)
    }
}
