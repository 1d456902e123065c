//! Greedy speculative decoding reproduces plain greedy decoding token for token (DESIGN.md §2,
//! §6), for every drafter and tree kind, on specbench first turns.
//!
//! The full sweep (every prompt of every set, 128 tokens) is the command
//! `peregrine bench spec --check`; here a subset runs in CI.

mod common;

use common::{model, specbench_prompts, tokenizer};
use peregrine_model::{GenerateParams, Session};
use peregrine_spec::{
    DraftPlan, Drafter, LayerSkipDrafter, ModelDrafter, NgramDrafter, NoDrafter, SpecSession,
    TokenTree, TreeShape, TreeSpec, MAX_TREE_NODES,
};

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

fn spec(
    prompt: &[u32],
    max_tokens: usize,
    drafter: &mut dyn Drafter,
    tree: &TreeSpec,
) -> peregrine_spec::SpecGeneration {
    let params = GenerateParams {
        max_tokens,
        ..GenerateParams::default()
    };
    // Room for a whole tree after the last token (the engine cuts trees to fit the cache).
    let mut s = SpecSession::new(model(), prompt.len() + max_tokens + MAX_TREE_NODES);
    s.generate(
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

fn trees() -> Vec<(&'static str, TreeSpec)> {
    ["chain:4", "eagle-default", "dynamic:12,6,3", "auto"]
        .into_iter()
        .map(|s| (s, TreeSpec::parse(s).unwrap()))
        .collect()
}

#[test]
fn ngram_greedy_equals_plain_on_specbench() {
    let mut prompts = specbench_prompts("sum", 2);
    prompts.extend(specbench_prompts("mt_bench", 2));
    prompts.extend(specbench_prompts("gsm8k", 1));
    let mut total_tau = 0.0;
    for (i, prompt) in prompts.iter().enumerate() {
        let want = plain(prompt, 64);
        for (name, tree) in trees() {
            let got = spec(prompt, 64, &mut NgramDrafter::default(), &tree);
            assert_eq!(
                got.generation.tokens, want,
                "prompt {i}, tree {name}: speculative greedy differs from plain"
            );
            let s = &got.stats;
            assert!(s.tau() >= 1.0);
            // The first token comes from the prompt's forward; every later one from a step.
            assert!(
                s.n_step_tokens + 1 >= got.generation.tokens.len(),
                "prompt {i} {name}: {s:?}"
            );
            if name == "eagle-default" {
                total_tau += s.tau();
            }
        }
    }
    // Summaries copy from the article: the n-gram drafter must get tokens accepted.
    assert!(
        total_tau / prompts.len() as f64 > 1.1,
        "mean tau {}",
        total_tau / prompts.len() as f64
    );
}

#[test]
fn no_drafter_is_plain_decoding() {
    let prompt = &specbench_prompts("qa", 1)[0];
    let got = spec(
        prompt,
        32,
        &mut NoDrafter,
        &TreeSpec::parse("chain:4").unwrap(),
    );
    assert_eq!(got.generation.tokens, plain(prompt, 32));
    assert_eq!(got.stats.tau(), 1.0);
}

/// Knows the plain continuation and hides it among wrong siblings, so accepted paths skip
/// rows and `KvCache::compact` must move them.
struct Oracle {
    truth: Vec<u32>,
    n_prompt: usize,
}

impl Drafter for Oracle {
    fn name(&self) -> &'static str {
        "oracle"
    }

    fn propose(
        &mut self,
        context: &[u32],
        _plan: &DraftPlan<'_>,
        tree: &mut TokenTree,
    ) -> peregrine_spec::Result<()> {
        let done = context.len() - self.n_prompt; // tokens emitted so far, root included
        let wrong = |t: u32| (t + 17) % 49152;
        let mut parent = 0;
        for d in 0..5 {
            let Some(&t) = self.truth.get(done + d) else {
                break;
            };
            // A wrong sibling first, then the right token, then a wrong child under the wrong one.
            let w = tree.push(parent, wrong(t), 0.5)?;
            let right = tree.push(parent, t, 0.5)?;
            tree.push(w, wrong(wrong(t)), 0.1)?;
            // Stop the right path early sometimes, so the bonus token does real work.
            if d == 3 && done.is_multiple_of(2) {
                break;
            }
            parent = right;
        }
        Ok(())
    }
}

#[test]
fn accepted_paths_with_gaps_are_compacted_correctly() {
    let prompt = &specbench_prompts("alpaca", 1)[0];
    let want = plain(prompt, 48);
    let mut oracle = Oracle {
        truth: want.clone(),
        n_prompt: prompt.len(),
    };
    let got = spec(
        prompt,
        48,
        &mut oracle,
        &TreeSpec::Shape(TreeShape::chain(1).unwrap()),
    );
    assert_eq!(got.generation.tokens, want);
    assert!(
        got.stats.tau() > 3.0,
        "the oracle's paths are accepted: {:?}",
        got.stats
    );
}

#[test]
fn layerskip_greedy_equals_plain() {
    let prompts = [
        specbench_prompts("mt_bench", 1).remove(0),
        specbench_prompts("sum", 1).remove(0),
    ];
    for (i, prompt) in prompts.iter().enumerate() {
        let want = plain(prompt, 48);
        // A deep exit drafts well enough that chains get accepted; min score 0 drafts whole
        // chains and shapes. Trees are drafted level by level in the target's cache and verified
        // from the exit layer on.
        for (exit_layer, tree) in [
            (24, "chain:4"),
            (12, "chain:2"),
            (24, "auto"),
            (24, "eagle-default"),
            (18, "dynamic:8,4,2"),
        ] {
            let mut d = LayerSkipDrafter::new(exit_layer, 30, 0.0).unwrap();
            let got = spec(prompt, 48, &mut d, &TreeSpec::parse(tree).unwrap());
            assert_eq!(
                got.generation.tokens, want,
                "prompt {i}, exit {exit_layer}, tree {tree}"
            );
            if tree != "auto" && exit_layer == 24 {
                assert!(
                    got.stats.tau() > 1.0,
                    "an exit at 24 of 30 layers gets drafts accepted: {:?}",
                    got.stats
                );
            }
        }
    }
}

/// Trees drafted by a draft model, level by level with tree masks over its own uncommitted
/// rows. The target drafting for itself is batch invariant, so each node's draft logits are the
/// target's own at that node: the rank-0 path is always accepted to its full depth, and a mask
/// that let a node see a sibling (or missed an ancestor) would break that.
#[test]
fn draft_model_trees_equal_plain() {
    let prompt = &specbench_prompts("alpaca", 1)[0];
    let want = plain(prompt, 40);
    let vocab = model().config().vocab_size;
    for (tree, min_tau) in [("eagle-default", 5.0), ("dynamic:8,4,2", 4.0)] {
        let mut d = ModelDrafter::draft_model(model(), vocab, prompt.len() + 40 + MAX_TREE_NODES)
            .unwrap()
            .with_min_score(0.0);
        let got = spec(prompt, 40, &mut d, &TreeSpec::parse(tree).unwrap());
        assert_eq!(got.generation.tokens, want, "{tree}");
        let st = &got.stats;
        assert!(st.tau() >= min_tau, "{tree}: {st:?}");
        assert!(
            st.n_drafted > 5 * st.steps,
            "{tree} drafts branching trees, not chains: {st:?}"
        );
    }
}

#[test]
fn draft_model_greedy_equals_plain_and_vocab_must_match() {
    // The only model at hand drafts for itself: every draft is accepted, which exercises the
    // draft cache's rollback to the shared prefix and full-depth acceptance.
    let prompt = &specbench_prompts("gsm8k", 1)[0];
    let want = plain(prompt, 40);
    let vocab = model().config().vocab_size;
    let mut d = ModelDrafter::draft_model(model(), vocab, prompt.len() + 64)
        .unwrap()
        .with_min_score(0.0);
    let got = spec(prompt, 40, &mut d, &TreeSpec::parse("chain:3").unwrap());
    assert_eq!(got.generation.tokens, want);
    assert!(
        got.stats.tau() > 3.0,
        "a model drafting for itself is always right: {:?}",
        got.stats
    );
    assert!(matches!(
        ModelDrafter::draft_model(model(), vocab + 1, 64),
        Err(peregrine_spec::Error::VocabMismatch { draft, target }) if draft == vocab && target == vocab + 1
    ));
}

#[test]
fn sampling_path_with_top_k_1_equals_plain_greedy() {
    // Temperature 1 with top-k 1 is a point mass on the argmax: the sampling verification path
    // (shaping, point-mass rule, residuals, compaction) must then reproduce greedy exactly.
    use peregrine_model::SamplingParams;
    let prompt = &specbench_prompts("sum", 1)[0];
    let want = plain(prompt, 48);
    let sampling = SamplingParams {
        temperature: 1.0,
        top_k: 1,
        seed: 7,
        ..SamplingParams::default()
    };
    let params = GenerateParams {
        max_tokens: 48,
        sampling,
        ..GenerateParams::default()
    };
    for tree in ["chain:3", "eagle-default"] {
        let mut s = SpecSession::new(model(), prompt.len() + 56);
        let got = s
            .generate(
                model(),
                tokenizer(),
                &mut NgramDrafter::default(),
                &TreeSpec::parse(tree).unwrap(),
                prompt,
                &params,
                &mut |_| {},
            )
            .unwrap();
        assert_eq!(got.generation.tokens, want, "tree {tree}");
        assert!(
            got.stats.tau() > 1.0,
            "drafts are accepted: {:?}",
            got.stats
        );
    }
    // Real sampling is reproducible for a seed with a fixed tree. (Not with `auto`: its trees
    // depend on measured timings, and the random draws on the trees.)
    let sampling = SamplingParams {
        temperature: 0.8,
        top_p: 0.9,
        seed: 3,
        ..SamplingParams::default()
    };
    let params = GenerateParams {
        max_tokens: 32,
        sampling,
        ..GenerateParams::default()
    };
    let run = || {
        let mut s = SpecSession::new(model(), prompt.len() + 40);
        s.generate(
            model(),
            tokenizer(),
            &mut NgramDrafter::default(),
            &TreeSpec::parse("chain:3").unwrap(),
            prompt,
            &params,
            &mut |_| {},
        )
        .unwrap()
        .generation
        .tokens
    };
    assert_eq!(run(), run());
}

#[test]
fn context_full_and_stop_strings_match_plain() {
    use peregrine_model::StopReason;
    let prompt = &specbench_prompts("sum", 1)[0];
    // A context 12 tokens longer than the prompt: trees must shrink to the room left.
    let params = GenerateParams {
        max_tokens: 64,
        ..GenerateParams::default()
    };
    let mut p = Session::new(model(), prompt.len() + 12);
    let want = p
        .generate(model(), tokenizer(), prompt, &params, &mut |_| {})
        .unwrap();
    assert_eq!(want.stop_reason, StopReason::ContextFull);
    for tree in ["eagle-default", "chain:8", "auto"] {
        let mut s = SpecSession::new(model(), prompt.len() + 12);
        let got = s
            .generate(
                model(),
                tokenizer(),
                &mut NgramDrafter::default(),
                &TreeSpec::parse(tree).unwrap(),
                prompt,
                &params,
                &mut |_| {},
            )
            .unwrap();
        assert_eq!(got.generation.tokens, want.tokens, "tree {tree}");
        assert_eq!(
            got.generation.stop_reason,
            StopReason::ContextFull,
            "tree {tree}"
        );
    }
    // A stop string taken from the plain output: same text, same reason.
    let long = plain(prompt, 48);
    let text = tokenizer().decode(&long[20..24]).unwrap();
    let params = GenerateParams {
        max_tokens: 48,
        stop_strings: vec![text.clone()],
        ..GenerateParams::default()
    };
    let mut p = Session::new(model(), prompt.len() + 56);
    let want = p
        .generate(model(), tokenizer(), prompt, &params, &mut |_| {})
        .unwrap();
    let mut s = SpecSession::new(model(), prompt.len() + 56);
    let mut streamed = String::new();
    let got = s
        .generate(
            model(),
            tokenizer(),
            &mut NgramDrafter::default(),
            &TreeSpec::parse("chain:4").unwrap(),
            prompt,
            &params,
            &mut |t| streamed.push_str(t),
        )
        .unwrap();
    assert_eq!(got.generation.text, want.text);
    assert_eq!(
        streamed, want.text,
        "streamed text stops before the stop string"
    );
    assert_eq!(got.generation.stop_reason, want.stop_reason);
    assert!(
        matches!(got.generation.stop_reason, StopReason::StopString(_)),
        "{:?}",
        got.generation.stop_reason
    );
}

#[test]
fn sampled_drafts_from_an_identical_draft_are_always_accepted() {
    // A model drafting for itself with the target's own shaping has q == p bit for bit, so the
    // multi-round rule accepts every sampled draft: tau = chain length + 1.
    use peregrine_model::SamplingParams;
    let prompt = &specbench_prompts("qa", 1)[0];
    let sampling = SamplingParams {
        temperature: 0.8,
        top_p: 0.9,
        seed: 5,
        ..SamplingParams::default()
    };
    let params = GenerateParams {
        max_tokens: 41,
        sampling: sampling.clone(),
        ..GenerateParams::default()
    };
    let vocab = model().config().vocab_size;
    let mut d = ModelDrafter::draft_model(model(), vocab, prompt.len() + 64)
        .unwrap()
        .with_min_score(0.0)
        .with_sampled_drafts(sampling);
    let mut s = SpecSession::new(model(), prompt.len() + 64);
    let got = s
        .generate(
            model(),
            tokenizer(),
            &mut d,
            &TreeSpec::parse("chain:3").unwrap(),
            prompt,
            &params,
            &mut |_| {},
        )
        .unwrap();
    let st = &got.stats;
    if got.generation.tokens.len() == 41 {
        // 1 token from the prompt's forward, then 10 steps of 4.
        assert_eq!((st.steps, st.n_step_tokens), (10, 40), "{st:?}");
    }
    assert_eq!(
        st.n_step_tokens,
        st.steps + st.accepted_per_depth.iter().sum::<u64>() as usize
    );
    assert!(
        st.accepted_per_depth
            .iter()
            .all(|&a| a as usize >= st.steps - 1),
        "{st:?}"
    );
}

/// A session that ran an `auto` generation keeps its controller for later `auto` runs, but a
/// later fixed tree is drafted and verified as asked, not cut by that controller.
#[test]
fn a_fixed_tree_after_an_auto_run_is_not_cut() {
    let prompt = &specbench_prompts("mt_bench", 1)[0];
    let vocab = model().config().vocab_size;
    let params = GenerateParams {
        max_tokens: 24,
        ..GenerateParams::default()
    };
    let mut session = SpecSession::new(model(), prompt.len() + 64);
    for tree in ["auto", "chain:2"] {
        // The target drafting for itself: every draft is accepted, so a 2-node chain verifies
        // 2 drafted tokens per step until the token budget cuts it.
        let mut d = ModelDrafter::draft_model(model(), vocab, prompt.len() + 64).unwrap();
        let g = session
            .generate(
                model(),
                tokenizer(),
                &mut d,
                &TreeSpec::parse(tree).unwrap(),
                prompt,
                &params,
                &mut |_| {},
            )
            .unwrap();
        if tree == "chain:2" {
            let s = &g.stats;
            assert!(
                s.n_drafted + 2 >= 2 * s.steps,
                "chain:2 after auto: {} drafted in {} steps",
                s.n_drafted,
                s.steps
            );
        }
    }
}
