//! Fuzzes the GGUF parser: any byte string gives `Ok` or `Err`, never a panic, an abort, a hang
//! or an allocation sized by an unvalidated count. On `Ok`, every accessor is exercised too.
#![no_main]

use libfuzzer_sys::fuzz_target;
use peregrine_formats::{quant, GgufFile};

fuzz_target!(|data: &[u8]| {
    let Ok(gguf) = GgufFile::parse_bytes(data, "fuzz.gguf") else {
        return;
    };
    let _ = gguf.model_config();
    for (key, _) in gguf.metadata() {
        let _ = gguf.get_str(key);
        let _ = gguf.get_u64(key);
        let _ = gguf.get_f32(key);
        let _ = gguf.get_bool(key);
        let _ = gguf.get_str_array(key);
        let _ = gguf.get_i32_array(key);
    }
    for info in gguf.tensors() {
        assert!(gguf.tensor(&info.name).is_some());
        let bytes = gguf.tensor_data(info);
        assert_eq!(bytes.len() as u64, info.n_bytes);
        // Dequantize small tensors (big ones are valid too but only slow the fuzzer down).
        if info.n_elements() <= 1 << 16 {
            let mut out = vec![0f32; info.n_elements() as usize];
            quant::dequantize_row(info.ggml_type, bytes, &mut out)
                .expect("a validated tensor dequantizes");
        }
    }
});
