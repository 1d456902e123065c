//! Batch invariance (DESIGN.md §2): a token's logits are bit-identical whether it is computed
//! alone, as a node of a token tree of 2..64 nodes, or as a row of a 512-token prefill.
//! This is what lets greedy speculative decoding reproduce plain greedy decoding exactly.

use peregrine_model::{ForwardOptions, KvCache, LogitRows, Model, SeqInput, Workspace};
use proptest::prelude::*;
use std::sync::OnceLock;

fn model() -> &'static Model {
    static MODEL: OnceLock<Model> = OnceLock::new();
    MODEL.get_or_init(|| Model::load(&peregrine_testkit::smollm2_path(), 2).expect("model loads"))
}

fn full(model: &Model) -> ForwardOptions<'static> {
    ForwardOptions {
        layers: 0..model.config().n_layers,
        head: true,
        taps: &[],
    }
}

/// Runs `tokens` at `positions` on `cache` and returns the logits of `rows`.
fn forward(
    model: &Model,
    ws: &mut Workspace,
    cache: &mut KvCache,
    tokens: &[u32],
    positions: &[u32],
    tree: Option<&[u64]>,
    rows: &[usize],
) -> Vec<Vec<f32>> {
    let mut seqs = [SeqInput {
        cache,
        tokens,
        positions,
        tree,
        logits: LogitRows::Rows(rows),
    }];
    model.forward(ws, &mut seqs, &full(model)).expect("forward");
    (0..rows.len()).map(|i| ws.logits(i).to_vec()).collect()
}

/// Logits of the last token of `path`, decoded one token at a time after `prefix`.
fn alone(model: &Model, prefix: &[u32], path: &[u32]) -> Vec<f32> {
    let mut cache = model.new_cache(1024);
    let mut ws = model.new_workspace(prefix.len().max(1), 1, 1024);
    let positions: Vec<u32> = (0..prefix.len() as u32).collect();
    forward(model, &mut ws, &mut cache, prefix, &positions, None, &[]);
    let mut last = Vec::new();
    for (d, &t) in path.iter().enumerate() {
        let pos = [(prefix.len() + d) as u32];
        last = forward(model, &mut ws, &mut cache, &[t], &pos, None, &[0]).remove(0);
    }
    last
}

/// A random tree in topological order: `parents[i] < i` (node 0 is the root).
fn tree_strategy(max_nodes: usize) -> impl Strategy<Value = Vec<usize>> {
    (2..=max_nodes).prop_flat_map(|n| {
        (1..n)
            .map(|i| 0..i)
            .collect::<Vec<_>>()
            .prop_map(|ps| std::iter::once(0).chain(ps).collect())
    })
}

fn vocab_token(seed: u64, i: usize) -> u32 {
    ((seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(i as u64 * 1442695040888963407)
        >> 33)
        % 49152) as u32
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn tree_rows_equal_rows_computed_alone(seed in any::<u64>(), prefix_len in 1usize..80, parents in tree_strategy(64)) {
        let model = model();
        let n = parents.len();
        let prefix: Vec<u32> = (0..prefix_len).map(|i| vocab_token(seed, i)).collect();
        let tokens: Vec<u32> = (0..n).map(|i| vocab_token(seed ^ 0xABCD, i)).collect();
        let mut masks = vec![0u64; n];
        let mut depth = vec![0usize; n];
        for i in 0..n {
            masks[i] = 1 << i;
            if i > 0 {
                masks[i] |= masks[parents[i]];
                depth[i] = depth[parents[i]] + 1;
            }
        }
        let positions: Vec<u32> = depth.iter().map(|&d| (prefix_len + d) as u32).collect();
        let mut cache = model.new_cache(1024);
        let mut ws = model.new_workspace(n.max(prefix_len), n, 1024);
        let prefix_pos: Vec<u32> = (0..prefix_len as u32).collect();
        forward(model, &mut ws, &mut cache, &prefix, &prefix_pos, None, &[]);
        let rows: Vec<usize> = (0..n).collect();
        let tree_logits = forward(model, &mut ws, &mut cache, &tokens, &positions, Some(&masks), &rows);
        // Check a sample of nodes (all of a small tree), always including the deepest.
        let deepest = (0..n).max_by_key(|&i| depth[i]).unwrap();
        let sample: Vec<usize> = (0..n).filter(|&i| n <= 12 || i % (n / 8) == 0 || i == deepest).collect();
        for &i in &sample {
            let mut path = vec![i];
            while path[0] != 0 {
                path.insert(0, parents[path[0]]);
            }
            let path_tokens: Vec<u32> = path.iter().map(|&j| tokens[j]).collect();
            let want = alone(model, &prefix, &path_tokens);
            prop_assert!(tree_logits[i] == want, "seed {seed}: tree of {n} nodes, node {i} (depth {}) differs from the same path decoded alone", depth[i]);
        }
    }
}

