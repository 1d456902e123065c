//! The crate's one error type.

use std::path::PathBuf;

/// Result of every fallible operation in this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong reading or writing a model file.
///
/// Each variant renders as one line naming the file (or the label given to
/// [`GgufFile::parse_bytes`](crate::GgufFile::parse_bytes)), the key or tensor, and the byte
/// offset where that is known.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The operating system failed to open, read, map or write a file.
    #[error("{}: {cause}", .path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        cause: std::io::Error,
    },
    /// The file ends before a field that the format requires.
    #[error("{}: truncated: {what} at offset {offset} needs {needed} B, but the file has {file_len} B", .path.display())]
    Truncated {
        /// The file.
        path: PathBuf,
        /// What was being read (`"header"`, `"metadata value of \"general.name\""`, ...).
        what: String,
        /// Where it starts.
        offset: u64,
        /// How many bytes it needs.
        needed: u64,
        /// The file length.
        file_len: u64,
    },
    /// The first four bytes are not `GGUF`.
    #[error("{}: not a GGUF file: magic is {got:02x?}, expected \"GGUF\" (47 47 55 46)", .path.display())]
    BadMagic {
        /// The file.
        path: PathBuf,
        /// The four bytes found.
        got: [u8; 4],
    },
    /// The GGUF version is not 2 or 3 (big-endian files also land here).
    #[error("{}: GGUF version {version} is not supported (supported: 2, 3; little-endian only)", .path.display())]
    UnsupportedVersion {
        /// The file.
        path: PathBuf,
        /// The version read.
        version: u32,
    },
    /// The file is a big-endian GGUF (its version reads byte-swapped).
    #[error("{}: big-endian GGUF (version {version}) is not supported; convert it to little-endian", .path.display())]
    BigEndian {
        /// The file.
        path: PathBuf,
        /// The version, read big-endian.
        version: u32,
    },
    /// A count or length in the file exceeds what the remaining bytes could hold.
    #[error("{}: {what} at offset {offset} is {count}, more than the {max} that the remaining bytes could hold (corrupt or truncated file)", .path.display())]
    CountTooLarge {
        /// The file.
        path: PathBuf,
        /// What was counted (`"tensor count"`, `"length of key string"`, ...).
        what: String,
        /// Where the count is stored.
        offset: u64,
        /// The count read.
        count: u64,
        /// The most that the remaining bytes can hold.
        max: u64,
    },
    /// A string is not valid UTF-8.
    #[error("{}: {what} at offset {offset} is not valid UTF-8 (invalid byte at string index {valid_up_to})", .path.display())]
    InvalidUtf8 {
        /// The file.
        path: PathBuf,
        /// Which string (`"key"`, `"value of \"general.name\""`, `"tensor name"`).
        what: String,
        /// Where the string's bytes start.
        offset: u64,
        /// Length of the valid prefix.
        valid_up_to: usize,
    },
    /// A metadata value has a type id outside the GGUF specification.
    #[error("{}: metadata key {key:?}: unknown value type {type_id} at offset {offset}", .path.display())]
    UnknownValueType {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
        /// The type id read.
        type_id: u32,
        /// Where it is stored.
        offset: u64,
    },
    /// Arrays nest deeper than the parser allows.
    #[error("{}: metadata key {key:?}: arrays nested deeper than {max_depth} at offset {offset}", .path.display())]
    NestingTooDeep {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
        /// Where the too-deep array starts.
        offset: u64,
        /// The limit.
        max_depth: usize,
    },
    /// A metadata key appears twice.
    #[error("{}: duplicate metadata key {key:?} at offset {offset}", .path.display())]
    DuplicateKey {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
        /// Where the second one starts.
        offset: u64,
    },
    /// Two tensors have the same name.
    #[error("{}: duplicate tensor name {name:?} at offset {offset}", .path.display())]
    DuplicateTensor {
        /// The file.
        path: PathBuf,
        /// The name.
        name: String,
        /// Where the second tensor info starts.
        offset: u64,
    },
    /// `general.alignment` is zero, not a power of two, or absurd.
    #[error("{}: general.alignment is {alignment}; it must be a power of two between 1 and 2^30", .path.display())]
    BadAlignment {
        /// The file.
        path: PathBuf,
        /// The value read.
        alignment: i128,
    },
    /// A GGML type id that this crate does not know (conversion without file context).
    #[error("unknown GGML type id {type_id}")]
    UnknownGgmlType {
        /// The type id.
        type_id: u32,
    },
    /// A tensor whose GGML type id is unknown or unsupported.
    #[error("{}: tensor {name:?} has GGML type {type_id}, which is not supported", .path.display())]
    UnsupportedTensorType {
        /// The file.
        path: PathBuf,
        /// The tensor.
        name: String,
        /// The type id.
        type_id: u32,
    },
    /// A tensor has more dimensions than GGML allows (4).
    #[error("{}: tensor {name:?} has {n_dims} dimensions at offset {offset}; at most 4 are allowed", .path.display())]
    TooManyDims {
        /// The file.
        path: PathBuf,
        /// The tensor.
        name: String,
        /// The count read.
        n_dims: u32,
        /// Where the count is stored.
        offset: u64,
    },
    /// The product of a tensor's dimensions (or its byte size) overflows.
    #[error("{}: tensor {name:?}: dimensions {dims:?} overflow (element count or byte size exceeds 2^63)", .path.display())]
    DimsOverflow {
        /// The file.
        path: PathBuf,
        /// The tensor.
        name: String,
        /// The dimensions read.
        dims: Vec<u64>,
    },
    /// A row length is not a multiple of its type's block length.
    #[error(
        "{ggml_type}: {n_elements} elements is not a multiple of the block length {block_len}"
    )]
    NotBlockMultiple {
        /// The type's name.
        ggml_type: &'static str,
        /// The element count.
        n_elements: u64,
        /// Elements per block.
        block_len: usize,
    },
    /// The byte size of `n_elements` elements overflows `u64`.
    #[error("{ggml_type}: byte size of {n_elements} elements overflows u64")]
    SizeOverflow {
        /// The type's name.
        ggml_type: &'static str,
        /// The element count.
        n_elements: u64,
    },
    /// A tensor's row length is not a multiple of its type's block length.
    #[error("{}: tensor {name:?}: row length {row_len} is not a multiple of the {ggml_type} block length {block_len}", .path.display())]
    TensorNotBlockMultiple {
        /// The file.
        path: PathBuf,
        /// The tensor.
        name: String,
        /// The type's name.
        ggml_type: &'static str,
        /// `dims[0]`.
        row_len: u64,
        /// Elements per block.
        block_len: usize,
    },
    /// A tensor's data offset is not a multiple of the file's alignment.
    #[error("{}: tensor {name:?}: data offset {offset} is not a multiple of the alignment {alignment}", .path.display())]
    TensorMisaligned {
        /// The file.
        path: PathBuf,
        /// The tensor.
        name: String,
        /// The offset, relative to the start of the data section.
        offset: u64,
        /// The file's alignment.
        alignment: u64,
    },
    /// A tensor's data runs past the end of the file.
    #[error("{}: tensor {name:?}: data at {offset}+{len} runs past end of file ({file_len} B)", .path.display())]
    TensorOutOfBounds {
        /// The file.
        path: PathBuf,
        /// The tensor.
        name: String,
        /// Absolute offset of the data (saturated at `u64::MAX`).
        offset: u64,
        /// Byte length of the data.
        len: u64,
        /// The file length.
        file_len: u64,
    },
    /// Two tensors' data ranges overlap.
    #[error("{}: tensors {first:?} and {second:?} overlap: data at {second_offset} starts before {first_end}", .path.display())]
    TensorOverlap {
        /// The file.
        path: PathBuf,
        /// The tensor that starts first.
        first: String,
        /// Where its data ends (absolute).
        first_end: u64,
        /// The tensor that starts inside it.
        second: String,
        /// Where its data starts (absolute).
        second_offset: u64,
    },
    /// A metadata value has a different type than the caller asked for.
    #[error("{}: metadata key {key:?} is {got}, expected {expected}", .path.display())]
    WrongValueType {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
        /// What the caller asked for.
        expected: &'static str,
        /// What the file holds.
        got: String,
    },
    /// A metadata value is out of the range the caller asked for (negative count, ...).
    #[error("{}: metadata key {key:?} is {value}, expected {expected}", .path.display())]
    ValueOutOfRange {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
        /// The value read.
        value: String,
        /// What was expected (`"a non-negative integer"`).
        expected: &'static str,
    },
    /// A key that the model config needs is absent.
    #[error("{}: missing metadata key {key:?}", .path.display())]
    MissingKey {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
    },
    /// Model hyper-parameters that are individually valid but inconsistent or unsupported.
    #[error("{}: invalid model config: {key} = {value}: {reason}", .path.display())]
    InvalidConfig {
        /// The file (or `config.json`).
        path: PathBuf,
        /// The key (GGUF key or HF field).
        key: String,
        /// The value.
        value: String,
        /// Why it is rejected.
        reason: &'static str,
    },
    /// A JSON document (HF `config.json`) failed to parse.
    #[error("{}: {cause}", .path.display())]
    Json {
        /// The file or label.
        path: PathBuf,
        /// The parser's error (with line and column).
        cause: serde_json::Error,
    },
    /// A safetensors file is malformed.
    #[error("{}: safetensors: {cause}", .path.display())]
    Safetensors {
        /// The file.
        path: PathBuf,
        /// The `safetensors` crate's error.
        cause: safetensors::SafeTensorError,
    },
    /// A tensor is absent.
    #[error("{}: no tensor named {name:?}", .path.display())]
    TensorNotFound {
        /// The file.
        path: PathBuf,
        /// The name asked for.
        name: String,
    },
    /// A tensor has a dtype that this operation does not handle.
    #[error("{}: tensor {name:?} has dtype {dtype}, expected {expected}", .path.display())]
    UnsupportedDtype {
        /// The file.
        path: PathBuf,
        /// The tensor.
        name: String,
        /// Its dtype.
        dtype: String,
        /// What is handled.
        expected: &'static str,
    },
    /// Two buffers that must agree in length do not.
    #[error("{what}: length mismatch: expected {expected}, got {got}")]
    LengthMismatch {
        /// Which buffer (`"dequantize_row q4_1: input bytes"`).
        what: String,
        /// The length required.
        expected: u64,
        /// The length given.
        got: u64,
    },
    /// The operation is not implemented for this GGML type.
    #[error("{op} is not implemented for {ggml_type}")]
    UnsupportedOperation {
        /// The operation (`"quantize_row"`).
        op: &'static str,
        /// The type's name.
        ggml_type: &'static str,
    },
    /// A value that cannot be written (e.g. a tensor whose byte length does not match its shape).
    #[error("{}: cannot write {what}: {reason}", .path.display())]
    InvalidWrite {
        /// The destination file.
        path: PathBuf,
        /// The item (`tensor "x"`, `key "general.name"`).
        what: String,
        /// Why.
        reason: String,
    },
}

