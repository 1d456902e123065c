//! The forward pass in reference numerics (f32 activations) against llama.cpp running the same
//! SmolLM2 weights dequantized to an F32 GGUF with an f32 KV cache
//! (tests/data/smollm2_f32_llamacpp.json). Neither side rounds activations to 8 bits here, so the
//! engines must agree closely; this is the test that finds real bugs in the forward pass.
//! (Our KV cache is f16, the one remaining rounding difference.)

mod common;

use common::{teacher_forced, Agreement};
use peregrine_model::{LoadOptions, Model};
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
    let opts = LoadOptions {
        n_threads: 2,
        f32_activations: true,
    };
    let model = Model::load_with(&peregrine_testkit::smollm2_path(), &opts).expect("model loads");
    let golden: Golden = read("smollm2_f32_llamacpp.json");
    let tokens: Tokens = read("smollm2_llamacpp.json");
    let mut agreement = Agreement::default();
    for (p, t) in golden.prompts.iter().zip(&tokens.prompts) {
        let ids: Vec<u32> = t.prompt_ids.iter().chain(&t.greedy_ids).copied().collect();
        assert_eq!(ids.len(), p.argmax.len(), "{}: golden rows", p.source);
        teacher_forced(&model, &ids, ids.len(), |i, logits| {
            agreement.record(&p.source, i, logits, p.argmax[i], &p.top5[i]);
        });
    }
    eprintln!("{}", agreement.summary("f32 reference"));
    assert!(
        agreement.fraction() >= 0.998,
        "argmax agreement below 99.8%"
    );
    assert!(
        agreement.error_quantile(0.5) < 0.02 && agreement.error_quantile(0.99) < 0.1,
        "logit errors too large"
    );
    assert!(
        agreement.max_flip_margin() < 0.01,
        "a flip at a llama.cpp margin >= 0.01"
    );
}
