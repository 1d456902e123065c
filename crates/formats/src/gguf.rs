//! The GGUF reader: header, metadata, tensor infos, and memory-mapped tensor data.
//!
//! Layout (versions 2 and 3, little-endian; version 3 only adds big-endian files, which we
//! recognise and reject with [`Error::BigEndian`]):
//!
//! ```text
//! "GGUF" u32:version u64:n_tensors u64:n_kv
//! n_kv × { string:key u32:value_type value }
//! n_tensors × { string:name u32:n_dims u64[n_dims]:dims u32:ggml_type u64:offset }
//! padding to general.alignment (default 32)
//! tensor data (each tensor at data_start + offset, offset a multiple of the alignment)
//! ```
//!
//! Every count, length and offset is checked (with checked arithmetic) against the bytes that
//! remain before anything is allocated by it, so a hostile header gives an [`Error`], never a
//! panic or an allocation sized by an unvalidated count.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::ggml_type::GgmlType;
use crate::mmap::Backing;

/// The four bytes every GGUF file starts with.
pub const GGUF_MAGIC: [u8; 4] = *b"GGUF";
/// Alignment of the tensor data when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// Largest `general.alignment` accepted (1 GiB).
pub const MAX_ALIGNMENT: u64 = 1 << 30;
/// Most dimensions a tensor may have (`GGML_MAX_DIMS`).
pub const MAX_DIMS: usize = 4;
/// How deep arrays of arrays may nest before the parser refuses (guards the stack).
pub const MAX_ARRAY_DEPTH: usize = 16;
/// Most array elements, summed over all metadata, that a file may hold (16 Mi). Each parsed
/// element takes ~32 bytes whatever its size in the file, so this bounds the metadata's memory
/// (~512 MiB) even for a file of millions of one-byte elements. Real vocabularies hold well
/// under a million (Llama 3: 128 Ki tokens, 280 Ki merges).
pub const MAX_METADATA_ELEMENTS: u64 = 1 << 24;

/// GGUF metadata value type ids.
pub(crate) mod value_type {
    pub const U8: u32 = 0;
    pub const I8: u32 = 1;
    pub const U16: u32 = 2;
    pub const I16: u32 = 3;
    pub const U32: u32 = 4;
    pub const I32: u32 = 5;
    pub const F32: u32 = 6;
    pub const BOOL: u32 = 7;
    pub const STRING: u32 = 8;
    pub const ARRAY: u32 = 9;
    pub const U64: u32 = 10;
    pub const I64: u32 = 11;
    pub const F64: u32 = 12;
}

/// A metadata value, as typed in the file.
#[derive(Debug, Clone)]
pub enum MetadataValue {
    /// `uint8`
    U8(u8),
    /// `int8`
    I8(i8),
    /// `uint16`
    U16(u16),
    /// `int16`
    I16(i16),
    /// `uint32`
    U32(u32),
    /// `int32`
    I32(i32),
    /// `uint64`
    U64(u64),
    /// `int64`
    I64(i64),
    /// `float32`
    F32(f32),
    /// `float64`
    F64(f64),
    /// `bool` (stored as one byte, 0 or 1)
    Bool(bool),
    /// UTF-8 string
    String(String),
    /// Array of values of one type (arrays may nest). The parser gives arrays of strings as
    /// [`MetadataValue::StringArray`]; a writer may use either.
    Array(Vec<MetadataValue>),
    /// Array of strings, stored compactly (a tokenizer's 10^5 tokens and merges would otherwise
    /// be as many heap strings, ~20 MB for a 49k vocabulary). Boxed, so that the other values
    /// (elements of numeric arrays among them) stay 32 bytes.
    StringArray(Box<StringArray>),
}

/// Values are equal when they would be written the same: an array of strings equals the same
/// strings as a [`MetadataValue::StringArray`].
impl PartialEq for MetadataValue {
    fn eq(&self, other: &Self) -> bool {
        use MetadataValue as V;
        match (self, other) {
            (V::U8(a), V::U8(b)) => a == b,
            (V::I8(a), V::I8(b)) => a == b,
            (V::U16(a), V::U16(b)) => a == b,
            (V::I16(a), V::I16(b)) => a == b,
            (V::U32(a), V::U32(b)) => a == b,
            (V::I32(a), V::I32(b)) => a == b,
            (V::U64(a), V::U64(b)) => a == b,
            (V::I64(a), V::I64(b)) => a == b,
            (V::F32(a), V::F32(b)) => a == b,
            (V::F64(a), V::F64(b)) => a == b,
            (V::Bool(a), V::Bool(b)) => a == b,
            (V::String(a), V::String(b)) => a == b,
            (V::Array(a), V::Array(b)) => a == b,
            (V::StringArray(a), V::StringArray(b)) => a == b,
            (V::StringArray(s), V::Array(items)) | (V::Array(items), V::StringArray(s)) => {
                s.len() == items.len() && s.iter().zip(items).all(|(a, b)| b.as_str() == Some(a))
            }
            _ => false,
        }
    }
}

