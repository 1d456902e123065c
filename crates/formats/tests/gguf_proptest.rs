//! Property tests: the parser never panics on mutated headers, and random metadata round-trips
//! through the writer.

mod common;

use peregrine_formats::{quant, GgmlType, GgufFile, GgufWriter, MetadataValue as V};
use proptest::prelude::*;

/// A small valid file made by our writer, plus the gguf-py fixture.
fn bases() -> Vec<Vec<u8>> {
    let mut writer = GgufWriter::new();
    writer
        .add_metadata("general.architecture", V::String("llama".into()))
        .add_metadata("llama.block_count", V::U32(1))
        .add_metadata(
            "tokens",
            V::Array(vec![V::String("a".into()), V::String("bc".into())]),
        )
        .add_metadata("nested", V::Array(vec![V::Array(vec![V::I16(-1)])]));
    writer
        .add_tensor("a", &[32, 2], GgmlType::Q8_0, vec![1; 68])
        .expect("valid tensor");
    writer
        .add_tensor("b", &[4], GgmlType::F32, vec![0; 16])
        .expect("valid tensor");
    let fixture = std::fs::read(common::data_path("gguf_py_small.gguf")).expect("fixture");
    vec![writer.to_bytes().expect("writes"), fixture]
}

/// Values that make counts, lengths and offsets interesting.
fn interesting_u64() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0u64),
        Just(1),
        Just(31),
        Just(32),
        Just(1 << 32),
        Just(1 << 60),
        Just(i64::MAX as u64),
        Just(u64::MAX),
        Just(u64::MAX - 31),
        any::<u64>(),
        0u64..4096,
    ]
}

#[derive(Debug, Clone)]
enum Mutation {
    Byte(usize, u8),
    Word(usize, u64),
    Truncate(usize),
    Insert(usize, Vec<u8>),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        4 => (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Byte(i, b)),
        4 => (any::<usize>(), interesting_u64()).prop_map(|(i, v)| Mutation::Word(i, v)),
        1 => any::<usize>().prop_map(Mutation::Truncate),
        1 => (any::<usize>(), proptest::collection::vec(any::<u8>(), 1..16)).prop_map(|(i, b)| Mutation::Insert(i, b)),
    ]
}

fn apply(bytes: &mut Vec<u8>, m: &Mutation) {
    if bytes.is_empty() {
        return;
    }
    match m {
        Mutation::Byte(i, b) => {
            let i = i % bytes.len();
            bytes[i] = *b;
        }
        Mutation::Word(i, v) => {
            // Aligned to 4 so that it often lands on a real count, length or offset field.
            let i = (i % bytes.len()) & !3;
            let end = (i + 8).min(bytes.len());
            bytes[i..end].copy_from_slice(&v.to_le_bytes()[..end - i]);
        }
        Mutation::Truncate(n) => bytes.truncate(n % bytes.len()),
        Mutation::Insert(i, b) => {
            let i = i % bytes.len();
            bytes.splice(i..i, b.iter().copied());
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn mutated_files_never_panic(base_idx in 0usize..2, mutations in proptest::collection::vec(mutation(), 1..6)) {
        let mut bytes = bases().swap_remove(base_idx);
        for m in &mutations {
            apply(&mut bytes, m);
        }
        match GgufFile::parse_bytes(bytes, "mutated.gguf") {
            Err(err) => prop_assert!(!err.to_string().contains('\n')),
            Ok(gguf) => {
                let _ = gguf.model_config();
                for t in gguf.tensors() {
                    prop_assert_eq!(gguf.tensor_data(t).len() as u64, t.n_bytes);
                    if t.n_elements() <= 1 << 16 {
                        let mut out = vec![0f32; t.n_elements() as usize];
                        prop_assert!(quant::dequantize_row(t.ggml_type, gguf.tensor_data(t), &mut out).is_ok());
                    }
                }
            }
        }
    }
}

fn leaf() -> impl Strategy<Value = V> {
    prop_oneof![
        any::<u8>().prop_map(V::U8),
        any::<i8>().prop_map(V::I8),
        any::<u16>().prop_map(V::U16),
        any::<i16>().prop_map(V::I16),
        any::<u32>().prop_map(V::U32),
        any::<i32>().prop_map(V::I32),
        any::<u64>().prop_map(V::U64),
        any::<i64>().prop_map(V::I64),
        (-1e30f32..1e30).prop_map(V::F32),
        (-1e300f64..1e300).prop_map(V::F64),
        any::<bool>().prop_map(V::Bool),
        ".{0,12}".prop_map(V::String),
    ]
}

/// Arrays hold one element type: build each from one leaf strategy or from nested arrays.
fn value() -> impl Strategy<Value = V> {
    leaf().prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(any::<u32>(), 0..5)
                .prop_map(|v| V::Array(v.into_iter().map(V::U32).collect())),
            proptest::collection::vec(".{0,6}", 0..5)
                .prop_map(|v| V::Array(v.into_iter().map(V::String).collect())),
            proptest::collection::vec(inner.prop_map(|x| V::Array(vec![x])), 0..4)
                .prop_map(V::Array),
        ]
    })
}

proptest! {
    #[test]
    fn random_metadata_round_trips(values in proptest::collection::vec(value(), 0..12), version in 2u32..4) {
        let mut writer = GgufWriter::new();
        writer.set_version(version);
        let want: Vec<(String, V)> = values.into_iter().enumerate().map(|(i, v)| (format!("key.{i}"), v)).collect();
        for (k, v) in &want {
            writer.add_metadata(k.clone(), v.clone());
        }
        let gguf = GgufFile::parse_bytes(writer.to_bytes().expect("writes"), "random.gguf").expect("parses");
        prop_assert_eq!(gguf.metadata(), &want[..]);
    }
}
