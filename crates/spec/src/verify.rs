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
pub struct TargetShaper {
    sampler: peregrine_model::Sampler,
}

impl TargetShaper {
    /// A shaper for these sampling parameters (`temperature > 0`).
    pub fn new(params: peregrine_model::SamplingParams, vocab_size: usize) -> Self {
        Self {
            sampler: peregrine_model::Sampler::new(params, vocab_size),
        }
    }

    /// Writes into `out` (resized to the vocabulary) the probability of each token given
    /// `logits` and the tokens so far (`history`, for penalties): plain sampling's distribution,
    /// computed by the same code (`Sampler::probs`).
    pub fn probs(&mut self, logits: &[f32], history: &[u32], out: &mut Vec<f32>) {
        self.sampler.probs(logits, history, out);
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
