//! The forward pass from safetensors + `config.json` (Hugging Face layout: Q/K rows in the
//! "halves" RoPE order, `[out, in]` shapes, HF tensor names), checked against llama.cpp.
//!
//! The checkpoint is made from the random Llama 3 f16 GGUF (scripts/gen-llama3-random) by undoing
//! llama.cpp's converter: Q and K rows are un-permuted back to HF order, names mapped, config
//! written. llama.cpp's logits on the GGUF are the oracle (tests/data/llama3_random_llamacpp.json).

use peregrine_formats::names::LlamaTensor;
use peregrine_formats::safetensors_io::{Dtype, SafetensorsWriter};
use peregrine_formats::GgufFile;
use peregrine_model::{ForwardOptions, LogitRows, Model, SeqInput};
use std::path::PathBuf;

/// Inverse of convert_hf_to_gguf.py's `permute`: GGUF row `h*hd + 2j + s` is HF row `h*hd + s*hd/2 + j`.
fn unpermute(rows: &[u8], n_rows: usize, row_bytes: usize, n_heads: usize) -> Vec<u8> {
    let hd = n_rows / n_heads;
    let mut out = vec![0u8; rows.len()];
    for h in 0..n_heads {
        for j in 0..hd / 2 {
            for s in 0..2 {
                let (src, dst) = (h * hd + 2 * j + s, h * hd + s * hd / 2 + j);
                out[dst * row_bytes..(dst + 1) * row_bytes]
                    .copy_from_slice(&rows[src * row_bytes..(src + 1) * row_bytes]);
            }
        }
    }
    out
}

#[test]
fn safetensors_checkpoint_matches_llama_cpp() {
    let cache = match std::env::var_os("PEREGRINE_CACHE") {
        Some(dir) => PathBuf::from(dir),
        None => peregrine_testkit::repo_root().join(".cache"),
    };
    let gguf_path = cache.join("llama3-random/llama3-tiny-f16.gguf");
    let gguf = GgufFile::open(&gguf_path)
        .unwrap_or_else(|e| panic!("{e} (run scripts/gen-llama3-random)"));
    let cfg = gguf.model_config().unwrap();
    let dir = std::env::temp_dir().join(format!("peregrine-st-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut w = SafetensorsWriter::new();
    for info in gguf.tensors() {
        let Some((kind, layer)) = LlamaTensor::from_gguf_name(&info.name) else {
            continue;
        };
        let bytes = gguf.tensor_data(info);
        let shape: Vec<usize> = info.dims.iter().rev().map(|&d| d as usize).collect();
        let (data, dtype) = match info.ggml_type {
            peregrine_formats::GgmlType::F16 => {
                let rows = shape[0];
                let row_bytes = bytes.len() / rows;
                let data = match kind {
                    LlamaTensor::AttnQ => unpermute(bytes, rows, row_bytes, cfg.n_heads),
                    LlamaTensor::AttnK => unpermute(bytes, rows, row_bytes, cfg.n_kv_heads),
                    _ => bytes.to_vec(),
                };
                (data, Dtype::F16)
            }
            peregrine_formats::GgmlType::F32 => (bytes.to_vec(), Dtype::F32),
            other => panic!("unexpected type {other:?}"),
        };
        w.add_raw(kind.hf_name(layer), dtype, &shape, data).unwrap();
    }
    w.write(dir.join("model.safetensors")).unwrap();
    let config = serde_json::json!({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "hidden_size": cfg.hidden_size, "intermediate_size": cfg.ffn_size,
        "num_attention_heads": cfg.n_heads, "num_key_value_heads": cfg.n_kv_heads,
        "num_hidden_layers": cfg.n_layers, "head_dim": cfg.head_dim,
        "rms_norm_eps": cfg.rms_norm_eps, "rope_theta": cfg.rope_base,
        "vocab_size": cfg.vocab_size, "max_position_embeddings": cfg.context_length,
        "tie_word_embeddings": false,
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();

    let model = Model::load(&dir, 2).expect("safetensors model loads");
    let golden_path =
        peregrine_testkit::repo_root().join("crates/model/tests/data/llama3_random_llamacpp.json");
    let golden: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(golden_path).unwrap()).unwrap();
    let v = golden["variants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "llama3-tiny-f16")
        .unwrap();
    let ids: Vec<u32> = golden["ids"]
        .as_array()
        .unwrap()
        .iter()
        .take(256)
        .map(|x| x.as_u64().unwrap() as u32)
        .collect();
    let n = ids.len();
    let mut cache = model.new_cache(n);
    let mut ws = model.new_workspace(n, n, n);
    let positions: Vec<u32> = (0..n as u32).collect();
    let mut seqs = [SeqInput {
        cache: &mut cache,
        tokens: &ids,
        positions: &positions,
        tree: None,
        logits: LogitRows::All,
    }];
    model
        .forward(
            &mut ws,
            &mut seqs,
            &ForwardOptions {
                layers: 0..cfg.n_layers,
                head: true,
                taps: &[],
            },
        )
        .unwrap();
    let mut agree = 0;
    let mut max_err = 0f32;
    for i in 0..n {
        let logits = ws.logits(i);
        let top = v["top5"][i].as_array().unwrap();
        let want = v["argmax"][i].as_u64().unwrap() as usize;
        let ours = (0..logits.len()).fold(0, |b, j| if logits[j] > logits[b] { j } else { b });
        agree += usize::from(ours == want);
        for pair in top {
            let (id, l) = (
                pair[0].as_u64().unwrap() as usize,
                pair[1].as_f64().unwrap() as f32,
            );
            max_err = max_err.max((logits[id] - l).abs());
        }
    }
    eprintln!(
        "safetensors vs llama.cpp: argmax {agree}/{n}, max |logit error| at top-5 {max_err:.4}"
    );
    assert!(agree >= n - 1, "argmax agreement {agree}/{n}");
    assert!(max_err < 0.05, "max logit error {max_err}");
    std::fs::remove_dir_all(&dir).ok();
}
