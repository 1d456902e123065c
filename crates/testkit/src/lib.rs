#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

/// The repository root (two levels above this crate).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repo root exists")
}

/// File name of the default model that `scripts/fetch-model` places in `models/`.
pub const SMOLLM2_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// Path of the default SmolLM2 GGUF, or `None` when it has not been fetched.
///
/// Real-model tests call this and fail with a clear message rather than skip silently:
/// `scripts/test` (and so CI) always fetches the model first.
pub fn smollm2_path() -> PathBuf {
    let path = repo_root().join("models").join(SMOLLM2_FILE);
    assert!(
        path.exists(),
        "{} is missing: run scripts/fetch-model (scripts/test does it for you)",
        path.display()
    );
    path
}

/// Normalised mean squared error: `sum((a-b)^2) / sum(b^2)` (b is the reference).
pub fn nmse(got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len(), "nmse: length mismatch");
    let (mut err, mut norm) = (0f64, 0f64);
    for (&g, &w) in got.iter().zip(want) {
        err += (g as f64 - w as f64).powi(2);
        norm += (w as f64).powi(2);
    }
    if norm == 0.0 {
        err
    } else {
        err / norm
    }
}

/// Asserts `nmse(got, want) <= bound`, printing the context on failure.
#[track_caller]
pub fn assert_close(got: &[f32], want: &[f32], bound: f64, context: &str) {
    let e = nmse(got, want);
    assert!(
        e <= bound,
        "{context}: nmse {e:.3e} exceeds bound {bound:.1e}"
    );
}

/// A global allocator that counts allocations, for tests that assert a hot loop allocates nothing.
///
/// Install it in a test binary with `#[global_allocator] static A: CountingAlloc = CountingAlloc::new();`.
pub struct CountingAlloc {
    n_allocs: AtomicU64,
}

impl CountingAlloc {
    /// A counter starting at zero.
    pub const fn new() -> Self {
        Self {
            n_allocs: AtomicU64::new(0),
        }
    }
    /// Allocations (including reallocations) made so far by the whole process.
    pub fn n_allocs(&self) -> u64 {
        self.n_allocs.load(Ordering::Relaxed)
    }
}

impl Default for CountingAlloc {
    fn default() -> Self {
        Self::new()
    }
}

// SAFETY: every method forwards to `System`, which upholds the GlobalAlloc contract; counting
// touches only an atomic.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        self.n_allocs.fetch_add(1, Ordering::Relaxed);
        // SAFETY: forwarded with the caller's obligations.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded with the caller's obligations.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        self.n_allocs.fetch_add(1, Ordering::Relaxed);
        // SAFETY: forwarded with the caller's obligations.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// Lower-case hex SHA-256 of `data` (to check that a generated or fetched file is the one a
/// golden was made from).
pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A Spec-Bench prompt set in the repository (`data/specbench/<set>.jsonl`: mt_bench, gsm8k,
/// alpaca, qa, sum).
pub fn specbench_path(set: &str) -> PathBuf {
    let path = repo_root()
        .join("data/specbench")
        .join(format!("{set}.jsonl"));
    assert!(
        path.exists(),
        "{} is missing (the repository ships data/specbench)",
        path.display()
    );
    path
}
