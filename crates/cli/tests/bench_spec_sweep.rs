//! `peregrine bench spec --sweep-trees ... --png PATH` end to end, through the binary: one row
//! per tree, a valid PNG, `--dump-prompts`, and clear errors (exit 1) for bad sweep flags.

use std::path::{Path, PathBuf};

mod common;
use common::{model, peregrine};

fn sum_prompts() -> String {
    peregrine_testkit::specbench_path("sum")
        .display()
        .to_string()
}

fn temp_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("peregrine-{}-{name}", std::process::id()))
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// Checks the PNG structure: signature, then chunks with matching CRCs, IHDR first (returns
/// its width and height), at least one IDAT, IEND last.
fn check_png(path: &Path) -> (u32, u32) {
    let data = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(&data[..8], b"\x89PNG\r\n\x1a\n", "PNG signature");
    let be = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    let (mut pos, mut names, mut size) = (8usize, Vec::new(), (0, 0));
    while pos < data.len() {
        assert!(pos + 12 <= data.len(), "chunk header past the end at {pos}");
        let len = be(&data[pos..]) as usize;
        let end = pos + 8 + len;
        assert!(end + 4 <= data.len(), "chunk at {pos} runs past the end");
        let name = String::from_utf8_lossy(&data[pos + 4..pos + 8]).into_owned();
        assert_eq!(
            crc32(&data[pos + 4..end]),
            be(&data[end..]),
            "CRC of chunk {name} at {pos}"
        );
        if name == "IHDR" {
            size = (be(&data[pos + 8..]), be(&data[pos + 12..]));
        }
        names.push(name);
        pos = end + 4;
    }
    assert_eq!(names.first().map(String::as_str), Some("IHDR"), "{names:?}");
    assert_eq!(names.last().map(String::as_str), Some("IEND"), "{names:?}");
    assert!(names.iter().any(|n| n == "IDAT"), "{names:?}");
    size
}

#[test]
fn sweep_writes_one_row_per_tree_and_a_png() {
    let (m, prompts) = (model(), sum_prompts());
    let png = temp_path("sweep.png");
    let _ = std::fs::remove_file(&png);
    let png_arg = png.display().to_string();
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
        "8",
        "--spec",
        "ngram",
        "--sweep-trees",
        "chain:1,chain:2,dynamic:4,2,2",
        "--sweep-trees",
        "auto",
        "--png",
        &png_arg,
        "--json",
        "--quiet",
    ]);
    assert_eq!(out.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    assert_eq!(v["n_prompts"], 2);
    assert!(v["plain_decode_tok_s"].as_f64().unwrap() > 0.0);
    assert_eq!(v["png"], png_arg.as_str());
    let runs = v["runs"].as_array().expect("runs is an array");
    let trees: Vec<&str> = runs.iter().map(|r| r["tree"].as_str().unwrap()).collect();
    assert_eq!(trees, ["chain:1", "chain:2", "dynamic:4,2,2", "auto"]);
    let nodes: Vec<_> = runs.iter().map(|r| r["tree_nodes"].as_u64()).collect();
    assert_eq!(nodes, [Some(1), Some(2), Some(4), None]);
    for r in runs {
        assert_eq!(r["method"], "ngram");
        assert_eq!(r["n_mismatches"], 0, "{r}");
        assert!(r["speedup"].as_f64().unwrap() > 0.0, "{r}");
        assert!(r["spec"]["tau"].as_f64().unwrap() >= 1.0, "{r}");
        let drafted = r["drafted_per_step"].as_f64().unwrap();
        let max = r["tree_nodes"].as_f64().unwrap_or(64.0);
        assert!((0.0..=max).contains(&drafted), "{r}");
    }
    assert_eq!(check_png(&png), (1000, 620));
    let _ = std::fs::remove_file(&png);
}

#[test]
fn dump_prompts_writes_the_rendered_first_turns() {
    let (m, prompts) = (model(), sum_prompts());
    let path = temp_path("prompts.jsonl");
    let path_arg = path.display().to_string();
    let out = peregrine(&[
        "bench",
        "spec",
        "--model",
        &m,
        "--prompts",
        &prompts,
        "--n-prompts",
        "3",
        "--dump-prompts",
        &path_arg,
        "--quiet",
    ]);
    assert_eq!(out.status.code(), Some(0));
    assert!(out.stdout.is_empty(), "--dump-prompts benchmarks nothing");
    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<String> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is a JSON string"))
        .collect();
    assert_eq!(lines.len(), 3);
    for l in &lines {
        assert!(l.contains("<|im_start|>user\nSummarize:"), "{l:?}");
        assert!(l.ends_with("<|im_start|>assistant\n"), "{l:?}");
    }
    let _ = std::fs::remove_file(&path);
}

#[test]
fn bad_sweep_flags_are_clear_errors() {
    let (m, prompts) = (model(), sum_prompts());
    let missing_dir = temp_path("no-such-dir").join("x.png");
    let missing_dir = missing_dir.display().to_string();
    let cases: [(&[&str], &str); 6] = [
        (&["--sweep-trees", "chain:1,chain:0"], "bad tree spec"),
        (&["--sweep-trees", "4,chain:1"], "\"4\" is not a tree"),
        (&["--sweep-trees", "chain:1,,chain:2"], "empty tree spec"),
        (&["--png", "speedup.png"], "--png needs --sweep-trees"),
        (
            &["--sweep-trees", "chain:1", "--png", "speedup.txt"],
            "must end in .png",
        ),
        (
            &["--sweep-trees", "chain:1", "--png", &missing_dir],
            "does not exist",
        ),
    ];
    for (extra, want) in cases {
        let mut args = vec![
            "bench",
            "spec",
            "--model",
            &m,
            "--prompts",
            &prompts,
            "--n-prompts",
            "1",
            "--max-tokens",
            "4",
            "--spec",
            "ngram",
            "--quiet",
        ];
        args.extend_from_slice(extra);
        let out = peregrine(&args);
        assert_eq!(out.status.code(), Some(1), "{extra:?}");
        assert!(out.stdout.is_empty(), "{extra:?}: nothing on stdout");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(want),
            "{extra:?}: stderr {err:?} lacks {want:?}"
        );
    }
    // A drafter name clap does not know is a usage error (exit 2, as for every verb).
    let out = peregrine(&[
        "bench",
        "spec",
        "--prompts",
        &prompts,
        "--sweep-specs",
        "ngram,bogus",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("bogus"));
}
