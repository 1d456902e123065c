//! The EAGLE drafter's steady state allocates nothing: proposing a dynamic tree, the target's
//! verification forward with taps, and handing the accepted path's features back, step after
//! step (`testkit::CountingAlloc`).

mod common;

use common::{model, random_eagle3, specbench_prompts};
use peregrine_model::generate::prefill_reusing_prefix_with_taps;
use peregrine_model::{ForwardOptions, LogitRows, SeqInput};
use peregrine_spec::{DraftPlan, Drafter, EagleDrafter, TokenTree};
use peregrine_testkit::CountingAlloc;

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc::new();

#[test]
fn eagle_steps_allocate_nothing() {
    let m = model();
    let head = random_eagle3();
    let prompt = specbench_prompts("qa", 1).remove(0);
    let cap = prompt.len() + 256;
    let mut d = EagleDrafter::new(m, head, cap).unwrap();
    let mut cache = m.new_cache(cap);
    let mut ws = m.new_workspace(512, 64, cap);
    let mut history = Vec::with_capacity(cap);
    let layers = d.feature_layers().to_vec();
    let rows: Vec<usize> = (0..512).collect();
    d.reuse_prefix(&prompt);
    prefill_reusing_prefix_with_taps(
        m,
        &mut cache,
        &mut ws,
        &mut history,
        &prompt,
        &layers,
        &mut |ws, pos, k| d.observe_features(ws, &rows[..k], pos).unwrap(),
    )
    .unwrap();
    let mut ctx = Vec::with_capacity(cap);
    ctx.extend_from_slice(&prompt);
    ctx.push(argmax(ws.logits(0)));
    let plan = DraftPlan::Dynamic {
        budget: 24,
        depth: 6,
        top_k: 4,
    };
    let mut tree = TokenTree::new();
    let mut positions = Vec::with_capacity(64);
    let mut path = Vec::with_capacity(64);
    let opts = ForwardOptions {
        layers: 0..m.config().n_layers,
        head: true,
        taps: &layers,
    };
    let mut before = 0;
    for step in 0..24 {
        if step == 8 {
            before = ALLOC.n_allocs();
        }
        let base = cache.len();
        tree.reset(*ctx.last().unwrap());
        d.propose(&ctx, &plan, &mut tree).unwrap();
        assert!(tree.len() > 1);
        tree.positions(base, &mut positions);
        let mut seqs = [SeqInput {
            cache: &mut cache,
            tokens: tree.tokens(),
            positions: &positions,
            tree: Some(tree.masks()),
            logits: LogitRows::All,
        }];
        m.forward(&mut ws, &mut seqs, &opts).unwrap();
        // Greedy walk; every other step pretend the first child was right, so paths of
        // several rows come back too.
        path.clear();
        path.push(0);
        let mut node = 0;
        let bonus = loop {
            let next = argmax(ws.logits(node));
            let child = tree
                .children(node)
                .find(|&c| tree.tokens()[c] == next || (step % 2 == 0 && path.len() < 3));
            match child {
                Some(c) => {
                    node = c;
                    path.push(c);
                    ctx.push(tree.tokens()[c]);
                }
                None => break next,
            }
        };
        cache.compact(base, &path).unwrap();
        d.observe_features(&ws, &path, base).unwrap();
        ctx.push(bonus);
        d.accept(&ctx, path.len() - 1);
    }
    let n = ALLOC.n_allocs() - before;
    assert_eq!(n, 0, "{n} allocations in 16 EAGLE steps");
}

fn argmax(x: &[f32]) -> u32 {
    peregrine_tensor::ops::argmax(x).unwrap() as u32
}