/// Strings in one buffer with their end offsets.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct StringArray {
    bytes: String,
    ends: Vec<usize>,
}

impl StringArray {
    /// An empty array with room for `n` strings.
    pub fn with_capacity(n: usize) -> Self {
        StringArray {
            bytes: String::new(),
            ends: Vec::with_capacity(n),
        }
    }

    /// Appends `s`.
    pub fn push(&mut self, s: &str) {
        self.bytes.push_str(s);
        self.ends.push(self.bytes.len());
    }

    /// Number of strings.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// Whether there are no strings.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// String `i`.
    pub fn get(&self, i: usize) -> Option<&str> {
        let end = *self.ends.get(i)?;
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        Some(&self.bytes[start..end])
    }

    /// The strings in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = &str> + '_ {
        (0..self.len()).map(|i| self.get(i).expect("index in range"))
    }
}

impl<'s> FromIterator<&'s str> for StringArray {
    fn from_iter<I: IntoIterator<Item = &'s str>>(iter: I) -> Self {
        let mut a = StringArray::default();
        iter.into_iter().for_each(|s| a.push(s));
        a
    }
}

impl std::fmt::Debug for StringArray {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl MetadataValue {
    /// The GGUF value type id.
    pub fn type_id(&self) -> u32 {
        use value_type as vt;
        match self {
            MetadataValue::U8(_) => vt::U8,
            MetadataValue::I8(_) => vt::I8,
            MetadataValue::U16(_) => vt::U16,
            MetadataValue::I16(_) => vt::I16,
            MetadataValue::U32(_) => vt::U32,
            MetadataValue::I32(_) => vt::I32,
            MetadataValue::U64(_) => vt::U64,
            MetadataValue::I64(_) => vt::I64,
            MetadataValue::F32(_) => vt::F32,
            MetadataValue::F64(_) => vt::F64,
            MetadataValue::Bool(_) => vt::BOOL,
            MetadataValue::String(_) => vt::STRING,
            MetadataValue::Array(_) | MetadataValue::StringArray(_) => vt::ARRAY,
        }
    }

    /// The type's name as `gguf-py` spells it in lower case (`"u32"`, `"string"`, `"array"`).
    pub fn type_name(&self) -> &'static str {
        match self {
            MetadataValue::U8(_) => "u8",
            MetadataValue::I8(_) => "i8",
            MetadataValue::U16(_) => "u16",
            MetadataValue::I16(_) => "i16",
            MetadataValue::U32(_) => "u32",
            MetadataValue::I32(_) => "i32",
            MetadataValue::U64(_) => "u64",
            MetadataValue::I64(_) => "i64",
            MetadataValue::F32(_) => "f32",
            MetadataValue::F64(_) => "f64",
            MetadataValue::Bool(_) => "bool",
            MetadataValue::String(_) => "string",
            MetadataValue::Array(_) | MetadataValue::StringArray(_) => "array",
        }
    }

    /// A description for error messages: the type, and for arrays the element type and length.
    pub fn describe_type(&self) -> String {
        match self {
            MetadataValue::Array(items) => match items.first() {
                Some(first) => format!("array of {} {}", items.len(), first.describe_type()),
                None => "empty array".to_string(),
            },
            MetadataValue::StringArray(items) if items.is_empty() => "empty array".to_string(),
            MetadataValue::StringArray(items) => format!("array of {} string", items.len()),
            other => other.type_name().to_string(),
        }
    }

    /// The value as `i128` if it is an integer of any width.
    pub fn as_integer(&self) -> Option<i128> {
        Some(match *self {
            MetadataValue::U8(v) => v.into(),
            MetadataValue::I8(v) => v.into(),
            MetadataValue::U16(v) => v.into(),
            MetadataValue::I16(v) => v.into(),
            MetadataValue::U32(v) => v.into(),
            MetadataValue::I32(v) => v.into(),
            MetadataValue::U64(v) => v.into(),
            MetadataValue::I64(v) => v.into(),
            _ => return None,
        })
    }

    /// The string, if this is a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            MetadataValue::String(s) => Some(s),
            _ => None,
        }
    }

    /// The elements, if this is an array of other than strings (see
    /// [`MetadataValue::as_str_array`]).
    pub fn as_array(&self) -> Option<&[MetadataValue]> {
        match self {
            MetadataValue::Array(items) => Some(items),
            _ => None,
        }
    }

    /// The strings, if this is an array of strings as the parser gives it.
    pub fn as_str_array(&self) -> Option<&StringArray> {
        match self {
            MetadataValue::StringArray(items) => Some(items),
            _ => None,
        }
    }

    /// The number of elements, if this is an array of any kind.
    pub fn array_len(&self) -> Option<usize> {
        match self {
            MetadataValue::Array(items) => Some(items.len()),
            MetadataValue::StringArray(items) => Some(items.len()),
            _ => None,
        }
    }
}

