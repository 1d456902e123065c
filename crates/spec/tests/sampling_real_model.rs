//! Lossless sampling on the real model's distributions: the first three tokens after a fixed
//! prompt, with the target shaped by temperature 0.8, top-k 4 and top-p 0.95 (`TargetShaper`,
//! the shaping plain sampling uses), and a draft distribution from the same logits at
//! temperature 1.3 with top-k 6 (so drafts include tokens the target never emits).
//!
//! The target distributions of every prefix the test can reach (the prompt, its top-k
//! continuations, theirs) are computed once with the model; the sampling runs then use them
//! through `walk_sampled`, mapped onto the small set of tokens that occur. Bound as in
//! `sampling_is_lossless.rs` (Bretagnolle–Huber–Carol, δ = 1e-6, K = the reachable triples).
//!
//! EAGLE drafts: the trees an `EagleDrafter` (random EAGLE-3 head whose draft vocabulary holds
//! the reachable tokens and others) drafts for every reachable context, computed once by the
//! drafter on the real model, verified by the engine's rule for them (point mass).

mod common;

use common::{model, specbench_prompts};
use peregrine_model::{ForwardOptions, LogitRows, SamplingParams, SeqInput};
use peregrine_spec::{walk_sampled, DraftPlan, EagleHead, TargetShaper, TokenTree, WalkBuffers};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::HashMap;

const N: usize = 200_000;

/// Target and draft distributions (over `tokens`) for every reachable prefix of up to 2 tokens.
struct Dists {
    tokens: Vec<u32>,
    p: HashMap<Vec<u32>, Vec<f32>>,
    q: HashMap<Vec<u32>, Vec<f32>>,
    /// EAGLE trees (parent, token, depth per node after the root) for prefixes of 0 and 1
    /// tokens.
    eagle: HashMap<Vec<u32>, Vec<(usize, u32, usize)>>,
}

fn dists() -> &'static Dists {
    static D: std::sync::OnceLock<Dists> = std::sync::OnceLock::new();
    D.get_or_init(compute_dists)
}

