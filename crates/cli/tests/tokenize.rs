//! `peregrine tokenize` runs the real binary on the real SmolLM2 model.

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
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn tokenize_json_gives_ids_and_pieces() {
    let model = peregrine_testkit::smollm2_path();
    let args = [
        "tokenize",
        "--model",
        model.to_str().unwrap(),
        "--json",
        "<|im_start|>Hello world 12",
    ];
    let out = peregrine(&args);
    assert!(out.status.success(), "{}", describe(&args, &out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}\n{}", describe(&args, &out)));
    // Ids from llama.cpp's llama-tokenize on the same text.
    assert_eq!(
        v["ids"],
        serde_json::json!([1, 19556, 905, 216, 33, 34]),
        "{}",
        describe(&args, &out)
    );
    assert_eq!(
        v["pieces"],
        serde_json::json!(["<|im_start|>", "Hello", " world", " ", "1", "2"])
    );
}

#[test]
fn tokenize_no_special_and_text_output() {
    let model = peregrine_testkit::smollm2_path();
    let args = [
        "tokenize",
        "--model",
        model.to_str().unwrap(),
        "--no-special",
        "--no-bos",
        "<|im_start|>",
    ];
    let out = peregrine(&args);
    assert!(out.status.success(), "{}", describe(&args, &out));
    let stdout = String::from_utf8(out.stdout.clone()).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(lines.len() > 1, "{}", describe(&args, &out));
    assert!(
        lines.iter().all(|l| l.split('\t').count() == 2),
        "{}",
        describe(&args, &out)
    );
    assert!(
        !lines.iter().any(|l| l.starts_with("1\t")),
        "{}",
        describe(&args, &out)
    );
}

#[test]
fn tokenize_missing_model_exits_1() {
    let args = ["tokenize", "--model", "/nonexistent/model.gguf", "hi"];
    let out = peregrine(&args);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&args, &out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with("error: ") && stderr.contains("/nonexistent/model.gguf"),
        "{}",
        describe(&args, &out)
    );
}
