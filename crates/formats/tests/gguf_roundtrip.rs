//! Writer → reader round trips (every value type, nested arrays, v2 and v3, alignments), the
//! typed getters, agreement with gguf-py on a file gguf-py wrote, and a byte-identical rewrite
//! of the real model.

mod common;

use peregrine_formats::quant::quantize_row;
use peregrine_formats::{Error, GgmlType, GgufFile, GgufWriter, MetadataValue as V, Result};

fn all_values() -> Vec<(String, V)> {
    let s = |x: &str| V::String(x.to_string());
    vec![
        ("general.architecture".into(), s("llama")),
        ("u8".into(), V::U8(255)),
        ("i8".into(), V::I8(-128)),
        ("u16".into(), V::U16(65535)),
        ("i16".into(), V::I16(-32768)),
        ("u32".into(), V::U32(u32::MAX)),
        ("i32".into(), V::I32(i32::MIN)),
        ("u64".into(), V::U64(u64::MAX)),
        ("i64".into(), V::I64(i64::MIN)),
        ("f32".into(), V::F32(-1.5e-7)),
        ("f64".into(), V::F64(std::f64::consts::PI)),
        ("bool".into(), V::Bool(true)),
        ("string".into(), s("héllo, wörld ✓ 🦀")),
        ("empty_string".into(), s("")),
        (
            "strings".into(),
            V::Array(vec![s("a"), s(""), s("<|im_start|>")]),
        ),
        ("i32s".into(), V::Array((-3..4).map(V::I32).collect())),
        ("u8s".into(), V::Array(vec![V::U8(0), V::U8(7)])),
        ("empty".into(), V::Array(vec![])),
        (
            "nested".into(),
            V::Array(vec![
                V::Array(vec![s("x"), s("y")]),
                V::Array(vec![V::I64(1)]),
                V::Array(vec![]),
            ]),
        ),
        (
            "nested3".into(),
            V::Array(vec![V::Array(vec![V::Array(vec![V::F64(0.25)])])]),
        ),
    ]
}

fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

fn writer_with_tensors(version: u32, alignment: Option<u32>) -> Result<GgufWriter> {
    let mut writer = GgufWriter::new();
    writer.set_version(version);
    for (k, v) in all_values() {
        writer.add_metadata(k, v);
    }
    if let Some(a) = alignment {
        writer.set_alignment(a);
    }
    let x: Vec<f32> = (0..64).map(|i| (i as f32 * 0.37).sin()).collect();
    let mut q8 = vec![0u8; 68];
    quantize_row(GgmlType::Q8_0, &x, &mut q8)?;
    writer
        .add_tensor(
            "f32",
            &[3, 2],
            GgmlType::F32,
            (0..6).flat_map(|i| (i as f32).to_le_bytes()).collect(),
        )?
        .add_tensor("odd_f16", &[5], GgmlType::F16, vec![0x3c; 10])?
        .add_tensor("q8_0", &[32, 2], GgmlType::Q8_0, q8)?
        .add_tensor("scalar", &[], GgmlType::F32, 2f32.to_le_bytes().to_vec())?
        .add_tensor("empty", &[0, 4], GgmlType::F32, vec![])?
        .add_tensor(
            "q4_k_raw",
            &[256, 1, 1, 1],
            GgmlType::Q4_K,
            random_bytes(144, 7),
        )?;
    Ok(writer)
}

