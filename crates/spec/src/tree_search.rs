//! EAGLE-2's dynamic tree, for any drafter that scores tokens: grow candidates level by level
//! from the root, expanding the frontier nodes of highest cumulative log-probability, then keep
//! the best `budget` candidates. A child never scores above its parent, so those form a subtree,
//! and a frontier node that is not above the budget-th best candidate cannot place a child in
//! it (the search stops there). The drafter supplies each expanded node's children; this module
//! holds the bookkeeping.

use crate::tree::TokenTree;
use crate::Result;

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
    use crate::tree::MAX_TREE_NODES;
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
