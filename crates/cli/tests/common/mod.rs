//! What the end-to-end CLI tests share: running the built binary from the repository root and
//! the default model's path.

use std::process::{Command, Output};

/// Runs `peregrine args` from the repository root; prints the command, exit code and both
/// streams (shown when a test fails).
pub fn peregrine(args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_peregrine"))
        .args(args)
        .current_dir(peregrine_testkit::repo_root())
        .output()
        .expect("the binary runs");
    eprintln!(
        "peregrine {args:?}\nexit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The default model (SmolLM2-135M-Instruct Q4_1), as a command-line argument.
#[allow(dead_code)] // not every test file passes a model
pub fn model() -> String {
    peregrine_testkit::smollm2_path().display().to_string()
}

/// `peregrine generate --chat --prompt PROMPT --max-tokens N --json --quiet EXTRA...` on the
/// default model; asserts exit 0 and returns the JSON object.
#[allow(dead_code)] // not every test file generates
pub fn chat_json(prompt: &str, max_tokens: usize, extra: &[&str]) -> serde_json::Value {
    let (m, n) = (model(), max_tokens.to_string());
    let mut args = vec![
        "generate",
        "--model",
        &m,
        "--chat",
        "--prompt",
        prompt,
        "--max-tokens",
        &n,
        "--json",
        "--quiet",
    ];
    args.extend_from_slice(extra);
    let out = peregrine(&args);
    assert_eq!(out.status.code(), Some(0));
    serde_json::from_slice(&out.stdout).expect("stdout is one JSON object")
}
