//! `peregrine train eagle` end to end on a tiny ShareGPT-format file: it regenerates the
//! responses, trains a few updates, writes a head the engine loads (greedy `--spec eagle` output
//! equals plain decoding), the curves PNG and the history; bad inputs are clear errors.

use std::path::{Path, PathBuf};

mod common;
use common::{chat_json, peregrine};

fn scratch(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("peregrine-train-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// A ShareGPT-format array, cut off inside a last record as the PyPI file is.
fn write_sharegpt(path: &Path) {
    let questions = [
        "Name three rivers in Europe.",
        "What is the capital of Japan?",
        "Give me a synonym for happy.",
        "Count from one to five.",
        "What color is the sky on a clear day?",
        "Write one sentence about cats.",
        "Say hello in Spanish.",
    ];
    let records: Vec<String> = questions
        .iter()
        .enumerate()
        .map(|(i, q)| {
            format!(
                r#"{{"id": "q{i}", "conversations": [{{"from": "human", "value": "{q}"}}, {{"from": "gpt", "value": "..."}}]}}"#
            )
        })
        .collect();
    let text = format!(
        "[\n{},\n{{\"id\": \"cut\", \"conversations\": [{{\"from\": \"hum",
        records.join(",\n")
    );
    std::fs::write(path, text).expect("write data");
}

#[test]
fn trains_a_head_the_engine_runs_losslessly() {
    let dir = scratch("e2e");
    let data = dir.join("sharegpt.json");
    write_sharegpt(&data);
    let out_path = dir.join("head.safetensors");
    let (d, o, s) = (
        data.display().to_string(),
        out_path.display().to_string(),
        dir.join("samples.json").display().to_string(),
    );
    let model = peregrine_testkit::smollm2_path().display().to_string();
    // One tiny configuration; each call adds its own flags.
    let train = |extra: &[&str]| {
        let mut args = vec![
            "train",
            "eagle",
            "--target",
            &model,
            "--data",
            &d,
            "--out",
            &o,
            "--samples",
            &s,
            "--n-prompts",
            "4",
            "--n-val",
            "2",
            "--max-new-tokens",
            "12",
            "--draft-vocab",
            "256",
            "--intermediate",
            "128",
            "--batch-tokens",
            "60",
            "--threads",
            "2",
            "--quiet",
        ];
        args.extend_from_slice(extra);
        peregrine(&args)
    };
    let run = train(&["--val-every", "2"]);
    assert_eq!(run.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        stderr.contains("cut off after the last complete one"),
        "{stderr}"
    );
    assert!(out_path.exists());
    let png = std::fs::read(out_path.with_extension("png")).expect("curves PNG");
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let history: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out_path.with_extension("json")).unwrap()).unwrap();
    let updates = history["updates"].as_array().expect("updates");
    assert!(updates.len() >= 2, "{history}");
    assert!(history["validations"].as_array().unwrap().len() >= 2);

    // The engine loads it, and speculative greedy output is plain greedy output.
    let gen = |extra: &[&str]| chat_json("Count from one to five.", 24, extra);
    let plain = gen(&[]);
    let spec = gen(&["--spec", "eagle", "--eagle", &o, "--tree", "dynamic:8,4,2"]);
    assert_eq!(spec["tokens"], plain["tokens"]);
    assert_eq!(spec["spec"]["method"], "eagle");

    // Resuming the checkpoint with other settings (a different schedule) is refused.
    let again = train(&["--lr", "5e-4"]);
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("schedule"));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn bad_training_inputs_are_clear_errors() {
    let dir = scratch("bad");
    let not_json = dir.join("bad.json");
    std::fs::write(&not_json, "{ this is not a ShareGPT array").unwrap();
    let model = peregrine_testkit::smollm2_path().display().to_string();
    let out = dir.join("h.safetensors").display().to_string();
    for (extra, want) in [
        (
            vec!["--data", "/nonexistent/sharegpt.json"],
            "scripts/fetch-sharegpt",
        ),
        (
            vec!["--data", not_json.to_str().unwrap()],
            "expected the top-level array",
        ),
    ] {
        let mut args = vec![
            "train", "eagle", "--target", &model, "--out", &out, "--quiet",
        ];
        args.extend(extra);
        let run = peregrine(&args);
        assert_eq!(run.status.code(), Some(1));
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert!(stderr.contains(want), "{stderr}");
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn the_shipped_head_is_found_and_lossless() {
    let gen = |extra: &[&str]| {
        chat_json(
            "Write a short note to a friend about a trip to the mountains.",
            48,
            extra,
        )
    };
    let plain = gen(&[]);
    // No --eagle: the default model finds assets/eagle/SmolLM2-135M-Instruct.eagle3.safetensors.
    let spec = gen(&["--spec", "eagle", "--tree", "chain:2"]);
    assert_eq!(spec["tokens"], plain["tokens"]);
    // A trained head gets some drafts accepted (a random one almost never does).
    assert!(spec["spec"]["tau"].as_f64().unwrap() > 1.0, "{spec}");
}