/// One tensor's description from the tensor-info section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    /// The tensor's name (`"blk.3.attn_q.weight"`).
    pub name: String,
    /// Dimensions in GGUF order: `dims[0]` is the contiguous row length.
    pub dims: Vec<u64>,
    /// Element type.
    pub ggml_type: GgmlType,
    /// Absolute file offset of the first byte of data.
    pub offset: u64,
    /// Byte length of the data.
    pub n_bytes: u64,
}

impl TensorInfo {
    /// Number of elements (product of the dims; 1 for a scalar). Saturates at `u64::MAX`; the
    /// parser has already rejected tensors for which it would.
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().fold(1u64, |acc, &d| acc.saturating_mul(d))
    }

    /// Number of rows (product of `dims[1..]`).
    pub fn n_rows(&self) -> u64 {
        self.dims
            .iter()
            .skip(1)
            .fold(1u64, |acc, &d| acc.saturating_mul(d))
    }

    /// Elements per row (`dims[0]`, or 1 for a scalar).
    pub fn row_len(&self) -> u64 {
        self.dims.first().copied().unwrap_or(1)
    }
}

/// A parsed, validated GGUF file whose tensor data stays in a read-only memory map.
///
/// ```no_run
/// # fn main() -> peregrine_formats::Result<()> {
/// let gguf = peregrine_formats::GgufFile::open("models/SmolLM2-135M-Instruct.Q4_1.gguf")?;
/// let config = gguf.model_config()?;
/// let embd = gguf.tensor("token_embd.weight").expect("llama models have token_embd");
/// assert_eq!(embd.dims, [config.hidden_size as u64, config.vocab_size as u64]);
/// let bytes: &[u8] = gguf.tensor_data(embd);
/// # let _ = bytes; Ok(()) }
/// ```
pub struct GgufFile {
    path: PathBuf,
    backing: Backing,
    version: u32,
    alignment: u64,
    data_offset: u64,
    metadata: Vec<(String, MetadataValue)>,
    key_index: HashMap<String, usize>,
    tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("n_bytes", &self.backing.bytes().len())
            .field("n_metadata", &self.metadata.len())
            .field("n_tensors", &self.tensors.len())
            .finish()
    }
}

impl GgufFile {
    /// Maps `path` read-only and parses it.
    pub fn open(path: impl AsRef<Path>) -> Result<GgufFile> {
        let path = path.as_ref();
        let backing = Backing::map(path)?;
        Self::parse(backing, path.to_path_buf())
    }

    /// Parses an in-memory GGUF image. `label` stands in for the path in errors.
    pub fn parse_bytes(bytes: impl Into<Vec<u8>>, label: impl Into<PathBuf>) -> Result<GgufFile> {
        Self::parse(Backing::Owned(bytes.into()), label.into())
    }

    fn parse(backing: Backing, path: PathBuf) -> Result<GgufFile> {
        let header = Parser::new(backing.bytes(), &path).parse()?;
        Ok(GgufFile {
            path,
            backing,
            version: header.version,
            alignment: header.alignment,
            data_offset: header.data_offset,
            metadata: header.metadata,
            key_index: header.key_index,
            tensors: header.tensors,
            tensor_index: header.tensor_index,
        })
    }

