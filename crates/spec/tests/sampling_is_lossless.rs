//! Speculative sampling emits tokens distributed exactly as plain sampling (DESIGN.md §6), for
//! each rule: chain with sampled drafts (Leviathan/Chen), trees with i.i.d. sampled drafts
//! (multi-round), trees with deterministic top-k drafts (point mass). A deliberately broken
//! rule (resampling from the target instead of the residual) must fail the same test.
//!
//! Synthetic target and draft distributions over a small vocabulary depend on the prefix. Each
//! test draws `n` speculative samples of the first two emitted tokens (steps repeat until two
//! are out), and compares the empirical joint distribution with the exact one
//! `p(x1) p(x2 | x1)` over K = V² categories.
//!
//! Bound: by the Bretagnolle–Huber–Carol inequality, `P(‖p̂ − p‖₁ ≥ ε) ≤ 2^K exp(−n ε² / 2)`, so
//! with probability at least `1 − δ` the total variation `‖p̂ − p‖₁ / 2` stays below
//! `sqrt(2 (K ln 2 + ln(1/δ)) / n) / 2`. We take δ = 1e-6: a correct rule fails by chance less
//! than once in a million runs (seeds are fixed anyway), and a broken rule whose bias exceeds
//! twice the bound fails for certain.

use peregrine_spec::{walk_sampled, TokenTree, WalkBuffers};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const V: usize = 8;
const N: usize = 400_000;

/// A softmax over `V` logits derived from a hash of the prefix (and a salt), at temperature `t`.
fn dist(prefix: &[u32], salt: u64, t: f64) -> Vec<f32> {
    let mut h: u64 = 0xcbf29ce484222325 ^ salt;
    for &x in prefix.iter().rev().take(2) {
        h = (h ^ x as u64).wrapping_mul(0x100000001b3);
    }
    let logits: Vec<f64> = (0..V)
        .map(|i| {
            let z =
                (h ^ (i as u64).wrapping_mul(0x9E3779B97F4A7C15)).wrapping_mul(0xff51afd7ed558ccd);
            ((z >> 11) as f64 / (1u64 << 53) as f64) * 4.0 / t
        })
        .collect();
    let max = logits.iter().cloned().fold(f64::MIN, f64::max);
    let z: f64 = logits.iter().map(|l| (l - max).exp()).sum();
    logits
        .iter()
        .map(|l| ((l - max).exp() / z) as f32)
        .collect()
}

fn target(prefix: &[u32]) -> Vec<f32> {
    dist(prefix, 1, 1.0)
}

/// The draft: a different distribution, correlated with the target (mixes in its logits).
fn draft(prefix: &[u32]) -> Vec<f32> {
    let p = target(prefix);
    let r = dist(prefix, 2, 0.7);
    p.iter().zip(&r).map(|(a, b)| 0.4 * a + 0.6 * b).collect()
}

fn draw<R: Rng>(q: &[f32], rng: &mut R) -> u32 {
    peregrine_spec::sample_from(q, rng).expect("a distribution")
}

#[derive(Clone, Copy, PartialEq)]
enum Drafts {
    /// One sampled child per node, `depth` levels.
    Chain,
    /// `k` i.i.d. sampled children per node.
    Sampled(usize),
    /// The draft's `k` most likely tokens per node.
    TopK(usize),
}

/// Builds a depth-2 tree under the root `ctx.last()`.
fn build_tree<R: Rng>(ctx: &[u32], drafts: Drafts, rng: &mut R) -> TokenTree {
    let mut tree = TokenTree::new();
    tree.reset(*ctx.last().unwrap());
    let mut frontier = vec![(0usize, ctx.to_vec())];
    for _depth in 0..2 {
        let mut next = Vec::new();
        for (node, prefix) in frontier {
            let q = draft(&prefix);
            let tokens: Vec<u32> = match drafts {
                Drafts::Chain => vec![draw(&q, rng)],
                Drafts::Sampled(k) => (0..k).map(|_| draw(&q, rng)).collect(),
                Drafts::TopK(k) => {
                    let mut ids: Vec<u32> = (0..V as u32).collect();
                    ids.sort_by(|&a, &b| q[b as usize].total_cmp(&q[a as usize]));
                    ids.truncate(k);
                    ids
                }
            };
            if !matches!(drafts, Drafts::TopK(_)) {
                tree.set_child_q(node, q.clone());
            }
            for t in tokens {
                let c = tree.push(node, t, 1.0).unwrap();
                let mut p = prefix.clone();
                p.push(t);
                next.push((c, p));
            }
        }
        frontier = next;
    }
    tree
}

