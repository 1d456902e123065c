//! safetensors read/write round trips and Hugging Face `config.json` parsing.

use peregrine_formats::safetensors_io::{Dtype, SafetensorsFile, SafetensorsWriter};
use peregrine_formats::{Error, ModelConfig, Result, RopeScaling};

#[test]
fn safetensors_round_trip_f32_f16_bf16() -> Result<()> {
    let values: Vec<f32> = (0..12).map(|i| i as f32 * 0.25 - 1.0).collect();
    let mut writer = SafetensorsWriter::new();
    writer
        .add_f32("model.embed_tokens.weight", Dtype::F32, &[3, 4], &values)?
        .add_f32("model.norm.weight", Dtype::F16, &[12], &values)?
        .add_f32("lm_head.weight", Dtype::BF16, &[4, 3], &values)?
        .add_raw(
            "counts",
            Dtype::I32,
            &[2],
            [1i32, -2].iter().flat_map(|v| v.to_le_bytes()).collect(),
        )?
        .add_metadata("format", "pt");
    let bytes = writer.to_bytes()?;

    let path =
        std::env::temp_dir().join(format!("peregrine-st-{}.safetensors", std::process::id()));
    writer.write(&path)?;
    assert_eq!(std::fs::read(&path).expect("written"), bytes);
    for file in [
        SafetensorsFile::parse_bytes(bytes.clone(), "mem.safetensors")?,
        SafetensorsFile::open(&path)?,
    ] {
        assert_eq!(
            file.names(),
            [
                "counts",
                "lm_head.weight",
                "model.embed_tokens.weight",
                "model.norm.weight"
            ]
        );
        assert_eq!(
            file.user_metadata()
                .and_then(|m| m.get("format"))
                .map(String::as_str),
            Some("pt")
        );
        let embd = file.tensor("model.embed_tokens.weight")?;
        assert_eq!(
            (embd.dtype, embd.shape, embd.n_elements()),
            (Dtype::F32, &[3usize, 4][..], 12)
        );
        // These values are exact in f16 and bf16.
        assert_eq!(file.tensor_f32("model.embed_tokens.weight")?, values);
        assert_eq!(file.tensor_f32("model.norm.weight")?, values);
        assert_eq!(file.tensor_f32("lm_head.weight")?, values);
        assert!(matches!(
            file.tensor_f32("counts"),
            Err(Error::UnsupportedDtype { .. })
        ));
        assert!(matches!(
            file.tensor("missing"),
            Err(Error::TensorNotFound { .. })
        ));
    }
    std::fs::remove_file(&path).expect("remove temp file");

    // bf16 and f16 round to nearest even on write.
    let mut writer = SafetensorsWriter::new();
    writer.add_f32(
        "x",
        Dtype::BF16,
        &[2],
        &[1.0 + 1.0 / 256.0, 1.0 + 3.0 / 256.0],
    )?;
    let file = SafetensorsFile::parse_bytes(writer.to_bytes()?, "mem")?;
    assert_eq!(file.tensor_f32("x")?, [1.0, 1.0 + 4.0 / 256.0]);
    Ok(())
}

#[test]
fn safetensors_bad_input_is_an_error() -> Result<()> {
    assert!(matches!(
        SafetensorsFile::parse_bytes(vec![], "empty"),
        Err(Error::Safetensors { .. })
    ));
    assert!(matches!(
        SafetensorsFile::parse_bytes(u64::MAX.to_le_bytes().to_vec(), "huge"),
        Err(Error::Safetensors { .. })
    ));
    let mut writer = SafetensorsWriter::new();
    writer.add_f32("x", Dtype::F32, &[4], &[1.0; 4])?;
    let mut bytes = writer.to_bytes()?;
    bytes.pop();
    let err = SafetensorsFile::parse_bytes(bytes, "cut.safetensors").expect_err("truncated");
    assert!(
        err.to_string()
            .starts_with("cut.safetensors: safetensors: "),
        "{err}"
    );
    assert!(writer.add_raw("y", Dtype::F32, &[3], vec![0; 4]).is_err());
    assert!(writer.add_f32("z", Dtype::I64, &[1], &[1.0]).is_err());
    Ok(())
}

/// `config.json` of meta-llama/Llama-3.1-8B-Instruct (as published).
const LLAMA_31_8B: &str = r#"{
  "architectures": ["LlamaForCausalLM"],
  "attention_bias": false,
  "attention_dropout": 0.0,
  "bos_token_id": 128000,
  "eos_token_id": [128001, 128008, 128009],
  "hidden_act": "silu",
  "hidden_size": 4096,
  "initializer_range": 0.02,
  "intermediate_size": 14336,
  "max_position_embeddings": 131072,
  "mlp_bias": false,
  "model_type": "llama",
  "num_attention_heads": 32,
  "num_hidden_layers": 32,
  "num_key_value_heads": 8,
  "pretraining_tp": 1,
  "rms_norm_eps": 1e-05,
  "rope_scaling": {
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
    "rope_type": "llama3"
  },
  "rope_theta": 500000.0,
  "tie_word_embeddings": false,
  "torch_dtype": "bfloat16",
  "transformers_version": "4.42.3",
  "use_cache": true,
  "vocab_size": 128256
}"#;

