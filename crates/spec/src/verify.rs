//! Verification: which drafted tokens the target accepts, exactly.
//!
//! Greedy: walk down from the root while some child's token is the target's argmax at its
//! parent; the argmax after the last accepted node is the bonus token.
//!
//! Sampling is lossless (the emitted tokens are distributed exactly as plain sampling's):
//! at a node with target distribution `p` (already shaped by penalties, top-k, top-p, min-p and
//! temperature) the children are tried in order;
//! - children sampled i.i.d. from a draft distribution `q` (chain: one child): accept child `x`
//!   with probability `min(1, p(x)/q(x))`, else replace `p` by `norm(max(0, p − q))` and try
//!   the next (the multi-round rule of SpecInfer; with one child, Leviathan et al. / Chen et al.);
//! - deterministic drafts (distinct top-k tokens, `q` a point mass): accept `x` with
//!   probability `p(x)`, else set `p(x) = 0` and renormalise (the same rule with `q = δ_x`).
//!
//! When every child is rejected, the bonus token is sampled from what is left of `p`.

use rand::Rng;

/// The outcome of verifying one node's children.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The `i`-th child (in the order given) is accepted.
    Accept(usize),
    /// Every child is rejected; this token, drawn from the residual, is emitted instead.
    Reject(u32),
}

/// Draws a token from `p` (non-negative, not necessarily normalised); `None` if it sums to 0.
pub fn sample_from<R: Rng + ?Sized>(p: &[f32], rng: &mut R) -> Option<u32> {
    let total: f64 = p.iter().map(|&x| x as f64).sum();
    if total <= 0.0 || total.is_nan() {
        return None;
    }
    let mut u = rng.random::<f64>() * total;
    let mut last = None;
    for (i, &x) in p.iter().enumerate() {
        if x > 0.0 {
            u -= x as f64;
            last = Some(i as u32);
            if u <= 0.0 {
                return last;
            }
        }
    }
    last
}

/// Verifies the children `tokens` of one node against the target distribution `p` (normalised;
/// overwritten with the residual), with draft distribution `q` for children sampled i.i.d.
/// from it, or `None` for deterministic drafts. See the module docs for the rules.
pub fn verify_children<R: Rng + ?Sized>(
    p: &mut [f32],
    tokens: &[u32],
    q: Option<&[f32]>,
    rng: &mut R,
) -> Verdict {
    for (i, &x) in tokens.iter().enumerate() {
        let x = x as usize;
        let px = p[x] as f64;
        let accept_prob = match q {
            Some(q) => {
                let qx = q[x] as f64;
                if qx <= 0.0 {
                    // Cannot have been sampled from q; treat as a certain rejection.
                    0.0
                } else {
                    (px / qx).min(1.0)
                }
            }
            None => px.min(1.0),
        };
        if rng.random::<f64>() < accept_prob {
            return Verdict::Accept(i);
        }
        // Residual: norm(max(0, p - q)).
        match q {
            Some(q) => {
                let mut total = 0.0f64;
                for (pv, &qv) in p.iter_mut().zip(q) {
                    *pv = (*pv - qv).max(0.0);
                    total += *pv as f64;
                }
                normalise(p, total);
            }
            None => {
                p[x] = 0.0;
                let total: f64 = p.iter().map(|&v| v as f64).sum();
                normalise(p, total);
            }
        }
    }
    Verdict::Reject(sample_from(p, rng).unwrap_or(0))
}

/// Buffers for [`walk_sampled`], reused across steps.
#[derive(Debug, Default)]
pub struct WalkBuffers {
    /// Target distribution at the current node (then its residual).
    pub probs: Vec<f32>,
    children: Vec<u32>,
    child_nodes: Vec<usize>,
}

/// Sampling verification of a whole tree: from the root, verify each node's children with
/// [`verify_children`] until one is rejected or a leaf is reached. `target(node, out)` writes
/// the target distribution at `node` (called once per node on the path, root first, in path
/// order). Fills `path` (node indices, root first) and returns the bonus token.
pub fn walk_sampled<R: Rng + ?Sized>(
    tree: &crate::tree::TokenTree,
    mut target: impl FnMut(usize, &mut Vec<f32>),
    bufs: &mut WalkBuffers,
    path: &mut Vec<usize>,
    rng: &mut R,
) -> u32 {
    path.clear();
    path.push(0);
    let mut node = 0;
    loop {
        target(node, &mut bufs.probs);
        bufs.child_nodes.clear();
        bufs.child_nodes.extend(tree.children(node));
        bufs.children.clear();
        bufs.children
            .extend(bufs.child_nodes.iter().map(|&c| tree.tokens()[c]));
        match verify_children(&mut bufs.probs, &bufs.children, tree.child_q(node), rng) {
            Verdict::Accept(i) => {
                node = bufs.child_nodes[i];
                path.push(node);
            }
            Verdict::Reject(t) => return t,
        }
    }
}

fn normalise(p: &mut [f32], total: f64) {
    if total > 0.0 {
        let inv = (1.0 / total) as f32;
        p.iter_mut().for_each(|v| *v *= inv);
    }
}

