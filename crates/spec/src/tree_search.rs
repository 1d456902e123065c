//! Token trees for any drafter that scores tokens.
//!
//! [`BestFirst`] is EAGLE-2's dynamic tree: grow candidates level by level from the root,
//! expanding the frontier nodes of highest cumulative log-probability, then keep the best
//! `budget` candidates. A child never scores above its parent, so those form a subtree, and a
//! frontier node that is not above the budget-th best candidate cannot place a child in it (the
//! search stops there). The drafter supplies each expanded node's children.
//!
//! [`LevelDrafter`] drafts static shapes and dynamic trees for drafters that score a whole
//! level of nodes in one forward ([`LevelForward`]: the draft model, LayerSkip's early exit).

use crate::tree::{TokenTree, TreeShape, MAX_TREE_NODES};
use crate::Result;
use peregrine_model::{ForwardOptions, KvCache, LogitRows, Model, SeqInput, Workspace};
use std::ops::Range;

/// "No candidate": the parent of the root's children, or a missing entry.
pub(crate) const NONE: usize = usize::MAX;

/// One drafted token under consideration.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Cand {
    /// Parent candidate, or [`NONE`] for a child of the root.
    pub parent: usize,
    pub token: u32,
    /// Cumulative log-probability from the root.
    pub logp: f32,
}

/// Candidates of one search and the buffers the search reuses.
#[derive(Debug, Default)]
pub(crate) struct BestFirst {
    pub cands: Vec<Cand>,
    frontier: Vec<usize>,
    order: Vec<usize>,
    tree_idx: Vec<usize>,
    logps: Vec<f32>,
}

impl BestFirst {
    /// Starts a search whose first level is `root_children` (token, log-probability).
    pub fn start(&mut self, root_children: &[(u32, f32)]) {
        self.cands.clear();
        self.cands
            .extend(root_children.iter().map(|&(token, logp)| Cand {
                parent: NONE,
                token,
                logp,
            }));
        self.frontier.clear();
        self.frontier.extend(0..self.cands.len());
    }

    /// The candidates to expand next, best first: at most `expand` of the newest level, only
    /// those that can still place a child among the best `budget`. Empty: the search is over.
    pub fn frontier(&mut self, budget: usize, expand: usize) -> &[usize] {
        let cands = &self.cands;
        self.frontier
            .sort_by(|&a, &b| cands[b].logp.total_cmp(&cands[a].logp).then(a.cmp(&b)));
        self.frontier.truncate(expand);
        self.frontier.retain(|&i| cands[i].logp.is_finite());
        if budget > 0 && cands.len() >= budget {
            self.logps.clear();
            self.logps.extend(cands.iter().map(|c| c.logp));
            let (_, &mut kth, _) = self
                .logps
                .select_nth_unstable_by(budget - 1, |a, b| b.total_cmp(a));
            self.frontier.retain(|&i| cands[i].logp > kth);
        }
        &self.frontier
    }

    /// Adds the children of candidate `parent`: (token, log-probability given the parent).
    pub fn add_children(&mut self, parent: usize, children: &[(u32, f32)]) {
        let base = self.cands[parent].logp;
        self.cands
            .extend(children.iter().map(|&(token, logp)| Cand {
                parent,
                token,
                logp: base + logp,
            }));
    }

    /// Ends a level: the candidates from `first_new` on are the next frontier.
    pub fn next_level(&mut self, first_new: usize) {
        self.frontier.clear();
        self.frontier.extend(first_new..self.cands.len());
    }

    /// Pushes the best `budget` candidates into `tree` under its root, best first (a parent
    /// precedes its children: it scores at least as much and was created earlier), each
    /// scored by its path probability.
    pub fn emit(&mut self, budget: usize, tree: &mut TokenTree) -> Result<()> {
        let cands = &self.cands;
        self.order.clear();
        self.order.extend(0..cands.len());
        self.order
            .sort_by(|&a, &b| cands[b].logp.total_cmp(&cands[a].logp).then(a.cmp(&b)));
        self.order.truncate(budget);
        self.tree_idx.clear();
        self.tree_idx.resize(cands.len(), NONE);
        for &i in &self.order {
            let c = cands[i];
            let parent = if c.parent == NONE {
                0
            } else {
                self.tree_idx[c.parent]
            };
            if parent == NONE || !c.logp.is_finite() {
                continue;
            }
            self.tree_idx[i] = tree.push(parent, c.token, c.logp.exp())?;
        }
        Ok(())
    }
}

