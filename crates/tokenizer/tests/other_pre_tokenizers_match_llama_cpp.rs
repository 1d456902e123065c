//! `gpt-2`, `llama-bpe` and `qwen2` pre-tokenizers: our ids equal llama.cpp's on every fifth corpus
//! string (`tests/data/llama_cpp_vocabs.json`), using llama.cpp's own vocab-only test GGUFs.
//!
//! Those files (1.7-7.8 MB) are not committed; they sit in the llama.cpp source tree that
//! `scripts/build-llama-cpp` unpacks. Run with
//! `cargo test -p peregrine-tokenizer --test other_pre_tokenizers_match_llama_cpp -- --ignored`.

mod common;

use peregrine_formats::GgufFile;
use peregrine_tokenizer::{EncodeOptions, Tokenizer};
use std::path::PathBuf;

fn llama_cpp_src() -> PathBuf {
    std::env::var_os("PEREGRINE_LLAMA_CPP_SRC")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                .join(".cache/peregrine/src/llama_cpp_python-0.3.36/vendor/llama.cpp")
        })
}

fn check_vocab(name: &str) {
    let path = llama_cpp_src().join(format!("models/ggml-vocab-{name}.gguf"));
    assert!(
        path.exists(),
        "{} is missing: run scripts/build-llama-cpp or set PEREGRINE_LLAMA_CPP_SRC",
        path.display()
    );
    let tok = Tokenizer::from_gguf(&GgufFile::open(&path).unwrap()).unwrap();
    let golden = common::read_json("llama_cpp_vocabs.json");
    let stride = golden["corpus_stride"].as_u64().unwrap() as usize;
    let strings: Vec<String> = common::corpus().into_iter().step_by(stride).collect();
    let vocab = &golden["vocabs"][name];
    let add_bos = EncodeOptions::default_for(&tok).add_bos;
    for (key, parse_special) in [("ids_special", true), ("ids_plain", false)] {
        let opts = EncodeOptions {
            add_bos,
            parse_special,
        };
        common::assert_all_equal(
            &format!("{name} {key}"),
            &strings,
            &common::id_lists(vocab, key),
            |s| tok.encode(s, opts).unwrap(),
        );
    }
}

#[test]
#[ignore = "needs llama.cpp's models/ggml-vocab-gpt-2.gguf (scripts/build-llama-cpp); run with --ignored"]
fn gpt2_matches_llama_cpp() {
    check_vocab("gpt-2");
}

#[test]
#[ignore = "needs llama.cpp's models/ggml-vocab-llama-bpe.gguf (scripts/build-llama-cpp); run with --ignored"]
fn llama_bpe_matches_llama_cpp() {
    check_vocab("llama-bpe");
}

#[test]
#[ignore = "needs llama.cpp's models/ggml-vocab-qwen2.gguf (scripts/build-llama-cpp); run with --ignored"]
fn qwen2_matches_llama_cpp() {
    check_vocab("qwen2");
}
