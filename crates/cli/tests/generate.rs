//! `peregrine generate` and `bench` end to end, through the built binary: output format,
//! determinism, and a clear error with exit code 1 for each kind of bad input.

use peregrine_formats::{GgmlType, GgufWriter, MetadataValue};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

mod common;
use common::{model, peregrine};

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn generate_json_is_one_object_and_greedy_is_deterministic() {
    let args = [
        "generate",
        "--model",
        &model(),
        "--chat",
        "--prompt",
        "Name three colors.",
        "--max-tokens",
        "12",
        "--json",
        "--quiet",
    ];
    let a = peregrine(&args);
    assert_eq!(a.status.code(), Some(0));
    let v: serde_json::Value =
        serde_json::from_slice(&a.stdout).expect("stdout is one JSON object");
    for key in [
        "text",
        "tokens",
        "n_prompt",
        "n_generated",
        "prefill_tok_s",
        "decode_tok_s",
    ] {
        assert!(v.get(key).is_some(), "missing {key}");
    }
    let n = v["n_generated"].as_u64().unwrap();
    assert!(n > 0 && n <= 12);
    assert_eq!(v["tokens"].as_array().unwrap().len() as u64, n);
    let b = peregrine(&args);
    let w: serde_json::Value = serde_json::from_slice(&b.stdout).unwrap();
    assert_eq!(
        v["tokens"], w["tokens"],
        "greedy decoding must be reproducible"
    );
}