/// A drafter that scores a level of drafted nodes in one forward.
pub(crate) trait LevelForward {
    /// Runs the draft over `fed`, drafted nodes given as (token, parent index in `fed` or
    /// [`NONE`] for a child of the root), parents first, each seeing the context (root
    /// included) and its own ancestors; afterwards [`LevelForward::logits`]`(i)` is row
    /// `want[i]`'s. `false`: they do not fit (nothing was run).
    fn forward_level(&mut self, fed: &[(u32, usize)], want: &[usize]) -> Result<bool>;

    /// Logits of the `i`-th wanted row of the last forward (row 0: the root's, before any).
    fn logits(&self, i: usize) -> &[f32];
}

/// Every drafted node of `tree` (root excluded, tree order) as fed nodes.
pub(crate) fn fed_from_tree(tree: &TokenTree, fed: &mut Vec<(u32, usize)>) {
    fed.clear();
    for t in 1..tree.len() {
        let p = tree.parents()[t];
        fed.push((tree.tokens()[t], if p == 0 { NONE } else { p - 1 }));
    }
}

/// Tree masks (bit `j` of `masks[i]`: node `i` sees fed node `j`) and depths below the root
/// (0 for a child of the root) of `fed` nodes as [`LevelForward::forward_level`] takes them.
pub(crate) fn fed_masks(fed: &[(u32, usize)], masks: &mut Vec<u64>, depths: &mut Vec<u32>) {
    masks.clear();
    depths.clear();
    for (i, &(_, parent)) in fed.iter().enumerate() {
        let (mask, depth) = match parent {
            NONE => (0, 0),
            p => (masks[p], depths[p] + 1),
        };
        masks.push(mask | 1 << i);
        depths.push(depth);
    }
}

/// A model's forward over drafted nodes after the rows in its cache: the draft model (all its
/// layers) or the target's early exit (layers `0..E`).
pub(crate) struct FedForward<'a> {
    pub model: &'a Model,
    pub layers: Range<usize>,
    pub cache: &'a mut KvCache,
    pub ws: &'a mut Workspace,
    pub masks: &'a mut Vec<u64>,
    pub depths: &'a mut Vec<u32>,
    pub positions: &'a mut Vec<u32>,
}

impl FedForward<'_> {
    /// Runs `self.layers` over `fed` (see [`LevelForward::forward_level`]); with `want`, the
    /// head's logits of those rows and the nodes' cache rows rolled back, without it no head
    /// and the rows kept. `false`: they do not fit (nothing was run).
    pub fn run(&mut self, fed: &[(u32, usize)], want: Option<&[usize]>) -> Result<bool> {
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
            layers: self.layers.clone(),
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

impl LevelForward for FedForward<'_> {
    fn forward_level(&mut self, fed: &[(u32, usize)], want: &[usize]) -> Result<bool> {
        self.run(fed, Some(want))
    }

    fn logits(&self, i: usize) -> &[f32] {
        self.ws.logits(i)
    }
}

/// Drafts token trees level by level through a [`LevelForward`]: static shapes, and EAGLE-2
/// dynamic trees with [`BestFirst`]. Holds the buffers.
#[derive(Debug, Default)]
pub(crate) struct LevelDrafter {
    fed: Vec<(u32, usize)>,
    want: Vec<usize>,
    search: BestFirst,
    top: Vec<(u32, f32)>,
    keep: Vec<bool>,
    fed_idx: Vec<usize>,
    frontier: Vec<usize>,
}

