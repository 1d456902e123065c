//! The crate's one memory mapping: model files are mapped read-only.

use std::path::Path;

use crate::error::{Error, Result};

/// The bytes a reader parses: a read-only file mapping, or an owned buffer.
pub(crate) enum Backing {
    Mmap(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl Backing {
    /// Maps `path` read-only (an empty file becomes an empty buffer: mapping zero bytes fails
    /// on some platforms).
    pub(crate) fn map(path: &Path) -> Result<Backing> {
        let io_err = |cause| Error::Io { path: path.to_path_buf(), cause };
        let file = std::fs::File::open(path).map_err(io_err)?;
        let len = file.metadata().map_err(io_err)?.len();
        if len == 0 {
            return Ok(Backing::Owned(Vec::new()));
        }
        // SAFETY: `Mmap::map` is unsafe because another process could truncate or modify the
        // file while it is mapped, which would change (or unmap) bytes behind a `&[u8]`. The
        // obligation comes from `memmap2::Mmap::map`'s documentation. We map model files
        // read-only and never write them; like every mmap-based model reader (llama.cpp,
        // safetensors, candle), we rely on the user not rewriting a model file while it is in
        // use. Everything read from the map is bounds-checked against its length.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io_err)?;
        Ok(Backing::Mmap(map))
    }

    pub(crate) fn bytes(&self) -> &[u8] {
        match self {
            Backing::Mmap(m) => m,
            Backing::Owned(v) => v,
        }
    }
}
