//! `ModelConfig` from GGUF keys: defaults, fallbacks, RoPE scaling keys, and errors.

use peregrine_formats::{
    Error, GgmlType, GgufFile, GgufWriter, MetadataValue as V, Result, RopeScaling,
};

/// A llama header with the required keys; `edit` adds or replaces keys before writing.
fn config_file(edit: impl FnOnce(&mut Vec<(String, V)>), with_output: bool) -> Result<GgufFile> {
    let mut kv: Vec<(String, V)> = vec![
        ("general.architecture".into(), V::String("llama".into())),
        ("llama.block_count".into(), V::U32(2)),
        ("llama.context_length".into(), V::U64(4096)),
        ("llama.embedding_length".into(), V::U32(64)),
        ("llama.feed_forward_length".into(), V::U32(128)),
        ("llama.attention.head_count".into(), V::U32(4)),
        ("llama.attention.head_count_kv".into(), V::U16(2)),
        ("llama.vocab_size".into(), V::I32(100)),
    ];
    edit(&mut kv);
    let mut writer = GgufWriter::new();
    for (k, v) in kv {
        writer.add_metadata(k, v);
    }
    writer.add_tensor(
        "token_embd.weight",
        &[64, 7],
        GgmlType::F32,
        vec![0; 64 * 7 * 4],
    )?;
    if with_output {
        writer.add_tensor(
            "output.weight",
            &[64, 7],
            GgmlType::F32,
            vec![0; 64 * 7 * 4],
        )?;
    }
    GgufFile::parse_bytes(writer.to_bytes()?, "config.gguf")
}

fn set(kv: &mut Vec<(String, V)>, key: &str, value: V) {
    kv.retain(|(k, _)| k != key);
    kv.push((key.to_string(), value));
}

#[test]
fn defaults_and_integer_widths() -> Result<()> {
    let c = config_file(|_| {}, true)?.model_config()?;
    assert_eq!(
        (
            c.n_layers,
            c.n_heads,
            c.n_kv_heads,
            c.head_dim,
            c.hidden_size,
            c.ffn_size
        ),
        (2, 4, 2, 16, 64, 128)
    );
    assert_eq!((c.vocab_size, c.context_length), (100, 4096));
    assert_eq!(c.rope_base, 10_000.0, "default freq_base");
    assert_eq!(c.rms_norm_eps, 1e-5, "default epsilon");
    assert_eq!(c.rope_scaling, None);
    assert!(!c.tied_embeddings, "output.weight present");
    Ok(())
}

#[test]
fn fallbacks() -> Result<()> {
    // No head_count_kv: MHA. key_length overrides hidden / heads.
    let c = config_file(
        |kv| {
            kv.retain(|(k, _)| k != "llama.attention.head_count_kv");
            set(kv, "llama.attention.key_length", V::U32(32));
        },
        false,
    )?
    .model_config()?;
    assert_eq!((c.n_kv_heads, c.head_dim), (4, 32));
    assert!(c.tied_embeddings);
    // No vocab_size: the token list's length, else token_embd's rows.
    let tokens = V::Array((0..9).map(|i| V::String(format!("t{i}"))).collect());
    let c = config_file(
        |kv| {
            kv.retain(|(k, _)| k != "llama.vocab_size");
            set(kv, "tokenizer.ggml.tokens", tokens)
        },
        false,
    )?
    .model_config()?;
    assert_eq!(c.vocab_size, 9);
    let c = config_file(|kv| kv.retain(|(k, _)| k != "llama.vocab_size"), false)?.model_config()?;
    assert_eq!(c.vocab_size, 7);
    Ok(())
}

#[test]
fn rope_scaling_keys() -> Result<()> {
    let linear = |kv: &mut Vec<(String, V)>| {
        set(kv, "llama.rope.scaling.type", V::String("linear".into()));
        set(kv, "llama.rope.scaling.factor", V::F32(4.0));
        set(kv, "llama.rope.freq_base", V::F64(500000.0));
    };
    let c = config_file(linear, false)?.model_config()?;
    assert_eq!(c.rope_scaling, Some(RopeScaling::Linear { factor: 4.0 }));
    assert_eq!(c.rope_base, 500000.0);
    let c =
        config_file(|kv| set(kv, "llama.rope.scale_linear", V::F32(2.0)), false)?.model_config()?;
    assert_eq!(
        c.rope_scaling,
        Some(RopeScaling::Linear { factor: 2.0 }),
        "legacy key"
    );
    let c = config_file(
        |kv| set(kv, "llama.rope.scaling.type", V::String("none".into())),
        false,
    )?
    .model_config()?;
    assert_eq!(c.rope_scaling, None);
    let yarn = config_file(
        |kv| set(kv, "llama.rope.scaling.type", V::String("yarn".into())),
        false,
    )?;
    let err = yarn.model_config().expect_err("yarn is not supported");
    assert!(
        matches!(err, Error::InvalidConfig { ref key, .. } if key == "llama.rope.scaling.type"),
        "{err}"
    );
    Ok(())
}

#[test]
fn errors_name_the_key() -> Result<()> {
    let err = config_file(|kv| kv.retain(|(k, _)| k != "llama.block_count"), false)?
        .model_config()
        .expect_err("missing");
    assert_eq!(
        err.to_string(),
        "config.gguf: missing metadata key \"llama.block_count\""
    );
    let err = config_file(
        |kv| set(kv, "llama.attention.head_count_kv", V::U32(3)),
        false,
    )?
    .model_config()
    .expect_err("3 ∤ 4");
    assert!(
        matches!(err, Error::InvalidConfig { ref key, .. } if key == "llama.attention.head_count_kv"),
        "{err}"
    );
    let err = config_file(|kv| set(kv, "llama.attention.head_count", V::U32(0)), false)?
        .model_config()
        .expect_err("0 heads");
    assert!(matches!(err, Error::InvalidConfig { .. }), "{err}");
    let err = config_file(|kv| set(kv, "llama.block_count", V::I32(-1)), false)?
        .model_config()
        .expect_err("negative");
    assert!(matches!(err, Error::ValueOutOfRange { .. }), "{err}");
    let err = config_file(
        |kv| set(kv, "llama.block_count", V::String("2".into())),
        false,
    )?
    .model_config()
    .expect_err("string");
    assert!(matches!(err, Error::WrongValueType { .. }), "{err}");
    let err = config_file(
        |kv| set(kv, "llama.rope.freq_base", V::F32(f32::NAN)),
        false,
    )?
    .model_config()
    .expect_err("NaN");
    assert!(
        matches!(err, Error::InvalidConfig { ref key, .. } if key == "llama.rope.freq_base"),
        "{err}"
    );
    let err = config_file(|kv| kv.retain(|(k, _)| k != "general.architecture"), false)?
        .model_config()
        .expect_err("no arch");
    assert!(matches!(err, Error::MissingKey { .. }), "{err}");
    Ok(())
}
