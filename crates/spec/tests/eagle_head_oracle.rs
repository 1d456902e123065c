//! The EAGLE head forward against the float64 numpy oracle `tests/data/eagle_ref.py`
//! (its README entry and docstring say what it computes): tiny random EAGLE-3 and EAGLE-1
//! heads, written by the script as safetensors, run through target-fed rows, two levels of
//! drafted rows (tree-masked attention over the head's own cache), a rollback of the drafts,
//! and more target-fed rows. Outputs `o` and logits are compared by NMSE: 1e-6 with f32
//! weights (f32 arithmetic and the f16 KV cache vs float64; measured ~3e-8), 2e-3 with the
//! Q8_0 weights and 8-bit activations the drafter runs with (measured ~6e-4).

use peregrine_formats::safetensors_io::SafetensorsFile;
use peregrine_formats::{GgmlType, ModelConfig};
use peregrine_spec::eagle::{
    EagleHead, EagleKind, HeadCache, HeadInput, HeadLogits, HeadOptions, HeadRows, HeadWorkspace,
};
use peregrine_tensor::qdot::QuantKind;
use peregrine_tensor::{ThreadPool, WeightMatrix, Weights};
use serde_json::Value;
use std::path::PathBuf;

fn data(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

/// The synthetic target the oracle's heads are shaped for.
pub fn tiny_target() -> ModelConfig {
    ModelConfig {
        architecture: "llama".into(),
        n_layers: 8,
        n_heads: 4,
        n_kv_heads: 2,
        head_dim: 32,
        hidden_size: 128,
        ffn_size: 256,
        rope_base: 500000.0,
        rope_scaling: None,
        rms_norm_eps: 1e-6,
        vocab_size: 512,
        context_length: 64,
        tied_embeddings: true,
    }
}

fn floats(v: &Value) -> Vec<f32> {
    match v {
        Value::Array(a) => a.iter().flat_map(floats).collect(),
        Value::Number(n) => vec![n.as_f64().expect("a number") as f32],
        other => panic!("not a number: {other}"),
    }
}

fn check(which: &str, file: &str, quantize: bool, bound: f64) {
    let golden: Value =
        serde_json::from_str(&std::fs::read_to_string(data("eagle_ref.json")).unwrap()).unwrap();
    let head = EagleHead::load(
        &data(file),
        &tiny_target(),
        HeadOptions {
            quantize: quantize.then_some(QuantKind::Q8_0),
        },
    )
    .unwrap_or_else(|e| panic!("{file}: {e}"));
    let c = head.config();
    // Metadata overrides the target's eps, theta and layers.
    assert_eq!((c.rms_norm_eps, c.rope_theta), (1e-5, 10000.0));
    let lm_file = SafetensorsFile::open(data("eagle_tiny_target_lm_head.safetensors")).unwrap();
    let lm_bytes: Vec<u8> = lm_file
        .tensor_f32("lm_head.weight")
        .unwrap()
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let lm_head = match c.kind {
        EagleKind::Eagle1 => Some(Weights::Rows(
            WeightMatrix::new(GgmlType::F32, &lm_bytes, 512, 128).unwrap(),
        )),
        EagleKind::Eagle3 => {
            assert_eq!(c.feature_layers, [2, 4, 5]);
            assert_eq!(c.draft_vocab, 96);
            None
        }
    };
    let pool = ThreadPool::new(2);
    let mut cache = HeadCache::new(&head, 32);
    let mut ws = HeadWorkspace::new(&head, 16, &cache, 2);
    let mut outs: Vec<Vec<Vec<f32>>> = Vec::new();
    for (call_idx, call) in golden[which].as_array().unwrap().iter().enumerate() {
        let kind = call["kind"].as_str().unwrap();
        if kind == "drop_drafts" {
            cache.drop_drafts();
            outs.push(Vec::new());
            continue;
        }
        let positions: Vec<u32> = call["positions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_u64().unwrap() as u32)
            .collect();
        let m = positions.len();
        let embeds = floats(&call["embeds"]);
        let logit_rows: Vec<usize> = call["logits_rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r.as_u64().unwrap() as usize)
            .collect();
        let logits = if logit_rows == [m - 1] {
            HeadLogits::Last
        } else {
            assert_eq!(logit_rows, (0..m).collect::<Vec<_>>());
            HeadLogits::All
        };
        let features;
        let parent_out: Vec<f32>;
        let parents: Vec<Option<usize>>;
        let input = if kind == "target" {
            features = floats(&call["inputs"]);
            HeadInput::Target {
                features: &features,
            }
        } else {
            parent_out = call["parent_rows"]
                .as_array()
                .unwrap()
                .iter()
                .flat_map(|pr| {
                    let (ci, r) = (pr[0].as_u64().unwrap(), pr[1].as_u64().unwrap());
                    outs[ci as usize][r as usize].clone()
                })
                .collect();
            parents = call["parents"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p.as_u64().map(|s| s as usize))
                .collect();
            HeadInput::Drafted {
                parent_out: &parent_out,
                parents: &parents,
            }
        };
        let rows = HeadRows {
            input,
            embeds: &embeds,
            positions: &positions,
            logits,
        };
        let first = head
            .forward(&pool, lm_head, &mut ws, &mut cache, &rows)
            .unwrap();
        assert_eq!(first as u64, call["first_slot"].as_u64().unwrap());
        let ctx = format!("{which} (quantize {quantize}) call {call_idx} ({kind})");
        let want_out = floats(&call["out"]);
        let got_out: Vec<f32> = (0..m).flat_map(|r| ws.out(r).to_vec()).collect();
        peregrine_testkit::assert_close(&got_out, &want_out, bound, &format!("{ctx}: outputs"));
        let want_logits = floats(&call["logits"]);
        let got_logits: Vec<f32> = (0..logit_rows.len())
            .flat_map(|i| ws.logits(i).to_vec())
            .collect();
        peregrine_testkit::assert_close(
            &got_logits,
            &want_logits,
            bound,
            &format!("{ctx}: logits"),
        );
        eprintln!(
            "{ctx}: nmse out {:.2e}, logits {:.2e}",
            peregrine_testkit::nmse(&got_out, &want_out),
            peregrine_testkit::nmse(&got_logits, &want_logits)
        );
        outs.push((0..m).map(|r| ws.out(r).to_vec()).collect());
    }
}

#[test]
fn eagle3_head_matches_numpy_f32() {
    check("eagle3", "eagle3_tiny.safetensors", false, 1e-6);
}

#[test]
fn eagle3_head_matches_numpy_q8() {
    check("eagle3", "eagle3_tiny.safetensors", true, 2e-3);
}

#[test]
fn eagle1_head_matches_numpy_f32() {
    check("eagle1", "eagle1_tiny.safetensors", false, 1e-6);
}

#[test]
fn eagle1_head_matches_numpy_q8() {
    check("eagle1", "eagle1_tiny.safetensors", true, 2e-3);
}
