//! Bad input gives a one-line `Err` naming the problem, never a panic, a hang or an allocation
//! sized by an unvalidated count (issue 2, item 8).

mod common;

use common::Raw;
use peregrine_formats::{Error, GgufFile, GgufWriter, MetadataValue};

fn parse(bytes: Vec<u8>) -> peregrine_formats::Result<GgufFile> {
    GgufFile::parse_bytes(bytes, "corrupt.gguf")
}

/// Parses, expects an error, checks it is one line naming the file, and returns it.
#[track_caller]
fn parse_err(bytes: Vec<u8>) -> Error {
    match parse(bytes) {
        Ok(gguf) => panic!("corrupt input parsed: {gguf:?}"),
        Err(err) => {
            let msg = err.to_string();
            assert!(!msg.contains('\n'), "error is not one line: {msg}");
            assert!(
                msg.starts_with("corrupt.gguf: "),
                "error does not name the file: {msg}"
            );
            err
        }
    }
}

/// A valid minimal file: one key, one f32 tensor of 4 elements.
fn minimal() -> Raw {
    let mut raw = Raw::header(3, 1, 1);
    raw.kv_u32("general.alignment", 32)
        .tensor(b"t", &[4], 0, 0)
        .data(32, 16);
    raw
}

#[test]
fn minimal_file_parses() {
    let gguf = parse(minimal().build()).expect("minimal file is valid");
    assert_eq!(gguf.tensors()[0].n_bytes, 16);
    let mut v2 = minimal().build();
    v2[4] = 2;
    assert_eq!(parse(v2).expect("v2 is valid").version(), 2);
}

#[test]
fn wrong_magic() {
    let mut bytes = minimal().build();
    bytes[..4].copy_from_slice(b"GGML");
    assert!(matches!(parse_err(bytes), Error::BadMagic { got, .. } if &got == b"GGML"));
    assert!(matches!(
        parse_err(b"PK\x03\x04 a zip file".to_vec()),
        Error::BadMagic { .. }
    ));
}

#[test]
fn unsupported_versions() {
    for version in [0u32, 1, 4, u32::MAX, 0x0100_0000 /* big-endian v1 */] {
        let mut bytes = minimal().build();
        bytes[4..8].copy_from_slice(&version.to_le_bytes());
        assert!(
            matches!(parse_err(bytes), Error::UnsupportedVersion { version: v, .. } if v == version)
        );
    }
    let mut bytes = minimal().build();
    bytes[4..8].copy_from_slice(&3u32.to_be_bytes());
    assert!(matches!(
        parse_err(bytes),
        Error::BigEndian { version: 3, .. }
    ));
}

#[test]
fn empty_and_tiny_files() {
    for len in 0..24 {
        let bytes = minimal().build()[..len].to_vec();
        assert!(
            matches!(parse_err(bytes), Error::Truncated { .. }),
            "len {len}"
        );
    }
}

#[test]
fn absurd_counts() {
    let huge = 1u64 << 60;
    assert!(
        matches!(parse_err(Raw::header(3, huge, 0).build()), Error::CountTooLarge { count, .. } if count == huge)
    );
    assert!(
        matches!(parse_err(Raw::header(3, 0, huge).build()), Error::CountTooLarge { count, .. } if count == huge)
    );
    assert!(matches!(
        parse_err(Raw::header(3, u64::MAX, u64::MAX).build()),
        Error::CountTooLarge { .. }
    ));
    // An array of 2^60 u32 elements, and of 2^60 strings.
    for elem_type in [4u32, 8, 9] {
        let mut raw = Raw::header(3, 0, 1);
        raw.str(b"arr")
            .u32(9)
            .u32(elem_type)
            .u64(huge)
            .bytes(&[0; 64]);
        assert!(
            matches!(parse_err(raw.build()), Error::CountTooLarge { count, .. } if count == huge)
        );
    }
    // A string (key, value, tensor name) whose length is 2^60.
    let mut raw = Raw::header(3, 0, 1);
    raw.u64(huge).bytes(&[b'k'; 32]);
    assert!(matches!(parse_err(raw.build()), Error::Truncated { needed, .. } if needed == huge));
    let mut raw = Raw::header(3, 0, 1);
    raw.str(b"k").u32(8).u64(u64::MAX).bytes(&[0; 32]);
    assert!(matches!(parse_err(raw.build()), Error::Truncated { .. }));
    let mut raw = Raw::header(3, 1, 0);
    raw.u64(huge).bytes(&[0; 64]);
    assert!(matches!(parse_err(raw.build()), Error::Truncated { .. }));
}