#[test]
fn every_value_type_and_tensor_round_trips() -> Result<()> {
    for version in [2, 3] {
        for alignment in [None, Some(1), Some(8), Some(64), Some(4096)] {
            let writer = writer_with_tensors(version, alignment)?;
            let bytes = writer.to_bytes()?;
            let gguf = GgufFile::parse_bytes(bytes.clone(), "roundtrip.gguf")?;
            let context = format!("v{version} alignment {alignment:?}");
            assert_eq!(gguf.version(), version, "{context}");
            let expected_alignment = alignment.map_or(32, u64::from);
            assert_eq!(gguf.alignment(), expected_alignment, "{context}");
            let mut want = all_values();
            if let Some(a) = alignment {
                want.push(("general.alignment".into(), V::U32(a)));
            }
            assert_eq!(gguf.metadata(), &want[..], "{context}");
            let names: Vec<&str> = gguf.tensors().iter().map(|t| t.name.as_str()).collect();
            assert_eq!(
                names,
                ["f32", "odd_f16", "q8_0", "scalar", "empty", "q4_k_raw"],
                "{context}"
            );
            for t in gguf.tensors() {
                assert_eq!(t.offset % expected_alignment, 0, "{context}: {}", t.name);
                assert_eq!((t.offset - gguf.data_offset()) % expected_alignment, 0);
            }
            let q4k = gguf.tensor("q4_k_raw").expect("q4_k_raw");
            assert_eq!(
                (q4k.dims.as_slice(), q4k.ggml_type, q4k.n_bytes),
                (&[256u64, 1, 1, 1][..], GgmlType::Q4_K, 144)
            );
            assert_eq!(gguf.tensor_data(q4k), random_bytes(144, 7));
            assert_eq!(
                gguf.tensor_to_f32(gguf.tensor("scalar").expect("scalar"))?,
                [2.0]
            );
            assert_eq!(gguf.tensor("empty").expect("empty").n_bytes, 0);

            // And through a real file on disk (the mmap path).
            let path = std::env::temp_dir().join(format!(
                "peregrine-roundtrip-{}-{version}-{expected_alignment}.gguf",
                std::process::id()
            ));
            writer.write(&path)?;
            let mapped = GgufFile::open(&path)?;
            assert_eq!(std::fs::read(&path).expect("written"), bytes);
            assert_eq!(mapped.metadata(), gguf.metadata());
            assert_eq!(mapped.tensors(), gguf.tensors());
            assert_eq!(mapped.path(), path);
            std::fs::remove_file(&path).expect("remove temp file");
        }
    }
    Ok(())
}

#[test]
fn typed_getters() -> Result<()> {
    let gguf = GgufFile::parse_bytes(writer_with_tensors(3, None)?.to_bytes()?, "getters.gguf")?;
    assert_eq!(gguf.get_u64("u8")?, Some(255));
    assert_eq!(gguf.get_u64("u64")?, Some(u64::MAX));
    assert_eq!(gguf.get_u64("missing")?, None);
    assert!(
        matches!(gguf.get_u64("i8"), Err(Error::ValueOutOfRange { ref key, .. }) if key == "i8")
    );
    assert!(matches!(
        gguf.get_u64("string"),
        Err(Error::WrongValueType { .. })
    ));
    assert_eq!(gguf.get_f32("f32")?, Some(-1.5e-7));
    assert_eq!(gguf.get_f32("f64")?, Some(std::f32::consts::PI));
    assert!(matches!(
        gguf.get_f32("u8"),
        Err(Error::WrongValueType { .. })
    ));
    assert_eq!(gguf.get_bool("bool")?, Some(true));
    assert!(matches!(
        gguf.get_bool("u8"),
        Err(Error::WrongValueType { .. })
    ));
    assert_eq!(gguf.get_str("string")?, Some("héllo, wörld ✓ 🦀"));
    let err = gguf.get_str("u32").expect_err("u32 is not a string");
    assert_eq!(
        err.to_string(),
        "getters.gguf: metadata key \"u32\" is u32, expected a string"
    );
    assert_eq!(
        gguf.get_str_array("strings")?,
        Some(vec!["a", "", "<|im_start|>"])
    );
    assert_eq!(gguf.get_str_array("empty")?, Some(vec![]));
    assert!(matches!(
        gguf.get_str_array("i32s"),
        Err(Error::WrongValueType { .. })
    ));
    assert_eq!(gguf.get_i32_array("i32s")?, Some((-3..4).collect()));
    assert_eq!(gguf.get_i32_array("u8s")?, Some(vec![0, 7]));
    assert!(matches!(
        gguf.get_i32_array("nested"),
        Err(Error::WrongValueType { .. })
    ));
    assert!(matches!(
        gguf.require_tensor("nope"),
        Err(Error::TensorNotFound { .. })
    ));
    Ok(())
}