fn compute_dists() -> Dists {
    let m = model();
    let prompt = &specbench_prompts("mt_bench", 1)[0];
    let vocab = m.config().vocab_size;
    let target = SamplingParams {
        temperature: 0.8,
        top_k: 4,
        top_p: 0.95,
        ..SamplingParams::default()
    };
    let draft = SamplingParams {
        temperature: 1.3,
        top_k: 6,
        ..SamplingParams::default()
    };
    let mut shape_p = TargetShaper::new(target, vocab);
    let mut shape_q = TargetShaper::new(draft, vocab);
    let mut cache = m.new_cache(prompt.len() + 8);
    let mut ws = m.new_workspace(prompt.len() + 3, 1, prompt.len() + 8);
    let opts = ForwardOptions {
        layers: 0..m.config().n_layers,
        head: true,
        taps: &[],
    };
    let mut full_p: HashMap<Vec<u32>, Vec<f32>> = HashMap::new();
    let mut full_q: HashMap<Vec<u32>, Vec<f32>> = HashMap::new();
    // Breadth first over prefixes in the target's support, one token forward each.
    let mut frontier: Vec<Vec<u32>> = vec![vec![]];
    for depth in 0..3 {
        let mut next = Vec::new();
        for prefix in frontier {
            cache.truncate(0);
            let seq: Vec<u32> = prompt.iter().chain(&prefix).copied().collect();
            let positions: Vec<u32> = (0..seq.len() as u32).collect();
            let mut seqs = [SeqInput {
                cache: &mut cache,
                tokens: &seq,
                positions: &positions,
                tree: None,
                logits: LogitRows::Last,
            }];
            m.forward(&mut ws, &mut seqs, &opts).expect("forward");
            let (mut p, mut q) = (Vec::new(), Vec::new());
            shape_p.probs(ws.logits(0), &seq, &mut p);
            shape_q.probs(ws.logits(0), &seq, &mut q);
            if depth < 2 {
                for (t, &pt) in p.iter().enumerate() {
                    if pt > 0.0 {
                        next.push(prefix.iter().copied().chain([t as u32]).collect());
                    }
                }
            }
            full_p.insert(prefix.clone(), p);
            full_q.insert(prefix, q);
        }
        frontier = next;
    }
    let mut tokens: Vec<u32> = full_p
        .values()
        .chain(full_q.values())
        .flat_map(|d| {
            d.iter()
                .enumerate()
                .filter(|(_, &x)| x > 0.0)
                .map(|(t, _)| t as u32)
        })
        .collect();
    tokens.sort_unstable();
    tokens.dedup();
    // EAGLE trees from a random head whose draft vocabulary holds the reachable tokens and a
    // few others: the first seed whose root children include a token the target can emit, so
    // that EAGLE drafts get accepted as well as rejected.
    let mut draft_vocab = tokens.clone();
    draft_vocab.extend((0..8u32).map(|i| 1000 + 613 * i));
    draft_vocab.sort_unstable();
    draft_vocab.dedup();
    let plan = DraftPlan::Dynamic {
        budget: 6,
        depth: 2,
        top_k: 3,
    };
    let path = std::env::temp_dir().join(format!(
        "peregrine-eagle-lossless-{}.safetensors",
        std::process::id()
    ));
    let mut full_eagle: HashMap<Vec<u32>, Vec<(usize, u32, usize)>> = HashMap::new();
    for seed in 21..61 {
        common::write_random_eagle3(&path, &draft_vocab, 3.0, seed);
        let head = EagleHead::load(&path, m.config(), Default::default()).expect("head loads");
        full_eagle.clear();
        for prefix in full_p.keys().filter(|k| k.len() <= 1) {
            let context: Vec<u32> = prompt.iter().chain(prefix).copied().collect();
            let tree = common::eagle_tree(&head, &context, &plan);
            assert!(tree.len() > 1, "the EAGLE drafter drafts");
            let nodes = (1..tree.len())
                .map(|i| (tree.parents()[i], tree.tokens()[i], tree.depths()[i]))
                .collect();
            full_eagle.insert(prefix.clone(), nodes);
        }
        let p0 = &full_p[&vec![]];
        if full_eagle[&vec![]]
            .iter()
            .any(|&(parent, t, _)| parent == 0 && p0[t as usize] > 0.0)
        {
            break;
        }
    }
    let _ = std::fs::remove_file(&path);
    tokens.extend(full_eagle.values().flatten().map(|&(_, t, _)| t));
    tokens.sort_unstable();
    tokens.dedup();
    let project = |d: &Vec<f32>| tokens.iter().map(|&t| d[t as usize]).collect::<Vec<f32>>();
    let small = |m: &HashMap<Vec<u32>, Vec<f32>>| {
        m.iter()
            .map(|(k, d)| {
                (
                    k.iter()
                        .map(|t| tokens.binary_search(t).unwrap() as u32)
                        .collect(),
                    project(d),
                )
            })
            .collect()
    };
    let to_small = |t: &u32| tokens.binary_search(t).unwrap() as u32;
    let eagle = full_eagle
        .iter()
        .map(|(k, nodes)| {
            (
                k.iter().map(to_small).collect(),
                nodes
                    .iter()
                    .map(|&(parent, t, depth)| (parent, to_small(&t), depth))
                    .collect(),
            )
        })
        .collect();
    Dists {
        p: small(&full_p),
        q: small(&full_q),
        eagle,
        tokens,
    }
}

#[derive(Clone, Copy)]
enum Drafts {
    Chain,
    Sampled(usize),
    TopK(usize),
    Eagle,
}

fn draw<R: Rng>(q: &[f32], rng: &mut R) -> u32 {
    peregrine_spec::sample_from(q, rng).expect("a distribution")
}

