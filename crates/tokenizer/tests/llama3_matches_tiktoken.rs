//! Llama 3 tiktoken file: our ids equal tiktoken's on the whole corpus (`tests/data/llama3_tiktoken.json`).

mod common;

use peregrine_tokenizer::{EncodeOptions, Tokenizer};

fn tokenizer() -> Tokenizer {
    Tokenizer::from_tiktoken_file(&common::llama3_tokenizer_path())
        .expect("loading the Llama 3 tokenizer.model")
}

#[test]
fn encode_ordinary_matches_tiktoken() {
    let tok = tokenizer();
    let golden = common::read_json("llama3_tiktoken.json");
    let strings = common::corpus();
    let opts = EncodeOptions {
        add_bos: false,
        parse_special: false,
    };
    common::assert_all_equal(
        "llama3 plain",
        &strings,
        &common::id_lists(&golden, "ids_plain"),
        |s| tok.encode(s, opts).unwrap(),
    );
}

#[test]
fn encode_with_special_tokens_matches_tiktoken() {
    let tok = tokenizer();
    let golden = common::read_json("llama3_tiktoken.json");
    let strings = common::corpus();
    let opts = EncodeOptions {
        add_bos: false,
        parse_special: true,
    };
    common::assert_all_equal(
        "llama3 special",
        &strings,
        &common::id_lists(&golden, "ids_special"),
        |s| tok.encode(s, opts).unwrap(),
    );
}

#[test]
fn llama3_vocabulary_and_special_ids() {
    let tok = tokenizer();
    assert_eq!(tok.vocab_size(), 128_256);
    assert_eq!(tok.bos_id(), Some(128_000));
    assert_eq!(tok.eos_id(), Some(128_001));
    assert_eq!(tok.stop_ids(), [128_001, 128_008, 128_009]);
    assert!(tok.is_control(128_009));
    assert_eq!(tok.piece_bytes(128_009), Some(&b"<|eot_id|>"[..]));
    assert_eq!(
        tok.piece_bytes(128_255),
        Some(&b"<|reserved_special_token_245|>"[..])
    );
    assert_eq!(tok.piece_bytes(128_256), None);
    let ids = tok
        .encode("Hello", EncodeOptions::default_for(&tok))
        .unwrap();
    assert_eq!(ids[0], 128_000);
    assert_eq!(tok.decode(&ids).unwrap(), "<|begin_of_text|>Hello");
}

#[test]
fn decode_inverts_encode_on_the_corpus() {
    let tok = tokenizer();
    let opts = EncodeOptions {
        add_bos: false,
        parse_special: false,
    };
    for s in common::corpus() {
        let ids = tok.encode(&s, opts).unwrap();
        assert_eq!(tok.decode(&ids).unwrap(), s);
        let mut dec = tok.stream_decoder();
        let mut streamed: String = ids.iter().filter_map(|&id| dec.push(id)).collect();
        streamed.extend(dec.finish());
        assert_eq!(streamed, s);
    }
}
