//! `peregrine inspect` runs the real binary on the real SmolLM2 model and on corrupt copies.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn peregrine(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_peregrine"))
        .args(args)
        .output()
        .expect("running peregrine")
}

fn describe(args: &[&str], out: &Output) -> String {
    format!(
        "peregrine {}\nstatus: {}\nstdout: {}\nstderr: {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout)
            .chars()
            .take(2000)
            .collect::<String>(),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A scratch directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let dir =
            std::env::temp_dir().join(format!("peregrine-inspect-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }
    fn write(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, bytes).expect("write temp file");
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn inspect_json_lists_272_tensors_of_a_30_layer_llama() {
    let model = peregrine_testkit::smollm2_path();
    let args = ["inspect", model.to_str().expect("utf-8 path"), "--json"];
    let out = peregrine(&args);
    assert!(out.status.success(), "{}", describe(&args, &out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}\n{}", describe(&args, &out)));
    assert_eq!(v["architecture"], "llama");
    assert_eq!(v["config"]["n_layers"], 30);
    assert_eq!(v["config"]["hidden_size"], 576);
    assert_eq!(v["config"]["n_kv_heads"], 3);
    assert_eq!(v["config"]["tied_embeddings"], true);
    let tensors = v["tensors"].as_array().expect("tensors array");
    assert_eq!(tensors.len(), 272);
    assert_eq!(v["n_tensors"], 272);
    let embd = tensors
        .iter()
        .find(|t| t["name"] == "token_embd.weight")
        .expect("token_embd listed");
    assert_eq!(embd["type"], "q8_0");
    assert_eq!(embd["shape"], serde_json::json!([576, 49152]));
    assert_eq!(embd["bytes"], 30_081_024);
    for t in tensors {
        assert!(
            t["name"].is_string()
                && t["type"].is_string()
                && t["shape"].is_array()
                && t["bytes"].is_u64(),
            "{t}"
        );
    }
    // Long arrays are summarised, short ones kept.
    assert_eq!(v["metadata"]["tokenizer.ggml.tokens"]["len"], 49152);
    assert_eq!(
        v["metadata"]["tokenizer.ggml.tokens"]["first"][0],
        "<|endoftext|>"
    );
    assert_eq!(
        v["metadata"]["general.languages"],
        serde_json::json!(["en"])
    );
    assert_eq!(v["metadata"]["llama.block_count"], 30);
}

#[test]
fn inspect_human_table() {
    let model = peregrine_testkit::smollm2_path();
    let args = ["inspect", model.to_str().expect("utf-8 path")];
    let out = peregrine(&args);
    assert!(out.status.success(), "{}", describe(&args, &out));
    let text = String::from_utf8(out.stdout.clone()).expect("utf-8 output");
    assert!(
        text.contains("architecture:  llama"),
        "{}",
        describe(&args, &out)
    );
    assert!(text.contains("tensors (272, "), "{}", describe(&args, &out));
    assert!(
        text.contains("[string × 49152]"),
        "{}",
        describe(&args, &out)
    );
    assert!(text
        .lines()
        .any(|l| l.contains("blk.29.ffn_down.weight") && l.contains("q4_1")));
}

#[track_caller]
fn assert_clean_failure(path: &Path, expect_in_message: &str) {
    for json in [false, true] {
        let path_str = path.to_str().expect("utf-8 path");
        let args: Vec<&str> = if json {
            vec!["inspect", path_str, "--json"]
        } else {
            vec!["inspect", path_str]
        };
        let out = peregrine(&args);
        let context = describe(&args, &out);
        assert_eq!(
            out.status.code(),
            Some(1),
            "expected exit 1 (never 101, a panic): {context}"
        );
        assert!(out.stdout.is_empty(), "{context}");
        let stderr = String::from_utf8(out.stderr.clone()).expect("utf-8 stderr");
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "one-line error: {context}");
        assert!(lines[0].starts_with("error: "), "{context}");
        assert!(
            lines[0].contains(expect_in_message),
            "missing {expect_in_message:?}: {context}"
        );
    }
}

#[test]
fn corrupt_copies_exit_1_with_a_one_line_error() {
    let model = peregrine_testkit::smollm2_path();
    let bytes = std::fs::read(&model).expect("read model");
    let dir = TempDir::new("corrupt");

    assert_clean_failure(&dir.write("empty.gguf", &[]), "truncated");
    assert_clean_failure(&dir.write("cut-100.gguf", &bytes[..100]), "cut-100.gguf");
    assert_clean_failure(
        &dir.write("cut-header.gguf", &bytes[..1_000_000]),
        "cut-header.gguf",
    );
    assert_clean_failure(
        &dir.write("cut-data.gguf", &bytes[..bytes.len() - 1]),
        "runs past end of file",
    );

    let mut bad_magic = bytes[..4096].to_vec();
    bad_magic[..4].copy_from_slice(b"GGJT");
    assert_clean_failure(&dir.write("bad-magic.gguf", &bad_magic), "not a GGUF file");

    let mut bad_version = bytes[..4096].to_vec();
    bad_version[4..8].copy_from_slice(&7u32.to_le_bytes());
    assert_clean_failure(
        &dir.write("bad-version.gguf", &bad_version),
        "GGUF version 7 is not supported",
    );

    let mut absurd = bytes[..4096].to_vec();
    absurd[8..16].copy_from_slice(&(1u64 << 60).to_le_bytes());
    assert_clean_failure(&dir.write("absurd-tensors.gguf", &absurd), "tensor count");

    assert_clean_failure(&dir.0.join("does-not-exist.gguf"), "No such file");
    assert_clean_failure(
        &dir.write("bad.safetensors", b"not a safetensors file"),
        "safetensors",
    );
}

#[test]
fn inspect_safetensors_with_config_json() {
    use peregrine_formats::safetensors_io::{Dtype, SafetensorsWriter};
    let dir = TempDir::new("st");
    let mut writer = SafetensorsWriter::new();
    writer
        .add_f32("model.norm.weight", Dtype::BF16, &[4], &[1.0; 4])
        .expect("valid tensor");
    let path = dir.0.join("model.safetensors");
    writer.write(&path).expect("write safetensors");
    dir.write(
        "config.json",
        br#"{"model_type": "llama", "hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 2,
            "num_attention_heads": 2, "num_key_value_heads": 1, "vocab_size": 10, "max_position_embeddings": 32,
            "tie_word_embeddings": true}"#,
    );
    let args = ["inspect", path.to_str().expect("utf-8 path"), "--json"];
    let out = peregrine(&args);
    assert!(out.status.success(), "{}", describe(&args, &out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    assert_eq!(v["format"], "safetensors");
    assert_eq!(v["config"]["n_layers"], 2);
    assert_eq!(v["config"]["head_dim"], 4);
    assert_eq!(
        v["tensors"],
        serde_json::json!([{"name": "model.norm.weight", "type": "bf16", "shape": [4], "bytes": 8, "offset": 0}])
    );
}