#[test]
fn raw_prompt_recognises_control_tokens_and_stops_at_end_of_turn() {
    let prompt =
        "<|im_start|>user\nWrite a haiku about falcons.<|im_end|>\n<|im_start|>assistant\n";
    let out = peregrine(&[
        "generate",
        "--model",
        &model(),
        "--prompt",
        prompt,
        "--max-tokens",
        "64",
        "--json",
        "--quiet",
    ]);
    assert_eq!(out.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // 17 tokens: control tokens are single ids, not spelled out as text.
    assert!(
        v["n_prompt"].as_u64().unwrap() < 20,
        "control tokens were not recognised: {v}"
    );
    assert_eq!(v["stop_reason"], "stop_token");
}

#[test]
fn prompt_longer_than_context_is_an_error() {
    let long = "word ".repeat(200);
    let out = peregrine(&[
        "generate",
        "--model",
        &model(),
        "--ctx",
        "64",
        "--prompt",
        &long,
        "--quiet",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("context"), "{}", stderr(&out));
}

#[test]
fn bad_sampling_parameters_are_errors() {
    let out = peregrine(&[
        "generate",
        "--model",
        &model(),
        "--prompt",
        "hi",
        "--top-p",
        "1.5",
        "--quiet",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("top-p"), "{}", stderr(&out));
}

/// A tiny Llama-shaped GGUF (f32 weights) with a byte-level tokenizer, for breaking on purpose.
struct Tiny {
    arch: &'static str,
    skip_tensor: Option<&'static str>,
    ffn_rows: u64,
    tokenizer_model: Option<&'static str>,
}

impl Tiny {
    fn write(&self, dir: &Path, name: &str) -> PathBuf {
        let (h, ffn, vocab) = (64u64, 128u64, 256u64);
        let mut w = GgufWriter::new();
        let s = |v: &str| MetadataValue::String(v.to_string());
        w.add_metadata("general.architecture", s(self.arch));
        for (k, v) in [
            ("block_count", 1u32),
            ("embedding_length", 64),
            ("feed_forward_length", 128),
            ("attention.head_count", 2),
            ("attention.head_count_kv", 1),
            ("context_length", 128),
        ] {
            w.add_metadata(format!("{}.{k}", self.arch), MetadataValue::U32(v));
        }
        w.add_metadata(
            format!("{}.attention.layer_norm_rms_epsilon", self.arch),
            MetadataValue::F32(1e-5),
        );
        if let Some(model) = self.tokenizer_model {
            w.add_metadata("tokenizer.ggml.model", s(model));
            w.add_metadata("tokenizer.ggml.pre", s("gpt2"));
            let tokens: Vec<MetadataValue> = (0..vocab).map(|i| s(&byte_level(i as u8))).collect();
            w.add_metadata("tokenizer.ggml.tokens", MetadataValue::Array(tokens));
            w.add_metadata(
                "tokenizer.ggml.token_type",
                MetadataValue::Array((0..vocab).map(|_| MetadataValue::I32(1)).collect()),
            );
            w.add_metadata("tokenizer.ggml.merges", MetadataValue::Array(vec![]));
        }
        let mut tensor = |name: &str, dims: &[u64]| {
            if self.skip_tensor == Some(name) {
                return;
            }
            let n: u64 = dims.iter().product();
            let data: Vec<u8> = (0..n)
                .flat_map(|i| (((i % 7) as f32 - 3.0) * 0.01).to_le_bytes())
                .collect();
            w.add_tensor(name, dims, GgmlType::F32, data)
                .expect("tensor fits");
        };
        tensor("token_embd.weight", &[h, vocab]);
        tensor("output_norm.weight", &[h]);
        tensor("blk.0.attn_norm.weight", &[h]);
        tensor("blk.0.attn_q.weight", &[h, h]);
        tensor("blk.0.attn_k.weight", &[h, 32]);
        tensor("blk.0.attn_v.weight", &[h, 32]);
        tensor("blk.0.attn_output.weight", &[h, h]);
        tensor("blk.0.ffn_norm.weight", &[h]);
        tensor("blk.0.ffn_gate.weight", &[h, self.ffn_rows]);
        tensor("blk.0.ffn_up.weight", &[h, ffn]);
        tensor("blk.0.ffn_down.weight", &[ffn, h]);
        let path = dir.join(name);
        w.write(&path).expect("fixture written");
        path
    }
}

/// GPT-2's byte-to-unicode map, so every byte is one token.
fn byte_level(b: u8) -> String {
    let printable = |c: u8| {
        (b'!'..=b'~').contains(&c) || (0xA1..=0xAC).contains(&c) || (0xAE..=0xFF).contains(&c)
    };
    if printable(b) {
        return char::from(b).to_string();
    }
    let offset = (0..b).filter(|&c| !printable(c)).count() as u32;
    char::from_u32(256 + offset).unwrap().to_string()
}

fn fixture_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("peregrine-generate-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn tiny_valid_model_generates() {
    let dir = fixture_dir();
    let ok = Tiny {
        arch: "llama",
        skip_tensor: None,
        ffn_rows: 128,
        tokenizer_model: Some("gpt2"),
    }
    .write(&dir, "ok.gguf");
    let out = peregrine(&[
        "generate",
        "--model",
        ok.to_str().unwrap(),
        "--prompt",
        "abc",
        "--max-tokens",
        "3",
        "--json",
        "--quiet",
    ]);
    assert_eq!(out.status.code(), Some(0));
}

#[test]
fn broken_models_are_clear_errors() {
    let dir = fixture_dir();
    let cases = [
        (
            Tiny {
                arch: "mamba",
                skip_tensor: None,
                ffn_rows: 128,
                tokenizer_model: Some("gpt2"),
            },
            "architecture",
        ),
        (
            Tiny {
                arch: "llama",
                skip_tensor: Some("blk.0.attn_k.weight"),
                ffn_rows: 128,
                tokenizer_model: Some("gpt2"),
            },
            "missing tensor \"blk.0.attn_k.weight\"",
        ),
        (
            Tiny {
                arch: "llama",
                skip_tensor: None,
                ffn_rows: 96,
                tokenizer_model: Some("gpt2"),
            },
            "blk.0.ffn_gate.weight",
        ),
        (
            Tiny {
                arch: "llama",
                skip_tensor: None,
                ffn_rows: 128,
                tokenizer_model: None,
            },
            "tokenizer",
        ),
        (
            Tiny {
                arch: "llama",
                skip_tensor: None,
                ffn_rows: 128,
                tokenizer_model: Some("sentencepiece-xyz"),
            },
            "tokenizer",
        ),
    ];
    for (i, (tiny, needle)) in cases.iter().enumerate() {
        let path = tiny.write(&dir, &format!("bad{i}.gguf"));
        let out = peregrine(&[
            "generate",
            "--model",
            path.to_str().unwrap(),
            "--prompt",
            "abc",
            "--max-tokens",
            "2",
            "--quiet",
        ]);
        assert_eq!(out.status.code(), Some(1), "case {i}");
        let err = stderr(&out);
        assert!(
            err.starts_with("error: ") && err.contains(needle),
            "case {i}: {err}"
        );
        assert!(!err.contains("panicked"), "case {i}: {err}");
    }
    let truncated = dir.join("truncated.gguf");
    let bytes = std::fs::read(peregrine_testkit::smollm2_path()).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() / 3]).unwrap();
    let out = peregrine(&[
        "generate",
        "--model",
        truncated.to_str().unwrap(),
        "--prompt",
        "abc",
        "--quiet",
    ]);
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn bench_json_reports_every_field() {
    let out = peregrine(&[
        "bench",
        "--model",
        &model(),
        "--prefill-tokens",
        "32",
        "--decode-tokens",
        "4",
        "--repeats",
        "1",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    for key in ["prefill_tok_s", "decode_tok_s", "cost_curve", "peak_rss_mb"] {
        assert!(v.get(key).is_some(), "missing {key}");
    }
    let curve = v["cost_curve"].as_object().unwrap();
    for k in ["1", "2", "4", "8", "16", "32", "64"] {
        assert!(curve[k].as_f64().unwrap() > 0.0);
    }
    assert_eq!(curve["1"].as_f64(), Some(1.0));
}

#[test]
fn chat_answers_each_line_and_reuses_the_conversation() {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = Command::new(env!("CARGO_BIN_EXE_peregrine"))
        .args(["chat", "--model", &model(), "--max-tokens", "8", "--quiet"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"What is 2+2?\nAnd 3+3?\n/exit\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines().filter(|l| !l.trim().is_empty()).count() >= 2,
        "a reply per user line: {text:?}"
    );
}
