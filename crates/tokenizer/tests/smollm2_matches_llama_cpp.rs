//! SmolLM2 (GGUF, pre-tokenizer `smollm`): our ids equal llama.cpp's on the whole corpus
//! (`tests/data/smollm2_llama_cpp.json`), with and without special-token parsing.

mod common;

use peregrine_formats::GgufFile;
use peregrine_tokenizer::{EncodeOptions, PreTokenizerKind, Tokenizer};

fn tokenizer() -> Tokenizer {
    let path = peregrine_testkit::smollm2_path();
    let file = GgufFile::open(&path).expect("opening the SmolLM2 GGUF");
    Tokenizer::from_gguf(&file).expect("building the SmolLM2 tokenizer")
}

#[test]
fn ids_match_llama_cpp_without_special_parsing() {
    let tok = tokenizer();
    let golden = common::read_json("smollm2_llama_cpp.json");
    let opts = EncodeOptions {
        add_bos: false,
        parse_special: false,
    };
    common::assert_all_equal(
        "smollm2 --no-parse-special",
        &common::corpus(),
        &common::id_lists(&golden, "ids_plain"),
        |s| tok.encode(s, opts).unwrap(),
    );
}

#[test]
fn ids_match_llama_cpp_with_special_parsing() {
    let tok = tokenizer();
    let golden = common::read_json("smollm2_llama_cpp.json");
    // llama-tokenize's defaults: the file's add_bos (false for SmolLM2), special tokens parsed.
    let opts = EncodeOptions::default_for(&tok);
    assert_eq!(
        opts,
        EncodeOptions {
            add_bos: false,
            parse_special: true
        }
    );
    common::assert_all_equal(
        "smollm2 (parse special)",
        &common::corpus(),
        &common::id_lists(&golden, "ids_special"),
        |s| tok.encode(s, opts).unwrap(),
    );
}

#[test]
fn smollm2_metadata() {
    let tok = tokenizer();
    assert_eq!(tok.vocab_size(), 49_152);
    assert_eq!(tok.pre_tokenizer(), PreTokenizerKind::Smollm);
    assert_eq!(tok.bos_id(), Some(1));
    assert_eq!(tok.eos_id(), Some(2));
    assert!(!tok.add_bos());
    // <|endoftext|> and <|im_end|> (= EOS) end generation.
    assert_eq!(tok.stop_ids(), [0, 2]);
    assert!(tok.is_control(1));
    assert_eq!(tok.piece_bytes(1), Some(&b"<|im_start|>"[..]));
    assert_eq!(tok.piece_bytes(216), Some(&b" "[..]));
    assert!(tok
        .chat_template()
        .is_some_and(|t| t.contains("<|im_start|>")));
    let ids = tok
        .encode(
            "Hi",
            EncodeOptions {
                add_bos: true,
                parse_special: true,
            },
        )
        .unwrap();
    assert_eq!(ids[0], 1);
}

/// The SmolLM2 vocabulary has no token for bytes 0x04, 0x06, 0x13, 0x14, 0x16, 0x1D, 0xF1 and
/// 0xF2, so text holding those control characters or code points U+40000..=U+BFFFF (UTF-8 lead
/// byte F1/F2) cannot round-trip; llama.cpp drops those bytes too (see the golden).
fn smollm2_can_encode(s: &str) -> bool {
    !s.chars().any(|c| {
        matches!(
            c,
            '\u{4}' | '\u{6}' | '\u{13}' | '\u{14}' | '\u{16}' | '\u{1d}' | '\u{40000}'
                ..='\u{bffff}'
        )
    })
}

#[test]
fn decode_and_stream_invert_encode_on_the_corpus() {
    let tok = tokenizer();
    let opts = EncodeOptions {
        add_bos: false,
        parse_special: false,
    };
    for s in common::corpus()
        .into_iter()
        .filter(|s| smollm2_can_encode(s))
    {
        let ids = tok.encode(&s, opts).unwrap();
        assert_eq!(tok.decode(&ids).unwrap(), s);
        let mut dec = tok.stream_decoder();
        let mut streamed = String::new();
        for &id in &ids {
            if let Some(text) = dec.push(id) {
                streamed.push_str(&text);
            }
            // Nothing emitted so far may end in a partial character: it is a `String`.
        }
        streamed.extend(dec.finish());
        assert_eq!(streamed, s);
    }
}
