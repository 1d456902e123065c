//! Replays the committed fuzz corpora (`fuzz/corpus/*`) through the parsers on the stable
//! toolchain, so every input the fuzzer found interesting stays a regression test in CI.

use peregrine_formats::safetensors_io::SafetensorsFile;
use peregrine_formats::{quant, GgufFile};
use std::path::PathBuf;

fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("corpus entry").path())
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| (p.clone(), std::fs::read(&p).expect("read corpus file")))
        .collect()
}

#[test]
fn gguf_corpus_replays_cleanly() {
    let files = corpus("gguf_parse");
    assert!(files.len() > 100, "corpus present");
    let mut n_ok = 0;
    for (path, bytes) in files {
        match GgufFile::parse_bytes(bytes, &path) {
            Err(err) => assert!(!err.to_string().contains('\n'), "{}: {err}", path.display()),
            Ok(gguf) => {
                n_ok += 1;
                let _ = gguf.model_config();
                for t in gguf.tensors() {
                    if t.n_elements() <= 1 << 16 {
                        let mut out = vec![0f32; t.n_elements() as usize];
                        quant::dequantize_row(t.ggml_type, gguf.tensor_data(t), &mut out)
                            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                    }
                }
            }
        }
    }
    assert!(n_ok >= 3, "the seeds parse");
}

#[test]
fn safetensors_corpus_replays_cleanly() {
    for (path, bytes) in corpus("safetensors_parse") {
        if let Ok(file) = SafetensorsFile::parse_bytes(bytes, &path) {
            for name in file.names() {
                let tensor = file
                    .tensor(name)
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                let _ = tensor.to_f32(file.path());
            }
        }
    }
}