    /// The GGUF version (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The path given to [`open`](Self::open), or the label given to
    /// [`parse_bytes`](Self::parse_bytes).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The data alignment (`general.alignment`, default 32).
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Absolute offset of the tensor data section.
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }

    /// Length of the whole file in bytes.
    pub fn file_len(&self) -> u64 {
        self.backing.bytes().len() as u64
    }

    /// All metadata, in file order.
    pub fn metadata(&self) -> &[(String, MetadataValue)] {
        &self.metadata
    }

    /// The value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&MetadataValue> {
        self.key_index.get(key).map(|&idx| &self.metadata[idx].1)
    }

    fn wrong_type(&self, key: &str, expected: &'static str, got: &MetadataValue) -> Error {
        Error::WrongValueType {
            path: self.path.clone(),
            key: key.to_string(),
            expected,
            got: got.describe_type(),
        }
    }

    /// The string value of `key`; an error if it has another type.
    pub fn get_str(&self, key: &str) -> Result<Option<&str>> {
        match self.get(key) {
            None => Ok(None),
            Some(MetadataValue::String(s)) => Ok(Some(s)),
            Some(other) => Err(self.wrong_type(key, "a string", other)),
        }
    }

    /// The value of `key` as `u64`, from an integer of any width; an error if it has another
    /// type or is negative.
    pub fn get_u64(&self, key: &str) -> Result<Option<u64>> {
        let Some(value) = self.get(key) else {
            return Ok(None);
        };
        let Some(int) = value.as_integer() else {
            return Err(self.wrong_type(key, "an integer", value));
        };
        u64::try_from(int)
            .map(Some)
            .map_err(|_| Error::ValueOutOfRange {
                path: self.path.clone(),
                key: key.to_string(),
                value: int.to_string(),
                expected: "a non-negative integer",
            })
    }

    /// The value of `key` as `f32`, from an `f32` or `f64`.
    pub fn get_f32(&self, key: &str) -> Result<Option<f32>> {
        match self.get(key) {
            None => Ok(None),
            Some(MetadataValue::F32(v)) => Ok(Some(*v)),
            Some(MetadataValue::F64(v)) => Ok(Some(*v as f32)),
            Some(other) => Err(self.wrong_type(key, "a float", other)),
        }
    }

    /// The boolean value of `key`.
    pub fn get_bool(&self, key: &str) -> Result<Option<bool>> {
        match self.get(key) {
            None => Ok(None),
            Some(MetadataValue::Bool(v)) => Ok(Some(*v)),
            Some(other) => Err(self.wrong_type(key, "a bool", other)),
        }
    }

    /// The value of `key` as an array of strings (`tokenizer.ggml.tokens`).
    pub fn get_str_array(&self, key: &str) -> Result<Option<Vec<&str>>> {
        let Some(value) = self.get(key) else {
            return Ok(None);
        };
        if let Some(items) = value.as_str_array() {
            return Ok(Some(items.iter().collect()));
        }
        let Some(items) = value.as_array() else {
            return Err(self.wrong_type(key, "an array of strings", value));
        };
        items
            .iter()
            .map(|item| {
                item.as_str()
                    .ok_or_else(|| self.wrong_type(key, "an array of strings", value))
            })
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }

    /// The value of `key` as an array of `i32` (`tokenizer.ggml.token_type`); integer elements
    /// of other widths are accepted when they fit.
    pub fn get_i32_array(&self, key: &str) -> Result<Option<Vec<i32>>> {
        let Some(value) = self.get(key) else {
            return Ok(None);
        };
        let Some(items) = value.as_array() else {
            return Err(self.wrong_type(key, "an array of i32", value));
        };
        items
            .iter()
            .map(|item| {
                let int = item
                    .as_integer()
                    .ok_or_else(|| self.wrong_type(key, "an array of i32", value))?;
                i32::try_from(int).map_err(|_| Error::ValueOutOfRange {
                    path: self.path.clone(),
                    key: key.to_string(),
                    value: int.to_string(),
                    expected: "an i32",
                })
            })
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }

    /// All tensor infos, in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// The tensor named `name`, if present (hash lookup).
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensor_index.get(name).map(|&idx| &self.tensors[idx])
    }

    /// The tensor named `name`, or [`Error::TensorNotFound`].
    pub fn require_tensor(&self, name: &str) -> Result<&TensorInfo> {
        self.tensor(name).ok_or_else(|| Error::TensorNotFound {
            path: self.path.clone(),
            name: name.to_string(),
        })
    }

    /// The raw bytes of a tensor: exactly `info.n_bytes` bytes of the map.
    ///
    /// # Panics
    /// If `info` does not describe a tensor of this file (its range was validated at parse
    /// time; an info from another file may lie outside this one).
    pub fn tensor_data(&self, info: &TensorInfo) -> &[u8] {
        let bytes = self.backing.bytes();
        usize::try_from(info.offset)
            .ok()
            .zip(usize::try_from(info.n_bytes).ok())
            .and_then(|(start, len)| bytes.get(start..start.checked_add(len)?))
            .expect("TensorInfo passed to tensor_data must come from this GgufFile")
    }

    /// Tells the OS this process no longer needs `info`'s pages resident (e.g. after the tensor
    /// was repacked into another layout). Later reads still work: pages come back from the file.
    pub fn release_tensor_pages(&self, info: &TensorInfo) {
        if let (Ok(start), Ok(len)) = (usize::try_from(info.offset), usize::try_from(info.n_bytes))
        {
            self.backing.release(start..start.saturating_add(len));
        }
    }

    /// Dequantizes a whole tensor to `f32` (row-major, `n_elements` values).
    pub fn tensor_to_f32(&self, info: &TensorInfo) -> Result<Vec<f32>> {
        let n_elements = usize::try_from(info.n_elements()).map_err(|_| Error::DimsOverflow {
            path: self.path.clone(),
            name: info.name.clone(),
            dims: info.dims.clone(),
        })?;
        let mut out = vec![0f32; n_elements];
        crate::quant::dequantize_row(info.ggml_type, self.tensor_data(info), &mut out)?;
        Ok(out)
    }

    /// The model hyper-parameters (see [`ModelConfig`](crate::ModelConfig)).
    pub fn model_config(&self) -> Result<crate::ModelConfig> {
        crate::config::ModelConfig::from_gguf(self)
    }
}

