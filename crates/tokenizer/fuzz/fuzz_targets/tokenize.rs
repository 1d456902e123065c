//! Arbitrary bytes as text (and as token ids) through the SmolLM2 tokenizer: no panics,
//! decode(encode(s)) == s for encodable text, streaming == whole decoding.
#![no_main]

use libfuzzer_sys::fuzz_target;
use peregrine_formats::GgufFile;
use peregrine_tokenizer::{EncodeOptions, Tokenizer};
use std::sync::OnceLock;

fn tokenizer() -> &'static Tokenizer {
    static T: OnceLock<Tokenizer> = OnceLock::new();
    T.get_or_init(|| {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../models/SmolLM2-135M-Instruct.Q4_1.gguf");
        Tokenizer::from_gguf(&GgufFile::open(path).expect("run scripts/fetch-model first")).unwrap()
    })
}

/// The SmolLM2 vocabulary lacks tokens for a few bytes (see tests/smollm2_matches_llama_cpp.rs).
fn can_encode(s: &str) -> bool {
    !s.chars().any(|c| matches!(c, '\u{4}' | '\u{6}' | '\u{13}' | '\u{14}' | '\u{16}' | '\u{1d}' | '\u{40000}'..='\u{bffff}'))
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else { return };
    let tok = tokenizer();
    let text = String::from_utf8_lossy(rest);
    let opts = EncodeOptions { add_bos: flags & 1 != 0, parse_special: flags & 2 != 0 };
    let ids = tok.encode(&text, opts).unwrap();
    let decoded = tok.decode(&ids).unwrap();
    if can_encode(&text) {
        let bos = if opts.add_bos { "<|im_start|>" } else { "" };
        assert_eq!(decoded, format!("{bos}{text}"));
    }
    // The bytes as little-endian u16 ids: streaming equals whole decoding.
    let raw: Vec<u32> = rest.chunks_exact(2).map(|c| u32::from(u16::from_le_bytes([c[0], c[1]]))).collect();
    let known: Vec<u32> = raw.into_iter().filter(|&id| (id as usize) < tok.vocab_size()).collect();
    let mut dec = tok.stream_decoder();
    let mut streamed = String::new();
    for &id in &known {
        streamed.extend(dec.push(id));
    }
    streamed.extend(dec.finish());
    assert_eq!(streamed, tok.decode(&known).unwrap());
});