/// The first two tokens of a speculative run (steps repeat until two are out).
/// `broken`: resample from the target instead of the residual after rejection.
fn first_two<R: Rng>(
    drafts: Drafts,
    broken: bool,
    rng: &mut R,
    bufs: &mut WalkBuffers,
    path: &mut Vec<usize>,
) -> (u32, u32) {
    let mut ctx = vec![3u32];
    let start = ctx.len();
    while ctx.len() < start + 2 {
        let tree = build_tree(&ctx, drafts, rng);
        let base = ctx.clone();
        let bonus = walk_sampled(
            &tree,
            |node, out| {
                let mut prefix = base.clone();
                let mut chain = vec![];
                let mut n = node;
                while n != 0 {
                    chain.push(tree.tokens()[n]);
                    n = tree.parents()[n];
                }
                prefix.extend(chain.iter().rev());
                *out = target(&prefix);
            },
            bufs,
            path,
            rng,
        );
        let bonus = if broken {
            // The broken rule: after a rejection, sample from p itself (ignores the residual).
            let mut prefix = base.clone();
            prefix.extend(path[1..].iter().map(|&n| tree.tokens()[n]));
            let has_children = tree.children(*path.last().unwrap()).next().is_some();
            if has_children {
                draw(&target(&prefix), rng)
            } else {
                bonus
            }
        } else {
            bonus
        };
        ctx.extend(path[1..].iter().map(|&n| tree.tokens()[n]));
        ctx.push(bonus);
    }
    (ctx[start], ctx[start + 1])
}

/// Total variation between the empirical joint of the first two tokens and the exact one.
fn tv_first_two(drafts: Drafts, broken: bool, seed: u64) -> f64 {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut counts = vec![0u64; V * V];
    let mut bufs = WalkBuffers::default();
    let mut path = Vec::new();
    for _ in 0..N {
        let (a, b) = first_two(drafts, broken, &mut rng, &mut bufs, &mut path);
        counts[a as usize * V + b as usize] += 1;
    }
    let p1 = target(&[3]);
    let mut tv = 0.0;
    for a in 0..V {
        let p2 = target(&[3, a as u32]);
        for b in 0..V {
            let exact = p1[a] as f64 * p2[b] as f64;
            tv += (counts[a * V + b] as f64 / N as f64 - exact).abs();
        }
    }
    tv / 2.0
}

fn tv_bound() -> f64 {
    let k = (V * V) as f64;
    let delta: f64 = 1e-6;
    (2.0 * (k * 2f64.ln() + (1.0 / delta).ln()) / N as f64).sqrt() / 2.0
}

#[test]
fn chain_rule_is_lossless() {
    let tv = tv_first_two(Drafts::Chain, false, 1);
    eprintln!("TV {tv:.4}, bound {:.4}", tv_bound());
    assert!(
        tv < tv_bound(),
        "chain: TV {tv:.4} exceeds {:.4} (n = {N}, K = {})",
        tv_bound(),
        V * V
    );
}

#[test]
fn multi_round_rule_is_lossless_for_sampled_trees() {
    let tv = tv_first_two(Drafts::Sampled(3), false, 2);
    eprintln!("TV {tv:.4}, bound {:.4}", tv_bound());
    assert!(
        tv < tv_bound(),
        "multi-round: TV {tv:.4} exceeds {:.4}",
        tv_bound()
    );
}

#[test]
fn point_mass_rule_is_lossless_for_top_k_trees() {
    let tv = tv_first_two(Drafts::TopK(3), false, 3);
    eprintln!("TV {tv:.4}, bound {:.4}", tv_bound());
    assert!(
        tv < tv_bound(),
        "point mass: TV {tv:.4} exceeds {:.4}",
        tv_bound()
    );
}

#[test]
fn a_broken_rule_fails_the_test() {
    for (drafts, seed) in [
        (Drafts::Chain, 4),
        (Drafts::Sampled(3), 5),
        (Drafts::TopK(3), 6),
    ] {
        let tv = tv_first_two(drafts, true, seed);
        eprintln!("broken: TV {tv:.4}, bound {:.4}", tv_bound());
        assert!(
            tv > 2.0 * tv_bound(),
            "the broken rule went unnoticed: TV {tv:.4}, bound {:.4}",
            tv_bound()
        );
    }
}
