//! A GGUF writer, for test fixtures and our own checkpoints.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::ggml_type::GgmlType;
use crate::gguf::{
    value_type, MetadataValue, DEFAULT_ALIGNMENT, GGUF_MAGIC, MAX_ALIGNMENT, MAX_DIMS,
};
use crate::names::keys;

/// Builds a GGUF file (version 3 unless told otherwise): metadata in insertion order, tensors
/// in insertion order, each tensor's data aligned to `general.alignment` (default 32).
///
/// ```
/// use peregrine_formats::{GgmlType, GgufFile, GgufWriter, MetadataValue};
/// # fn main() -> peregrine_formats::Result<()> {
/// let mut writer = GgufWriter::new();
/// writer.add_metadata("general.architecture", MetadataValue::String("llama".into()));
/// writer.add_tensor("norm.weight", &[4], GgmlType::F32, [0u8; 16].to_vec())?;
/// let gguf = GgufFile::parse_bytes(writer.to_bytes()?, "fixture")?;
/// assert_eq!(gguf.tensors()[0].dims, [4]);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Default)]
pub struct GgufWriter {
    version: Option<u32>,
    metadata: Vec<(String, MetadataValue)>,
    tensors: Vec<PendingTensor>,
}

#[derive(Debug, Clone)]
struct PendingTensor {
    name: String,
    dims: Vec<u64>,
    ggml_type: GgmlType,
    data: Vec<u8>,
}

impl GgufWriter {
    /// An empty version-3 file.
    pub fn new() -> GgufWriter {
        GgufWriter::default()
    }

    /// Sets the version written (2 or 3; the layouts are the same for little-endian files).
    pub fn set_version(&mut self, version: u32) -> &mut Self {
        self.version = Some(version);
        self
    }

    /// Sets `general.alignment` (a power of two).
    pub fn set_alignment(&mut self, alignment: u32) -> &mut Self {
        self.metadata.retain(|(k, _)| k != keys::GENERAL_ALIGNMENT);
        self.metadata.push((
            keys::GENERAL_ALIGNMENT.to_string(),
            MetadataValue::U32(alignment),
        ));
        self
    }

    /// Appends a metadata pair (a later pair with the same key is an error at write time).
    pub fn add_metadata(&mut self, key: impl Into<String>, value: MetadataValue) -> &mut Self {
        self.metadata.push((key.into(), value));
        self
    }

    /// Appends a tensor. `dims` are in GGUF order (`dims[0]` is the row length); `data` must be
    /// exactly the tensor's byte size.
    pub fn add_tensor(
        &mut self,
        name: impl Into<String>,
        dims: &[u64],
        ggml_type: GgmlType,
        data: Vec<u8>,
    ) -> Result<&mut Self> {
        let name = name.into();
        let invalid = |reason: String| Error::InvalidWrite {
            path: PathBuf::from("<gguf writer>"),
            what: format!("tensor {name:?}"),
            reason,
        };
        if dims.len() > MAX_DIMS {
            return Err(invalid(format!(
                "{} dimensions; at most {MAX_DIMS}",
                dims.len()
            )));
        }
        let row_len = dims.first().copied().unwrap_or(1);
        let n_rows = dims
            .iter()
            .skip(1)
            .try_fold(1u64, |acc, &d| acc.checked_mul(d));
        let n_bytes = n_rows
            .and_then(|n_rows| ggml_type.row_bytes(row_len).ok()?.checked_mul(n_rows))
            .ok_or_else(|| {
                invalid(format!(
                    "dims {dims:?} are not whole {ggml_type} blocks or overflow"
                ))
            })?;
        if data.len() as u64 != n_bytes {
            return Err(invalid(format!(
                "{} data bytes, but dims {dims:?} of {ggml_type} need {n_bytes}",
                data.len()
            )));
        }
        self.tensors.push(PendingTensor {
            name,
            dims: dims.to_vec(),
            ggml_type,
            data,
        });
        Ok(self)
    }

    fn alignment(&self, path: &Path) -> Result<u64> {
        let Some((_, value)) = self
            .metadata
            .iter()
            .find(|(k, _)| k == keys::GENERAL_ALIGNMENT)
        else {
            return Ok(DEFAULT_ALIGNMENT);
        };
        match value.as_integer().and_then(|a| u64::try_from(a).ok()) {
            Some(a) if a.is_power_of_two() && a <= MAX_ALIGNMENT => Ok(a),
            _ => Err(Error::InvalidWrite {
                path: path.to_path_buf(),
                what: format!("key {:?}", keys::GENERAL_ALIGNMENT),
                reason: format!("{value:?} is not a power of two up to 2^30"),
            }),
        }
    }

