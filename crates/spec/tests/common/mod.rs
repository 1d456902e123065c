//! Shared helpers: the model, the tokenizer, and specbench prompts rendered as chat turns.

#![allow(dead_code)]

use peregrine_model::Model;
use peregrine_tokenizer::{ChatMessage, ChatTemplate, EncodeOptions, Tokenizer};
use std::sync::OnceLock;

pub fn model() -> &'static Model {
    static MODEL: OnceLock<Model> = OnceLock::new();
    MODEL.get_or_init(|| Model::load(&peregrine_testkit::smollm2_path(), 2).expect("model loads"))
}

pub fn tokenizer() -> &'static Tokenizer {
    static TOK: OnceLock<Tokenizer> = OnceLock::new();
    TOK.get_or_init(|| {
        Tokenizer::from_gguf(model().source().gguf().expect("a GGUF model")).expect("tokenizer")
    })
}

/// The first turns of `data/specbench/<set>.jsonl`, rendered with the chat template and
/// tokenized.
pub fn specbench_prompts(set: &str, n: usize) -> Vec<Vec<u32>> {
    let path = peregrine_testkit::specbench_path(set);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let tok = tokenizer();
    let template = ChatTemplate::for_tokenizer(tok).expect("chat template");
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .take(n)
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
            let turn = v["turns"][0].as_str().expect("a first turn");
            let rendered = template
                .render(&[ChatMessage::new("user", turn)], true)
                .expect("render");
            tok.encode(
                &rendered,
                EncodeOptions {
                    parse_special: true,
                    ..EncodeOptions::default_for(tok)
                },
            )
            .expect("encode")
        })
        .collect()
}
