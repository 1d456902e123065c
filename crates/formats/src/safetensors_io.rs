//! safetensors read (memory-mapped, typed access to f32/f16/bf16) and write, on top of the
//! `safetensors` crate.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub use safetensors::Dtype;

use crate::error::{Error, Result};
use crate::mmap::Backing;

/// A parsed safetensors file; tensor data stays in the map.
pub struct SafetensorsFile {
    path: PathBuf,
    backing: Backing,
    data_start: usize,
    metadata: safetensors::tensor::Metadata,
    names: Vec<String>,
}

impl std::fmt::Debug for SafetensorsFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SafetensorsFile")
            .field("path", &self.path)
            .field("n_tensors", &self.names().len())
            .finish()
    }
}

/// A borrowed view of one tensor.
#[derive(Debug, Clone)]
pub struct SafetensorRef<'a> {
    /// The tensor's name.
    pub name: &'a str,
    /// Element type.
    pub dtype: Dtype,
    /// Shape, outermost first (row-major, C order).
    pub shape: &'a [usize],
    /// Little-endian element bytes.
    pub data: &'a [u8],
}

impl SafetensorRef<'_> {
    /// Number of elements.
    pub fn n_elements(&self) -> usize {
        self.shape.iter().product()
    }

    /// The values as `f32` (exact for f32/f16/bf16; other dtypes are an error).
    pub fn to_f32(&self, path: &Path) -> Result<Vec<f32>> {
        let mut out = Vec::with_capacity(self.data.len() / 2);
        match self.dtype {
            Dtype::F32 => out.extend(
                self.data
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
            ),
            Dtype::F16 => out.extend(
                self.data
                    .chunks_exact(2)
                    .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()),
            ),
            Dtype::BF16 => out.extend(
                self.data
                    .chunks_exact(2)
                    .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()),
            ),
            other => {
                return Err(Error::UnsupportedDtype {
                    path: path.to_path_buf(),
                    name: self.name.to_string(),
                    dtype: format!("{other:?}"),
                    expected: "F32, F16 or BF16",
                })
            }
        }
        Ok(out)
    }
}

impl SafetensorsFile {
    /// Maps `path` read-only and parses its header.
    pub fn open(path: impl AsRef<Path>) -> Result<SafetensorsFile> {
        let path = path.as_ref();
        Self::parse(Backing::map(path)?, path.to_path_buf())
    }

    /// Parses an in-memory safetensors image; `label` stands in for the path in errors.
    pub fn parse_bytes(
        bytes: impl Into<Vec<u8>>,
        label: impl Into<PathBuf>,
    ) -> Result<SafetensorsFile> {
        Self::parse(Backing::Owned(bytes.into()), label.into())
    }

    fn parse(backing: Backing, path: PathBuf) -> Result<SafetensorsFile> {
        let (header_len, metadata) = safetensors::SafeTensors::read_metadata(backing.bytes())
            .map_err(|cause| Error::Safetensors {
                path: path.clone(),
                cause,
            })?;
        // read_metadata checked 8 + header_len + data_len == file length.
        let mut names = metadata.offset_keys();
        names.sort_unstable();
        Ok(SafetensorsFile {
            path,
            backing,
            data_start: 8 + header_len,
            metadata,
            names,
        })
    }

    /// The file's path (or label).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Tensor names, sorted.
    pub fn names(&self) -> Vec<&str> {
        self.names.iter().map(String::as_str).collect()
    }

    /// The free-form `__metadata__` map, if any.
    pub fn user_metadata(&self) -> Option<&HashMap<String, String>> {
        self.metadata.metadata().as_ref()
    }

    /// Lets the pages of tensor `name` go from memory (they are reloaded from the file if read
    /// again): for weights repacked at load, so the model is not resident twice. Unknown names
    /// and non-mapped files are left alone.
    pub fn release_tensor_pages(&self, name: &str) {
        if let Some(info) = self.metadata.info(name) {
            let (start, end) = info.data_offsets;
            self.backing
                .release(self.data_start + start..self.data_start + end);
        }
    }

