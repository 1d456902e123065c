//! Dequantization and quantization are bit-identical to gguf-py's `gguf.quants` (the oracle;
//! see tests/data/README.md), on random blocks of every type and on every tensor of the real
//! model.

mod common;

use common::{f32_from_le, hex_decode, hex_encode, read_json, sha256};
use peregrine_formats::quant::{dequantize_row, quantize_row};
use peregrine_formats::{GgmlType, GgufFile, Result};

fn type_by_name(name: &str) -> GgmlType {
    GgmlType::ALL
        .into_iter()
        .find(|t| t.name() == name)
        .unwrap_or_else(|| panic!("unknown type {name}"))
}

#[test]
fn dequantize_random_blocks_matches_gguf_quants() -> Result<()> {
    let golden = read_json("quant_dequant_goldens.json");
    let types = golden["types"].as_object().expect("types object");
    assert_eq!(types.len(), GgmlType::ALL.len(), "a golden for every type");
    for (name, case) in types {
        let ty = type_by_name(name);
        let bytes = hex_decode(case["bytes_hex"].as_str().expect("bytes_hex"));
        let want = f32_from_le(&hex_decode(
            case["f32_le_hex"].as_str().expect("f32_le_hex"),
        ));
        let mut got = vec![0f32; want.len()];
        dequantize_row(ty, &bytes, &mut got)?;
        for (idx, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(
                g.to_bits(),
                w.to_bits(),
                "{name} element {idx} (block {}): got {g:e}, oracle {} says {w:e}",
                idx / ty.block_len(),
                case["oracle"]
            );
        }
    }
    Ok(())
}

#[test]
fn quantize_matches_gguf_quants_bytes() -> Result<()> {
    let golden = read_json("quant_quantize_goldens.json");
    let x = f32_from_le(&hex_decode(
        golden["input_f32_le_hex"].as_str().expect("input"),
    ));
    for name in ["q8_0", "q4_0", "q4_1"] {
        let ty = type_by_name(name);
        let want = golden[name].as_str().expect("bytes");
        let mut got = vec![0u8; ty.row_bytes(x.len() as u64)? as usize];
        quantize_row(ty, &x, &mut got)?;
        let got = hex_encode(&got);
        if got != want {
            let block_hex = 2 * ty.block_bytes();
            let first_bad = (0..x.len() / 32).find(|&b| {
                got[b * block_hex..(b + 1) * block_hex] != want[b * block_hex..(b + 1) * block_hex]
            });
            let b = first_bad.expect("some block differs");
            panic!(
                "{name}: block {b} differs\n input {:?}\n got  {}\n want {}",
                &x[b * 32..(b + 1) * 32],
                &got[b * block_hex..(b + 1) * block_hex],
                &want[b * block_hex..(b + 1) * block_hex]
            );
        }
    }
    Ok(())
}

#[test]
fn every_smollm2_tensor_dequantizes_like_gguf_quants() -> Result<()> {
    let golden = read_json("smollm2_dequant_sha256.json");
    let want = golden["tensors"].as_object().expect("tensors object");
    let gguf = GgufFile::open(peregrine_testkit::smollm2_path())?;
    assert_eq!(want.len(), 272);
    assert_eq!(gguf.tensors().len(), want.len());
    let mut n_checked = 0;
    for info in gguf.tensors() {
        let case = &want[&info.name];
        assert_eq!(
            case["type"].as_str().map(str::to_ascii_lowercase),
            Some(info.ggml_type.name().to_ascii_lowercase()),
            "{}",
            info.name
        );
        let values = gguf.tensor_to_f32(info)?;
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(
            hex_encode(&sha256(&bytes)),
            case["sha256"].as_str().expect("sha256"),
            "tensor {} ({})",
            info.name,
            info.ggml_type
        );
        n_checked += 1;
    }
    assert_eq!(n_checked, 272);
    Ok(())
}

#[test]
fn sha256_known_vectors() {
    assert_eq!(
        hex_encode(&sha256(b"")),
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
    assert_eq!(
        hex_encode(&sha256(b"abc")),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
    let long = vec![b'a'; 1000];
    assert_eq!(
        hex_encode(&sha256(&long)),
        "41edece42d63e8d9bf515a9ba6932e1c20cbc9f5a5d134645adb5db1b9737ea3"
    );
}