/// `config.json` of HuggingFaceTB/SmolLM2-135M-Instruct (as published).
const SMOLLM2_135M: &str = r#"{
  "architectures": ["LlamaForCausalLM"],
  "attention_bias": false,
  "attention_dropout": 0.0,
  "bos_token_id": 1,
  "eos_token_id": 2,
  "hidden_act": "silu",
  "hidden_size": 576,
  "initializer_range": 0.041666666666666664,
  "intermediate_size": 1536,
  "is_llama_config": true,
  "max_position_embeddings": 8192,
  "model_type": "llama",
  "num_attention_heads": 9,
  "num_hidden_layers": 30,
  "num_key_value_heads": 3,
  "pad_token_id": 2,
  "pretraining_tp": 1,
  "rms_norm_eps": 1e-05,
  "rope_interleaved": false,
  "rope_scaling": null,
  "rope_theta": 100000,
  "tie_word_embeddings": true,
  "torch_dtype": "bfloat16",
  "transformers_version": "4.42.3",
  "use_cache": true,
  "vocab_size": 49152
}"#;

#[test]
fn hf_config_llama_31() -> Result<()> {
    let c = ModelConfig::from_hf_config_json(LLAMA_31_8B)?;
    assert_eq!(c.architecture, "llama");
    assert_eq!(
        (c.n_layers, c.n_heads, c.n_kv_heads, c.head_dim),
        (32, 32, 8, 128)
    );
    assert_eq!(
        (c.hidden_size, c.ffn_size, c.vocab_size, c.context_length),
        (4096, 14336, 128256, 131072)
    );
    assert_eq!((c.rope_base, c.rms_norm_eps), (500000.0, 1e-5));
    assert!(!c.tied_embeddings);
    assert_eq!(c.gqa_group_size(), 4);
    assert_eq!(
        c.rope_scaling,
        Some(RopeScaling::Llama3 {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_context_length: 8192
        })
    );
    Ok(())
}

#[test]
fn hf_config_smollm2_matches_its_gguf() -> Result<()> {
    let hf = ModelConfig::from_hf_config_json(SMOLLM2_135M)?;
    assert_eq!(
        (
            hf.n_layers,
            hf.n_heads,
            hf.n_kv_heads,
            hf.head_dim,
            hf.hidden_size
        ),
        (30, 9, 3, 64, 576)
    );
    assert!(hf.tied_embeddings);
    assert_eq!(hf.rope_scaling, None);
    let gguf =
        peregrine_formats::GgufFile::open(peregrine_testkit::smollm2_path())?.model_config()?;
    assert_eq!(hf, gguf);
    Ok(())
}

#[test]
fn hf_config_variants_and_errors() -> Result<()> {
    let linear = SMOLLM2_135M.replace(
        r#""rope_scaling": null"#,
        r#""rope_scaling": {"type": "linear", "factor": 2.0}"#,
    );
    assert_eq!(
        ModelConfig::from_hf_config_json(&linear)?.rope_scaling,
        Some(RopeScaling::Linear { factor: 2.0 })
    );
    let head_dim = LLAMA_31_8B.replace(
        r#""num_key_value_heads": 8"#,
        r#""num_key_value_heads": 8, "head_dim": 64"#,
    );
    assert_eq!(ModelConfig::from_hf_config_json(&head_dim)?.head_dim, 64);
    let yarn = SMOLLM2_135M.replace(
        r#""rope_scaling": null"#,
        r#""rope_scaling": {"rope_type": "yarn", "factor": 4.0}"#,
    );
    assert!(matches!(
        ModelConfig::from_hf_config_json(&yarn),
        Err(Error::InvalidConfig { .. })
    ));
    let bad_gqa =
        SMOLLM2_135M.replace(r#""num_key_value_heads": 3"#, r#""num_key_value_heads": 4"#);
    let err = ModelConfig::from_hf_config_json(&bad_gqa).expect_err("4 does not divide 9");
    assert_eq!(err.to_string(), "config.json: invalid model config: num_key_value_heads = 4: must divide the number of query heads");
    let missing = SMOLLM2_135M.replace(r#""hidden_size": 576,"#, "");
    assert!(
        matches!(ModelConfig::from_hf_config_json(&missing), Err(Error::MissingKey { ref key, .. }) if key == "hidden_size")
    );
    let no_low = LLAMA_31_8B.replace(r#""low_freq_factor": 1.0,"#, "");
    assert!(
        matches!(ModelConfig::from_hf_config_json(&no_low), Err(Error::MissingKey { ref key, .. }) if key == "rope_scaling.low_freq_factor")
    );
    assert!(matches!(
        ModelConfig::from_hf_config_json("{not json"),
        Err(Error::Json { .. })
    ));
    assert!(matches!(
        ModelConfig::from_hf_config_json(r#"{"hidden_size": -1}"#),
        Err(Error::Json { .. })
    ));
    Ok(())
}
