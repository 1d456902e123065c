//! Encode throughput on one text file, for `benches/compare.py`.
//!
//! `cargo run --release -p peregrine-tokenizer --example encode_speed -- MODEL TEXT_FILE [REPEATS [IDS_OUT]]`
//! prints one JSON object: `{"mb_s": .., "n_tokens": .., "n_bytes": .., "best_ms": ..}`, and
//! writes the ids as a JSON array to IDS_OUT when given.
//! MODEL is a GGUF file or a tiktoken `tokenizer.model`.

use peregrine_formats::GgufFile;
use peregrine_tokenizer::{EncodeOptions, Tokenizer};
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        return Err("usage: encode_speed MODEL TEXT_FILE [REPEATS]".into());
    }
    let model = std::path::Path::new(&args[1]);
    let text = std::fs::read_to_string(&args[2])?;
    let repeats: usize = args.get(3).map(|s| s.parse()).transpose()?.unwrap_or(5);
    let tok = if std::fs::read(model)?.starts_with(b"GGUF") {
        Tokenizer::from_gguf(&GgufFile::open(model)?)?
    } else {
        Tokenizer::from_tiktoken_file(model)?
    };
    let opts = EncodeOptions {
        add_bos: false,
        parse_special: false,
    };
    let mut best = f64::MAX;
    let mut ids = Vec::new();
    for _ in 0..repeats.max(1) {
        let t0 = Instant::now();
        ids = tok.encode(&text, opts)?;
        best = best.min(t0.elapsed().as_secs_f64());
    }
    let n_tokens = ids.len();
    if let Some(path) = args.get(4) {
        let list: Vec<String> = ids.iter().map(u32::to_string).collect();
        std::fs::write(path, format!("[{}]\n", list.join(",")))?;
    }
    println!(
        "{{\"mb_s\": {:.3}, \"n_tokens\": {}, \"n_bytes\": {}, \"best_ms\": {:.3}}}",
        text.len() as f64 / best / 1e6,
        n_tokens,
        text.len(),
        best * 1e3
    );
    Ok(())
}
