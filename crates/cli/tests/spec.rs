//! `peregrine generate --spec ...` and `peregrine bench spec` end to end, through the binary:
//! the `spec` JSON object, output identical to plain greedy decoding, and clear errors with
//! exit code 1 for bad speculative settings.

use std::process::{Command, Output};

fn peregrine(args: &[&str]) -> Output {
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

fn model() -> String {
    peregrine_testkit::smollm2_path().display().to_string()
}

const PROMPT: &str = "Repeat this sentence twice: the falcon dives at two hundred miles an hour.";

fn generate_json(extra: &[&str]) -> serde_json::Value {
    let m = model();
    let mut args = vec![
        "generate",
        "--model",
        &m,
        "--chat",
        "--prompt",
        PROMPT,
        "--max-tokens",
        "40",
        "--json",
        "--quiet",
    ];
    args.extend_from_slice(extra);
    let out = peregrine(&args);
    assert_eq!(out.status.code(), Some(0));
    serde_json::from_slice(&out.stdout).expect("stdout is one JSON object")
}

#[test]
fn spec_json_object_and_tokens_equal_plain() {
    let plain = generate_json(&[]);
    assert!(
        plain.get("spec").is_none(),
        "plain decoding has no spec object"
    );
    for tree in ["auto", "chain:5", "eagle-default", "dynamic:16,8,2"] {
        let v = generate_json(&["--spec", "ngram", "--tree", tree]);
        assert_eq!(
            v["tokens"], plain["tokens"],
            "tree {tree}: speculative greedy differs from plain"
        );
        let s = &v["spec"];
        assert_eq!(s["method"], "ngram");
        for key in [
            "tau",
            "steps",
            "accepted_per_depth",
            "draft_ms",
            "verify_ms",
        ] {
            assert!(s.get(key).is_some(), "spec object lacks {key}");
        }
        assert!(s["tau"].as_f64().unwrap() >= 1.0);
    }
    let v = generate_json(&[
        "--spec",
        "layerskip",
        "--exit-layer",
        "20",
        "--tree",
        "chain:3",
    ]);
    assert_eq!(v["tokens"], plain["tokens"], "layerskip differs from plain");
    assert_eq!(v["spec"]["method"], "layerskip");
}

#[test]
fn bad_spec_settings_are_clear_errors() {
    let m = model();
    let tree_file =
        std::env::temp_dir().join(format!("peregrine-bad-tree-{}.txt", std::process::id()));
    std::fs::write(&tree_file, "0\n0,0\n3,1\n").unwrap();
    let tree_path = tree_file.display().to_string();
    let cases: [(&[&str], &str); 5] = [
        (
            &["--spec", "layerskip", "--exit-layer", "30"],
            "exit layer 30 is out of range",
        ),
        (&["--spec", "ngram", "--tree", "chain:0"], "bad tree spec"),
        (
            &["--spec", "ngram", "--tree", &tree_path],
            ":3: path [3, 1] comes before its parent",
        ),
        (&["--spec", "draft"], "needs --draft-model"),
        (
            &[
                "--spec",
                "draft",
                "--draft-model",
                "/nonexistent/draft.gguf",
            ],
            "loading draft model",
        ),
    ];
    for (extra, want) in cases {
        let mut args = vec![
            "generate",
            "--model",
            &m,
            "--prompt",
            "hi",
            "--max-tokens",
            "4",
            "--quiet",
        ];
        args.extend_from_slice(extra);
        let out = peregrine(&args);
        assert_eq!(out.status.code(), Some(1), "{extra:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(want),
            "{extra:?}: stderr {err:?} lacks {want:?}"
        );
    }
    let _ = std::fs::remove_file(tree_file);
}

#[test]
fn bench_spec_checks_greedy_equality() {
    let m = model();
    let prompts = peregrine_testkit::specbench_path("sum")
        .display()
        .to_string();
    let out = peregrine(&[
        "bench",
        "spec",
        "--model",
        &m,
        "--prompts",
        &prompts,
        "--n-prompts",
        "2",
        "--max-tokens",
        "24",
        "--spec",
        "ngram",
        "--check",
        "--json",
        "--quiet",
    ]);
    assert_eq!(out.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    assert_eq!(v["n_mismatches"], 0);
    assert_eq!(v["n_prompts"], 2);
    for key in ["plain_decode_tok_s", "spec_decode_tok_s", "speedup"] {
        assert!(v[key].as_f64().unwrap() > 0.0, "{key}");
    }
}