impl LevelDrafter {
    /// Fills `shape` under `tree`'s root: each node is the `rank`-th most likely token after
    /// its parent; a node whose path probability falls below `min_score` is left out with its
    /// subtree. The root's logits must be `f.logits(0)`.
    pub fn draft_shape(
        &mut self,
        f: &mut impl LevelForward,
        shape: &TreeShape,
        min_score: f32,
        tree: &mut TokenTree,
    ) -> Result<()> {
        let (parents, ranks) = (shape.parents(), shape.ranks());
        let len = shape.len().min(MAX_TREE_NODES);
        // Children wanted per shape node (the highest rank + 1), and each node's tree index.
        let mut need = [0usize; MAX_TREE_NODES];
        let mut placed = [NONE; MAX_TREE_NODES];
        for i in 1..len {
            need[parents[i]] = need[parents[i]].max(ranks[i] + 1);
        }
        placed[0] = 0;
        self.frontier.clear();
        self.frontier.push(0);
        loop {
            let mut next = [0usize; MAX_TREE_NODES];
            let mut n_next = 0;
            for (row, &node) in self.frontier.iter().enumerate() {
                top_logprobs(f.logits(row), need[node], |t| t as u32, &mut self.top);
                let base = tree.scores()[placed[node]];
                for child in (node + 1)..len {
                    if parents[child] != node {
                        continue;
                    }
                    let Some(&(token, lp)) = self.top.get(ranks[child]) else {
                        continue;
                    };
                    let score = base * lp.exp();
                    if score < min_score {
                        continue;
                    }
                    placed[child] = tree.push(placed[node], token, score)?;
                    if need[child] > 0 {
                        next[n_next] = child;
                        n_next += 1;
                    }
                }
            }
            if n_next == 0 {
                return Ok(());
            }
            // Every placed node (tree order is topological) is fed; the next level is read.
            fed_from_tree(tree, &mut self.fed);
            self.want.clear();
            self.want
                .extend(next[..n_next].iter().map(|&node| placed[node] - 1));
            if !f.forward_level(&self.fed, &self.want)? {
                return Ok(());
            }
            self.frontier.clear();
            self.frontier.extend_from_slice(&next[..n_next]);
        }
    }

    /// Grows an EAGLE-2 dynamic tree of at most `budget` nodes and `depth` levels, `top_k`
    /// children per expanded node, under `tree`'s root (whose logits must be `f.logits(0)`).
    pub fn draft_dynamic(
        &mut self,
        f: &mut impl LevelForward,
        budget: usize,
        depth: usize,
        top_k: usize,
        tree: &mut TokenTree,
    ) -> Result<()> {
        let budget = budget.min(MAX_TREE_NODES - 1);
        let k = top_k.min(budget).max(1);
        top_logprobs(f.logits(0), k, |t| t as u32, &mut self.top);
        self.search.start(&self.top);
        for _ in 1..depth.min(MAX_TREE_NODES - 1) {
            self.frontier.clear();
            self.frontier
                .extend_from_slice(self.search.frontier(budget, k));
            if self.frontier.is_empty() {
                break;
            }
            // Feed the frontier and its ancestors, in candidate order (parents first).
            let cands = &self.search.cands;
            self.keep.clear();
            self.keep.resize(cands.len(), false);
            for &node in &self.frontier {
                let mut c = node;
                while c != NONE && !self.keep[c] {
                    self.keep[c] = true;
                    c = cands[c].parent;
                }
            }
            self.fed_idx.clear();
            self.fed_idx.resize(cands.len(), NONE);
            self.fed.clear();
            for (i, c) in cands.iter().enumerate() {
                if !self.keep[i] {
                    continue;
                }
                self.fed_idx[i] = self.fed.len();
                let parent = if c.parent == NONE {
                    NONE
                } else {
                    self.fed_idx[c.parent]
                };
                self.fed.push((c.token, parent));
            }
            self.want.clear();
            self.want
                .extend(self.frontier.iter().map(|&node| self.fed_idx[node]));
            if !f.forward_level(&self.fed, &self.want)? {
                break;
            }
            let n_old = self.search.cands.len();
            for (row, &node) in self.frontier.iter().enumerate() {
                top_logprobs(f.logits(row), k, |t| t as u32, &mut self.top);
                self.search.add_children(node, &self.top);
            }
            self.search.next_level(n_old);
        }
        self.search.emit(budget, tree)
    }
}

