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

mod common;

use common::{argmax, teacher_forced, Agreement};
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

/// Greedy decoding from `prompt`, one token per forward, for `n` tokens.
fn greedy(model: &Model, prompt: &[u32], n: usize) -> Vec<u32> {
    let mut cache = model.new_cache(1024);
    let mut ws = model.new_workspace(prompt.len(), 1, 1024);
    let opts = ForwardOptions {
        layers: 0..model.config().n_layers,
        head: true,
        taps: &[],
    };
    let mut out = Vec::with_capacity(n);
    let mut input = prompt.to_vec();
    let mut pos = 0u32;
    while out.len() < n {
        let positions: Vec<u32> = (pos..pos + input.len() as u32).collect();
        let mut seqs = [SeqInput {
            cache: &mut cache,
            tokens: &input,
            positions: &positions,
            tree: None,
            logits: LogitRows::Last,
        }];
        model.forward(&mut ws, &mut seqs, &opts).expect("forward");
        pos += input.len() as u32;
        let t = argmax(ws.logits(0));
        out.push(t);
        input = vec![t];
    }
    out
}

#[test]
fn smollm2_matches_llama_cpp() {
    let model = Model::load(&peregrine_testkit::smollm2_path(), 2).expect("model loads");
    let g = golden();
    let mut agreement = Agreement::default();
    let (mut identical, mut report, mut not_near_tie) = (0, String::new(), Vec::new());
    let near_tie = g.oracle_self_consistency.flip_top2_margin_max;
    for p in &g.prompts {
        let ids: Vec<u32> = p.prompt_ids.iter().chain(&p.greedy_ids).copied().collect();
        teacher_forced(&model, &ids, ids.len(), |i, logits| {
            agreement.record(&p.source, i, logits, p.argmax[i], &p.top5[i]);
        });
        let ours = greedy(&model, &p.prompt_ids, p.greedy_ids.len());
        match ours.iter().zip(&p.greedy_ids).position(|(a, b)| a != b) {
            None => identical += 1,
            Some(d) => {
                let margin = p.top2_margin[p.prompt_ids.len() - 1 + d];
                report += &format!(
                    "{}: diverges at generated token {d} (llama.cpp top-2 margin {margin:.4})\n",
                    p.source
                );
                if margin > near_tie {
                    not_near_tie.push(format!("{} at token {d} (margin {margin})", p.source));
                }
            }
        }
    }
    eprintln!(
        "{}; greedy identical {identical}/{}\n{report}",
        agreement.summary("SmolLM2 Q4_1 vs llama.cpp"),
        g.prompts.len()
    );
    let floor = g.oracle_self_consistency.argmax_agreement - 0.01;
    assert!(
        agreement.fraction() >= floor,
        "teacher-forced argmax agreement below {floor}"
    );
    assert!(
        not_near_tie.is_empty(),
        "divergences not at a near-tie: {not_near_tie:?}"
    );
}
