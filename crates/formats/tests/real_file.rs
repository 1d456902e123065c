//! The default model (SmolLM2-135M-Instruct Q4_1) parses with the expected shape and config.

use peregrine_formats::names::{keys, LlamaTensor};
use peregrine_formats::{GgmlType, GgufFile, MetadataValue, Result};

#[test]
fn smollm2_parses_with_expected_config() -> Result<()> {
    let gguf = GgufFile::open(peregrine_testkit::smollm2_path())?;
    assert_eq!(gguf.version(), 3);
    assert_eq!(gguf.alignment(), 32);
    assert_eq!(gguf.tensors().len(), 272);
    assert_eq!(gguf.metadata().len(), 33);
    assert_eq!(gguf.get_str(keys::GENERAL_ARCHITECTURE)?, Some("llama"));

    let config = gguf.model_config()?;
    assert_eq!(config.architecture, "llama");
    assert_eq!(config.n_layers, 30);
    assert_eq!(config.hidden_size, 576);
    assert_eq!(config.n_heads, 9);
    assert_eq!(config.n_kv_heads, 3);
    assert_eq!(config.head_dim, 64);
    assert_eq!(config.ffn_size, 1536);
    assert_eq!(config.rope_base, 100_000.0);
    assert_eq!(config.rope_scaling, None);
    assert_eq!(config.rms_norm_eps, 1e-5);
    assert_eq!(config.vocab_size, 49152);
    assert_eq!(config.context_length, 8192);
    assert!(config.tied_embeddings);

    let tokens = gguf
        .get_str_array(keys::TOKENIZER_TOKENS)?
        .expect("tokens present");
    assert_eq!(tokens.len(), 49152);
    assert_eq!(
        gguf.get_i32_array(keys::TOKENIZER_TOKEN_TYPE)?
            .expect("token types")
            .len(),
        49152
    );
    assert_eq!(
        gguf.get_str_array(keys::TOKENIZER_MERGES)?
            .expect("merges")
            .len(),
        48900
    );
    assert_eq!(gguf.get_u64(keys::TOKENIZER_EOS_ID)?, Some(2));
    assert_eq!(gguf.get_bool(keys::TOKENIZER_ADD_BOS)?, Some(false));
    assert_eq!(gguf.get_str(keys::TOKENIZER_PRE)?, Some("smollm"));
    assert!(
        matches!(gguf.get("general.languages"), Some(MetadataValue::StringArray(v)) if v.len() == 1)
    );

    let embd = gguf
        .tensor(&LlamaTensor::TokenEmbd.gguf_name(None))
        .expect("token_embd");
    assert_eq!(embd.dims, [576, 49152]);
    assert_eq!(embd.ggml_type, GgmlType::Q8_0);
    assert_eq!(embd.n_bytes, 30_081_024);
    assert_eq!(gguf.tensor_data(embd).len(), 30_081_024);
    assert!(gguf.tensor(&LlamaTensor::Output.gguf_name(None)).is_none());
    for layer_idx in 0..30 {
        for kind in LlamaTensor::PER_LAYER {
            let info = gguf
                .tensor(&kind.gguf_name(Some(layer_idx)))
                .expect("every layer tensor present");
            assert_eq!(info.offset % 32, 0);
        }
    }
    let q = gguf.tensor("blk.0.attn_q.weight").expect("attn_q");
    assert_eq!(
        (q.dims.as_slice(), q.ggml_type, q.n_rows(), q.n_elements()),
        (&[576, 576][..], GgmlType::Q4_1, 576, 576 * 576)
    );
    Ok(())
}

#[test]
fn smollm2_tensors_dequantize() -> Result<()> {
    let gguf = GgufFile::open(peregrine_testkit::smollm2_path())?;
    let norm = gguf.tensor_to_f32(gguf.tensor("output_norm.weight").expect("output_norm"))?;
    assert_eq!(norm.len(), 576);
    assert!(norm.iter().all(|v| v.is_finite()));
    let q = gguf.tensor_to_f32(gguf.tensor("blk.0.attn_q.weight").expect("attn_q"))?;
    assert!(q.iter().all(|v| v.is_finite() && v.abs() < 100.0));
    Ok(())
}

#[test]
fn gguf_file_can_be_shared_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<GgufFile>();
    assert_send_sync::<peregrine_formats::safetensors_io::SafetensorsFile>();
    assert_send_sync::<peregrine_formats::Error>();
}
