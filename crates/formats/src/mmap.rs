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
        let io_err = |cause| Error::Io {
            path: path.to_path_buf(),
            cause,
        };
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

impl Backing {
    /// Drops the resident pages of `range` from this process (the kernel re-reads them from the
    /// file if they are touched again). A no-op for owned buffers or on error: it only lowers
    /// memory use, never changes what is read.
    pub(crate) fn release(&self, range: std::ops::Range<usize>) {
        #[cfg(unix)]
        if let Backing::Mmap(map) = self {
            const PAGE: usize = 4096;
            // Only whole pages inside the range: neighbours may still be in use.
            let start = range.start.div_ceil(PAGE) * PAGE;
            let end = (range.end / PAGE) * PAGE;
            if start < end && end <= map.len() {
                // SAFETY: MADV_DONTNEED is "unchecked" in memmap2 because on a private *writable*
                // mapping it discards modifications. This map is read-only and file-backed, so the
                // pages are simply reloaded from the file on the next access; no `&[u8]` handed out
                // can observe a change.
                let _ = unsafe {
                    map.unchecked_advise_range(
                        memmap2::UncheckedAdvice::DontNeed,
                        start,
                        end - start,
                    )
                };
            }
        }
        #[cfg(not(unix))]
        let _ = range;
    }
}