#[test]
fn metadata_element_budget() {
    // 2^24 + 1 one-byte elements: each would take ~32 B parsed, so the parser refuses.
    let n = (1u64 << 24) + 1;
    let mut raw = Raw::header(3, 0, 1);
    raw.str(b"bytes").u32(9).u32(0).u64(n);
    raw.0.resize(raw.0.len() + n as usize, 0);
    assert!(
        matches!(parse_err(raw.build()), Error::CountTooLarge { count, max, .. } if count == n && max == 1 << 24)
    );
    // Exactly at the budget, split over two keys, is fine.
    let half = 1u64 << 23;
    let mut raw = Raw::header(3, 0, 2);
    for key in [b"a", b"b"] {
        raw.str(key).u32(9).u32(0).u64(half);
        raw.0.resize(raw.0.len() + half as usize, 7);
    }
    let gguf = parse(raw.build()).expect("at the budget");
    assert_eq!(
        gguf.get("b").and_then(|v| v.as_array()).map(<[_]>::len),
        Some(half as usize)
    );
}

#[test]
fn overflowing_dims() {
    let cases: [&[u64]; 5] = [
        &[1 << 32, 1 << 32], // element count 2^64
        &[u64::MAX, 2],      // wraps
        &[1 << 62, 4],       // 2^64 wraps to 0
        &[1 << 40, 1 << 23], // 2^63: past int64
        &[1 << 61],          // 2^61 f32 elements = 2^63 bytes: past int64
    ];
    for dims in cases {
        let mut raw = Raw::header(3, 1, 0);
        raw.tensor(b"big", dims, 0, 0).data(32, 64);
        assert!(
            matches!(parse_err(raw.build()), Error::DimsOverflow { ref name, .. } if name == "big"),
            "{dims:?}"
        );
    }
    // A zero dimension is an empty tensor, not an error.
    let mut raw = Raw::header(3, 1, 0);
    raw.tensor(b"empty", &[0, 7], 0, 0).data(32, 0);
    assert_eq!(
        parse(raw.build()).expect("empty tensor is valid").tensors()[0].n_bytes,
        0
    );
}

#[test]
fn too_many_dims() {
    let mut raw = Raw::header(3, 1, 0);
    raw.tensor(b"t", &[1, 1, 1, 1, 1], 0, 0).data(32, 4);
    assert!(matches!(
        parse_err(raw.build()),
        Error::TooManyDims { n_dims: 5, .. }
    ));
    let mut raw = Raw::header(3, 1, 0);
    raw.str(b"t").u32(u32::MAX).bytes(&[0; 64]);
    assert!(matches!(parse_err(raw.build()), Error::TooManyDims { .. }));
}

#[test]
fn offsets_past_end() {
    for offset in [32u64, 1 << 40, u64::MAX - 31] {
        let mut raw = Raw::header(3, 1, 0);
        raw.tensor(b"t", &[4], 0, offset).data(32, 16);
        assert!(
            matches!(parse_err(raw.build()), Error::TensorOutOfBounds { ref name, .. } if name == "t"),
            "offset {offset}"
        );
    }
    // Data section cut short: 16 bytes needed, 15 present.
    let mut bytes = minimal().build();
    bytes.pop();
    assert!(matches!(
        parse_err(bytes),
        Error::TensorOutOfBounds { len: 16, .. }
    ));
}

#[test]
fn misaligned_and_overlapping_tensors() {
    let mut raw = Raw::header(3, 1, 0);
    raw.tensor(b"t", &[4], 0, 4).data(32, 64);
    assert!(matches!(
        parse_err(raw.build()),
        Error::TensorMisaligned {
            offset: 4,
            alignment: 32,
            ..
        }
    ));
    let mut raw = Raw::header(3, 2, 0);
    raw.tensor(b"a", &[16], 0, 0)
        .tensor(b"b", &[4], 0, 32)
        .data(32, 128);
    assert!(matches!(
        parse_err(raw.build()),
        Error::TensorOverlap { .. }
    ));
}

#[test]
fn unknown_types() {
    for type_id in [4u32, 5, 16, 29, 31, 1000, u32::MAX] {
        let mut raw = Raw::header(3, 1, 0);
        raw.tensor(b"t", &[32], type_id, 0).data(32, 256);
        assert!(
            matches!(parse_err(raw.build()), Error::UnsupportedTensorType { type_id: t, .. } if t == type_id)
        );
    }
    let mut raw = Raw::header(3, 0, 1);
    raw.str(b"k").u32(13).u32(0);
    assert!(
        matches!(parse_err(raw.build()), Error::UnknownValueType { type_id: 13, ref key, .. } if key == "k")
    );
    let mut raw = Raw::header(3, 0, 1);
    raw.str(b"k").u32(9).u32(77).u64(0);
    assert!(matches!(
        parse_err(raw.build()),
        Error::UnknownValueType { type_id: 77, .. }
    ));
    // Row length not a whole number of blocks.
    let mut raw = Raw::header(3, 1, 0);
    raw.tensor(b"t", &[33], 2, 0).data(32, 64);
    assert!(matches!(
        parse_err(raw.build()),
        Error::TensorNotBlockMultiple {
            row_len: 33,
            block_len: 32,
            ..
        }
    ));
}

