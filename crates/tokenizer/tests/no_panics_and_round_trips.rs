//! Property tests: arbitrary text never makes encoding fail or panic, decoding inverts encoding,
//! streaming equals whole decoding, and arbitrary tokenizer specs are accepted or rejected cleanly.

mod common;

use peregrine_formats::GgufFile;
use peregrine_tokenizer::{EncodeOptions, Error, Tokenizer, TokenizerSpec};
use proptest::prelude::*;
use std::sync::OnceLock;

fn llama3() -> &'static Tokenizer {
    static T: OnceLock<Tokenizer> = OnceLock::new();
    T.get_or_init(|| Tokenizer::from_tiktoken_file(&common::llama3_tokenizer_path()).unwrap())
}

fn smollm2() -> &'static Tokenizer {
    static T: OnceLock<Tokenizer> = OnceLock::new();
    T.get_or_init(|| {
        Tokenizer::from_gguf(&GgufFile::open(peregrine_testkit::smollm2_path()).unwrap()).unwrap()
    })
}

/// Text mixing arbitrary chars with the pieces tokenizers care about.
fn text() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        any::<char>().prop_map(String::from),
        "[a-zA-Z]{1,8}",
        "[0-9]{1,12}",
        "[ \t\r\n\u{a0}\u{3000}\u{85}\u{b}]{1,6}",
        Just("'s".to_string()),
        Just("'LL".to_string()),
        Just("<|im_start|>".to_string()),
        Just("<|eot_id|>".to_string()),
        Just("<|im_end".to_string()),
        Just("😀‍👩".to_string()),
        "\\PC{1,4}",
    ];
    proptest::collection::vec(piece, 0..24).prop_map(|v| v.concat())
}

/// The SmolLM2 vocabulary lacks a few byte tokens (see smollm2_matches_llama_cpp.rs).
fn smollm2_can_encode(s: &str) -> bool {
    !s.chars().any(|c| {
        matches!(
            c,
            '\u{4}' | '\u{6}' | '\u{13}' | '\u{14}' | '\u{16}' | '\u{1d}' | '\u{40000}'
                ..='\u{bffff}'
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn llama3_round_trips(s in text(), parse_special in any::<bool>()) {
        let tok = llama3();
        let ids = tok.encode(&s, EncodeOptions { add_bos: false, parse_special }).unwrap();
        prop_assert_eq!(tok.decode(&ids).unwrap(), s);
    }

    #[test]
    fn smollm2_round_trips(s in text(), parse_special in any::<bool>()) {
        let tok = smollm2();
        let ids = tok.encode(&s, EncodeOptions { add_bos: false, parse_special }).unwrap();
        if smollm2_can_encode(&s) {
            prop_assert_eq!(tok.decode(&ids).unwrap(), s);
        }
    }

    #[test]
    fn streaming_equals_whole_decoding(ids in proptest::collection::vec(0u32..49_300, 0..40)) {
        let tok = smollm2();
        let known: Vec<u32> = ids.iter().copied().filter(|&id| (id as usize) < tok.vocab_size()).collect();
        let mut dec = tok.stream_decoder();
        let mut streamed = String::new();
        for &id in &known {
            streamed.extend(dec.push(id));
        }
        streamed.extend(dec.finish());
        prop_assert_eq!(streamed, tok.decode(&known).unwrap());
        let unknown = ids.iter().copied().find(|&id| id as usize >= tok.vocab_size());
        if let Some(id) = unknown {
            let is_unknown_id = matches!(tok.decode(&[id]), Err(Error::UnknownTokenId { .. }));
            prop_assert!(is_unknown_id);
        }
    }

    #[test]
    fn arbitrary_specs_never_panic(
        tokens in proptest::collection::vec("[ab Ġ<|>]{0,4}", 0..12),
        types in proptest::collection::vec(-2i32..8, 0..12),
        merges in proptest::collection::vec("[ab Ġ<|>]{0,5}", 0..12),
        pre in prop_oneof![Just("smollm"), Just("gpt2"), Just("llama-bpe"), Just("qwen2"), Just("bogus")],
        bos in proptest::option::of(0u32..16),
        s in text(),
    ) {
        let spec = TokenizerSpec {
            model: "gpt2".into(),
            pre: Some(pre.into()),
            tokens,
            token_types: types,
            merges,
            bos_id: bos,
            ..TokenizerSpec::default()
        };
        if let Ok(tok) = Tokenizer::from_spec(spec) {
            for parse_special in [false, true] {
                let _ = tok.encode(&s, EncodeOptions { add_bos: true, parse_special });
                let ids = tok.encode(&s, EncodeOptions { add_bos: false, parse_special }).unwrap();
                let _ = tok.decode(&ids).unwrap();
            }
        }
    }
}

#[test]
fn bad_tiktoken_files_are_errors() {
    let dir = std::env::temp_dir().join(format!("peregrine-tiktoken-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (name, body) in [
        ("bad_base64", "!!!! 0\n"),
        ("bad_rank", "YQ== x\n"),
        ("dup_rank", "YQ== 0\nYg== 0\n"),
        ("gap", "YQ== 0\nYg== 2\n"),
        ("huge_rank", "YQ== 4000000000\n"),
        ("empty", ""),
        ("three_fields", "YQ== 0 1\n"),
    ] {
        let path = dir.join(name);
        std::fs::write(&path, body).unwrap();
        let err = Tokenizer::from_tiktoken_file(&path).unwrap_err();
        assert!(matches!(err, Error::TiktokenLine { .. }), "{name}: {err}");
    }
    let err = Tokenizer::from_tiktoken_file(&dir.join("missing")).unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}
