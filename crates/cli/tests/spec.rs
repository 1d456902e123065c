//! `peregrine generate --spec ...` and `peregrine bench spec` end to end, through the binary:
//! the `spec` JSON object, output identical to plain greedy decoding, and clear errors with
//! exit code 1 for bad speculative settings.

mod common;
use common::{chat_json, model, peregrine};

const PROMPT: &str = "Repeat this sentence twice: the falcon dives at two hundred miles an hour.";

fn generate_json(extra: &[&str]) -> serde_json::Value {
    chat_json(PROMPT, 40, extra)
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

/// Writes a random EAGLE-3 head for SmolLM2 (hidden 576, 9/3 heads of 64, MLP width 256, a
/// draft vocabulary of every 16th token) with a small deterministic generator; `hidden` other
/// than 576 makes a head that does not fit.
fn write_eagle3_head(path: &std::path::Path, hidden: usize) {
    use peregrine_formats::safetensors_io::{Dtype, SafetensorsWriter};
    let (h, q_dim, kv_dim, ffn, v) = (hidden, 576, 192, 256, 49152usize);
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    };
    let mut w = SafetensorsWriter::new();
    let mut matrix = |w: &mut SafetensorsWriter, name: &str, rows: usize, cols: usize| {
        let s = 1.7 / (cols as f32).sqrt();
        let vals: Vec<f32> = (0..rows * cols).map(|_| next() * s).collect();
        w.add_f32(name, Dtype::BF16, &[rows, cols], &vals).unwrap();
    };
    let vd = v / 16;
    matrix(&mut w, "fc.weight", h, 3 * h);
    matrix(&mut w, "midlayer.self_attn.q_proj.weight", q_dim, 2 * h);
    matrix(&mut w, "midlayer.self_attn.k_proj.weight", kv_dim, 2 * h);
    matrix(&mut w, "midlayer.self_attn.v_proj.weight", kv_dim, 2 * h);
    matrix(&mut w, "midlayer.self_attn.o_proj.weight", h, q_dim);
    matrix(&mut w, "midlayer.mlp.gate_proj.weight", ffn, h);
    matrix(&mut w, "midlayer.mlp.up_proj.weight", ffn, h);
    matrix(&mut w, "midlayer.mlp.down_proj.weight", h, ffn);
    matrix(&mut w, "lm_head.weight", vd, h);
    for name in [
        "midlayer.input_layernorm.weight",
        "midlayer.hidden_norm.weight",
        "midlayer.post_attention_layernorm.weight",
        "norm.weight",
    ] {
        w.add_f32(name, Dtype::F32, &[h], &vec![1.0; h]).unwrap();
    }
    let d2t: Vec<u8> = (0..vd)
        .flat_map(|i| (15 * i as i64).to_le_bytes())
        .collect();
    w.add_raw("d2t", Dtype::I64, &[vd], d2t).unwrap();
    let t2d: Vec<u8> = (0..v).map(|t| u8::from(t % 16 == 0)).collect();
    w.add_raw("t2d", Dtype::BOOL, &[v], t2d).unwrap();
    w.write(path).unwrap();
}

fn temp_head(tag: &str, hidden: usize) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!(
        "peregrine-cli-eagle-{tag}-{}.safetensors",
        std::process::id()
    ));
    write_eagle3_head(&path, hidden);
    path
}

#[test]
fn eagle_greedy_equals_plain_and_samples() {
    let head = temp_head("good", 576);
    let head_path = head.display().to_string();
    let plain = generate_json(&[]);
    for tree in ["auto", "chain:3", "eagle-default", "dynamic:12,5,3"] {
        let v = generate_json(&["--spec", "eagle", "--eagle", &head_path, "--tree", tree]);
        assert_eq!(
            v["tokens"], plain["tokens"],
            "tree {tree}: EAGLE greedy differs from plain"
        );
        let s = &v["spec"];
        assert_eq!(s["method"], "eagle");
        for key in [
            "tau",
            "steps",
            "accepted_per_depth",
            "draft_ms",
            "verify_ms",
        ] {
            assert!(s.get(key).is_some(), "spec object lacks {key}");
        }
    }
    // Sampling with EAGLE drafts (point-mass rule) runs and is reproducible for a seed.
    let sampled = |seed: &str| {
        generate_json(&[
            "--spec",
            "eagle",
            "--eagle",
            &head_path,
            "--tree",
            "eagle-default",
            "--temperature",
            "0.8",
            "--seed",
            seed,
        ])["tokens"]
            .clone()
    };
    assert_eq!(sampled("3"), sampled("3"));
    let _ = std::fs::remove_file(head);
}

#[test]
fn bad_eagle_heads_are_clear_errors() {
    let m = model();
    let misfit = temp_head("misfit", 512);
    let misfit_path = misfit.display().to_string();
    let not_head = std::env::temp_dir().join(format!(
        "peregrine-cli-not-eagle-{}.safetensors",
        std::process::id()
    ));
    {
        use peregrine_formats::safetensors_io::{Dtype, SafetensorsWriter};
        let mut w = SafetensorsWriter::new();
        w.add_f32("weight", Dtype::F32, &[2], &[1.0, 2.0]).unwrap();
        w.write(&not_head).unwrap();
    }
    let not_head_path = not_head.display().to_string();
    let shipped = peregrine_testkit::repo_root()
        .join("assets/eagle/SmolLM2-135M-Instruct.eagle3.safetensors");
    let mut cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["--spec", "eagle", "--eagle", "/nonexistent/head.safetensors"],
            "loading EAGLE head /nonexistent/head.safetensors",
        ),
        (
            vec!["--spec", "eagle", "--eagle", &misfit_path],
            "tensor \"midlayer.self_attn.q_proj.weight\" has shape [576, 1024], expected [576, 1152]",
        ),
        (
            vec!["--spec", "eagle", "--eagle", &not_head_path],
            "not an EAGLE head",
        ),
    ];
    if !shipped.exists() {
        cases.push((
            vec!["--spec", "eagle"],
            "the shipped EAGLE head assets/eagle/SmolLM2-135M-Instruct.eagle3.safetensors is missing",
        ));
    }
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
        args.extend_from_slice(&extra);
        let out = peregrine(&args);
        assert_eq!(out.status.code(), Some(1), "{extra:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(want),
            "{extra:?}: stderr {err:?} lacks {want:?}"
        );
    }
    let _ = std::fs::remove_file(misfit);
    let _ = std::fs::remove_file(not_head);
}
