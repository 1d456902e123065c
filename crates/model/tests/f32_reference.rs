//! The forward pass in reference numerics (f32 activations) against llama.cpp running the same
//! SmolLM2 weights dequantized to an F32 GGUF with an f32 KV cache
//! (tests/data/smollm2_f32_llamacpp.json). Neither side rounds activations to 8 bits here, so the
//! engines must agree closely; this is the test that finds real bugs in the forward pass.
//! (Our KV cache is f16, the one remaining rounding difference.)

use peregrine_model::{ForwardOptions, LoadOptions, LogitRows, Model, SeqInput};
use serde::Deserialize;

#[derive(Deserialize)]
struct Golden {
    prompts: Vec<Prompt>,
}

#[derive(Deserialize)]
struct Prompt {
    source: String,
    argmax: Vec<u32>,
    top5: Vec<Vec<(u32, f32)>>,
}

#[derive(Deserialize)]
struct Tokens {
    prompts: Vec<TokenPrompt>,
}

#[derive(Deserialize)]
struct TokenPrompt {
    prompt_ids: Vec<u32>,
    greedy_ids: Vec<u32>,
}

fn read<T: serde::de::DeserializeOwned>(name: &str) -> T {
    let path = peregrine_testkit::repo_root()
        .join("crates/model/tests/data")
        .join(name);
    serde_json::from_str(&std::fs::read_to_string(&path).expect("golden exists"))
        .expect("golden parses")
}

#[test]
fn f32_forward_matches_llama_cpp_f32() {
    let model = Model::load_with(
        &peregrine_testkit::smollm2_path(),
        &LoadOptions {
            n_threads: 2,
            f32_activations: true,
        },
    )
    .expect("model loads");
    let golden: Golden = read("smollm2_f32_llamacpp.json");
    let tokens: Tokens = read("smollm2_llamacpp.json");
    let (mut agree, mut total) = (0usize, 0usize);
    let mut errors = Vec::new();
    let mut flips = Vec::new();
    for (p, t) in golden.prompts.iter().zip(&tokens.prompts) {
        let ids: Vec<u32> = t.prompt_ids.iter().chain(&t.greedy_ids).copied().collect();
        let n = ids.len();
        assert_eq!(n, p.argmax.len(), "{}: golden rows", p.source);
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
        for i in 0..n {
            let logits = ws.logits(i);
            let ours = peregrine_tensor_argmax(logits);
            total += 1;
            if ours == p.argmax[i] {
                agree += 1;
            } else {
                let margin = p.top5[i][0].1 - p.top5[i][1].1;
                flips.push((p.source.clone(), i, margin));
            }
            for &(id, l) in &p.top5[i] {
                errors.push((logits[id as usize] - l).abs());
            }
        }
    }
    errors.sort_by(f32::total_cmp);
    let q = |f: f64| errors[((errors.len() - 1) as f64 * f) as usize];
    eprintln!(
        "f32 reference: argmax agreement {agree}/{total}; |logit error| median {:.5} p99 {:.5} max {:.5}; flips (source, position, llama.cpp margin): {flips:?}",
        q(0.5),
        q(0.99),
        q(1.0)
    );
    assert!(
        agree as f64 >= 0.998 * total as f64,
        "argmax agreement {agree}/{total} below 99.8%"
    );
    assert!(
        q(0.5) < 0.02 && q(0.99) < 0.1,
        "logit errors too large: median {} p99 {}",
        q(0.5),
        q(0.99)
    );
    for (source, i, margin) in &flips {
        assert!(
            *margin < 0.01,
            "{source}: position {i} flips at llama.cpp margin {margin}"
        );
    }
}

fn peregrine_tensor_argmax(x: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in x.iter().enumerate() {
        if v > x[best] {
            best = i;
        }
    }
    best as u32
}