impl Error {
    /// Replaces the path of every variant that carries one (used when a buffer parsed under a
    /// label turns out to come from a file).
    pub fn with_path(mut self, new_path: impl Into<PathBuf>) -> Self {
        let new_path = new_path.into();
        match &mut self {
            Error::Io { path, .. }
            | Error::Truncated { path, .. }
            | Error::BadMagic { path, .. }
            | Error::UnsupportedVersion { path, .. }
            | Error::BigEndian { path, .. }
            | Error::CountTooLarge { path, .. }
            | Error::InvalidUtf8 { path, .. }
            | Error::UnknownValueType { path, .. }
            | Error::NestingTooDeep { path, .. }
            | Error::DuplicateKey { path, .. }
            | Error::DuplicateTensor { path, .. }
            | Error::BadAlignment { path, .. }
            | Error::UnsupportedTensorType { path, .. }
            | Error::TooManyDims { path, .. }
            | Error::DimsOverflow { path, .. }
            | Error::TensorNotBlockMultiple { path, .. }
            | Error::TensorMisaligned { path, .. }
            | Error::TensorOutOfBounds { path, .. }
            | Error::TensorOverlap { path, .. }
            | Error::WrongValueType { path, .. }
            | Error::ValueOutOfRange { path, .. }
            | Error::MissingKey { path, .. }
            | Error::InvalidConfig { path, .. }
            | Error::Json { path, .. }
            | Error::Safetensors { path, .. }
            | Error::TensorNotFound { path, .. }
            | Error::UnsupportedDtype { path, .. }
            | Error::InvalidWrite { path, .. } => *path = new_path,
            Error::UnknownGgmlType { .. }
            | Error::NotBlockMultiple { .. }
            | Error::SizeOverflow { .. }
            | Error::LengthMismatch { .. }
            | Error::UnsupportedOperation { .. } => {}
        }
        self
    }
}
