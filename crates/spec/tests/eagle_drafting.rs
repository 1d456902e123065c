//! EAGLE drafting on the real model with random heads: greedy speculative output equals plain
//! greedy for every tree kind, and the drafter's incremental state (head KV cache caught up
//! from each verification's accepted path, drafts rolled back, prefix reuse across
//! generations) drafts exactly the trees a fresh drafter fed the whole context drafts.

mod common;

use common::{model, random_eagle3, specbench_prompts, tokenizer};
use peregrine_model::{GenerateParams, Session};
use peregrine_spec::{DraftPlan, Drafter, EagleDrafter, SpecSession, TokenTree, TreeSpec};

fn plain(prompt: &[u32], max_tokens: usize) -> Vec<u32> {
    let params = GenerateParams {
        max_tokens,
        ..GenerateParams::default()
    };
    let mut s = Session::new(model(), prompt.len() + max_tokens + 8);
    s.generate(model(), tokenizer(), prompt, &params, &mut |_| {})
        .expect("plain generation")
        .tokens
}

fn spec_with(
    session: &mut SpecSession,
    prompt: &[u32],
    max_tokens: usize,
    drafter: &mut dyn Drafter,
    tree: &TreeSpec,
) -> peregrine_spec::SpecGeneration {
    let params = GenerateParams {
        max_tokens,
        ..GenerateParams::default()
    };
    session
        .generate(
            model(),
            tokenizer(),
            drafter,
            tree,
            prompt,
            &params,
            &mut |_| {},
        )
        .expect("speculative generation")
}

#[test]
fn eagle3_greedy_equals_plain() {
    let head = random_eagle3();
    for (i, prompt) in [
        specbench_prompts("mt_bench", 1).remove(0),
        specbench_prompts("sum", 1).remove(0),
    ]
    .iter()
    .enumerate()
    {
        let want = plain(prompt, 40);
        for tree in ["chain:4", "eagle-default", "dynamic:12,6,3", "auto"] {
            let ctx = prompt.len() + 48;
            let mut d = EagleDrafter::new(model(), head, ctx).unwrap();
            let mut s = SpecSession::new(model(), ctx);
            let got = spec_with(&mut s, prompt, 40, &mut d, &TreeSpec::parse(tree).unwrap());
            assert_eq!(got.generation.tokens, want, "prompt {i}, tree {tree}");
            assert_eq!(got.stats.method, "eagle");
            if tree != "auto" {
                assert!(got.stats.n_drafted > 0, "tree {tree}: {:?}", got.stats);
            }
        }
    }
}

#[test]
fn eagle1_greedy_equals_plain() {
    let path = std::env::temp_dir().join(format!(
        "peregrine-eagle1-{}.safetensors",
        std::process::id()
    ));
    common::write_random_eagle1(&path, 9);
    let head =
        peregrine_spec::EagleHead::load(&path, model().config(), Default::default()).unwrap();
    let _ = std::fs::remove_file(&path);
    assert_eq!(head.config().feature_layers, [30]);
    let prompt = &specbench_prompts("qa", 1)[0];
    let want = plain(prompt, 24);
    let ctx = prompt.len() + 32;
    let mut d = EagleDrafter::new(model(), &head, ctx).unwrap();
    let mut s = SpecSession::new(model(), ctx);
    let got = spec_with(
        &mut s,
        prompt,
        24,
        &mut d,
        &TreeSpec::parse("dynamic:8,4,2").unwrap(),
    );
    assert_eq!(got.generation.tokens, want);
    assert!(got.stats.n_drafted > 0);
}

fn fresh_tree(context: &[u32], plan: &DraftPlan<'_>) -> TokenTree {
    common::eagle_tree(random_eagle3(), context, plan)
}

/// An EAGLE drafter whose trees are checked against a fresh drafter's, then replaced by the
/// true continuation hidden among a wrong sibling, so that paths of several tokens (with gaps
/// in the tree) are accepted and caught up.
struct Checked<'a> {
    eagle: EagleDrafter<'a>,
    truth: Vec<u32>,
    n_prompt: usize,
    n_checked: usize,
}