/// Shapes logits into the target distribution plain sampling draws from, in the order of
/// `peregrine_model::Sampler`: penalties → top-k → top-p → min-p → temperature. Buffers are
/// kept between calls.
#[derive(Debug)]
pub struct TargetShaper {
    params: peregrine_model::SamplingParams,
    logits: Vec<f32>,
    candidates: Vec<(f32, u32)>,
    recent: Vec<(u32, u32)>,
}

impl TargetShaper {
    /// A shaper for these sampling parameters (`temperature > 0`).
    pub fn new(params: peregrine_model::SamplingParams, vocab_size: usize) -> Self {
        Self {
            params,
            logits: Vec::with_capacity(vocab_size),
            candidates: Vec::with_capacity(vocab_size),
            recent: Vec::new(),
        }
    }

    /// Writes into `out` (resized to the vocabulary) the probability of each token given
    /// `logits` and the tokens so far (`history`, for penalties).
    pub fn probs(&mut self, logits: &[f32], history: &[u32], out: &mut Vec<f32>) {
        let p = &self.params;
        self.logits.clear();
        self.logits.extend_from_slice(logits);
        if p.repetition_penalty != 1.0 || p.frequency_penalty != 0.0 || p.presence_penalty != 0.0 {
            let start = history.len().saturating_sub(p.penalty_last_n);
            self.recent.clear();
            for &t in &history[start..] {
                match self.recent.iter_mut().find(|(id, _)| *id == t) {
                    Some((_, n)) => *n += 1,
                    None => self.recent.push((t, 1)),
                }
            }
            for &(t, count) in &self.recent {
                let Some(l) = self.logits.get_mut(t as usize) else {
                    continue;
                };
                *l = if *l > 0.0 {
                    *l / p.repetition_penalty
                } else {
                    *l * p.repetition_penalty
                };
                *l -= count as f32 * p.frequency_penalty + p.presence_penalty;
            }
        }
        out.clear();
        out.resize(logits.len(), 0.0);
        self.candidates.clear();
        self.candidates.extend(
            self.logits
                .iter()
                .enumerate()
                .filter(|(_, l)| !l.is_nan())
                .map(|(i, &l)| (l, i as u32)),
        );
        if self.candidates.is_empty() {
            return;
        }
        let by_logit_desc =
            |a: &(f32, u32), b: &(f32, u32)| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1));
        if p.top_k > 0 && p.top_k < self.candidates.len() {
            self.candidates
                .select_nth_unstable_by(p.top_k - 1, by_logit_desc);
            self.candidates.truncate(p.top_k);
        }
        if p.top_p < 1.0 || p.min_p > 0.0 {
            self.candidates.sort_unstable_by(by_logit_desc);
            let max = self.candidates[0].0;
            let total: f64 = self
                .candidates
                .iter()
                .map(|&(l, _)| ((l - max) as f64).exp())
                .sum();
            let mut keep = self.candidates.len();
            if p.top_p < 1.0 {
                let mut cum = 0.0;
                for (i, &(l, _)) in self.candidates.iter().enumerate() {
                    cum += ((l - max) as f64).exp() / total;
                    if cum >= p.top_p as f64 {
                        keep = i + 1;
                        break;
                    }
                }
            }
            if p.min_p > 0.0 {
                let floor = (p.min_p as f64).ln();
                let n_min = self
                    .candidates
                    .iter()
                    .take_while(|&&(l, _)| ((l - max) as f64) >= floor)
                    .count()
                    .max(1);
                keep = keep.min(n_min);
            }
            self.candidates.truncate(keep);
        }
        let max = self
            .candidates
            .iter()
            .fold(f32::NEG_INFINITY, |m, &(l, _)| m.max(l));
        let inv_t = 1.0 / p.temperature as f64;
        let total: f64 = self
            .candidates
            .iter()
            .map(|&(l, _)| (((l - max) as f64) * inv_t).exp())
            .sum();
        for &(l, id) in &self.candidates {
            out[id as usize] = ((((l - max) as f64) * inv_t).exp() / total) as f32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn shaper_keeps_top_k_and_normalises() {
        let params = peregrine_model::SamplingParams {
            temperature: 1.0,
            top_k: 2,
            ..Default::default()
        };
        let mut s = TargetShaper::new(params, 4);
        let mut p = Vec::new();
        s.probs(&[0.0, 2.0, 1.0, -1.0], &[], &mut p);
        assert_eq!(p[0], 0.0);
        assert_eq!(p[3], 0.0);
        assert!((p[1] + p[2] - 1.0).abs() < 1e-6 && p[1] > p[2]);
    }

    #[test]
    fn point_mass_certain_accept_and_reject() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let mut p = vec![0.0, 1.0, 0.0];
        assert_eq!(
            verify_children(&mut p, &[1], None, &mut rng),
            Verdict::Accept(0)
        );
        let mut p = vec![0.0, 0.0, 1.0];
        assert_eq!(
            verify_children(&mut p, &[1, 0], None, &mut rng),
            Verdict::Reject(2)
        );
    }
}