/// Position of each key (or tensor name) in file order.
type KeyIndex = HashMap<String, usize>;

/// What the parser produces besides the bytes.
struct Parsed {
    version: u32,
    alignment: u64,
    data_offset: u64,
    metadata: Vec<(String, MetadataValue)>,
    key_index: HashMap<String, usize>,
    tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
}

/// Most elements reserved up front for a counted sequence; beyond that, vectors grow as
/// elements actually parse, so memory follows the bytes consumed rather than a claimed count.
const MAX_PREALLOC: usize = 1 << 16;

/// Smallest encoding of one metadata pair: empty key (8), type (4), one-byte value.
const MIN_KV_BYTES: u64 = 8 + 4 + 1;
/// Smallest encoding of one tensor info: empty name (8), n_dims (4), type (4), offset (8).
const MIN_TENSOR_INFO_BYTES: u64 = 8 + 4 + 4 + 8;

/// A bounds-checked little-endian cursor over the file.
struct Parser<'a> {
    bytes: &'a [u8],
    pos: usize,
    path: &'a Path,
    /// Array elements the metadata may still hold (see [`MAX_METADATA_ELEMENTS`]).
    n_elements_left: u64,
}

impl<'a> Parser<'a> {
    fn new(bytes: &'a [u8], path: &'a Path) -> Self {
        Parser {
            bytes,
            pos: 0,
            path,
            n_elements_left: MAX_METADATA_ELEMENTS,
        }
    }

    fn file_len(&self) -> u64 {
        self.bytes.len() as u64
    }

    fn remaining(&self) -> u64 {
        (self.bytes.len() - self.pos) as u64
    }