impl Drafter for Checked<'_> {
    fn name(&self) -> &'static str {
        "checked"
    }

    fn propose(
        &mut self,
        context: &[u32],
        plan: &DraftPlan<'_>,
        tree: &mut TokenTree,
    ) -> peregrine_spec::Result<()> {
        self.eagle.propose(context, plan, tree)?;
        let done = context.len() - self.n_prompt;
        if done % 3 != 2 {
            let fresh = fresh_tree(context, plan);
            assert_eq!(tree.tokens(), fresh.tokens(), "step at {done} tokens");
            assert_eq!(tree.parents(), fresh.parents());
            assert_eq!(tree.scores(), fresh.scores());
            assert!(tree.len() > 1);
            self.n_checked += 1;
        }
        let root = context[context.len() - 1];
        tree.reset(root);
        let mut parent = 0;
        for depth in 0..(done % 4) {
            let Some(&t) = self.truth.get(done + depth) else {
                break;
            };
            tree.push(parent, (t + 7) % 49152, 0.5)?;
            parent = tree.push(parent, t, 0.5)?;
        }
        Ok(())
    }

    fn feature_layers(&self) -> &[usize] {
        self.eagle.feature_layers()
    }

    fn reuse_prefix(&mut self, prompt: &[u32]) -> usize {
        self.eagle.reuse_prefix(prompt)
    }

    fn observe_features(
        &mut self,
        ws: &peregrine_model::Workspace,
        rows: &[usize],
        pos: usize,
    ) -> peregrine_spec::Result<()> {
        self.eagle.observe_features(ws, rows, pos)
    }

    fn accept(&mut self, context: &[u32], n_accepted: usize) {
        self.eagle.accept(context, n_accepted)
    }
}

#[test]
fn incremental_state_drafts_what_a_fresh_drafter_drafts() {
    let prompt = &specbench_prompts("gsm8k", 1)[0];
    let want = plain(prompt, 40);
    let ctx = prompt.len() + 64;
    let mut checked = Checked {
        eagle: EagleDrafter::new(model(), random_eagle3(), ctx).unwrap(),
        truth: want.clone(),
        n_prompt: prompt.len(),
        n_checked: 0,
    };
    let mut s = SpecSession::new(model(), ctx);
    let tree = TreeSpec::parse("dynamic:10,4,3").unwrap();
    let got = spec_with(&mut s, prompt, 24, &mut checked, &tree);
    assert_eq!(got.generation.tokens, want[..24]);
    assert!(got.stats.tau() > 1.5, "{:?}", got.stats);
    assert!(checked.n_checked >= 4);
    // A second turn that extends the first reuses the cached prefix (the target's and the
    // head's) and still drafts what a fresh drafter drafts.
    let mut second = prompt.clone();
    second.extend_from_slice(&want[..20]);
    second.extend_from_slice(&specbench_prompts("qa", 1)[0][..8]);
    checked.truth = plain(&second, 16);
    checked.n_prompt = second.len();
    let got = spec_with(
        &mut s,
        &second,
        16,
        &mut checked,
        &TreeSpec::parse("eagle-default").unwrap(),
    );
    assert_eq!(got.generation.tokens, checked.truth);
    assert!(
        got.generation.n_prompt_computed < second.len() / 2,
        "{}",
        got.generation.n_prompt_computed
    );
}

