//! Encode throughput (criterion, bytes/s) for SmolLM2 (GGUF) and Llama 3 (tiktoken).
//!
//! Text: the Spec-Bench prompts (`data/specbench/*.jsonl`, every turn, blank-line
//! separated) when present, else the golden corpus. `benches/compare.py` runs the Python peers.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use peregrine_formats::GgufFile;
use peregrine_tokenizer::{EncodeOptions, Tokenizer};
use std::path::PathBuf;

fn bench_text() -> String {
    let dir = peregrine_testkit::repo_root().join("data/specbench");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    let mut turns = Vec::new();
    for f in files {
        for line in std::fs::read_to_string(&f).unwrap_or_default().lines() {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(line) {
                turns.extend(
                    v["turns"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|t| t.as_str().map(str::to_string)),
                );
            }
        }
    }
    if turns.is_empty() {
        let corpus: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(
                PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/corpus.json"),
            )
            .unwrap(),
        )
        .unwrap();
        turns = corpus["strings"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_string())
            .collect();
    }
    turns.join("\n\n")
}

fn llama3_path() -> Option<PathBuf> {
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import llama_models, os; print(os.path.dirname(llama_models.__file__))",
        ])
        .output()
        .ok()?;
    out.status.success().then(|| {
        PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()).join("llama3/tokenizer.model")
    })
}

fn encode(c: &mut Criterion) {
    let text = bench_text();
    let opts = EncodeOptions {
        add_bos: false,
        parse_special: false,
    };
    let mut group = c.benchmark_group("encode");
    group.throughput(Throughput::Bytes(text.len() as u64));
    group.sample_size(20);
    let smollm2 =
        Tokenizer::from_gguf(&GgufFile::open(peregrine_testkit::smollm2_path()).unwrap()).unwrap();
    group.bench_function("smollm2_gguf", |b| {
        b.iter(|| smollm2.encode(&text, opts).unwrap())
    });
    if let Some(path) = llama3_path() {
        let llama3 = Tokenizer::from_tiktoken_file(&path).unwrap();
        group.bench_function("llama3_tiktoken", |b| {
            b.iter(|| llama3.encode(&text, opts).unwrap())
        });
    }
    group.finish();
}

criterion_group!(benches, encode);
criterion_main!(benches);
