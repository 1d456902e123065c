//! Our SmolLM2 Q4_1 logits against llama.cpp's (goldens in tests/data/smollm2_llamacpp.json,
//! made by tests/data/regen_smollm2_llamacpp.py from llama.cpp 0c1e57098).
//!
//! Both engines quantize activations to 8 bits for the Q4_1/Q8_0 matmuls but round and sum in
//! different orders. This 135M model amplifies such differences: llama.cpp does not even agree
//! with itself across batch sizes (one forward over all tokens vs one token per forward: 96.99%
//! argmax agreement, flips at top-2 margins up to 0.44, recorded in the golden as
//! `oracle_self_consistency`). So the bar here is llama.cpp's own consistency: our agreement with
//! its teacher-forced logits must be within one point of its agreement with itself, and every
//! greedy divergence must start at a position whose llama.cpp top-2 margin is no larger than the
//! largest margin at which llama.cpp flips against itself. The exactness of the forward pass is
//! shown separately against llama.cpp in f32 (tests/f32_reference.rs).

use peregrine_model::{ForwardOptions, LogitRows, Model, SeqInput};
use serde::Deserialize;

#[derive(Deserialize)]
struct Golden {
    oracle_self_consistency: SelfConsistency,
    prompts: Vec<Prompt>,
}

#[derive(Deserialize)]
struct SelfConsistency {
    argmax_agreement: f64,
    flip_top2_margin_max: f32,
}

#[derive(Deserialize)]
struct Prompt {
    source: String,
    prompt_ids: Vec<u32>,
    greedy_ids: Vec<u32>,
    argmax: Vec<u32>,
    top2_margin: Vec<f32>,
    top5: Vec<Vec<(u32, f32)>>,
}

fn golden() -> Golden {
    let path = peregrine_testkit::repo_root().join("crates/model/tests/data/smollm2_llamacpp.json");
    serde_json::from_str(&std::fs::read_to_string(path).expect("golden exists"))
        .expect("golden parses")
}

fn argmax(x: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in x.iter().enumerate() {
        if v > x[best] {
            best = i;
        }
    }
    best as u32
}

#[test]
fn smollm2_matches_llama_cpp() {
    let model = Model::load(&peregrine_testkit::smollm2_path(), 2).expect("model loads");
    let g = golden();
    let (mut agree, mut total) = (0usize, 0usize);
    let mut errors: Vec<f32> = Vec::new();
    let mut identical = 0;
    let mut report = String::new();
    let mut not_near_tie = Vec::new();
    for p in &g.prompts {
        // Teacher forcing over prompt + llama.cpp's continuation.
        let ids: Vec<u32> = p.prompt_ids.iter().chain(&p.greedy_ids).copied().collect();
        let n = ids.len();
        let mut cache = model.new_cache(1024);
        let mut ws = model.new_workspace(n, n, 1024);
        let positions: Vec<u32> = (0..n as u32).collect();
        let mut seqs = [SeqInput {
            cache: &mut cache,
            tokens: &ids,
            positions: &positions,
            tree: None,
            logits: LogitRows::All,
        }];
        model
            .forward(
                &mut ws,
                &mut seqs,
                &ForwardOptions {
                    layers: 0..model.config().n_layers,
                    head: true,
                    taps: &[],
                },
            )
            .expect("forward");
        for (i, want) in p.argmax.iter().enumerate() {
            let logits = ws.logits(i);
            total += 1;
            agree += usize::from(argmax(logits) == *want);
            for &(id, l) in &p.top5[i] {
                errors.push((logits[id as usize] - l).abs());
            }
        }
        // Greedy decoding from the prompt alone.
        let mut cache = model.new_cache(1024);
        let mut ws = model.new_workspace(p.prompt_ids.len(), 1, 1024);
        let mut out = Vec::new();
        let mut next_input = p.prompt_ids.clone();
        let mut pos = 0u32;
        while out.len() < p.greedy_ids.len() {
            let positions: Vec<u32> = (pos..pos + next_input.len() as u32).collect();
            let mut seqs = [SeqInput {
                cache: &mut cache,
                tokens: &next_input,
                positions: &positions,
                tree: None,
                logits: LogitRows::Last,
            }];
            model
                .forward(
                    &mut ws,
                    &mut seqs,
                    &ForwardOptions {
                        layers: 0..model.config().n_layers,
                        head: true,
                        taps: &[],
                    },
                )
                .expect("forward");
            pos += next_input.len() as u32;
            let t = argmax(ws.logits(0));
            out.push(t);
            next_input = vec![t];
        }
        match out.iter().zip(&p.greedy_ids).position(|(a, b)| a != b) {
            None => identical += 1,
            Some(d) => {
                let at = p.prompt_ids.len() - 1 + d;
                let margin = p.top2_margin[at];
                report += &format!(
                    "{}: diverges at generated token {d} (llama.cpp top-2 margin {margin:.4})\n",
                    p.source
                );
                if margin > g.oracle_self_consistency.flip_top2_margin_max {
                    not_near_tie.push(format!("{} at token {d} (margin {margin})", p.source));
                }
            }
        }
    }
    errors.sort_by(f32::total_cmp);
    let q = |f: f64| errors[((errors.len() - 1) as f64 * f) as usize];
    eprintln!(
        "argmax agreement {agree}/{total} = {:.3}%; |logit error| at llama.cpp's top-5: median {:.4}, p90 {:.4}, p99 {:.4}, max {:.4}; greedy identical {identical}/{}\n{report}",
        100.0 * agree as f64 / total as f64,
        q(0.5),
        q(0.9),
        q(0.99),
        q(1.0),
        g.prompts.len()
    );
    let floor = g.oracle_self_consistency.argmax_agreement - 0.01;
    assert!(
        agree as f64 >= floor * total as f64,
        "teacher-forced argmax agreement {agree}/{total} below {floor}"
    );
    assert!(
        not_near_tie.is_empty(),
        "divergences not at a near-tie: {not_near_tie:?}"
    );
}
