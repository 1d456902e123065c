//! Executable memory, W^X: the only place in Peregrine that maps code.
//!
//! [`CodeBuffer`] is a private read-write anonymous mapping holding machine code;
//! [`CodeBuffer::finalize`] turns it read+execute (never both writable and executable) and
//! returns an [`ExecutableCode`], which is immutable and unmaps itself on `Drop`. Kernels keep
//! an `Arc<ExecutableCode>` next to their function pointer, so the pointer cannot outlive the
//! mapping.

use crate::error::{Error, Result};
use std::ptr::NonNull;

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 {
        p as usize
    } else {
        4096
    }
}

fn errno(op: &'static str) -> Error {
    Error::ExecMem {
        op,
        errno: std::io::Error::last_os_error().to_string(),
    }
}

/// A read-write mapping being filled with code.
pub struct CodeBuffer {
    ptr: NonNull<u8>,
    map_len: usize,
    code_len: usize,
}

impl CodeBuffer {
    /// Maps a fresh RW region and copies `code` into it.
    pub fn new(code: &[u8]) -> Result<Self> {
        let page = page_size();
        let map_len = code.len().max(1).div_ceil(page) * page;
        // SAFETY: an anonymous private mapping with no address hint has no preconditions; the
        // result is checked against MAP_FAILED.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(errno("mmap"));
        }
        let ptr = NonNull::new(p.cast::<u8>()).ok_or_else(|| errno("mmap"))?;
        // SAFETY: the mapping is `map_len >= code.len()` bytes, writable, and fresh, so it does
        // not overlap `code`.
        unsafe { std::ptr::copy_nonoverlapping(code.as_ptr(), ptr.as_ptr(), code.len()) };
        Ok(CodeBuffer {
            ptr,
            map_len,
            code_len: code.len(),
        })
    }

    /// Makes the mapping read+execute (no longer writable) and hands it over.
    pub fn finalize(self) -> Result<ExecutableCode> {
        // SAFETY: `ptr`/`map_len` describe exactly the mapping this buffer owns.
        let rc = unsafe {
            libc::mprotect(
                self.ptr.as_ptr().cast(),
                self.map_len,
                libc::PROT_READ | libc::PROT_EXEC,
            )
        };
        if rc != 0 {
            return Err(errno("mprotect"));
        }
        let code = ExecutableCode {
            ptr: self.ptr,
            map_len: self.map_len,
            code_len: self.code_len,
        };
        std::mem::forget(self);
        Ok(code)
    }
}

impl Drop for CodeBuffer {
    fn drop(&mut self) {
        // SAFETY: the mapping is owned by this buffer and not referenced elsewhere.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.map_len) };
    }
}

/// An immutable read+execute mapping of generated code; unmapped on `Drop`.
pub struct ExecutableCode {
    ptr: NonNull<u8>,
    map_len: usize,
    code_len: usize,
}

// SAFETY: the mapping is never written after `finalize`, so sharing it between threads is sound.
unsafe impl Send for ExecutableCode {}
// SAFETY: as above; all access is read or execute.
unsafe impl Sync for ExecutableCode {}

impl ExecutableCode {
    /// Address of the first instruction.
    pub fn entry(&self) -> *const u8 {
        self.ptr.as_ptr()
    }
    /// The code bytes (for disassembly).
    pub fn bytes(&self) -> &[u8] {
        // SAFETY: the mapping is readable, holds `code_len` initialized bytes, and lives as long
        // as `self`.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.code_len) }
    }
}

impl Drop for ExecutableCode {
    fn drop(&mut self) {
        // SAFETY: the mapping is owned by this value; kernels that call into it hold an `Arc`
        // to it, so no call can be in flight when the last owner drops it.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.map_len) };
    }
}

/// A buffer of `f32`s whose end touches an inaccessible guard page, for tests: any read or
/// write past `len` faults.
pub struct GuardedF32 {
    base: NonNull<u8>,
    map_len: usize,
    data: NonNull<f32>,
    len: usize,
}

impl GuardedF32 {
    /// A zeroed buffer of `len` elements ending right before a guard page.
    pub fn new(len: usize) -> Result<Self> {
        let page = page_size();
        let data_bytes = (len * 4).div_ceil(page) * page;
        let map_len = data_bytes + page;
        // SAFETY: anonymous private mapping, checked against MAP_FAILED.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(errno("mmap"));
        }
        let base = NonNull::new(p.cast::<u8>()).ok_or_else(|| errno("mmap"))?;
        // SAFETY: the last page lies inside the mapping we just made.
        let rc =
            unsafe { libc::mprotect(base.as_ptr().add(data_bytes).cast(), page, libc::PROT_NONE) };
        if rc != 0 {
            return Err(errno("mprotect"));
        }
        // SAFETY: `data_bytes - len * 4` is within the mapping and 4-byte aligned (pages are).
        let data = unsafe {
            NonNull::new_unchecked(base.as_ptr().add(data_bytes - len * 4).cast::<f32>())
        };
        Ok(GuardedF32 {
            base,
            map_len,
            data,
            len,
        })
    }
    /// The elements.
    pub fn as_slice(&self) -> &[f32] {
        // SAFETY: `data..data+len` is readable, initialized (zeroed by mmap) and owned by self.
        unsafe { std::slice::from_raw_parts(self.data.as_ptr(), self.len) }
    }
    /// The elements, mutably.
    pub fn as_mut_slice(&mut self) -> &mut [f32] {
        // SAFETY: as above, and `&mut self` makes the borrow unique.
        unsafe { std::slice::from_raw_parts_mut(self.data.as_ptr(), self.len) }
    }
}

impl Drop for GuardedF32 {
    fn drop(&mut self) {
        // SAFETY: the mapping is owned by this value.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.map_len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finalized_code_runs_and_is_not_writable() {
        // mov eax, 42; ret
        let code = CodeBuffer::new(&[0xB8, 42, 0, 0, 0, 0xC3])
            .unwrap()
            .finalize()
            .unwrap();
        // SAFETY: the bytes above are a complete function returning 42 in eax (SysV).
        let f: extern "C" fn() -> i32 = unsafe { std::mem::transmute(code.entry()) };
        assert_eq!(f(), 42);
        assert_eq!(code.bytes().len(), 6);
    }

    #[test]
    fn guarded_buffer_ends_at_its_length() {
        let mut g = GuardedF32::new(5).unwrap();
        g.as_mut_slice()[4] = 1.0;
        assert_eq!(g.as_slice(), &[0.0, 0.0, 0.0, 0.0, 1.0]);
    }
}