#[test]
fn prefill_rows_equal_incremental_decoding() {
    let model = model();
    let n = 512;
    let tokens: Vec<u32> = (0..n).map(|i| vocab_token(99, i)).collect();
    let positions: Vec<u32> = (0..n as u32).collect();
    let rows = [0usize, 1, 63, 64, 200, 511];
    // One 512-token forward.
    let mut cache = model.new_cache(1024);
    let mut ws = model.new_workspace(n, rows.len(), 1024);
    let prefill = forward(model, &mut ws, &mut cache, &tokens, &positions, None, &rows);
    // The same tokens in uneven chunks (1, 2, 61, 137, 311).
    let mut cache = model.new_cache(1024);
    let mut chunked = Vec::new();
    let mut start = 0;
    for len in [1usize, 2, 61, 137, 311] {
        let chunk_rows: Vec<usize> = rows
            .iter()
            .filter(|&&r| r >= start && r < start + len)
            .map(|&r| r - start)
            .collect();
        chunked.extend(forward(
            model,
            &mut ws,
            &mut cache,
            &tokens[start..start + len],
            &positions[start..start + len],
            None,
            &chunk_rows,
        ));
        start += len;
    }
    assert!(
        prefill == chunked,
        "512-token prefill and chunked prefill disagree"
    );
    // One token per forward.
    let mut cache = model.new_cache(1024);
    for (i, &t) in tokens.iter().enumerate() {
        let want_rows: Vec<usize> = if rows.contains(&i) { vec![0] } else { vec![] };
        let got = forward(
            model,
            &mut ws,
            &mut cache,
            &[t],
            &positions[i..i + 1],
            None,
            &want_rows,
        );
        if let Some(logits) = got.first() {
            let k = rows.iter().position(|&r| r == i).unwrap();
            assert!(
                *logits == prefill[k],
                "row {i}: prefill logits differ from decoding one token at a time"
            );
        }
    }
}

#[test]
fn compacted_cache_equals_cache_of_the_accepted_path() {
    // Verify a chain of 6 draft tokens, accept rows [0, 1, 2], compact, and continue: the next
    // logits must equal those of a cache that only ever saw the accepted tokens.
    let model = model();
    let prefix: Vec<u32> = (0..40).map(|i| vocab_token(7, i)).collect();
    let pos: Vec<u32> = (0..40).collect();
    let draft: Vec<u32> = (0..6).map(|i| vocab_token(8, i)).collect();
    let mut ws = model.new_workspace(64, 8, 1024);
    let mut cache = model.new_cache(1024);
    forward(model, &mut ws, &mut cache, &prefix, &pos, None, &[]);
    // A tree: 0 -> 1 -> 2 and a side branch 0 -> 3 -> 4 -> 5.
    let parents = [0usize, 0, 1, 0, 3, 4];
    let mut masks = [0u64; 6];
    let mut depth = [0u32; 6];
    for i in 0..6 {
        masks[i] = 1 << i;
        if i > 0 {
            masks[i] |= masks[parents[i]];
            depth[i] = depth[parents[i]] + 1;
        }
    }
    let tpos: Vec<u32> = depth.iter().map(|d| 40 + d).collect();
    forward(model, &mut ws, &mut cache, &draft, &tpos, Some(&masks), &[]);
    cache.compact(40, &[0, 3, 4]).expect("compact");
    assert_eq!(cache.len(), 43);
    let next = vocab_token(9, 0);
    let got = forward(model, &mut ws, &mut cache, &[next], &[43], None, &[0]).remove(0);
    let want = alone(model, &prefix, &[draft[0], draft[3], draft[4], next]);
    assert!(
        got == want,
        "logits after compaction differ from a cache of the accepted path"
    );
}