#[test]
fn non_utf8_strings() {
    let bad = b"bad\xff\xfename";
    let mut raw = Raw::header(3, 0, 1);
    raw.str(bad).u32(4).u32(0);
    assert!(matches!(
        parse_err(raw.build()),
        Error::InvalidUtf8 { valid_up_to: 3, .. }
    ));
    let mut raw = Raw::header(3, 0, 1);
    raw.kv_str("general.name", bad);
    assert!(
        matches!(parse_err(raw.build()), Error::InvalidUtf8 { ref what, .. } if what.contains("general.name"))
    );
    let mut raw = Raw::header(3, 0, 1);
    raw.str(b"tokens")
        .u32(9)
        .u32(8)
        .u64(2)
        .str(b"ok")
        .str(b"\xc3");
    assert!(matches!(parse_err(raw.build()), Error::InvalidUtf8 { .. }));
    let mut raw = Raw::header(3, 1, 0);
    raw.tensor(bad, &[4], 0, 0).data(32, 16);
    assert!(
        matches!(parse_err(raw.build()), Error::InvalidUtf8 { ref what, .. } if what.contains("tensor"))
    );
}

#[test]
fn duplicates() {
    let mut raw = Raw::header(3, 0, 2);
    raw.kv_u32("k", 1).kv_u32("k", 2);
    assert!(matches!(parse_err(raw.build()), Error::DuplicateKey { ref key, .. } if key == "k"));
    let mut raw = Raw::header(3, 2, 0);
    raw.tensor(b"t", &[4], 0, 0)
        .tensor(b"t", &[4], 0, 32)
        .data(32, 64);
    assert!(
        matches!(parse_err(raw.build()), Error::DuplicateTensor { ref name, .. } if name == "t")
    );
}

#[test]
fn bad_alignment() {
    for alignment in [0u32, 3, 48, 1 << 31] {
        let mut raw = Raw::header(3, 0, 1);
        raw.kv_u32("general.alignment", alignment);
        assert!(
            matches!(parse_err(raw.build()), Error::BadAlignment { .. }),
            "alignment {alignment}"
        );
    }
    let mut raw = Raw::header(3, 0, 1);
    raw.kv_str("general.alignment", b"32");
    assert!(matches!(
        parse_err(raw.build()),
        Error::WrongValueType { .. }
    ));
    // Alignment 1 and 4096 are fine.
    for alignment in [1u32, 4096] {
        let mut raw = Raw::header(3, 1, 1);
        raw.kv_u32("general.alignment", alignment)
            .tensor(b"t", &[4], 0, 0)
            .data(alignment as usize, 16);
        assert_eq!(
            parse(raw.build()).expect("valid alignment").alignment(),
            alignment as u64
        );
    }
}

#[test]
fn bad_bool_and_deep_nesting() {
    let mut raw = Raw::header(3, 0, 1);
    raw.str(b"flag").u32(7).u8(2);
    assert!(matches!(
        parse_err(raw.build()),
        Error::ValueOutOfRange { .. }
    ));
    let mut raw = Raw::header(3, 0, 1);
    raw.str(b"deep");
    raw.u32(9);
    for _ in 0..1000 {
        raw.u32(9).u64(1);
    }
    raw.u32(0).u64(0);
    assert!(matches!(
        parse_err(raw.build()),
        Error::NestingTooDeep { .. }
    ));
}

#[test]
fn writer_refuses_what_the_reader_would_reject() {
    let mut writer = GgufWriter::new();
    assert!(writer
        .add_tensor("t", &[33], peregrine_formats::GgmlType::Q4_0, vec![0; 18])
        .is_err());
    assert!(writer
        .add_tensor("t", &[4], peregrine_formats::GgmlType::F32, vec![0; 15])
        .is_err());
    writer
        .add_metadata("k", MetadataValue::U8(1))
        .add_metadata("k", MetadataValue::U8(2));
    assert!(matches!(writer.to_bytes(), Err(Error::InvalidWrite { .. })));
    let mut writer = GgufWriter::new();
    writer.add_metadata(
        "mixed",
        MetadataValue::Array(vec![MetadataValue::U8(1), MetadataValue::I8(1)]),
    );
    assert!(matches!(writer.to_bytes(), Err(Error::InvalidWrite { .. })));
    let mut writer = GgufWriter::new();
    writer.set_alignment(24);
    assert!(matches!(writer.to_bytes(), Err(Error::InvalidWrite { .. })));
}