/// Milliseconds per head forward over 1 and 8 drafted rows (SmolLM2-shaped EAGLE-3 head, Q8_0,
/// the model's 2 threads), at two context lengths; and per full propose of `auto`'s plan.
/// A measurement, not a check: `cargo test --release -p peregrine-spec --test eagle_drafting
/// -- --ignored --nocapture head_forward_speed` (`PEREGRINE_EAGLE_HEAD=FILE` times that head).
#[test]
#[ignore = "a timing report, not a check"]
fn head_forward_speed() {
    use peregrine_spec::eagle::{HeadCache, HeadInput, HeadLogits, HeadRows, HeadWorkspace};
    // PEREGRINE_EAGLE_HEAD=path times that head instead of the random one.
    let loaded = std::env::var_os("PEREGRINE_EAGLE_HEAD").map(|p| {
        peregrine_spec::EagleHead::load(
            std::path::Path::new(&p),
            model().config(),
            Default::default(),
        )
        .expect("the head loads")
    });
    let head = loaded.as_ref().unwrap_or_else(|| random_eagle3());
    let m = model();
    let c = head.config();
    let h = c.hidden_size;
    for ctx in [256usize, 1024] {
        let mut cache = HeadCache::new(head, ctx + 8);
        let mut ws = HeadWorkspace::new(head, 64, &cache, m.n_threads());
        let feats = vec![0.5f32; 64 * c.feature_dim()];
        let embeds = vec![0.1f32; 64 * h];
        let mut pos = 0;
        while pos < ctx {
            let n = (ctx - pos).min(64);
            let positions: Vec<u32> = (pos as u32..(pos + n) as u32).collect();
            let rows = HeadRows {
                input: HeadInput::Target {
                    features: &feats[..n * c.feature_dim()],
                },
                embeds: &embeds[..n * h],
                positions: &positions,
                logits: HeadLogits::None,
            };
            head.forward(m.pool(), None, &mut ws, &mut cache, &rows)
                .unwrap();
            pos += n;
        }
        for n_rows in [1usize, 8] {
            let parent_out = vec![0.3f32; n_rows * h];
            let parents = vec![None; n_rows];
            let positions = vec![ctx as u32; n_rows];
            let rows = HeadRows {
                input: HeadInput::Drafted {
                    parent_out: &parent_out,
                    parents: &parents,
                },
                embeds: &embeds[..n_rows * h],
                positions: &positions,
                logits: HeadLogits::All,
            };
            let n_iter = 200;
            let mut best = f64::INFINITY;
            let t0 = std::time::Instant::now();
            for _ in 0..n_iter {
                let t = std::time::Instant::now();
                cache.drop_drafts();
                head.forward(m.pool(), None, &mut ws, &mut cache, &rows)
                    .unwrap();
                best = best.min(t.elapsed().as_secs_f64());
            }
            let mean = t0.elapsed().as_secs_f64() / n_iter as f64;
            eprintln!(
                "context {ctx}, {n_rows} drafted rows (draft vocab {}): mean {:.3} ms, best {:.3} ms",
                c.draft_vocab,
                mean * 1e3,
                best * 1e3
            );
        }
    }
    // Whole proposals (catch-up already done), on a real context.
    let prompt = &specbench_prompts("mt_bench", 1)[0];
    let mut context = prompt.clone();
    context.push(plain(prompt, 1)[0]);
    for spec in [
        "chain:4",
        "eagle-default",
        "dynamic:32,16,4",
        "dynamic:60,6,10",
    ] {
        let tree_spec = TreeSpec::parse(spec).unwrap();
        let plan = match &tree_spec {
            TreeSpec::Shape(s) => DraftPlan::Shape(s),
            TreeSpec::Dynamic {
                budget,
                depth,
                top_k,
            } => DraftPlan::Dynamic {
                budget: *budget,
                depth: *depth,
                top_k: *top_k,
            },
            TreeSpec::Auto => unreachable!(),
        };
        let n = context.len() - 1;
        let mut d = EagleDrafter::new(m, head, n + 8).unwrap();
        let mut tree = common::eagle_tree(head, &context, &plan);
        let n_nodes = tree.len();
        // Feed the same features again so `d` is at the same state as the fresh drafter.
        let mut cache = m.new_cache(n + 8);
        let mut tws = m.new_workspace(512, 1, n + 8);
        let mut history = Vec::new();
        let layers = d.feature_layers().to_vec();
        d.reuse_prefix(&context[..n]);
        let rows: Vec<usize> = (0..512).collect();
        peregrine_model::generate::prefill_reusing_prefix_with_taps(
            m,
            &mut cache,
            &mut tws,
            &mut history,
            &context[..n],
            &layers,
            &mut |ws, pos, k| d.observe_features(ws, &rows[..k], pos).unwrap(),
        )
        .unwrap();
        let n_iter = 50;
        let mut best = f64::INFINITY;
        let t0 = std::time::Instant::now();
        for _ in 0..n_iter {
            let t = std::time::Instant::now();
            tree.reset(context[n]);
            d.propose(&context, &plan, &mut tree).unwrap();
            best = best.min(t.elapsed().as_secs_f64());
        }
        assert_eq!(tree.len(), n_nodes);
        eprintln!(
            "propose {spec} at context {n}: {} nodes, depth {}, mean {:.3} ms, best {:.3} ms",
            tree.len() - 1,
            tree.max_depth(),
            t0.elapsed().as_secs_f64() / n_iter as f64 * 1e3,
            best * 1e3
        );
    }
}

