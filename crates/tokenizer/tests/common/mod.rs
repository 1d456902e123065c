//! Shared helpers of the tokenizer integration tests.
#![allow(dead_code)]

use std::path::PathBuf;

/// This crate's `tests/data`.
pub fn data_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data")
}

/// Reads a JSON golden from `tests/data`.
pub fn read_json(name: &str) -> serde_json::Value {
    let path = data_dir().join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The corpus strings (`tests/data/corpus.json`).
pub fn corpus() -> Vec<String> {
    read_json("corpus.json")["strings"]
        .as_array()
        .expect("corpus.json has a strings array")
        .iter()
        .map(|s| s.as_str().expect("corpus strings are strings").to_string())
        .collect()
}

/// `golden[key]` as one id list per corpus string.
pub fn id_lists(golden: &serde_json::Value, key: &str) -> Vec<Vec<u32>> {
    golden[key]
        .as_array()
        .unwrap_or_else(|| panic!("golden has no {key:?} array"))
        .iter()
        .map(|ids| {
            ids.as_array()
                .expect("id list")
                .iter()
                .map(|id| id.as_u64().expect("id") as u32)
                .collect()
        })
        .collect()
}

/// The Llama 3 `tokenizer.model` shipped in PyPI `llama-models`: `$PEREGRINE_LLAMA3_TOKENIZER`,
/// or found through `python3 -c "import llama_models"`.
pub fn llama3_tokenizer_path() -> PathBuf {
    if let Some(p) = std::env::var_os("PEREGRINE_LLAMA3_TOKENIZER") {
        return PathBuf::from(p);
    }
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import llama_models, os; print(os.path.dirname(llama_models.__file__))",
        ])
        .output()
        .expect("running python3 to locate llama_models");
    assert!(
        out.status.success(),
        "the Llama 3 tokenizer comes from PyPI llama-models: run `pip install llama-models` \
         or set PEREGRINE_LLAMA3_TOKENIZER to its llama3/tokenizer.model"
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()).join("llama3/tokenizer.model")
}

/// Compares our ids with the oracle's for every corpus string; panics listing the first mismatches.
pub fn assert_all_equal(
    what: &str,
    strings: &[String],
    want: &[Vec<u32>],
    mut got: impl FnMut(&str) -> Vec<u32>,
) {
    assert_eq!(
        strings.len(),
        want.len(),
        "{what}: corpus and golden differ in length"
    );
    let mut failures = Vec::new();
    for (s, want) in strings.iter().zip(want) {
        let got = got(s);
        if &got != want {
            failures.push(format!("  {s:?}\n    want {want:?}\n    got  {got:?}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{what}: {} of {} strings differ from the oracle; first ones:\n{}",
        failures.len(),
        strings.len(),
        failures
            .iter()
            .take(15)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}