    fn take(&mut self, n_bytes: u64, what: impl FnOnce() -> String) -> Result<&'a [u8]> {
        if n_bytes > self.remaining() {
            return Err(Error::Truncated {
                path: self.path.to_path_buf(),
                what: what(),
                offset: self.pos as u64,
                needed: n_bytes,
                file_len: self.file_len(),
            });
        }
        // n_bytes <= remaining, so it fits in usize and pos + n_bytes <= len.
        let n_bytes = n_bytes as usize;
        let out = &self.bytes[self.pos..self.pos + n_bytes];
        self.pos += n_bytes;
        Ok(out)
    }

    fn array<const N: usize>(&mut self, what: impl FnOnce() -> String) -> Result<[u8; N]> {
        let bytes = self.take(N as u64, what)?;
        Ok(bytes.try_into().expect("take returned exactly N bytes"))
    }

    fn u32(&mut self, what: impl FnOnce() -> String) -> Result<u32> {
        self.array(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: impl FnOnce() -> String) -> Result<u64> {
        self.array(what).map(u64::from_le_bytes)
    }

    /// Checks that `count` items of at least `min_item_bytes` each fit in the remaining bytes.
    fn check_count(
        &self,
        count: u64,
        min_item_bytes: u64,
        count_offset: u64,
        what: impl FnOnce() -> String,
    ) -> Result<()> {
        let max = self.remaining() / min_item_bytes.max(1);
        if count > max {
            return Err(Error::CountTooLarge {
                path: self.path.to_path_buf(),
                what: what(),
                offset: count_offset,
                count,
                max,
            });
        }
        Ok(())
    }

    /// A GGUF string: u64 length, then that many UTF-8 bytes.
    fn string(&mut self, what: &dyn Fn() -> String) -> Result<String> {
        self.str_ref(what).map(str::to_owned)
    }

    /// The next string, borrowed from the file's bytes.
    fn str_ref(&mut self, what: &dyn Fn() -> String) -> Result<&'a str> {
        let len = self.u64(|| format!("length of {}", what()))?;
        // `take` checks `len` against the remaining bytes before slicing; nothing is allocated
        // until the bytes are known to exist.
        let bytes_offset = self.pos as u64;
        let bytes = self.take(len, what)?;
        match std::str::from_utf8(bytes) {
            Ok(s) => Ok(s),
            Err(e) => Err(Error::InvalidUtf8 {
                path: self.path.to_path_buf(),
                what: what(),
                offset: bytes_offset,
                valid_up_to: e.valid_up_to(),
            }),
        }
    }

    fn parse(mut self) -> Result<Parsed> {
        let magic: [u8; 4] = self.array(|| "magic".to_string())?;
        if magic != GGUF_MAGIC {
            return Err(Error::BadMagic {
                path: self.path.to_path_buf(),
                got: magic,
            });
        }
        let version = self.u32(|| "version".to_string())?;
        if version != 2 && version != 3 {
            let swapped = version.swap_bytes();
            if swapped == 2 || swapped == 3 {
                return Err(Error::BigEndian {
                    path: self.path.to_path_buf(),
                    version: swapped,
                });
            }
            return Err(Error::UnsupportedVersion {
                path: self.path.to_path_buf(),
                version,
            });
        }
        let n_tensors_offset = self.pos as u64;
        let n_tensors = self.u64(|| "tensor count".to_string())?;
        let n_kv_offset = self.pos as u64;
        let n_kv = self.u64(|| "metadata key/value count".to_string())?;
        self.check_count(n_kv, MIN_KV_BYTES, n_kv_offset, || {
            "metadata key/value count".to_string()
        })?;
        self.check_count(n_tensors, MIN_TENSOR_INFO_BYTES, n_tensors_offset, || {
            "tensor count".to_string()
        })?;

        let (metadata, key_index) = self.metadata(n_kv)?;
        let alignment = self.alignment(&metadata, &key_index)?;

        // Re-check now that the metadata is consumed: the infos must fit in what is left.
        self.check_count(n_tensors, MIN_TENSOR_INFO_BYTES, n_tensors_offset, || {
            "tensor count".to_string()
        })?;
        let capacity = (n_tensors as usize).min(MAX_PREALLOC);
        let mut tensors = Vec::with_capacity(capacity);
        let mut tensor_index = HashMap::with_capacity(capacity);
        let mut relative_offsets = Vec::with_capacity(capacity);
        for tensor_idx in 0..n_tensors {
            let info_offset = self.pos as u64;
            let (info, relative_offset) = self.tensor_info(tensor_idx, alignment)?;
            if tensor_index
                .insert(info.name.clone(), tensors.len())
                .is_some()
            {
                return Err(Error::DuplicateTensor {
                    path: self.path.to_path_buf(),
                    name: info.name,
                    offset: info_offset,
                });
            }
            tensors.push(info);
            relative_offsets.push(relative_offset);
        }

        let header_end = self.pos as u64;
        let data_offset = header_end
            .checked_next_multiple_of(alignment)
            .expect("header_end < file_len <= u64::MAX / 2 and alignment <= 2^30");
        for (info, relative_offset) in tensors.iter_mut().zip(relative_offsets) {
            let absolute = data_offset.checked_add(relative_offset);
            match absolute.and_then(|abs| abs.checked_add(info.n_bytes)) {
                Some(end) if end <= self.file_len() => info.offset = absolute.expect("end exists"),
                _ => {
                    return Err(Error::TensorOutOfBounds {
                        path: self.path.to_path_buf(),
                        name: info.name.clone(),
                        offset: absolute.unwrap_or(u64::MAX),
                        len: info.n_bytes,
                        file_len: self.file_len(),
                    })
                }
            }
        }
        self.check_overlaps(&tensors)?;
        Ok(Parsed {
            version,
            alignment,
            data_offset,
            metadata,
            key_index,
            tensors,
            tensor_index,
        })
    }

    fn metadata(&mut self, n_kv: u64) -> Result<(Vec<(String, MetadataValue)>, KeyIndex)> {
        let mut metadata = Vec::with_capacity((n_kv as usize).min(MAX_PREALLOC));
        let mut key_index = HashMap::with_capacity((n_kv as usize).min(MAX_PREALLOC));
        for kv_idx in 0..n_kv {
            let kv_offset = self.pos as u64;
            let key = self.string(&|| format!("key of metadata pair {kv_idx}"))?;
            if key_index.contains_key(&key) {
                return Err(Error::DuplicateKey {
                    path: self.path.to_path_buf(),
                    key,
                    offset: kv_offset,
                });
            }
            let type_offset = self.pos as u64;
            let type_id = self.u32(|| format!("value type of {key:?}"))?;
            let value = self.value(type_id, type_offset, &key, 0)?;
            key_index.insert(key.clone(), metadata.len());
            metadata.push((key, value));
        }
        Ok((metadata, key_index))
    }

    fn alignment(&self, metadata: &[(String, MetadataValue)], key_index: &KeyIndex) -> Result<u64> {
        const KEY: &str = "general.alignment";
        let Some(&idx) = key_index.get(KEY) else {
            return Ok(DEFAULT_ALIGNMENT);
        };
        let value = &metadata[idx].1;
        let Some(int) = value.as_integer() else {
            return Err(Error::WrongValueType {
                path: self.path.to_path_buf(),
                key: KEY.to_string(),
                expected: "an integer",
                got: value.describe_type(),
            });
        };
        match u64::try_from(int) {
            Ok(a) if a.is_power_of_two() && a <= MAX_ALIGNMENT => Ok(a),
            _ => Err(Error::BadAlignment {
                path: self.path.to_path_buf(),
                alignment: int,
            }),
        }
    }

    fn value(
        &mut self,
        type_id: u32,
        type_offset: u64,
        key: &str,
        depth: usize,
    ) -> Result<MetadataValue> {
        use value_type as vt;
        let what = || format!("value of {key:?}");
        Ok(match type_id {
            vt::U8 => MetadataValue::U8(u8::from_le_bytes(self.array(what)?)),
            vt::I8 => MetadataValue::I8(i8::from_le_bytes(self.array(what)?)),
            vt::U16 => MetadataValue::U16(u16::from_le_bytes(self.array(what)?)),
            vt::I16 => MetadataValue::I16(i16::from_le_bytes(self.array(what)?)),
            vt::U32 => MetadataValue::U32(u32::from_le_bytes(self.array(what)?)),
            vt::I32 => MetadataValue::I32(i32::from_le_bytes(self.array(what)?)),
            vt::U64 => MetadataValue::U64(u64::from_le_bytes(self.array(what)?)),
            vt::I64 => MetadataValue::I64(i64::from_le_bytes(self.array(what)?)),
            vt::F32 => MetadataValue::F32(f32::from_le_bytes(self.array(what)?)),
            vt::F64 => MetadataValue::F64(f64::from_le_bytes(self.array(what)?)),
            vt::BOOL => {
                let byte_offset = self.pos as u64;
                match self.array::<1>(what)?[0] {
                    0 => MetadataValue::Bool(false),
                    1 => MetadataValue::Bool(true),
                    other => {
                        return Err(Error::ValueOutOfRange {
                            path: self.path.to_path_buf(),
                            key: key.to_string(),
                            value: format!("bool byte {other} at offset {byte_offset}"),
                            expected: "0 or 1",
                        })
                    }
                }
            }
            vt::STRING => MetadataValue::String(self.string(&what)?),
            vt::ARRAY => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(Error::NestingTooDeep {
                        path: self.path.to_path_buf(),
                        key: key.to_string(),
                        offset: type_offset,
                        max_depth: MAX_ARRAY_DEPTH,
                    });
                }
                let elem_type_offset = self.pos as u64;
                let elem_type = self.u32(|| format!("element type of {key:?}"))?;
                let Some(min_elem_bytes) = min_value_bytes(elem_type) else {
                    return Err(Error::UnknownValueType {
                        path: self.path.to_path_buf(),
                        key: key.to_string(),
                        type_id: elem_type,
                        offset: elem_type_offset,
                    });
                };
                let count_offset = self.pos as u64;
                let count = self.u64(|| format!("length of array {key:?}"))?;
                self.check_count(count, min_elem_bytes, count_offset, || {
                    format!("length of array {key:?}")
                })?;
                if count > self.n_elements_left {
                    return Err(Error::CountTooLarge {
                        path: self.path.to_path_buf(),
                        what: format!("length of array {key:?} (with the elements before it)"),
                        offset: count_offset,
                        count: MAX_METADATA_ELEMENTS - self.n_elements_left + count,
                        max: MAX_METADATA_ELEMENTS,
                    });
                }
                self.n_elements_left -= count;
                // Reserve at most MAX_PREALLOC: nested arrays each bounded by the remaining bytes
                // would otherwise reserve up to MAX_ARRAY_DEPTH times that before failing.
                if elem_type == vt::STRING {
                    let mut items = StringArray::with_capacity((count as usize).min(MAX_PREALLOC));
                    for i in 0..count {
                        items.push(self.str_ref(&|| format!("element {i} of {key:?}"))?);
                    }
                    return Ok(MetadataValue::StringArray(Box::new(items)));
                }
                let mut items = Vec::with_capacity((count as usize).min(MAX_PREALLOC));
                for _ in 0..count {
                    items.push(self.value(elem_type, elem_type_offset, key, depth + 1)?);
                }
                MetadataValue::Array(items)
            }
            unknown => {
                return Err(Error::UnknownValueType {
                    path: self.path.to_path_buf(),
                    key: key.to_string(),
                    type_id: unknown,
                    offset: type_offset,
                })
            }
        })
    }

    /// One tensor info; returns it (with `offset` still unset) and its relative data offset.
    fn tensor_info(&mut self, tensor_idx: u64, alignment: u64) -> Result<(TensorInfo, u64)> {
        let name = self.string(&|| format!("name of tensor {tensor_idx}"))?;
        let n_dims_offset = self.pos as u64;
        let n_dims = self.u32(|| format!("dimension count of tensor {name:?}"))?;
        if n_dims as usize > MAX_DIMS {
            return Err(Error::TooManyDims {
                path: self.path.to_path_buf(),
                name,
                n_dims,
                offset: n_dims_offset,
            });
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for dim_idx in 0..n_dims {
            dims.push(self.u64(|| format!("dimension {dim_idx} of tensor {name:?}"))?);
        }
        let type_id = self.u32(|| format!("type of tensor {name:?}"))?;
        let relative_offset = self.u64(|| format!("data offset of tensor {name:?}"))?;
        let Ok(ggml_type) = GgmlType::from_id(type_id) else {
            return Err(Error::UnsupportedTensorType {
                path: self.path.to_path_buf(),
                name,
                type_id,
            });
        };
        // ggml stores element counts in int64_t: the product must stay below 2^63.
        let n_elements = dims.iter().try_fold(1u64, |acc, &d| {
            acc.checked_mul(d).filter(|&p| p <= i64::MAX as u64)
        });
        let row_len = dims.first().copied().unwrap_or(1);
        let n_rows = dims
            .iter()
            .skip(1)
            .try_fold(1u64, |acc, &d| acc.checked_mul(d));
        let (Some(_), Some(n_rows)) = (n_elements, n_rows) else {
            return Err(Error::DimsOverflow {
                path: self.path.to_path_buf(),
                name,
                dims,
            });
        };
        if row_len % ggml_type.block_len() as u64 != 0 {
            return Err(Error::TensorNotBlockMultiple {
                path: self.path.to_path_buf(),
                name,
                ggml_type: ggml_type.name(),
                row_len,
                block_len: ggml_type.block_len(),
            });
        }
        let n_bytes = ggml_type
            .row_bytes(row_len)
            .ok()
            .and_then(|row_bytes| row_bytes.checked_mul(n_rows))
            .filter(|&n| n <= i64::MAX as u64);
        let Some(n_bytes) = n_bytes else {
            return Err(Error::DimsOverflow {
                path: self.path.to_path_buf(),
                name,
                dims,
            });
        };
        if relative_offset % alignment != 0 {
            return Err(Error::TensorMisaligned {
                path: self.path.to_path_buf(),
                name,
                offset: relative_offset,
                alignment,
            });
        }
        Ok((
            TensorInfo {
                name,
                dims,
                ggml_type,
                offset: 0,
                n_bytes,
            },
            relative_offset,
        ))
    }

    fn check_overlaps(&self, tensors: &[TensorInfo]) -> Result<()> {
        let mut by_offset: Vec<&TensorInfo> = tensors.iter().filter(|t| t.n_bytes > 0).collect();
        by_offset.sort_by_key(|t| t.offset);
        for pair in by_offset.windows(2) {
            let first_end = pair[0].offset + pair[0].n_bytes; // validated against file_len
            if pair[1].offset < first_end {
                return Err(Error::TensorOverlap {
                    path: self.path.to_path_buf(),
                    first: pair[0].name.clone(),
                    first_end,
                    second: pair[1].name.clone(),
                    second_offset: pair[1].offset,
                });
            }
        }
        Ok(())
    }
}