/// The `k` most likely entries of `logits` with their log-probabilities, most likely first,
/// as (`token_of(index)`, log-probability); ties go to the lower index. Nothing when the
/// logits have no finite maximum.
pub(crate) fn top_logprobs(
    logits: &[f32],
    k: usize,
    token_of: impl Fn(usize) -> u32,
    out: &mut Vec<(u32, f32)>,
) {
    use crate::eagle::forward::exp_nonpositive;
    out.clear();
    if k == 0 {
        return;
    }
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if !max.is_finite() {
        return;
    }
    let mut acc = [0f32; 16];
    let chunks = logits.chunks_exact(16);
    let rest = chunks.remainder();
    for c in chunks {
        for l in 0..16 {
            acc[l] += exp_nonpositive(c[l] - max);
        }
    }
    for (l, &x) in rest.iter().enumerate() {
        acc[l] += exp_nonpositive(x - max);
    }
    let lse = max + acc.iter().sum::<f32>().ln();
    // Insertion into a sorted list of (index, logit).
    let mut best: [(usize, f32); MAX_TREE_NODES] = [(0, f32::NEG_INFINITY); MAX_TREE_NODES];
    let k = k.min(MAX_TREE_NODES).min(logits.len());
    let mut n = 0;
    for (i, &l) in logits.iter().enumerate() {
        if n == k && l <= best[k - 1].1 || l.is_nan() {
            continue;
        }
        let mut j = n.min(k - 1);
        if n < k {
            n += 1;
        }
        while j > 0 && best[j - 1].1 < l {
            best[j] = best[j - 1];
            j -= 1;
        }
        best[j] = (i, l);
    }
    out.extend(
        best[..n]
            .iter()
            .map(|&(i, l)| (token_of(i), (l - lse).min(0.0))),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_logprobs_sorts_and_normalises() {
        let logits = [0.0f32, 2.0, 1.0, 2.0, -1.0];
        let mut out = Vec::new();
        top_logprobs(&logits, 3, |i| 10 + i as u32, &mut out);
        let z: f32 = logits.iter().map(|l| l.exp()).sum();
        let want = [(11, 2.0 - z.ln()), (13, 2.0 - z.ln()), (12, 1.0 - z.ln())];
        assert_eq!(out.len(), 3);
        for ((t, lp), (wt, wlp)) in out.iter().zip(want) {
            assert_eq!(*t, wt);
            assert!((lp - wlp).abs() < 1e-5, "{lp} vs {wlp}");
        }
    }

    /// The search keeps the best `budget` paths: with children that halve the probability at
    /// each level, the best four of a binary tree are the root's children and the best child
    /// of the best one... and pruning stops expanding hopeless frontier nodes.
    #[test]
    fn keeps_the_best_budget_as_a_subtree() {
        let mut s = BestFirst::default();
        let ln = |p: f32| p.ln();
        s.start(&[(1, ln(0.6)), (2, ln(0.3))]);
        assert_eq!(s.frontier(4, 8), &[0, 1]);
        s.add_children(0, &[(3, ln(0.9)), (4, ln(0.05))]);
        s.add_children(1, &[(5, ln(0.5)), (6, ln(0.5))]);
        s.next_level(2);
        // Candidates: 1:.6 2:.3 3:.54 4:.03 5:.15 6:.15; the 4th best is .15, so only node 3
        // (.54) can still place a child.
        assert_eq!(s.frontier(4, 8), &[2]);
        let mut tree = TokenTree::new();
        tree.reset(0);
        s.emit(4, &mut tree).unwrap();
        assert_eq!(tree.tokens(), &[0, 1, 3, 2, 5]);
        assert_eq!(tree.parents()[1..], [0, 1, 0, 3]);
    }
}