    /// The tensor named `name`.
    pub fn tensor<'a>(&'a self, name: &'a str) -> Result<SafetensorRef<'a>> {
        let info = self
            .metadata
            .info(name)
            .ok_or_else(|| Error::TensorNotFound {
                path: self.path.clone(),
                name: name.to_string(),
            })?;
        let (start, end) = info.data_offsets;
        // read_metadata validated that the offsets tile the data section within the file.
        let data = &self.backing.bytes()[self.data_start + start..self.data_start + end];
        Ok(SafetensorRef {
            name,
            dtype: info.dtype,
            shape: &info.shape,
            data,
        })
    }

    /// The tensor named `name` as `f32` (from f32, f16 or bf16).
    pub fn tensor_f32(&self, name: &str) -> Result<Vec<f32>> {
        self.tensor(name)?.to_f32(&self.path)
    }
}

/// Builds a safetensors file.
#[derive(Debug, Clone, Default)]
pub struct SafetensorsWriter {
    tensors: Vec<(String, Dtype, Vec<usize>, Vec<u8>)>,
    metadata: Option<HashMap<String, String>>,
}

struct OwnedView<'a> {
    dtype: Dtype,
    shape: &'a [usize],
    data: &'a [u8],
}

impl safetensors::View for OwnedView<'_> {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        self.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        self.data.into()
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

impl SafetensorsWriter {
    /// An empty file.
    pub fn new() -> SafetensorsWriter {
        SafetensorsWriter::default()
    }

    /// Sets a `__metadata__` entry.
    pub fn add_metadata(&mut self, key: impl Into<String>, value: impl Into<String>) -> &mut Self {
        self.metadata
            .get_or_insert_with(HashMap::new)
            .insert(key.into(), value.into());
        self
    }

    /// Adds a tensor of raw little-endian bytes; their length must match `dtype` and `shape`.
    pub fn add_raw(
        &mut self,
        name: impl Into<String>,
        dtype: Dtype,
        shape: &[usize],
        data: Vec<u8>,
    ) -> Result<&mut Self> {
        let name = name.into();
        let n_bytes = shape
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d))
            .and_then(|n| n.checked_mul(dtype.bitsize()))
            .map(|bits| bits.div_ceil(8));
        if n_bytes != Some(data.len()) {
            return Err(Error::InvalidWrite {
                path: PathBuf::from("<safetensors writer>"),
                what: format!("tensor {name:?}"),
                reason: format!(
                    "{} bytes given, shape {shape:?} of {dtype:?} needs {n_bytes:?}",
                    data.len()
                ),
            });
        }
        self.tensors.push((name, dtype, shape.to_vec(), data));
        Ok(self)
    }

    /// Adds `values` converted to `dtype` (F32, F16 or BF16; round to nearest even).
    pub fn add_f32(
        &mut self,
        name: impl Into<String>,
        dtype: Dtype,
        shape: &[usize],
        values: &[f32],
    ) -> Result<&mut Self> {
        let name = name.into();
        let data: Vec<u8> = match dtype {
            Dtype::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            Dtype::F16 => values
                .iter()
                .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
                .collect(),
            Dtype::BF16 => values
                .iter()
                .flat_map(|&v| half::bf16::from_f32(v).to_le_bytes())
                .collect(),
            other => {
                return Err(Error::UnsupportedDtype {
                    path: PathBuf::from("<safetensors writer>"),
                    name,
                    dtype: format!("{other:?}"),
                    expected: "F32, F16 or BF16",
                })
            }
        };
        self.add_raw(name, dtype, shape, data)
    }

    fn views(&self) -> Vec<(&str, OwnedView<'_>)> {
        self.tensors
            .iter()
            .map(|(name, dtype, shape, data)| {
                (
                    name.as_str(),
                    OwnedView {
                        dtype: *dtype,
                        shape,
                        data,
                    },
                )
            })
            .collect()
    }

    /// Serializes into memory.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        safetensors::serialize(self.views(), self.metadata.clone()).map_err(|cause| {
            Error::Safetensors {
                path: PathBuf::from("<memory>"),
                cause,
            }
        })
    }

    /// Writes to `path`.
    pub fn write(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        safetensors::serialize_to_file(self.views(), self.metadata.clone(), path).map_err(|cause| {
            Error::Safetensors {
                path: path.to_path_buf(),
                cause,
            }
        })
    }
}