    /// Serializes the file into memory.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        self.write_to(&mut out, Path::new("<memory>"))?;
        Ok(out)
    }

    /// Writes the file to `path`.
    pub fn write(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let io_err = |cause| Error::Io {
            path: path.to_path_buf(),
            cause,
        };
        let mut file = std::io::BufWriter::new(std::fs::File::create(path).map_err(io_err)?);
        self.write_to(&mut file, path)?;
        file.flush().map_err(io_err)
    }

    fn write_to(&self, out: &mut impl Write, path: &Path) -> Result<()> {
        let version = self.version.unwrap_or(3);
        let invalid = |what: String, reason: String| Error::InvalidWrite {
            path: path.to_path_buf(),
            what,
            reason,
        };
        if version != 2 && version != 3 {
            return Err(invalid(
                "header".into(),
                format!("version {version}; only 2 and 3 are written"),
            ));
        }
        let alignment = self.alignment(path)?;
        let mut seen = HashSet::new();
        for (key, value) in &self.metadata {
            if !seen.insert(key.as_str()) {
                return Err(invalid(format!("key {key:?}"), "duplicate key".into()));
            }
            check_value(value).map_err(|reason| invalid(format!("key {key:?}"), reason))?;
        }
        seen.clear();
        for tensor in &self.tensors {
            if !seen.insert(tensor.name.as_str()) {
                return Err(invalid(
                    format!("tensor {:?}", tensor.name),
                    "duplicate tensor name".into(),
                ));
            }
        }

        let mut header = Vec::new();
        header.extend_from_slice(&GGUF_MAGIC);
        header.extend_from_slice(&version.to_le_bytes());
        header.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        header.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        for (key, value) in &self.metadata {
            put_string(&mut header, key);
            header.extend_from_slice(&value.type_id().to_le_bytes());
            put_value(&mut header, value);
        }
        let mut relative_offset = 0u64;
        let mut offsets = Vec::with_capacity(self.tensors.len());
        for tensor in &self.tensors {
            put_string(&mut header, &tensor.name);
            header.extend_from_slice(&(tensor.dims.len() as u32).to_le_bytes());
            for d in &tensor.dims {
                header.extend_from_slice(&d.to_le_bytes());
            }
            header.extend_from_slice(&tensor.ggml_type.id().to_le_bytes());
            header.extend_from_slice(&relative_offset.to_le_bytes());
            offsets.push(relative_offset);
            relative_offset =
                (relative_offset + tensor.data.len() as u64).next_multiple_of(alignment);
        }
        let io_err = |cause| Error::Io {
            path: path.to_path_buf(),
            cause,
        };
        let header_len = header.len() as u64;
        out.write_all(&header).map_err(io_err)?;
        if self.tensors.is_empty() {
            return Ok(());
        }
        let data_start = header_len.next_multiple_of(alignment);
        write_zeros(out, data_start - header_len).map_err(io_err)?;
        let mut written = 0u64;
        for (tensor, offset) in self.tensors.iter().zip(offsets) {
            write_zeros(out, offset - written).map_err(io_err)?;
            out.write_all(&tensor.data).map_err(io_err)?;
            written = offset + tensor.data.len() as u64;
        }
        // Pad the last tensor too, as gguf-py does, so files concatenate cleanly.
        write_zeros(out, written.next_multiple_of(alignment) - written).map_err(io_err)
    }
}

fn write_zeros(out: &mut impl Write, n_bytes: u64) -> std::io::Result<()> {
    std::io::copy(&mut std::io::repeat(0).take(n_bytes), out).map(|_| ())
}

fn put_string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// GGUF arrays hold one element type; arrays of arrays may differ inside.
fn check_value(value: &MetadataValue) -> std::result::Result<(), String> {
    if let MetadataValue::Array(items) = value {
        if let Some(first) = items.first() {
            if let Some(other) = items.iter().find(|v| v.type_id() != first.type_id()) {
                return Err(format!(
                    "array mixes {} and {} elements",
                    first.type_name(),
                    other.type_name()
                ));
            }
        }
        items.iter().try_for_each(check_value)?;
    }
    Ok(())
}

fn put_value(out: &mut Vec<u8>, value: &MetadataValue) {
    match value {
        MetadataValue::U8(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetadataValue::I8(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetadataValue::U16(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetadataValue::I16(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetadataValue::U32(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetadataValue::I32(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetadataValue::U64(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetadataValue::I64(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetadataValue::F32(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetadataValue::F64(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetadataValue::Bool(v) => out.push(u8::from(*v)),
        MetadataValue::String(s) => put_string(out, s),
        MetadataValue::Array(items) => {
            // An empty array's element type is not recoverable; u8 is as good as any.
            let elem_type = items.first().map_or(value_type::U8, MetadataValue::type_id);
            out.extend_from_slice(&elem_type.to_le_bytes());
            out.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for item in items {
                put_value(out, item);
            }
        }
        MetadataValue::StringArray(items) => {
            out.extend_from_slice(&value_type::STRING.to_le_bytes());
            out.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for s in items.iter() {
                put_string(out, s);
            }
        }
    }
}