/// Sampled EAGLE drafts (temperature > 0): chains whose every parent records the distribution
/// its child was drawn from, a proper distribution over the target vocabulary that is zero
/// outside the draft vocabulary, and root children drawn with those frequencies.
#[test]
fn sampled_drafts_are_chains_drawn_from_the_recorded_distribution() {
    let head = random_eagle3();
    let context = &specbench_prompts("qa", 1)[0];
    let params = peregrine_model::SamplingParams {
        temperature: 1.0,
        seed: 3,
        ..Default::default()
    };
    let mut d = common::eagle_drafter_at(head, context).with_sampled_drafts(params);
    let plan = DraftPlan::Dynamic {
        budget: 8,
        depth: 3,
        top_k: 4,
    };
    let n = 3000;
    let mut counts = std::collections::HashMap::<u32, u64>::new();
    let mut root_q: Option<Vec<f32>> = None;
    for i in 0..n {
        let mut tree = TokenTree::new();
        tree.reset(context[context.len() - 1]);
        d.propose(context, &plan, &mut tree).unwrap();
        assert_eq!(tree.len(), 4, "a chain as deep as the plan");
        for node in 1..tree.len() {
            let parent = tree.parents()[node];
            assert_eq!(tree.depths()[node], node, "a chain");
            let q = tree.child_q(parent).expect("sampled drafts record q");
            let sum: f64 = q.iter().map(|&v| v as f64).sum();
            assert!((sum - 1.0).abs() < 1e-4, "q sums to {sum}");
            assert!(
                q[tree.tokens()[node] as usize] > 0.0,
                "drawn from q's support"
            );
        }
        if i < 3 {
            let q = tree.child_q(0).unwrap();
            let outside = (0..q.len())
                .filter(|&t| q[t] > 0.0)
                .all(|t| (0..head.config().draft_vocab).any(|i| head.target_id(i) as usize == t));
            assert!(outside, "q is zero outside the draft vocabulary");
        }
        let q0 = tree.child_q(0).unwrap().to_vec();
        if let Some(prev) = &root_q {
            assert_eq!(
                prev, &q0,
                "the same context gives the same root distribution"
            );
        }
        root_q = Some(q0);
        *counts.entry(tree.tokens()[1]).or_default() += 1;
    }
    // The most likely root children appear with their probabilities (5 standard deviations).
    let q = root_q.unwrap();
    let mut top: Vec<usize> = (0..q.len()).collect();
    top.sort_by(|&a, &b| q[b].total_cmp(&q[a]));
    for &t in &top[..3] {
        let want = q[t] as f64;
        let got = counts.get(&(t as u32)).copied().unwrap_or(0) as f64 / n as f64;
        let sd = (want * (1.0 - want) / n as f64).sqrt();
        assert!(
            (got - want).abs() < 5.0 * sd + 1e-3,
            "token {t}: {got} vs {want}"
        );
    }
}
