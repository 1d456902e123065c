//! The real model file cut at every section boundary of its header (and at many points in
//! between, and inside the data) is rejected with a clean, one-line error.

mod common;

use peregrine_formats::{Error, GgufFile};

/// Byte offsets where the header's sections end, found by walking the layout independently of
/// the parser: after magic, version, counts, each metadata pair, each tensor info, the padding,
/// and each tensor's data.
fn section_boundaries(bytes: &[u8]) -> (Vec<usize>, usize) {
    let u32_at = |pos: usize| u32::from_le_bytes(bytes[pos..pos + 4].try_into().expect("4 bytes"));
    let u64_at =
        |pos: usize| u64::from_le_bytes(bytes[pos..pos + 8].try_into().expect("8 bytes")) as usize;
    fn skip_value(bytes: &[u8], pos: usize, type_id: u32) -> usize {
        let u32_at =
            |pos: usize| u32::from_le_bytes(bytes[pos..pos + 4].try_into().expect("4 bytes"));
        let u64_at = |pos: usize| {
            u64::from_le_bytes(bytes[pos..pos + 8].try_into().expect("8 bytes")) as usize
        };
        match type_id {
            0 | 1 | 7 => pos + 1,
            2 | 3 => pos + 2,
            4..=6 => pos + 4,
            10..=12 => pos + 8,
            8 => pos + 8 + u64_at(pos),
            9 => {
                let elem_type = u32_at(pos);
                let count = u64_at(pos + 4);
                (0..count).fold(pos + 12, |p, _| skip_value(bytes, p, elem_type))
            }
            other => panic!("unexpected value type {other}"),
        }
    }
    let mut boundaries = vec![0, 4, 8, 16, 24];
    let n_tensors = u64_at(8);
    let n_kv = u64_at(16);
    let mut pos = 24;
    for _ in 0..n_kv {
        pos += 8 + u64_at(pos); // key
        boundaries.push(pos);
        let type_id = u32_at(pos);
        pos += 4;
        boundaries.push(pos);
        pos = skip_value(bytes, pos, type_id);
        boundaries.push(pos);
    }
    let mut tensor_ends = Vec::new();
    for _ in 0..n_tensors {
        pos += 8 + u64_at(pos); // name
        boundaries.push(pos);
        let n_dims = u32_at(pos) as usize;
        pos += 4 + 8 * n_dims + 4 + 8;
        boundaries.push(pos);
        tensor_ends.push(pos);
    }
    let data_start = pos.next_multiple_of(32);
    boundaries.push(data_start);
    (boundaries, data_start)
}

#[track_caller]
fn assert_clean_error(result: peregrine_formats::Result<GgufFile>, cut: usize) -> Error {
    match result {
        Ok(_) => panic!("file cut at {cut} parsed"),
        Err(err) => {
            let msg = err.to_string();
            assert!(
                !msg.contains('\n') && msg.starts_with("cut.gguf: "),
                "cut at {cut}: {msg}"
            );
            assert!(
                matches!(
                    err,
                    Error::Truncated { .. }
                        | Error::CountTooLarge { .. }
                        | Error::TensorOutOfBounds { .. }
                ),
                "cut at {cut}: unexpected error {err}"
            );
            err
        }
    }
}

#[test]
fn truncated_at_every_section_boundary_and_between() {
    let path = peregrine_testkit::smollm2_path();
    let bytes = std::fs::read(&path).expect("read model");
    let (boundaries, data_start) = section_boundaries(&bytes);
    assert_eq!(
        data_start as u64,
        GgufFile::open(&path).expect("model parses").data_offset()
    );
    assert!(
        boundaries.len() > 33 * 3 + 272 * 2,
        "walked every pair and tensor info"
    );
    for (idx, &cut) in boundaries.iter().enumerate() {
        assert_clean_error(GgufFile::parse_bytes(&bytes[..cut], "cut.gguf"), cut);
        // One byte past a boundary cuts the next field in half (for the metadata and the first
        // and last tensor infos; the middle infos are alike and each parse costs ~10 ms).
        if idx < 5 + 33 * 3 + 8 || idx + 8 >= boundaries.len() {
            assert_clean_error(
                GgufFile::parse_bytes(&bytes[..cut + 1], "cut.gguf"),
                cut + 1,
            );
        }
    }
    // A sweep: every byte of the first 512, then a deterministic scatter over the header.
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let scatter = (0..400).map(|_| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % data_start as u64) as usize
    });
    for cut in (0..512).chain(scatter) {
        assert_clean_error(GgufFile::parse_bytes(&bytes[..cut], "cut.gguf"), cut);
    }
}

#[test]
fn truncated_inside_tensor_data() {
    let path = peregrine_testkit::smollm2_path();
    let bytes = std::fs::read(&path).expect("read model");
    let gguf = GgufFile::open(&path).expect("model parses");
    let mut ends: Vec<u64> = gguf
        .tensors()
        .iter()
        .map(|t| t.offset + t.n_bytes)
        .collect();
    ends.sort_unstable();
    let last_end = *ends.last().expect("tensors");
    assert_eq!(
        last_end,
        bytes.len() as u64,
        "the last tensor ends the file"
    );
    // Every 16th tensor end, the byte before it, and the last byte of the file.
    let cuts = ends
        .iter()
        .step_by(16)
        .flat_map(|&e| [e - 1, e])
        .filter(|&c| c < last_end)
        .chain([last_end - 1]);
    let mut n_cuts = 0;
    for cut in cuts {
        let err = assert_clean_error(
            GgufFile::parse_bytes(&bytes[..cut as usize], "cut.gguf"),
            cut as usize,
        );
        assert!(
            matches!(err, Error::TensorOutOfBounds { .. }),
            "cut at {cut}: {err}"
        );
        n_cuts += 1;
    }
    assert!(n_cuts >= 30);
}
