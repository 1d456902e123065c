//! Fuzzes the safetensors reader: any byte string gives `Ok` or `Err`, never a panic; on `Ok`
//! every tensor is readable and f32/f16/bf16 tensors convert.
#![no_main]

use libfuzzer_sys::fuzz_target;
use peregrine_formats::safetensors_io::SafetensorsFile;

fuzz_target!(|data: &[u8]| {
    let Ok(file) = SafetensorsFile::parse_bytes(data, "fuzz.safetensors") else { return };
    let _ = file.user_metadata();
    for name in file.names() {
        let tensor = file.tensor(name).expect("a listed tensor is readable");
        if tensor.data.len() <= 1 << 20 {
            let _ = tensor.to_f32(file.path());
        }
    }
});