/// The first three tokens (small-vocabulary indices) of one speculative run.
fn first_three<R: Rng>(
    d: &Dists,
    drafts: Drafts,
    rng: &mut R,
    bufs: &mut WalkBuffers,
    path: &mut Vec<usize>,
) -> [u32; 3] {
    let v = d.tokens.len();
    let uniform = vec![1.0 / v as f32; v];
    let mut out: Vec<u32> = Vec::new();
    while out.len() < 3 {
        // Depth so that no node lies past the third token.
        let depth = 2 - out.len().min(2);
        let mut tree = TokenTree::new();
        tree.reset(0);
        if let Drafts::Eagle = drafts {
            // The drafter's tree for this context, cut to `depth` (a prefix by depth is a
            // subtree: parents are shallower).
            let mut index = vec![0usize];
            for &(parent, t, node_depth) in d.eagle.get(&out).map_or(&[][..], |n| n) {
                if node_depth <= depth {
                    index.push(tree.push(index[parent], t, 1.0).unwrap());
                } else {
                    index.push(usize::MAX);
                }
            }
        }
        let mut frontier = vec![(0usize, out.clone())];
        let depth = if let Drafts::Eagle = drafts { 0 } else { depth };
        for _ in 0..depth {
            let mut next = Vec::new();
            for (node, prefix) in frontier {
                // Drafts under a node the target never reaches get any q (they are never used).
                let q = d.q.get(&prefix).unwrap_or(&uniform);
                let toks: Vec<u32> = match drafts {
                    Drafts::Chain => vec![draw(q, rng)],
                    Drafts::Sampled(k) => (0..k).map(|_| draw(q, rng)).collect(),
                    Drafts::Eagle => unreachable!("EAGLE trees are built above"),
                    Drafts::TopK(k) => {
                        let mut ids: Vec<u32> = (0..v as u32).collect();
                        ids.sort_by(|&a, &b| q[b as usize].total_cmp(&q[a as usize]));
                        ids.truncate(k);
                        ids
                    }
                };
                if matches!(drafts, Drafts::Chain | Drafts::Sampled(_)) {
                    tree.set_child_q(node, q.clone());
                }
                for t in toks {
                    let c = tree.push(node, t, 1.0).unwrap();
                    next.push((c, prefix.iter().copied().chain([t]).collect::<Vec<u32>>()));
                }
            }
            frontier = next;
        }
        let base = out.clone();
        let bonus = walk_sampled(
            &tree,
            |node, probs| {
                let mut chain = vec![];
                let mut n = node;
                while n != 0 {
                    chain.push(tree.tokens()[n]);
                    n = tree.parents()[n];
                }
                let prefix: Vec<u32> = base
                    .iter()
                    .copied()
                    .chain(chain.into_iter().rev())
                    .collect();
                *probs =
                    d.p.get(&prefix)
                        .expect("accepted nodes are in the target's support")
                        .clone();
            },
            bufs,
            path,
            rng,
        );
        out.extend(path[1..].iter().map(|&n| tree.tokens()[n]));
        out.push(bonus);
    }
    [out[0], out[1], out[2]]
}

fn check(drafts: Drafts, seed: u64) {
    let d = dists();
    let mut exact: HashMap<[u32; 3], f64> = HashMap::new();
    let p0 = &d.p[&vec![]];
    for a in 0..d.tokens.len() as u32 {
        let pa = p0[a as usize] as f64;
        if pa == 0.0 {
            continue;
        }
        let p1 = &d.p[&vec![a]];
        for b in 0..d.tokens.len() as u32 {
            let pb = p1[b as usize] as f64;
            if pb == 0.0 {
                continue;
            }
            let p2 = &d.p[&vec![a, b]];
            for c in 0..d.tokens.len() as u32 {
                if p2[c as usize] > 0.0 {
                    exact.insert([a, b, c], pa * pb * p2[c as usize] as f64);
                }
            }
        }
    }
    let mut rng = StdRng::seed_from_u64(seed);
    let (mut bufs, mut path) = (WalkBuffers::default(), Vec::new());
    let mut counts: HashMap<[u32; 3], u64> = HashMap::new();
    for _ in 0..N {
        *counts
            .entry(first_three(d, drafts, &mut rng, &mut bufs, &mut path))
            .or_default() += 1;
    }
    let unexpected: u64 = counts
        .iter()
        .filter(|(k, _)| !exact.contains_key(*k))
        .map(|(_, &c)| c)
        .sum();
    assert_eq!(
        unexpected, 0,
        "triples outside the target's support were emitted"
    );
    let tv: f64 = exact
        .iter()
        .map(|(k, &p)| (counts.get(k).copied().unwrap_or(0) as f64 / N as f64 - p).abs())
        .sum::<f64>()
        / 2.0;
    let k = exact.len() as f64;
    let bound = (2.0 * (k * 2f64.ln() + 1e6f64.ln()) / N as f64).sqrt() / 2.0;
    eprintln!("K = {k}, TV {tv:.4}, bound {bound:.4}");
    assert!(tv < bound, "TV {tv:.4} exceeds {bound:.4} over {k} triples");
}

#[test]
fn real_model_first_three_tokens_chain() {
    check(Drafts::Chain, 11);
}

#[test]
fn real_model_first_three_tokens_multi_round() {
    check(Drafts::Sampled(2), 12);
}

#[test]
fn real_model_first_three_tokens_point_mass() {
    check(Drafts::TopK(3), 13);
}

#[test]
fn real_model_first_three_tokens_eagle_drafts() {
    // Some EAGLE drafts are accepted (the walk is not trivially all rejections).
    let d = dists();
    let p0 = &d.p[&vec![]];
    let hits = d.eagle[&vec![]]
        .iter()
        .filter(|&&(parent, t, _)| parent == 0 && p0[t as usize] > 0.0)
        .count();
    assert!(
        hits > 0,
        "no depth-1 EAGLE draft is in the target's support"
    );
    check(Drafts::Eagle, 14);
}