/// Our reader agrees with gguf-py's reader on a file gguf-py's writer made.
#[test]
fn reads_a_gguf_py_file_like_gguf_py() -> Result<()> {
    let gguf = GgufFile::open(common::data_path("gguf_py_small.gguf"))?;
    let want = common::read_json("gguf_py_small.json");
    assert_eq!(gguf.alignment(), 64);
    let keys: Vec<&str> = gguf.metadata().iter().map(|(k, _)| k.as_str()).collect();
    let want_keys: Vec<&str> = want["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .map(|k| k.as_str().expect("key"))
        .collect();
    assert_eq!(keys, want_keys);
    let want_tensors = want["tensors"].as_array().expect("tensors");
    assert_eq!(gguf.tensors().len(), want_tensors.len());
    for (t, w) in gguf.tensors().iter().zip(want_tensors) {
        assert_eq!(t.name, w["name"].as_str().expect("name"));
        assert_eq!(t.ggml_type.id() as u64, w["type"].as_u64().expect("type"));
        let dims: Vec<u64> = w["dims"]
            .as_array()
            .expect("dims")
            .iter()
            .map(|d| d.as_u64().expect("dim"))
            .collect();
        assert_eq!(t.dims, dims, "{}", t.name);
        assert_eq!(
            t.offset,
            w["offset"].as_u64().expect("offset"),
            "{}",
            t.name
        );
        assert_eq!(
            t.n_bytes,
            w["n_bytes"].as_u64().expect("n_bytes"),
            "{}",
            t.name
        );
        let values = gguf.tensor_to_f32(t)?;
        let want_values: Vec<f32> = w["f32"]
            .as_array()
            .expect("f32")
            .iter()
            .map(|v| v.as_f64().expect("f32") as f32)
            .collect();
        assert_eq!(values, want_values, "{}", t.name);
    }
    assert_eq!(
        gguf.get("test.nested"),
        Some(&V::Array(vec![
            V::Array(vec![V::I32(1), V::I32(2)]),
            V::Array(vec![V::I32(3)])
        ]))
    );
    assert!(matches!(
        gguf.get_u64("test.i64"),
        Err(Error::ValueOutOfRange { .. })
    ));
    Ok(())
}

/// Re-emitting the real model's metadata and tensors with our writer gives the same bytes.
#[test]
fn rewrites_the_real_model_byte_for_byte() -> Result<()> {
    let path = peregrine_testkit::smollm2_path();
    let gguf = GgufFile::open(&path)?;
    let mut writer = GgufWriter::new();
    for (k, v) in gguf.metadata() {
        writer.add_metadata(k.clone(), v.clone());
    }
    for t in gguf.tensors() {
        writer.add_tensor(
            t.name.clone(),
            &t.dims,
            t.ggml_type,
            gguf.tensor_data(t).to_vec(),
        )?;
    }
    let bytes = writer.to_bytes()?;
    let original = std::fs::read(&path).expect("read model");
    assert_eq!(bytes.len(), original.len());
    assert!(bytes == original, "rewrite differs from the original");
    Ok(())
}

/// Writes our writer's files as fuzz seeds (run by hand when the writer changes).
#[test]
#[ignore = "writes fuzz/corpus/gguf_parse seeds; run by hand"]
fn write_fuzz_seeds() -> Result<()> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/gguf_parse");
    writer_with_tensors(3, None)?.write(dir.join("seed-writer-v3.gguf"))?;
    writer_with_tensors(2, Some(8))?.write(dir.join("seed-writer-v2-align8.gguf"))?;
    Ok(())
}