/// Fewest bytes one value of GGUF type `type_id` occupies, or `None` for an unknown type.
fn min_value_bytes(type_id: u32) -> Option<u64> {
    use value_type as vt;
    Some(match type_id {
        vt::U8 | vt::I8 | vt::BOOL => 1,
        vt::U16 | vt::I16 => 2,
        vt::U32 | vt::I32 | vt::F32 => 4,
        vt::U64 | vt::I64 | vt::F64 | vt::STRING => 8,
        vt::ARRAY => 4 + 8,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Numeric arrays hold one `MetadataValue` per element (a 49k-token `token_type` array):
    /// the compact string array is boxed so that it does not widen every value.
    #[test]
    fn values_stay_small_and_string_arrays_compare_as_arrays() {
        assert!(std::mem::size_of::<MetadataValue>() <= 32);
        let compact = MetadataValue::StringArray(Box::new(["a", "bc", ""].into_iter().collect()));
        let plain = MetadataValue::Array(
            ["a", "bc", ""]
                .iter()
                .map(|s| MetadataValue::String(s.to_string()))
                .collect(),
        );
        assert_eq!(compact, plain);
        assert_ne!(compact, MetadataValue::Array(vec![]));
        let s = compact.as_str_array().unwrap();
        assert_eq!(s.iter().collect::<Vec<_>>(), ["a", "bc", ""]);
        assert_eq!((s.get(1), s.get(3)), (Some("bc"), None));
        assert_eq!(compact.array_len(), Some(3));
        assert_eq!(compact.describe_type(), "array of 3 string");
    }
}
